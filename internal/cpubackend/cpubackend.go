// Package cpubackend runs the distributed MoE layer on CPUs: each rank routes
// its tokens, sends the routed rows to the ranks that own the chosen experts,
// the owners run the expert FFNs, the rows come back and the source combines.
// It is the bulk-synchronous layer in its simplest form and the oracle that CI
// runs under mpirun: it uses the float64 functions of package reference in
// the same order, so its output equals the reference's bit for bit.
package cpubackend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// Backend is the CPU backend of one rank. Besides the one configuration of
// Prepare, it holds any number of layers by id (backend.Layers), each with
// its own weights, generated from the seed or given by the caller.
type Backend struct {
	comm    transport.Comm
	cfg     config.Layer // the prepared configuration
	ready   bool
	gate    []float32
	experts map[int]*datagen.Expert // owned experts by global id
	layers  map[int]*layer          // layers of PrepareLayer, by id
	last    *backend.Result
	out64   []float64
}

// layer is one layer of PrepareLayer: its configuration and weights.
type layer struct {
	cfg     config.Layer
	gate    []float32
	experts map[int]*datagen.Expert
}

var _ backend.Layers = (*Backend)(nil)

// New returns a CPU backend over comm.
func New(comm transport.Comm) *Backend { return &Backend{comm: comm} }

// Name implements backend.Backend.
func (b *Backend) Name() string { return "cpu" }

// Card implements backend.Backend.
func (b *Backend) Card() string { return "cpu" }

// sameWeights reports whether two configurations share weights and shapes.
func sameWeights(a, b config.Layer) bool {
	a.Tokens, b.Tokens = 0, 0
	a.CapacityFactor, b.CapacityFactor = 0, 0
	a.Renormalize, b.Renormalize = false, false
	a.Route, b.Route = "", ""
	return a == b
}

// Prepare generates the gate and this rank's experts.
func (b *Backend) Prepare(cfg config.Layer) error {
	w := b.comm.Size()
	if err := cfg.Validate(w); err != nil {
		return fmt.Errorf("cpu backend: %w", err)
	}
	if b.ready && sameWeights(b.cfg, cfg) {
		b.cfg = cfg
		return nil
	}
	b.cfg = cfg
	b.gate, b.experts = generate(cfg, b.comm.Rank(), w)
	b.ready = true
	return nil
}

// generate makes the gate and rank me's experts from cfg.Seed.
func generate(cfg config.Layer, me, w int) ([]float32, map[int]*datagen.Expert) {
	el := cfg.ExpertsPerRank(w)
	first := me * el
	experts := make(map[int]*datagen.Expert, el)
	for e := first; e < first+el; e++ {
		ex := datagen.ExpertWeights(cfg, e)
		experts[e] = &ex
	}
	return datagen.Gate(cfg), experts
}

// PrepareLayer implements backend.Layers: it keeps a copy of w (the caller
// may reuse its slices afterwards), or generates the weights from cfg.Seed
// when w is nil. w must hold the gate and exactly the experts this rank owns.
// It is local to this rank: no communication.
func (b *Backend) PrepareLayer(id int, cfg config.Layer, w *backend.Weights) error {
	world, me := b.comm.Size(), b.comm.Rank()
	if err := cfg.Validate(world); err != nil {
		return fmt.Errorf("cpu backend: layer %d: %w", id, err)
	}
	l := &layer{cfg: cfg}
	if w == nil {
		l.gate, l.experts = generate(cfg, me, world)
	} else {
		if err := CheckWeights(cfg, w, me, world); err != nil {
			return fmt.Errorf("cpu backend: layer %d: %w", id, err)
		}
		w = backend.StoredWeights(cfg, w) // bf16 mode stores bf16 matrices
		l.gate = append([]float32(nil), w.Gate...)
		l.experts = make(map[int]*datagen.Expert, len(w.Experts))
		for e, ex := range w.Experts {
			l.experts[e] = &datagen.Expert{
				W1: clone(ex.W1), B1: clone(ex.B1), W2: clone(ex.W2), B2: clone(ex.B2), Wu: clone(ex.Wu),
			}
		}
	}
	if b.layers == nil {
		b.layers = map[int]*layer{}
	}
	b.layers[id] = l
	return nil
}

// ForwardLayer implements backend.Layers.
func (b *Backend) ForwardLayer(id int, cfg config.Layer, x []float32) (backend.Timing, error) {
	l, ok := b.layers[id]
	if !ok {
		return backend.Timing{}, fmt.Errorf("cpu backend: forward of layer %d, which was never prepared", id)
	}
	if !sameWeights(l.cfg, cfg) {
		return backend.Timing{}, fmt.Errorf("cpu backend: forward of layer %d with %v; it was prepared for %v", id, cfg, l.cfg)
	}
	return b.run(cfg, l.cfg.MaxTokens, l.gate, l.experts, x)
}

