package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/logging"
	"github.com/moerun/moerun/internal/version"
)

func runBench(args []string, stdout, stderr io.Writer) int {
	o, err := bench.ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		return exitUsage
	}
	level, _ := logging.ParseLevel(o.LogLevel) // validated by ParseFlags

	// Safety first: never let NVSHMEM (or NCCL in an embedding process) use
	// NVLink multicast unless the user asked for it explicitly.
	bootstrap.DisableNVLS()
	world, err := bootstrap.Init(bootstrap.Options{Timeout: o.Timeout})
	if err != nil {
		fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		return exitFailure
	}
	defer world.Close()
	log := logging.New(os.Stderr, level, world.Rank, world.LocalRank, world.Host)
	log.Debug().Int("world", world.Size).Str("local_rank_from", world.LocalRankSource).Bool("mpi", world.MPI).Msg("rank up")

	env := bench.Env{
		Comm:       world.Comm,
		Log:        log,
		GPUVisible: gpuVisible(),
		Agree: func(st config.Static) error {
			return bootstrap.CheckAgreement(world.Comm, st, version.String())
		},
		Abort:   world.Abort,
		Stdout:  stdout,
		Stderr:  stderr,
		Version: version.Version + " " + version.Commit(),
	}
	env.Open = func(name string) (backend.Backend, error) {
		switch name {
		case "cpu":
			return cpubackend.New(world.Comm), nil
		case "gpu":
			return openGPU(world, o, log)
		}
		return nil, fmt.Errorf("unknown backend %q", name)
	}
	return bench.Run(env, o)
}
