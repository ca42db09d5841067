// Package rank is the per-rank runtime of the MoE layer and the API that a
// training or inference driver embeds: open a runtime inside a job, add any
// number of MoE layers (each with its own weights), run forwards on each,
// read stats, close.
//
// # Jobs
//
// A runtime spans the ranks of one job, one process per rank. Open takes the
// job's communicator: bootstrap.Init's World.Comm when the driver was started
// by mpirun or srun (OpenWorld does this), or a transport.Local rank in
// tests. A driver started without MPI (torchrun, say) makes a UniqueID on
// rank 0 with NewUniqueID, sends it to every rank by its own means (for
// example torch.distributed.broadcast_object_list) and calls OpenWithID on
// every rank; the ranks then talk over TCP through rank 0's process.
//
// # Collective calls
//
// Open, OpenWithID, AddLayer, Layer.Forward, Layer.Verify and Close are
// collective: every rank calls them in the same order (Forward with its own
// token count, 0 allowed). Arguments that differ between ranks where they
// must agree (configs, layer order) or that are wrong on one rank (weights of
// the wrong size) make every rank return an error from Open, AddLayer and
// Verify. Forward checks its arguments locally: a rank whose Forward
// returns an argument error has not taken part, and its peers then wait for
// it until the job's timeout; check arguments the same way on every rank.
//
// # Errors
//
// Errors are values; nothing panics on bad input. A forward that failed in
// flight (a lost peer, a timeout, a tripped GPU watchdog) leaves peers and
// device state mid-way: the runtime then refuses every later forward with
// that first error until it is closed. A forward that the backend refused
// before doing any work (a bad argument, or an error wrapping
// ErrNotSupported, such as device pointers on the CPU backend) leaves the
// runtime usable.
//
// # Threads
//
// A Runtime and its layers are used from one goroutine. Over MPI that is the
// goroutine that called bootstrap.Init (MPI is initialised for one thread and
// that goroutine is locked to its OS thread).
//
// # Backends
//
// The CPU backend ("cpu") computes on host memory in float64 and exchanges
// rows over the job's communicator; its output equals the float64
// reference. It runs any number of layers with weights generated from a seed
// or given by the caller in host memory. Device pointers (AddLayerDevice,
// ForwardDevice) are for the GPU backend ("gpu"); the CPU backend refuses
// them with an error wrapping ErrNotSupported.
package rank

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/gpubackend"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/internal/version"
	"github.com/moerun/moerun/symheap"
)

// Types a driver outside this module needs: the internal packages that
// define them cannot be imported from there.
type (
	// Config is one MoE layer's configuration (DESIGN.md section 1).
	Config = config.Layer
	// Comm is a communicator over the ranks of a job.
	Comm = transport.Comm
	// Weights are one layer's weights in host memory: the gate [H, E] and the
	// experts this rank owns, in the layouts of Expert.
	Weights = backend.Weights
	// Expert is one expert's weights, row-major float32: relu/gelu W1 [H, I],
	// B1 [I], W2 [I, H], B2 [H]; swiglu W1 = gate projection [H, I], Wu = up
	// projection [H, I], W2 = down projection [I, H], no biases.
	Expert = datagen.Expert
	// Timing is what the backend measured of one forward.
	Timing = backend.Timing
)

// Config values.
const (
	FFNReLU   = config.FFNReLU
	FFNGeLU   = config.FFNGeLU
	FFNSwiGLU = config.FFNSwiGLU
	FP32      = config.FP32
	TF32      = config.TF32
	BF16      = config.BF16

	RouteSoftmax = config.RouteSoftmax
	RouteSkew    = config.RouteSkew
)

// Backend names for Options.Backend.
const (
	BackendCPU = "cpu"
	BackendGPU = "gpu"
)

// ErrClosed is returned by calls on a closed runtime or its layers.
var ErrClosed = errors.New("rank: runtime is closed")

// ErrNotSupported is wrapped by errors for what the runtime's backend cannot
// do (device pointers on the CPU backend, caller weights on a backend that
// holds one generated layer). It is backend.ErrNotSupported, the value the backends wrap. Such
// a call did nothing: the runtime stays usable.
var ErrNotSupported = backend.ErrNotSupported