// CheckWeights reports what is wrong with caller-given weights for rank me
// of world: the gate's size, a missing, foreign or misshapen expert. The
// error names the first problems found.
func CheckWeights(cfg config.Layer, w *backend.Weights, me, world int) error {
	if w == nil {
		return fmt.Errorf("no weights given")
	}
	h, in, e := cfg.Hidden, cfg.FFNHidden, cfg.Experts
	var errs []error
	bad := func(format string, a ...any) {
		if len(errs) < 8 {
			errs = append(errs, fmt.Errorf(format, a...))
		}
	}
	if len(w.Gate) != h*e {
		bad("gate has %d values, want hidden %d × experts %d = %d", len(w.Gate), h, e, h*e)
	}
	el := cfg.ExpertsPerRank(world)
	first := me * el
	for g := first; g < first+el; g++ {
		if ex, ok := w.Experts[g]; !ok || ex == nil {
			bad("expert %d is missing: rank %d owns experts %d..%d", g, me, first, first+el-1)
		}
	}
	ids := make([]int, 0, len(w.Experts))
	for g := range w.Experts {
		ids = append(ids, g)
	}
	sort.Ints(ids)
	for _, g := range ids {
		ex := w.Experts[g]
		if g < first || g >= first+el {
			bad("expert %d is not this rank's: rank %d owns experts %d..%d (expert e lives on rank e / (E/W))", g, me, first, first+el-1)
			continue
		}
		if ex == nil {
			continue
		}
		size := func(name string, v []float32, want int) {
			if len(v) != want {
				bad("expert %d %s has %d values, want %d", g, name, len(v), want)
			}
		}
		size("W1", ex.W1, h*in)
		size("W2", ex.W2, in*h)
		if cfg.FFN == config.FFNSwiGLU {
			size("Wu", ex.Wu, h*in)
			if ex.B1 != nil || ex.B2 != nil {
				bad("expert %d has biases: the swiglu FFN has none", g)
			}
		} else {
			size("B1", ex.B1, in)
			size("B2", ex.B2, h)
			if ex.Wu != nil {
				bad("expert %d has an up projection Wu: only the swiglu FFN has one (ffn is %s)", g, cfg.FFN)
			}
		}
	}
	return errors.Join(errs...)
}

func clone(v []float32) []float32 {
	if v == nil {
		return nil
	}
	return append([]float32(nil), v...)
}

// Forward implements backend.Backend.
func (b *Backend) Forward(cfg config.Layer, x []float32) (backend.Timing, error) {
	if !b.ready || !sameWeights(b.cfg, cfg) {
		return backend.Timing{}, fmt.Errorf("cpu backend: forward of %v before Prepare", cfg)
	}
	return b.run(cfg, b.cfg.MaxTokens, b.gate, b.experts, x)
}

// run checks the call and runs one forward with the given weights.
func (b *Backend) run(cfg config.Layer, maxTokens int, gate []float32, experts map[int]*datagen.Expert, x []float32) (backend.Timing, error) {
	if cfg.Tokens < 0 || cfg.Tokens > maxTokens {
		return backend.Timing{}, fmt.Errorf("cpu backend: tokens %d: must be in [0, max-tokens %d]", cfg.Tokens, maxTokens)
	}
	if len(x) != cfg.Tokens*cfg.Hidden {
		return backend.Timing{}, fmt.Errorf("cpu backend: x has %d elements, want tokens %d × hidden %d", len(x), cfg.Tokens, cfg.Hidden)
	}
	x = reference.StoredTokens(cfg, x) // bf16 mode stores its tokens as bf16
	start := time.Now()
	res, out64, put, err := b.forward(cfg, gate, experts, x)
	if err != nil {
		return backend.Timing{}, err
	}
	b.last, b.out64 = res, out64
	return backend.Timing{Elapsed: time.Since(start), SMUtil: -1, BytesPut: put}, nil
}

// row is one routed (token, slot) pair on its way to an expert and back.
const metaWords = 2 // per row: return slot t*k+j, global expert id

