// Package cpubackend runs the distributed MoE layer on CPUs: each rank routes
// its tokens, sends the routed rows to the ranks that own the chosen experts,
// the owners run the expert FFNs, the rows come back and the source combines.
// It is the bulk-synchronous layer in its simplest form and the oracle that CI
// runs under mpirun: it uses the float64 functions of package reference in
// the same order, so its output equals the reference's bit for bit.
package cpubackend

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// Backend is the CPU backend of one rank.
type Backend struct {
	comm    transport.Comm
	cfg     config.Layer // the prepared configuration
	ready   bool
	gate    []float32
	experts map[int]*datagen.Expert // owned experts by global id
	last    *backend.Result
	out64   []float64
}

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
	b.gate = datagen.Gate(cfg)
	el := cfg.ExpertsPerRank(w)
	first := b.comm.Rank() * el
	b.experts = make(map[int]*datagen.Expert, el)
	for e := first; e < first+el; e++ {
		ex := datagen.ExpertWeights(cfg, e)
		b.experts[e] = &ex
	}
	b.ready = true
	return nil
}

// Forward implements backend.Backend.
func (b *Backend) Forward(cfg config.Layer, x []float32) (backend.Timing, error) {
	if !b.ready || !sameWeights(b.cfg, cfg) {
		return backend.Timing{}, fmt.Errorf("cpu backend: forward of %v before Prepare", cfg)
	}
	if cfg.Tokens > b.cfg.MaxTokens {
		return backend.Timing{}, fmt.Errorf("cpu backend: tokens %d exceeds max-tokens %d", cfg.Tokens, b.cfg.MaxTokens)
	}
	if len(x) != cfg.Tokens*cfg.Hidden {
		return backend.Timing{}, fmt.Errorf("cpu backend: x has %d elements, want tokens %d × hidden %d", len(x), cfg.Tokens, cfg.Hidden)
	}
	start := time.Now()
	res, out64, put, err := b.forward(cfg, x)
	if err != nil {
		return backend.Timing{}, err
	}
	b.last, b.out64 = res, out64
	return backend.Timing{Elapsed: time.Since(start), SMUtil: -1, BytesPut: put}, nil
}

// row is one routed (token, slot) pair on its way to an expert and back.
const metaWords = 2 // per row: return slot t*k+j, global expert id

func (b *Backend) forward(c config.Layer, x []float32) (*backend.Result, []float64, int64, error) {
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
		reference.Logits(row, b.gate, c.Experts, probs)
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
			ex, ok := b.experts[e]
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
	b.experts, b.gate, b.last, b.ready = nil, nil, nil, false
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
