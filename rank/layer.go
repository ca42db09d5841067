package rank

import (
	"fmt"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/datagen"
)

// Layer is one MoE layer of a runtime, with its own weights. Forwards of
// different layers may interleave in any order, the same on every rank.
type Layer struct {
	rt     *Runtime
	id     int
	cfg    config.Layer
	source string // weightsSeed, weightsHost or weightsDevice

	kept *backend.Weights        // the caller's weights, with Options.KeepWeights
	all  map[int]*datagen.Expert // every expert, gathered by the first Verify

	lastTokens int // tokens of the last forward; -1 before the first
	topkIdx    []int32
	topkW      []float32
	stats      Stats
}

// Where a layer's weights came from.
const (
	weightsSeed   = "seed"
	weightsHost   = "host"
	weightsDevice = "device"
)

// AddLayer adds a layer with weights w in host memory: the gate and the
// experts this rank owns (Owned), in the layouts of Weights; w nil generates
// them from cfg.Seed as `moerun bench` does. The backend keeps its own copy:
// the caller may reuse w's slices afterwards. cfg must fit the runtime's
// shape (see Open); cfg.MaxTokens 0 takes the shape's and cfg.Tokens is
// ignored. Collective: every rank adds the same layers in the same order,
// and a problem on any rank (weights of the wrong size, say) is an error on
// every rank.
func (r *Runtime) AddLayer(cfg Config, w *Weights) (*Layer, error) {
	if err := r.usable("add layer"); err != nil {
		return nil, err
	}
	cfg, err := r.layerConfig(cfg)
	source := weightsSeed
	if w != nil {
		source = weightsHost
	}
	id := len(r.layers)
	lb, multi := r.b.(backend.Layers)
	if err == nil && w != nil {
		err = cpubackend.CheckWeights(cfg, w, r.comm.Rank(), r.comm.Size())
		// From here the layer's weights are the values its dtype stores
		// (bf16 matrices in bf16 mode), for the backend and for Verify.
		w = backend.StoredWeights(cfg, w)
	}
	if err == nil && !multi {
		switch {
		case w != nil:
			err = fmt.Errorf("caller-given weights are %w by the %s backend yet (it generates one layer's weights from the seed)", ErrNotSupported, r.b.Name())
		case id > 0:
			err = fmt.Errorf("a second layer is %w by the %s backend yet (it holds one layer)", ErrNotSupported, r.b.Name())
		}
	}
	desc := fmt.Sprintf("layer %d: %s, %s weights", id, describe(cfg), source)
	if err := agree(r.comm, fmt.Sprintf("add layer %d", id), desc, err); err != nil {
		return nil, err
	}
	if multi {
		err = lb.PrepareLayer(id, cfg, w)
	} else {
		err = r.b.Prepare(cfg)
	}
	if err := agree(r.comm, fmt.Sprintf("prepare layer %d", id), desc, err); err != nil {
		return nil, err
	}
	l := &Layer{rt: r, id: id, cfg: cfg, source: source, lastTokens: -1}
	if w != nil && r.opts.KeepWeights {
		l.kept = copyWeights(w)
	}
	r.layers = append(r.layers, l)
	return l, nil
}

// layerConfig fills in and checks a layer's configuration against the
// runtime's shape.
func (r *Runtime) layerConfig(cfg config.Layer) (config.Layer, error) {
	cfg.Tokens = 0
	if cfg.MaxTokens == 0 {
		cfg.MaxTokens = r.shape.MaxTokens
	}
	if err := cfg.Validate(r.comm.Size()); err != nil {
		return cfg, err
	}
	diff := cfg.MisfitsShape(r.shape.Static(), "the runtime's")
	if len(diff) > 0 {
		return cfg, fmt.Errorf("the layer does not fit the runtime's shape: %v; open the runtime with a shape that fits every layer", diff)
	}
	return cfg, nil
}

