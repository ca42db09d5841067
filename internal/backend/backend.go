// Package backend defines what a compute backend (CPU over MPI, GPU persistent
// kernel) provides to the benchmark driver and the embedding API.
package backend

import (
	"time"

	"github.com/moerun/moerun/internal/config"
)

// Result is what one forward produced on this rank, on the host.
type Result struct {
	Out     []float32 // [T, H]: the layer output for this rank's tokens
	TopKIdx []int32   // [T, k]: global expert ids in combine order
	TopKW   []float32 // [T, k]: combine weights (0 for a pair dropped by capacity)
	Logits  []float32 // [T, E]: gate logits as the backend computed them (may be nil)
}

// Timing is what a backend measured of one forward.
type Timing struct {
	Elapsed time.Duration // launch to outputs ready (device events on a GPU)
	// SMUtil is the fraction of the grid's time spent in task work, from
	// in-kernel timestamps; negative when the backend does not measure it.
	SMUtil float64
	// BytesPut counts payload bytes this rank sent to other ranks.
	BytesPut int64
}

// Backend runs the distributed MoE layer on one rank. All ranks call its
// methods collectively, in the same order.
type Backend interface {
	// Name is "cpu" or "gpu".
	Name() string
	// Card names the device ("cpu", or the GPU's name).
	Card() string
	// Prepare makes the backend ready to run forwards of cfg (and of configs
	// that differ from it only in Tokens, up to cfg.MaxTokens): it sizes
	// buffers and loads this rank's weights, which it may generate itself
	// from the seed with package datagen.
	Prepare(cfg config.Layer) error
	// Forward runs one forward of cfg.Tokens rows of x ([T, H], row-major).
	// Every rank calls it; T may differ between ranks.
	Forward(cfg config.Layer, x []float32) (Timing, error)
	// Result returns the outputs of the last forward.
	Result() (*Result, error)
	// Close releases everything the backend holds.
	Close() error
}
