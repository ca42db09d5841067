package gpubackend

import (
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/symheap"
)

func layersBase() config.Layer {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 0, 64, 128, 192, 8, 2
	c.FFN, c.DType = config.FFNReLU, config.FP32
	return c
}

func TestFitsShape(t *testing.T) {
	base := layersBase()
	s := base.Static()
	ok := []func(*config.Layer){
		func(c *config.Layer) {},
		func(c *config.Layer) { c.Seed += 7 },
		func(c *config.Layer) { c.FFN = config.FFNSwiGLU },
		func(c *config.Layer) { c.FFNHidden = 64 },
		func(c *config.Layer) { c.Tokens = 33; c.CapacityFactor = 0.5; c.Renormalize = !c.Renormalize },
	}
	for i, m := range ok {
		c := base
		m(&c)
		if err := fitsShape(s, c); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
	}
	bad := map[string]func(*config.Layer){
		"hidden":     func(c *config.Layer) { c.Hidden = 256 },
		"experts":    func(c *config.Layer) { c.Experts = 16 },
		"topk":       func(c *config.Layer) { c.TopK = 1 },
		"max-tokens": func(c *config.Layer) { c.MaxTokens = 32 },
		"dtype":      func(c *config.Layer) { c.DType = config.BF16 },
		"ffn-hidden": func(c *config.Layer) { c.FFNHidden = 256 },
	}
	for name, m := range bad {
		c := base
		m(&c)
		err := fitsShape(s, c)
		if err == nil || !strings.Contains(err.Error(), name+" ") || !strings.Contains(err.Error(), "first layer") {
			t.Errorf("%s differs: error %v, want one naming %q", name, err, name)
		}
	}
}

func TestFitsLocalAndOwnWeights(t *testing.T) {
	plan := func(m func(*config.Layer)) symheap.Layout {
		c := layersBase()
		m(&c)
		lay, err := symheap.Plan(c, 2)
		if err != nil {
			t.Fatal(err)
		}
		return lay
	}
	base := plan(func(*config.Layer) {})
	if !fitsLocal(base, base) || !fitsLocal(base, plan(func(c *config.Layer) { c.FFNHidden = 64; c.FFN = config.FFNGeLU })) {
		t.Error("a layer of the same or narrower relu/gelu shape does not fit the local weight regions")
	}
	if fitsLocal(base, plan(func(c *config.Layer) { c.FFN = config.FFNSwiGLU })) {
		t.Error("a swiglu layer fits relu's weight regions")
	}
	if fitsLocal(plan(func(c *config.Layer) { c.FFNHidden = 64 }), base) {
		t.Error("a wider layer fits the local weight regions")
	}
	// A layer's own allocation holds exactly its weight regions.
	for _, lay := range []symheap.Layout{base, plan(func(c *config.Layer) { c.FFN = config.FFNSwiGLU; c.DType = config.BF16 })} {
		const at = 0x7000000
		n := ownBytes(lay)
		wp := weightsAt(at, lay, lay.GateW.Off)
		if wp.GateW != at {
			t.Errorf("gate at %#x, want the allocation's start %#x", wp.GateW, at)
		}
		regions := []struct {
			p uint64
			r symheap.Region
		}{{wp.GateW, lay.GateW}, {wp.GateT, lay.GateT}, {wp.W1, lay.W1}, {wp.W2, lay.W2}, {wp.Wu, lay.Wu}, {wp.B1, lay.B1}, {wp.B2, lay.B2}}
		for _, r := range regions {
			if (r.p == 0) != (r.r.Name == "") {
				t.Errorf("%s: address %#x for a region planned %v", r.r.Name, r.p, r.r.Name != "")
			}
			if r.p != 0 && (r.p < at || r.p+r.r.Size > at+n || (r.p-at)%symheap.Align != 0) {
				t.Errorf("%s: [%#x, +%d) outside the allocation [%#x, +%d) or misaligned", r.r.Name, r.p, r.r.Size, uint64(at), n)
			}
		}
		if (lay.FFN == config.FFNSwiGLU) != (wp.Wu != 0) || (lay.DType == config.BF16) != (wp.GateT != 0) {
			t.Errorf("regions of %s %s: %+v", lay.FFN, lay.DType, wp)
		}
	}
}

func TestParamsForLayer(t *testing.T) {
	c := layersBase()
	c.Tokens = 20
	lay, err := symheap.Plan(c, 2)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{rank: 1, world: 2, layout: lay, sym: 0x10000, local: 0x900000,
		opt: Options{Watchdog: 2 * time.Second, DebugWithholdPeer: -1}, info: KernelInfo{Grid: 264}}
	if p, q := b.params(c), b.paramsFor(c, localWeights(0x900000, lay)); p != q {
		t.Errorf("params and paramsFor of the local weights differ:\n%+v\n%+v", p, q)
	}
	n := c
	n.FFNHidden, n.FFN = 64, config.FFNSwiGLU
	nl, err := symheap.Plan(n, 2)
	if err != nil {
		t.Fatal(err)
	}
	wp := weightsAt(0x5000000, nl, nl.GateW.Off)
	p := b.paramsFor(n, wp)
	if p.FFNHidden != 64 || p.FFN != ffnCode(config.FFNSwiGLU) {
		t.Errorf("narrow swiglu layer: ffn_hidden %d ffn %d", p.FFNHidden, p.FFN)
	}
	if p.GateW != wp.GateW || p.W1 != wp.W1 || p.W2 != wp.W2 || p.Wu != wp.Wu || p.B1 != 0 || p.B2 != 0 || p.GateT != 0 {
		t.Errorf("weight addresses %+v, want %+v", p, wp)
	}
	if p.X != 0x900000+lay.X.Off || p.Inter != 0x900000+lay.Inter.Off || p.MaxRowTiles != int32(lay.MaxRowTiles) {
		t.Errorf("shared buffers not the backend's: %+v", p)
	}
}

// The checks before any GPU work, on a backend that has no GPU.
func TestLayerRefusals(t *testing.T) {
	c := layersBase()
	c.Tokens = 4
	b := &Backend{world: 1, prepared: true, layers: map[int]*gpuLayer{0: {static: c.Static()}},
		opt: Options{Watchdog: time.Second}}
	if _, err := b.ForwardLayer(3, c, make([]float32, 4*128)); err == nil || !strings.Contains(err.Error(), "layer 3") {
		t.Errorf("forward of a layer never prepared: %v", err)
	}
	o := c
	o.Seed++
	if _, err := b.ForwardLayer(0, o, make([]float32, 4*128)); err == nil || !strings.Contains(err.Error(), "prepared for") {
		t.Errorf("forward with another seed than prepared: %v", err)
	}
	if _, err := b.ForwardLayerDevice(2, c, 1, 2, 0); err == nil {
		t.Error("device forward of a layer never prepared: no error")
	}
	bf := c
	bf.DType = config.BF16
	b.layers[1] = &gpuLayer{static: bf.Static()}
	if _, err := b.ForwardLayerDevice(1, bf, 0, 2, 0); err == nil || !strings.Contains(err.Error(), "null") || strings.Contains(err.Error(), "bf16") {
		t.Errorf("device forward in bf16 with a null pointer: %v (a bf16 layer passes the dtype check; the pointer is refused)", err)
	}
	if _, err := b.ForwardLayerDevice(0, c, 0, 2, 0); err == nil || !strings.Contains(err.Error(), "null") {
		t.Errorf("device forward with a null pointer: %v", err)
	}
	b.closed = true
	if err := b.PrepareLayer(0, c, nil); err == nil {
		t.Error("prepare on a closed backend: no error")
	}
}
