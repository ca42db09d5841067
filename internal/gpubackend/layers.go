package gpubackend

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/symheap"
)

// Several layers (backend.Layers) share the buffers that the first one
// sized: the symmetric heap, the tokens, outputs, routing and scratch of
// the local block. Each layer has its own weights: the local block's weight
// regions hold one of them (Prepare's layer 0, or the first layer prepared),
// every other layer has a device allocation of its own, laid out as its own
// symheap plan's weight regions (gate_w .. b2, contiguous at the end of the
// local block). A forward points the kernel's weight addresses at the
// layer's weights and passes the layer's FFN kind and width.

var _ backend.Layers = (*Backend)(nil)

// weightPtrs are the device addresses of one layer's weight regions (0 for
// a region its plan does not have).
type weightPtrs struct{ GateW, GateT, W1, W2, Wu, B1, B2 uint64 }

// gpuLayer is one prepared layer.
type gpuLayer struct {
	static    config.Static  // of the config it was prepared with (Seed included)
	generated bool           // weights from the seed (w nil)
	lay       symheap.Layout // its own plan: the sizes of its weight regions
	buf       cuda.DevicePtr // its own allocation; 0 when in the local block
	wp        weightPtrs
}

// weightsAt returns the addresses of lay's weight regions in a block at
// base whose first byte is lay's offset origin.
func weightsAt(base uint64, lay symheap.Layout, origin uint64) weightPtrs {
	at := func(r symheap.Region) uint64 {
		if r.Name == "" {
			return 0
		}
		return base + r.Off - origin
	}
	return weightPtrs{GateW: at(lay.GateW), GateT: at(lay.GateT), W1: at(lay.W1), W2: at(lay.W2),
		Wu: at(lay.Wu), B1: at(lay.B1), B2: at(lay.B2)}
}

// localWeights are the weight regions of the local block at base planned as lay.
func localWeights(base uint64, lay symheap.Layout) weightPtrs { return weightsAt(base, lay, 0) }

// ownBytes is the size of a layer's own weight allocation: its plan's
// weight regions, from gate_w to the end of the local block.
func ownBytes(lay symheap.Layout) uint64 { return lay.LocalTotal - lay.GateW.Off }

// fitsShape says whether a layer of cfg can run in buffers sized by a
// config whose static part is s: hidden, experts, topk, max-tokens and
// dtype must be the same; ffn-hidden may be narrower; the FFN kind and the
// seed may differ.
func fitsShape(s config.Static, cfg config.Layer) error {
	diff := cfg.MisfitsShape(s, "the buffers'")
	if len(diff) == 0 {
		return nil
	}
	return fmt.Errorf("the layer does not fit the buffers that the first layer sized: %s; the layers of one GPU backend share hidden, experts, topk, max-tokens and dtype, and may only narrow ffn-hidden (prepare the widest first)",
		strings.Join(diff, ", "))
}

// fitsLocal says whether a layer planned as lay fits the local block's
// weight regions (planned as base): the same regions, none larger.
func fitsLocal(base, lay symheap.Layout) bool {
	pairs := [][2]symheap.Region{{base.GateW, lay.GateW}, {base.GateT, lay.GateT}, {base.W1, lay.W1},
		{base.W2, lay.W2}, {base.Wu, lay.Wu}, {base.B1, lay.B1}, {base.B2, lay.B2}}
	for _, p := range pairs {
		if (p[0].Name == "") != (p[1].Name == "") || p[1].Size > p[0].Size {
			return false
		}
	}
	return true
}

// layerFor returns layer id, prepared for cfg's static configuration.
func (b *Backend) layerFor(id int, cfg config.Layer) (*gpuLayer, error) {
	l := b.layers[id]
	if !b.prepared || l == nil {
		return nil, fmt.Errorf("forward of layer %d (%s): prepare it first", id, cfg.String())
	}
	if cfg.Static() != l.static {
		return nil, fmt.Errorf("forward of layer %d (%s): it was prepared for %v: Prepare it first", id, cfg.String(), l.static)
	}
	return l, nil
}

// PrepareLayer loads layer id's weights for cfg (backend.Layers), replacing
// any earlier weights of that id: w nil generates them from cfg.Seed, else
// w holds the gate and this rank's experts (cpubackend.CheckWeights). The
// first layer prepared sizes the shared buffers (collective then); later
// layers must fit them (fitsShape) and get device memory of their own
// unless they take the local block's weight regions. Collective.
func (b *Backend) PrepareLayer(id int, cfg config.Layer, w *backend.Weights) error {
	return b.prepareLayer(id, cfg, w, nil)
}