// Options configure a runtime.
type Options struct {
	// Backend is BackendCPU (the default) or BackendGPU.
	Backend string
	// LocalRank picks the GPU among the visible ones (gpu backend).
	// OpenWorld takes it from the World.
	LocalRank int
	// Watchdog bounds every wait inside the GPU kernel (0: its default).
	Watchdog time.Duration
	// Cubin is the kernel image to load instead of the embedded one.
	Cubin string
	// Timeout bounds every wait for the other ranks of a job that OpenWithID
	// connects (0: 60 s; over MPI, bootstrap.Options.Timeout bounds MPI's
	// waits), and on the gpu backend, over MPI too, each of NVSHMEM's
	// collective host calls (init, heap allocation and free, the barrier
	// before the first forward, finalize in Close; 0: 60 s), which cannot be
	// abandoned: past it the process says which call timed out and exits
	// with status 1. Close is collective: every rank must call it within
	// Timeout of the others.
	Timeout time.Duration
	// TimeoutName names Timeout in those messages ("" means
	// "rank.Options.Timeout"; the C ABI says moerun_options.timeout_ms).
	TimeoutName string
	// KeepWeights keeps a host copy of every layer's caller-given weights,
	// which Layer.Verify needs; for tests and small models.
	KeepWeights bool
	// Log receives the backend's messages (default: none).
	Log *zerolog.Logger
}

// Runtime is one rank's MoE runtime: a backend, the job's communicator and
// the layers added to it. Its buffers are sized for the shape it was opened
// with.
type Runtime struct {
	comm   transport.Comm
	b      backend.Backend
	shape  config.Layer
	opts   Options
	layers []*Layer
	failed error
	closed bool
	// ownComm is closed with the runtime (the TCP communicator of OpenWithID).
	ownComm interface{ Close() error }
}

// Open opens a runtime over comm. It is collective. shape bounds the layers
// the runtime will hold: their buffers are sized for it, and every layer
// added must have its Hidden, Experts, TopK, MaxTokens and DType, and an FFN
// width no larger (shape.Tokens is ignored; shape.MaxTokens is the most
// tokens one rank may give one forward). Experts must be a multiple of the
// number of ranks.
func Open(comm Comm, shape Config, opts Options) (*Runtime, error) {
	if comm == nil {
		return nil, errors.New("rank: open: no communicator given")
	}
	shape.Tokens = 0
	var b backend.Backend
	err := checkOpen(comm, shape, opts)
	if err == nil && opts.backend() == BackendCPU {
		b = cpubackend.New(comm)
	}
	desc := fmt.Sprintf("version %s, backend %s, shape %s", version.String(), opts.backend(), describe(shape))
	if err := agree(comm, "open", desc, err); err != nil {
		return nil, err
	}
	if b == nil { // gpu: its Open is collective and agrees by itself
		if b, err = openGPU(comm, shape, opts); err != nil {
			return nil, fmt.Errorf("rank %d: open gpu backend: %w", comm.Rank(), err)
		}
	}
	return &Runtime{comm: comm, b: b, shape: shape, opts: opts}, nil
}

// OpenWorld opens a runtime over the job that bootstrap.Init joined, on
// this rank's GPU (by local rank) for the gpu backend. The caller closes the
// World after the runtime.
func OpenWorld(w *bootstrap.World, shape Config, opts Options) (*Runtime, error) {
	if w == nil || w.Comm == nil {
		return nil, errors.New("rank: open: no bootstrap world given")
	}
	opts.LocalRank = w.LocalRank
	if opts.backend() == BackendGPU && w.Nodes > 1 {
		// Every rank sees the same node count: all refuse alike.
		return nil, fmt.Errorf("rank %d: the ranks run on %d nodes: the gpu backend runs on one node until the remote-transport path exists (the cpu backend runs across nodes)", w.Rank, w.Nodes)
	}
	return Open(w.Comm, shape, opts)
}

// OpenBackend opens a runtime over comm with a backend the caller made (a
// wrapped or instrumented one in tests). It is collective.
func OpenBackend(comm Comm, b backend.Backend, shape Config, opts Options) (*Runtime, error) {
	if comm == nil || b == nil {
		return nil, errors.New("rank: open: no communicator or backend given")
	}
	shape.Tokens = 0
	opts.Backend = b.Name()
	err := checkOpen(comm, shape, opts)
	desc := fmt.Sprintf("version %s, backend %s, shape %s", version.String(), b.Name(), describe(shape))
	if err := agree(comm, "open", desc, err); err != nil {
		return nil, err
	}
	return &Runtime{comm: comm, b: b, shape: shape, opts: opts}, nil
}

