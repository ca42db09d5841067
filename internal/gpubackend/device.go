package gpubackend

import (
	"fmt"
	"math"
	"runtime"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/symheap"
)

// DevicePtr, Stream and DeviceWeights are package rank's types of the same
// names (rank aliases them: rank imports this package, so they are defined
// here for the GPU backend to implement rank.DeviceBackend).

// DevicePtr is a CUDA device address (a CUdeviceptr).
type DevicePtr uint64

// Stream is a CUDA stream (a CUstream); 0 is the legacy default stream.
type Stream uint64

// DeviceWeights are one layer's weights in device memory on this rank's
// GPU, in the layouts of backend.Weights, with the experts this rank owns
// stacked by local index: W1 [E/W, H, I], Wu [E/W, H, I] (swiglu),
// W2 [E/W, I, H], B1 [E/W, I] and B2 [E/W, H] (relu/gelu); unused ones 0.
// Elements are float32, or bf16 when the layer's DType is bf16.
type DeviceWeights struct {
	Gate               DevicePtr // [H, E]
	W1, Wu, W2, B1, B2 DevicePtr
}

// PrepareLayerDevice loads layer id's weights from device memory: it copies
// them (through the host, where the mode's transposition and rounding are
// done, as PrepareLayer's upload does), so the caller's buffers are free
// again when it returns. Collective, as PrepareLayer.
func (b *Backend) PrepareLayerDevice(id int, cfg config.Layer, w *DeviceWeights) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := b.usable(); err != nil {
		return err
	}
	hw, err := b.readDeviceWeights(cfg, w)
	// Even with an error: the first layer's allocation is collective.
	return b.prepareLayer(id, cfg, hw, err)
}

// readDeviceWeights copies device weights to the host as backend.Weights.
func (b *Backend) readDeviceWeights(cfg config.Layer, w *DeviceWeights) (*backend.Weights, error) {
	if w == nil || w.Gate == 0 || w.W1 == 0 || w.W2 == 0 {
		return nil, fmt.Errorf("device weights need at least the gate, W1 and W2")
	}
	swiglu := cfg.FFN == config.FFNSwiGLU
	if swiglu && w.Wu == 0 {
		return nil, fmt.Errorf("device weights of a swiglu layer need Wu (the up projection)")
	}
	if !swiglu && (w.B1 == 0 || w.B2 == 0) {
		return nil, fmt.Errorf("device weights of a %s layer need the biases B1 and B2", cfg.FFN)
	}
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return nil, err
	}
	el := cfg.Experts / b.world
	if el*b.world != cfg.Experts || el == 0 {
		return nil, fmt.Errorf("experts %d do not divide among %d ranks", cfg.Experts, b.world)
	}
	h, in := cfg.Hidden, cfg.FFNHidden
	read := func(name string, p DevicePtr, n int) ([]float32, error) {
		out := make([]float32, n)
		var err error
		if cfg.DType == config.BF16 {
			raw := make([]uint16, n)
			if err = b.drv.MemcpyDtoH(raw, cuda.DevicePtr(p)); err == nil {
				for i, v := range raw {
					out[i] = math.Float32frombits(uint32(v) << 16)
				}
			}
		} else {
			err = b.drv.MemcpyDtoH(out, cuda.DevicePtr(p))
		}
		if err != nil {
			return nil, fmt.Errorf("read %s (%d values) from device memory: %w", name, n, err)
		}
		return out, nil
	}
	hw := &backend.Weights{Experts: map[int]*datagen.Expert{}}
	var err error
	if hw.Gate, err = read("the gate", w.Gate, h*cfg.Experts); err != nil {
		return nil, err
	}
	stack := map[string]struct {
		p    DevicePtr
		each int
	}{"W1": {w.W1, h * in}, "W2": {w.W2, in * h}}
	if swiglu {
		stack["Wu"] = struct {
			p    DevicePtr
			each int
		}{w.Wu, h * in}
	} else {
		stack["B1"] = struct {
			p    DevicePtr
			each int
		}{w.B1, in}
		stack["B2"] = struct {
			p    DevicePtr
			each int
		}{w.B2, h}
	}
	all := map[string][]float32{}
	for name, s := range stack {
		if all[name], err = read(name, s.p, el*s.each); err != nil {
			return nil, err
		}
	}
	part := func(name string, j int) []float32 {
		v, ok := all[name]
		if !ok {
			return nil
		}
		n := stack[name].each
		return v[j*n : (j+1)*n : (j+1)*n]
	}
	for j := 0; j < el; j++ {
		hw.Experts[b.rank*el+j] = &datagen.Expert{W1: part("W1", j), W2: part("W2", j), Wu: part("Wu", j), B1: part("B1", j), B2: part("B2", j)}
	}
	return hw, nil
}

// convertBlocks bounds the grid of the token conversion: a few waves of
// blocks are enough for a memory-bound copy of at most a few hundred MB.
const convertBlocks = 1024