func (b *Backend) forward(c config.Layer, gate []float32, experts map[int]*datagen.Expert, x []float32) (*backend.Result, []float64, int64, error) {
	w, me := b.comm.Size(), b.comm.Rank()
	t, h, k := c.Tokens, c.Hidden, c.TopK

	// Gate and routing, exactly as the reference does it.
	res := &backend.Result{
		Out:     make([]float32, t*h),
		TopKIdx: make([]int32, t*k),
		TopKW:   make([]float32, t*k),
		Logits:  make([]float32, t*c.Experts),
	}
	routes := make([]reference.Route, t)
	probs := make([]float64, c.Experts)
	for i := range routes {
		row := x[i*h : (i+1)*h]
		reference.Logits(row, gate, c.Experts, probs)
		for e, v := range probs {
			res.Logits[i*c.Experts+e] = float32(v)
		}
		reference.Softmax(probs)
		ids := reference.SkewIDs(k)
		if c.Route != config.RouteSkew {
			ids = reference.TopK(probs, k)
		}
		routes[i] = reference.Route{IDs: ids, W: reference.Weights(probs, ids, c.Renormalize)}
	}
	reference.ApplyCapacity(routes, c.Experts, c.Capacity(t))

	// Dispatch: rows for each owner, with their return slot and expert.
	meta := make([][]int64, w)
	rows := make([][]byte, w)
	for i, r := range routes {
		for j, e := range r.IDs {
			res.TopKIdx[i*k+j] = int32(e)
			res.TopKW[i*k+j] = float32(r.W[j])
			if r.W[j] == 0 {
				continue // dropped by capacity: nothing travels
			}
			d := c.Owner(e, w)
			meta[d] = append(meta[d], int64(i*k+j), int64(e))
			rows[d] = appendF32(rows[d], x[i*h:(i+1)*h])
		}
	}
	var put int64
	sendMeta := make([][]byte, w)
	for d := range meta {
		sendMeta[d] = transport.I64Bytes(meta[d])
		if d != me {
			put += int64(len(rows[d]))
		}
	}
	gotMeta, err := b.comm.Alltoallv(sendMeta)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("cpu backend: dispatch metadata: %w", err)
	}
	gotRows, err := b.comm.Alltoallv(rows)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("cpu backend: dispatch rows: %w", err)
	}

	// Experts: run each received row through its expert; answer in float64
	// so that the source combines exactly what the reference would.
	back := make([][]byte, w)
	for s := range gotMeta {
		m, err := transport.BytesI64(gotMeta[s])
		if err != nil {
			return nil, nil, 0, fmt.Errorf("cpu backend: metadata from rank %d: %w", s, err)
		}
		n := len(m) / metaWords
		if len(gotRows[s]) != n*h*4 {
			return nil, nil, 0, fmt.Errorf("cpu backend: rank %d sent %d row bytes for %d rows of %d", s, len(gotRows[s]), n, h)
		}
		y := make([]float64, h)
		buf := make([]byte, 0, n*(8+8*h))
		for r := range n {
			e := int(m[r*metaWords+1])
			ex, ok := experts[e]
			if !ok {
				return nil, nil, 0, fmt.Errorf("cpu backend: rank %d sent a row for expert %d, which rank %d does not own", s, e, me)
			}
			xr := readF32(gotRows[s][r*h*4 : (r+1)*h*4])
			reference.FFN(c, ex, reference.Widen(xr), y)
			buf = binary.LittleEndian.AppendUint64(buf, uint64(m[r*metaWords]))
			for _, v := range y {
				buf = binary.LittleEndian.AppendUint64(buf, math.Float64bits(v))
			}
		}
		back[s] = buf
		if s != me {
			put += int64(len(buf))
		}
	}
	gotBack, err := b.comm.Alltoallv(back)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("cpu backend: combine rows: %w", err)
	}

	// Combine in j order.
	ys := make([][]float64, t*k)
	for d, buf := range gotBack {
		stride := 8 + 8*h
		if len(buf)%stride != 0 {
			return nil, nil, 0, fmt.Errorf("cpu backend: rank %d returned %d bytes, not a multiple of %d", d, len(buf), stride)
		}
		for off := 0; off < len(buf); off += stride {
			slot := int(binary.LittleEndian.Uint64(buf[off:]))
			if slot < 0 || slot >= t*k || ys[slot] != nil {
				return nil, nil, 0, fmt.Errorf("cpu backend: rank %d returned bad or repeated slot %d", d, slot)
			}
			y := make([]float64, h)
			for i := range y {
				y[i] = math.Float64frombits(binary.LittleEndian.Uint64(buf[off+8+8*i:]))
			}
			ys[slot] = y
		}
	}
	out64 := make([]float64, t*h)
	for i, r := range routes {
		for j := range r.IDs {
			if r.W[j] != 0 && ys[i*k+j] == nil {
				return nil, nil, 0, fmt.Errorf("cpu backend: no expert output came back for token %d slot %d", i, j)
			}
		}
		reference.Combine(r.W, ys[i*k:(i+1)*k], out64[i*h:(i+1)*h])
	}
	for i, v := range out64 {
		res.Out[i] = float32(v)
	}
	return res, out64, put, nil
}

// Result implements backend.Backend.
func (b *Backend) Result() (*backend.Result, error) {
	if b.last == nil {
		return nil, fmt.Errorf("cpu backend: no forward has run")
	}
	return b.last, nil
}

// Out64 is the float64 output of the last forward, before rounding to the
// float32 of Result: the value that equals the reference bit for bit.
func (b *Backend) Out64() []float64 { return b.out64 }

// Close implements backend.Backend.
func (b *Backend) Close() error {
	b.experts, b.gate, b.layers, b.last, b.ready = nil, nil, nil, nil, false
	return nil
}

func appendF32(dst []byte, v []float32) []byte {
	for _, x := range v {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
	}
	return dst
}

func readF32(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
