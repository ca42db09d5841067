// Package backend defines what a compute backend (CPU over MPI, GPU persistent
// kernel) provides to the benchmark driver and the embedding API.
package backend

import (
	"errors"
	"io"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// ErrNotSupported is wrapped by errors for what a backend cannot do (device
// pointers on the CPU backend, a device forward in a mode the GPU backend
// does not run on device pointers). Package rank exports the same value as
// rank.ErrNotSupported. Such an error is a refusal (see Refuse): the call did
// nothing.
var ErrNotSupported = errors.New("not supported")

// refusal marks an error as a refusal; its text is the error's own.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// Refuse marks err as a refusal: the call checked its arguments (or what the
// backend supports) and returned before doing any work, on the device or
// with the other ranks, so the backend is as it was before the call and
// later calls may go on. A driver may report it to its caller as an argument
// error; it must not treat the runtime as failed. Refuse(nil) is nil.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	return &refusal{err}
}

// IsRefusal reports whether err is a refusal: it was marked by Refuse, or
// wraps ErrNotSupported.
func IsRefusal(err error) bool {
	var r *refusal
	return errors.As(err, &r) || errors.Is(err, ErrNotSupported)
}

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
	// Span is the kernel's own time, from its start to its last block's end
	// (in-kernel clock); 0 when the backend does not measure it. Elapsed -
	// Span is the time from the launch event to the kernel's start.
	Span time.Duration
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

// Weights are one layer's weights given by the caller (a checkpoint, a
// training driver) instead of generated from the seed. Layouts are those of
// package datagen: Gate [H, E]; each expert's W1 [H, I], B1 [I], W2 [I, H],
// B2 [H] (relu/gelu), or W1 = gate projection [H, I], Wu [H, I], W2 = down
// projection [I, H] (swiglu), all row-major float32 (bf16 values widened).
type Weights struct {
	Gate    []float32
	Experts map[int]*datagen.Expert // the experts this rank owns, by global id
}

// StoredWeights returns w as a layer of cfg's dtype stores it (DESIGN.md
// section 1: in bf16 mode the expert matrices are rounded to bf16 once, and
// the reference computes from those values; the gate stays float32, which
// the GPU keeps exact as a sum of bf16 pieces). w itself where nothing
// changes.
func StoredWeights(cfg config.Layer, w *Weights) *Weights {
	if w == nil || cfg.DType != config.BF16 {
		return w
	}
	r := &Weights{Gate: w.Gate, Experts: make(map[int]*datagen.Expert, len(w.Experts))}
	changed := false
	for e, ex := range w.Experts {
		r.Experts[e] = ex.StoredAs(cfg.DType)
		changed = changed || r.Experts[e] != ex
	}
	if !changed {
		return w
	}
	return r
}

// Layers is implemented by backends that hold several layers at once (a
// model has dozens of MoE layers) sharing one set of communication buffers:
// each layer has its own weights and is run by id.
type Layers interface {
	// PrepareLayer loads layer id's weights for cfg (replacing any earlier
	// weights of that id); w nil generates them from cfg.Seed.
	PrepareLayer(id int, cfg config.Layer, w *Weights) error
	// ForwardLayer runs one forward of layer id, as Backend.Forward does;
	// Result then returns its outputs.
	ForwardLayer(id int, cfg config.Layer, x []float32) (Timing, error)
}

// Tracer is implemented by backends that can record a timeline of a forward
// (the GPU kernel's per-block tasks).
type Tracer interface {
	// WriteTrace writes the last forward's timeline as Chrome/Perfetto
	// trace JSON.
	WriteTrace(w io.Writer) error
	// PhaseSummary is one line: when each phase of the last forward ended,
	// counted from the start of the kernel.
	PhaseSummary() string
}

// Stager is implemented by backends whose forward has host-side work before
// the launch (uploading and converting the tokens). The benchmark stages
// before its host barrier, so that the ranks leave the barrier and enter
// the forward together and a rank's latency does not include a peer's
// late start.
type Stager interface {
	// Stage prepares the forward of cfg on x; the next call must be
	// ForwardStaged(cfg).
	Stage(cfg config.Layer, x []float32) error
	// ForwardStaged runs the staged forward, as Backend.Forward does.
	ForwardStaged(cfg config.Layer) (Timing, error)
}

// Queuer is implemented by backends that can queue forwards on the device
// back to back, with no host work between them: the benchmark's timed
// forwards then measure the layer, not the host's launch skew (a rank whose
// kernel starts first waits inside it for the late ones; after the first
// forward the ranks' kernels start as their previous ones end).
type Queuer interface {
	// ForwardQueued runs n forwards of the tokens staged for cfg (Stage),
	// queued back to back, the output poisoned before each, and returns the
	// device time of each one's kernel and the last one's Timing; Result then
	// returns the last one's outputs. Collective: every rank queues n.
	ForwardQueued(cfg config.Layer, n int) ([]time.Duration, Timing, error)
}