// prepareLayer is PrepareLayer; pre is an error found before (it fails the
// call on every rank when this layer would allocate the buffers).
func (b *Backend) prepareLayer(id int, cfg config.Layer, w *backend.Weights, pre error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := b.usable(); err != nil {
		return err
	}
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return err
	}
	cfg.Tokens = 0
	switch {
	case pre != nil:
	case id < 0:
		pre = fmt.Errorf("layer id %d: must be >= 0", id)
	case w != nil:
		pre = cpubackend.CheckWeights(cfg, w, b.rank, b.world)
	}
	if !b.prepared {
		if err := b.allocate(cfg, pre); err != nil {
			return err
		}
		return b.finishFirst(cfg, b.putLayer(id, cfg, w))
	}
	if pre != nil {
		return pre
	}
	if err := fitsShape(b.static, cfg); err != nil {
		return err
	}
	if err := b.putLayer(id, cfg, w); err != nil {
		return err
	}
	return b.drv.CtxSynchronize()
}

// putLayer places and uploads layer id's weights (see PrepareLayer); the
// buffers are allocated and cfg fits them.
func (b *Backend) putLayer(id int, cfg config.Layer, w *backend.Weights) error {
	lay, err := symheap.Plan(cfg, b.world)
	if err != nil {
		return err
	}
	// Nothing queued may still read the weights being replaced.
	if err := b.quiesce(); err != nil {
		return err
	}
	if err := b.dropLayer(id); err != nil {
		return err
	}
	l := &gpuLayer{static: cfg.Static(), generated: w == nil, lay: lay}
	if !b.localUsed && fitsLocal(b.layout, lay) {
		l.wp = localWeights(uint64(b.local), b.layout)
		b.localUsed, b.localOwner = true, id
	} else {
		n := ownBytes(lay)
		if l.buf, err = b.drv.MemAlloc(n); err != nil {
			return fmt.Errorf("layer %d: device memory of %s for its weights: %w", id, symheap.Bytes(n), err)
		}
		l.wp = weightsAt(uint64(l.buf), lay, lay.GateW.Off)
	}
	if err := b.upload(cfg, lay, l.wp, w); err != nil {
		if l.buf != 0 {
			b.drv.MemFree(l.buf)
		} else {
			b.localUsed = false
		}
		return fmt.Errorf("layer %d: %w", id, err)
	}
	if b.layers == nil {
		b.layers = map[int]*gpuLayer{}
	}
	b.layers[id] = l
	b.log.Debug().Int("layer", id).Str("config", cfg.String()).Bool("own_memory", l.buf != 0).Msg("gpu backend: layer prepared")
	return nil
}

// dropLayer frees layer id's weights, if any.
func (b *Backend) dropLayer(id int) error {
	l := b.layers[id]
	if l == nil {
		return nil
	}
	delete(b.layers, id)
	if b.localUsed && b.localOwner == id {
		b.localUsed = false
	}
	if l.buf == 0 {
		return nil
	}
	// Captured forwards may point at the freed weights.
	b.dropGraphs()
	return b.drv.MemFree(l.buf)
}

// dropLayers frees every layer's weights.
func (b *Backend) dropLayers() error {
	var errs []error
	for id := range b.layers {
		errs = append(errs, b.dropLayer(id))
	}
	b.layers, b.localUsed = nil, false
	return errors.Join(errs...)
}

// ForwardLayer runs one forward of layer id (backend.Layers), as Forward
// does; Result then returns its outputs. Collective.
func (b *Backend) ForwardLayer(id int, cfg config.Layer, x []float32) (backend.Timing, error) {
	if err := b.stage(id, cfg, x); err != nil {
		return backend.Timing{}, err
	}
	return b.ForwardStaged(cfg)
}

// quiesce waits (bounded) for the last forward queued on a caller's stream
// (ForwardLayerDevice) and reads its status: the shared buffers are free
// afterwards. A kernel that failed there makes the backend refuse further
// work, as a failed forward of its own does.
func (b *Backend) quiesce() error {
	if !b.devPending {
		return nil
	}
	bound := b.kernelsBound(1)
	if err := b.drv.EventWait(b.evDev, bound); err != nil {
		b.broken = fmt.Errorf("rank %d: a forward on the caller's stream (launch %d) did not finish within %v: %w", b.rank, b.launches, bound, err)
		return b.broken
	}
	b.devPending = false
	_, err := b.statusOK()
	return err
}