// deviceTokens puts a device forward's n bytes of float32 tokens x into the
// kernel's token buffer on stream s: a copy in fp32 and tf32 mode; in bf16
// mode the conversion kernel (round to nearest even, the same bits as the
// host path's toBF16), since the kernel reads bf16 tokens there.
func (b *Backend) deviceTokens(cfg config.Layer, x DevicePtr, n uint64, s cuda.Stream) error {
	if n == 0 {
		return nil
	}
	dst := symheap.Addr(uint64(b.local), b.layout.X)
	if cfg.DType != config.BF16 {
		if err := b.drv.MemcpyDtoDAsync(cuda.DevicePtr(dst), cuda.DevicePtr(x), n, s); err != nil {
			return fmt.Errorf("copy tokens: %w", err)
		}
		return nil
	}
	if b.convErr != nil {
		return backend.Refuse(fmt.Errorf("a bf16 forward on device pointers needs the kernel entry %s, which %s lacks (%v): rebuild the cubin", kernels.ConvertName, b.info.CubinFrom, b.convErr))
	}
	count := int64(n / 4)
	arg := kernels.Convert{Src: uint64(x), Dst: dst, N: count}
	blocks := (count/4 + kernels.Threads - 1) / kernels.Threads
	blocks = max(1, min(blocks, convertBlocks))
	if err := b.drv.LaunchKernel(b.convFn, [3]uint32{uint32(blocks), 1, 1}, [3]uint32{kernels.Threads, 1, 1}, 0, s, arg.Bytes()); err != nil {
		return fmt.Errorf("convert tokens to bf16: %w", err)
	}
	return nil
}

// checkDeviceForward checks a device forward's arguments and mode before
// any device work; its errors are refusals (backend.IsRefusal).
func checkDeviceForward(id int, cfg config.Layer, world int, x, out DevicePtr) error {
	if err := cfg.Validate(world); err != nil {
		return backend.Refuse(fmt.Errorf("forward of layer %d: %w", id, err))
	}
	if cfg.Tokens > 0 && (x == 0 || out == 0) {
		return backend.Refuse(fmt.Errorf("forward of layer %d: %d tokens with a null device pointer", id, cfg.Tokens))
	}
	return nil
}

// ForwardLayerDevice enqueues one forward of layer id on the caller's
// stream (rank.DeviceBackend): x and out are [cfg.Tokens, H] float32 in
// device memory. Collective.
//
// Ordering: everything is enqueued on stream, in stream order: the copy of
// x into the kernel's token buffer (in bf16 mode a conversion kernel that
// rounds them to bf16 as the host path does), the kernel, and the copy of the output
// into out. It returns without waiting: out is ready for work enqueued on
// stream after this call, and x may be overwritten by such work. The
// backend's buffers are shared by all layers, so a later forward (on any
// stream) is ordered after this one: a device forward makes its stream wait
// for the previous device forward (an event), and a host forward, a
// PrepareLayer or Close waits for it on the host. A kernel failure
// (watchdog) of a device forward is reported by the next host-side call
// that waits for it (ForwardLayer, PrepareLayer); another device forward
// does not see it.
//
// The timing has no elapsed time (nothing is measured without waiting) and
// SMUtil -1. Graph replay and the per-block trace are not used here.
//
// Errors: the checks of the arguments, made before any device work, return
// refusals (backend.IsRefusal) and leave the backend usable, and so does a
// bf16 forward with a cubin that lacks the token conversion. Errors from the
// device, before or after the launch, do not.
func (b *Backend) ForwardLayerDevice(id int, cfg config.Layer, x, out DevicePtr, stream Stream) (backend.Timing, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tm := backend.Timing{SMUtil: -1}
	if err := b.usable(); err != nil {
		return tm, err
	}
	l, err := b.layerFor(id, cfg)
	if err != nil {
		return tm, backend.Refuse(err)
	}
	if err := checkDeviceForward(id, cfg, b.world, x, out); err != nil {
		return tm, err
	}
	if b.staged {
		return tm, backend.Refuse(fmt.Errorf("forward of layer %d on device pointers: a staged forward (Stage) has not run", id))
	}
	n := uint64(cfg.Tokens) * uint64(cfg.Hidden) * 4
	d, lay, s := b.drv, b.layout, cuda.Stream(stream)
	if err := d.CtxSetCurrent(b.ctx); err != nil {
		return tm, err
	}
	if !b.haveEvDev {
		if b.evDev, err = d.EventCreate(); err != nil {
			return tm, err
		}
		b.haveEvDev = true
	}
	if b.devPending {
		if err := d.StreamWaitEvent(s, b.evDev); err != nil {
			return tm, err
		}
	}
	// The argument first: a failure to encode it leaves nothing queued.
	p := b.paramsFor(cfg, l.wp)
	p.Trace, p.TraceCounts, p.TraceCap = 0, 0, 0
	if err := b.setTMaps(&p, cfg); err != nil {
		return tm, err
	}
	if err := b.deviceTokens(cfg, x, n, s); err != nil {
		return tm, err
	}
	if err := b.launch(cfg, p.Bytes(), s); err != nil {
		b.broken = fmt.Errorf("kernel launch failed: %w", err)
		return tm, b.broken
	}
	b.launches++
	// From here the shared buffers are in use on the caller's stream.
	b.devPending, b.haveLast = true, false
	b.traceCached, b.traceEvs = false, nil
	if n > 0 {
		if err := d.MemcpyDtoDAsync(cuda.DevicePtr(out), cuda.DevicePtr(symheap.Addr(uint64(b.local), lay.Out)), n, s); err != nil {
			b.broken = fmt.Errorf("copy the output: %w", err)
			return tm, b.broken
		}
	}
	if err := d.EventRecord(b.evDev, s); err != nil {
		b.broken = fmt.Errorf("record the forward's end on the caller's stream: %w", err)
		return tm, b.broken
	}
	return tm, nil
}
