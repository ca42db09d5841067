package rank

import (
	"fmt"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/gpubackend"
)

// DevicePtr is a CUDA device address (a CUdeviceptr, e.g. a PyTorch
// tensor's data_ptr()). (The types of this file are defined in the GPU
// backend, which implements DeviceBackend and is imported by this package.)
type DevicePtr = gpubackend.DevicePtr

// Stream is a CUDA stream (a CUstream); 0 is the legacy default stream.
type Stream = gpubackend.Stream

// DeviceWeights are one layer's weights in device memory on this rank's
// GPU, in the layouts of Weights, with the experts this rank owns stacked by
// local index (expert Owned().first + j at index j): W1 [E/W, H, I],
// Wu [E/W, H, I] (swiglu), W2 [E/W, I, H], B1 [E/W, I] and B2 [E/W, H]
// (relu/gelu); unused ones 0. Elements are float32, or bf16 when the
// layer's DType is bf16. The GPU backend copies them (PrepareLayerDevice).
type DeviceWeights = gpubackend.DeviceWeights

// The GPU backend takes device memory.
var _ DeviceBackend = (*gpubackend.Backend)(nil)

// DeviceBackend is what a backend implements to take device memory from
// the caller (the GPU backend; not the CPU backend). Both calls are
// collective and backend.Layers' layer ids apply.
type DeviceBackend interface {
	// PrepareLayerDevice loads layer id's weights from device memory (it may
	// copy them or use them in place; the caller keeps them alive and
	// unchanged while the layer exists).
	PrepareLayerDevice(id int, cfg config.Layer, w *DeviceWeights) error
	// ForwardLayerDevice enqueues one forward of layer id on stream: x and
	// out are [cfg.Tokens, H] in device memory. It returns once the work is
	// enqueued; out is ready for work enqueued on stream after it.
	ForwardLayerDevice(id int, cfg config.Layer, x, out DevicePtr, stream Stream) (backend.Timing, error)
}

// AddLayerDevice adds a layer whose weights are in device memory; see
// DeviceWeights and AddLayer. The CPU backend returns an error wrapping
// ErrNotSupported (on every rank, without communication).
func (r *Runtime) AddLayerDevice(cfg Config, w *DeviceWeights) (*Layer, error) {
	if err := r.usable("add layer"); err != nil {
		return nil, err
	}
	db, ok := r.b.(DeviceBackend)
	if !ok {
		return nil, fmt.Errorf("rank %d: add layer with device weights: %w by the %s backend (it computes on host memory: use AddLayer)", r.comm.Rank(), ErrNotSupported, r.b.Name())
	}
	cfg, err := r.layerConfig(cfg)
	if err == nil && (w == nil || w.Gate == 0 || w.W1 == 0 || w.W2 == 0) {
		err = fmt.Errorf("device weights need at least the gate, W1 and W2")
	}
	id := len(r.layers)
	desc := fmt.Sprintf("layer %d: %s, device weights", id, describe(cfg))
	if err := agree(r.comm, fmt.Sprintf("add layer %d", id), desc, err); err != nil {
		return nil, err
	}
	err = db.PrepareLayerDevice(id, cfg, w)
	if err := agree(r.comm, fmt.Sprintf("prepare layer %d", id), desc, err); err != nil {
		return nil, err
	}
	l := &Layer{rt: r, id: id, cfg: cfg, source: weightsDevice, lastTokens: -1}
	r.layers = append(r.layers, l)
	return l, nil
}

// ForwardDevice runs the layer on x [tokens, H] into out [tokens, H], both
// in device memory on this rank's GPU, ordered on stream: it returns once
// the forward is enqueued, and out is ready for work enqueued on stream
// after it. Any layer can run this way, whatever its weights came from. The
// CPU backend returns an error wrapping ErrNotSupported (x and out are
// float32 in every dtype; the GPU backend converts a bf16 layer's tokens on
// the device); the runtime stays usable after such an error
// (and after a bad argument), while an error at or after the kernel's launch
// makes it refuse every later forward.
func (l *Layer) ForwardDevice(tokens int, x, out DevicePtr, stream Stream) error {
	r := l.rt
	if err := r.usable("forward"); err != nil {
		return err
	}
	db, ok := r.b.(DeviceBackend)
	if !ok {
		return fmt.Errorf("rank %d: layer %d: forward on device pointers: %w by the %s backend (it computes on host memory: use Forward)", r.comm.Rank(), l.id, ErrNotSupported, r.b.Name())
	}
	if tokens < 0 || tokens > l.cfg.MaxTokens {
		return fmt.Errorf("rank %d: layer %d: forward of %d tokens: must be in [0, max-tokens %d]", r.comm.Rank(), l.id, tokens, l.cfg.MaxTokens)
	}
	if tokens > 0 && (x == 0 || out == 0) {
		return fmt.Errorf("rank %d: layer %d: forward of %d tokens with a null device pointer", r.comm.Rank(), l.id, tokens)
	}
	cfg := l.cfg
	cfg.Tokens = tokens
	t, err := db.ForwardLayerDevice(l.id, cfg, x, out, stream)
	if err != nil {
		// A refusal (a bad argument, a mode the backend does not run on
		// device pointers) did nothing; an error at or after the launch
		// leaves the kernel's buffers and the peers mid-way.
		r.fail(err)
		return fmt.Errorf("rank %d: layer %d: forward: %w", r.comm.Rank(), l.id, err)
	}
	l.lastTokens = -1 // no host copy of the routing
	l.stats.add(Stats{Forwards: 1, Tokens: int64(tokens), Elapsed: t.Elapsed, BytesPut: t.BytesPut})
	return nil
}