func (o Options) backend() string {
	if o.Backend == "" {
		return BackendCPU
	}
	return o.Backend
}

func checkOpen(comm Comm, shape config.Layer, opts Options) error {
	switch opts.backend() {
	case BackendCPU, BackendGPU:
	default:
		return fmt.Errorf("backend %q: must be %s or %s", opts.Backend, BackendCPU, BackendGPU)
	}
	if err := shape.Validate(comm.Size()); err != nil {
		return fmt.Errorf("shape: %w", err)
	}
	return nil
}

func openGPU(comm Comm, shape config.Layer, opts Options) (backend.Backend, error) {
	lay, err := symheap.Plan(shape, comm.Size())
	if err != nil {
		return nil, err
	}
	log := zerolog.Nop()
	if opts.Log != nil {
		log = *opts.Log
	}
	return gpubackend.Open(comm, opts.LocalRank, gpubackend.Options{
		Cubin: opts.Cubin, Watchdog: opts.Watchdog, DebugWithholdPeer: -1, HeapBytes: lay.SymTotal, Log: log,
		Timeout: opts.Timeout, TimeoutName: cmp.Or(opts.TimeoutName, "rank.Options.Timeout"),
	})
}

// Rank is this process's rank in the job; Size the number of ranks.
func (r *Runtime) Rank() int { return r.comm.Rank() }

// Size is the number of ranks of the job.
func (r *Runtime) Size() int { return r.comm.Size() }

// Backend names the backend: "cpu" or "gpu".
func (r *Runtime) Backend() string { return r.b.Name() }

// Shape is the configuration the runtime was opened with.
func (r *Runtime) Shape() Config { return r.shape }

// Owned returns the global ids [first, last+1) of the experts this rank owns
// in every layer: expert e lives on rank e / (E/W).
func (r *Runtime) Owned() (first, end int) {
	el := r.shape.ExpertsPerRank(r.comm.Size())
	return r.comm.Rank() * el, (r.comm.Rank() + 1) * el
}

// Layers returns the layers added so far, in the order they were added.
func (r *Runtime) Layers() []*Layer { return append([]*Layer(nil), r.layers...) }

// Stats are counters of forwards on this rank.
type Stats struct {
	Forwards int64         // forwards run
	Tokens   int64         // tokens this rank gave them
	Elapsed  time.Duration // backend-measured time, summed
	BytesPut int64         // payload bytes this rank sent to other ranks
}

func (s *Stats) add(o Stats) {
	s.Forwards += o.Forwards
	s.Tokens += o.Tokens
	s.Elapsed += o.Elapsed
	s.BytesPut += o.BytesPut
}

// Stats sums the stats of every layer.
func (r *Runtime) Stats() Stats {
	var s Stats
	for _, l := range r.layers {
		s.add(l.stats)
	}
	return s
}

// Device is the CUDA device ordinal of this rank's GPU among the visible
// ones (the gpu backend's), or -1 for a backend without a GPU (cpu).
func (r *Runtime) Device() int {
	if d, ok := r.b.(interface{ Ordinal() int }); ok {
		return d.Ordinal()
	}
	return -1
}

// fail records err, a forward's error from the backend, as the runtime's
// failure (every later collective call is refused), unless the backend
// refused the call before doing any work (backend.IsRefusal).
func (r *Runtime) fail(err error) {
	if err != nil && !backend.IsRefusal(err) && r.failed == nil {
		r.failed = err
	}
}

// usable says whether a collective call may start.
func (r *Runtime) usable(what string) error {
	if r == nil || r.closed {
		return ErrClosed
	}
	if r.failed != nil {
		return fmt.Errorf("rank %d: %s: a previous forward failed, close and reopen the runtime: %w", r.comm.Rank(), what, r.failed)
	}
	return nil
}

// Close releases the backend and, for OpenWithID, the connections to the
// other ranks. Later calls return ErrClosed; a second Close does nothing.
func (r *Runtime) Close() error {
	if r == nil || r.closed {
		return nil
	}
	r.closed = true
	err := r.b.Close()
	if r.ownComm != nil {
		if cerr := r.ownComm.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("rank %d: close: %w", r.comm.Rank(), err)
	}
	return nil
}