func copyWeights(w *Weights) *Weights {
	c := &Weights{Gate: append([]float32(nil), w.Gate...), Experts: make(map[int]*datagen.Expert, len(w.Experts))}
	cp := func(v []float32) []float32 {
		if v == nil {
			return nil
		}
		return append([]float32(nil), v...)
	}
	for e, ex := range w.Experts {
		c.Experts[e] = &datagen.Expert{W1: cp(ex.W1), B1: cp(ex.B1), W2: cp(ex.W2), B2: cp(ex.B2), Wu: cp(ex.Wu)}
	}
	return c
}

// ID is the layer's index in the order of AddLayer, from 0.
func (l *Layer) ID() int { return l.id }

// Config is the layer's configuration (Tokens 0).
func (l *Layer) Config() Config { return l.cfg }

// Stats are this layer's counters on this rank.
func (l *Layer) Stats() Stats { return l.stats }

// Forward runs the layer on this rank's tokens x [tokens, H] into out
// [tokens, H], both row-major in host memory and owned by the caller (they
// may be longer; the first tokens·H elements are used). tokens may differ
// between ranks and calls, from 0 to the layer's MaxTokens. Collective. It
// returns when out holds the result; nothing keeps x or out afterwards.
func (l *Layer) Forward(tokens int, x, out []float32) error {
	r := l.rt
	if err := r.usable("forward"); err != nil {
		return err
	}
	h := l.cfg.Hidden
	if tokens < 0 || tokens > l.cfg.MaxTokens {
		return fmt.Errorf("rank %d: layer %d: forward of %d tokens: must be in [0, max-tokens %d]", r.comm.Rank(), l.id, tokens, l.cfg.MaxTokens)
	}
	n := tokens * h
	if len(x) < n || len(out) < n {
		return fmt.Errorf("rank %d: layer %d: forward of %d tokens needs x and out of %d × hidden %d = %d values; x has %d, out %d",
			r.comm.Rank(), l.id, tokens, tokens, h, n, len(x), len(out))
	}
	if l.source == weightsDevice {
		return fmt.Errorf("rank %d: layer %d has device weights: run it with ForwardDevice", r.comm.Rank(), l.id)
	}
	cfg := l.cfg
	cfg.Tokens = tokens
	var t backend.Timing
	var err error
	if lb, ok := r.b.(backend.Layers); ok {
		t, err = lb.ForwardLayer(l.id, cfg, x[:n])
	} else {
		t, err = r.b.Forward(cfg, x[:n])
	}
	if err != nil {
		r.fail(err)
		return fmt.Errorf("rank %d: layer %d: forward: %w", r.comm.Rank(), l.id, err)
	}
	res, err := r.b.Result()
	if err != nil {
		r.failed = err
		return fmt.Errorf("rank %d: layer %d: read result: %w", r.comm.Rank(), l.id, err)
	}
	if len(res.Out) != n || len(res.TopKIdx) != tokens*cfg.TopK {
		err = fmt.Errorf("the backend returned %d outputs and %d routing ids for %d tokens", len(res.Out), len(res.TopKIdx), tokens)
		r.failed = err
		return fmt.Errorf("rank %d: layer %d: %w", r.comm.Rank(), l.id, err)
	}
	copy(out, res.Out)
	l.topkIdx = append(l.topkIdx[:0], res.TopKIdx...)
	l.topkW = append(l.topkW[:0], res.TopKW...)
	l.lastTokens = tokens
	l.stats.add(Stats{Forwards: 1, Tokens: int64(tokens), Elapsed: t.Elapsed, BytesPut: t.BytesPut})
	return nil
}

// Routing returns the last forward's routing on this rank: for each token
// the k global expert ids in combine order [tokens, k], and their combine
// weights (0 for a pair dropped by capacity). The slices are the layer's:
// copy them to keep them past the next forward.
func (l *Layer) Routing() (ids []int32, weights []float32) { return l.topkIdx, l.topkW }
