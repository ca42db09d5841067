package main

import (
	"fmt"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
)

// openGPU opens the persistent-kernel backend on this rank's GPU.
func openGPU(world *bootstrap.World, o bench.Options, log zerolog.Logger) (backend.Backend, error) {
	return nil, fmt.Errorf("the GPU backend is not part of this build")
}
