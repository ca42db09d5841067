package rank

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// Verification is the outcome of Layer.Verify, by the rule of DESIGN.md
// section 1, item 5.
type Verification struct {
	Checked       int      // tokens checked on this rank
	RelErr        float64  // ‖out − ref‖ / ‖ref‖, the largest over ranks
	Wrong         int      // elements beyond the tolerance, summed over ranks
	RouteMismatch int      // tokens routed differently beyond the tie gap, summed over ranks
	OK            bool     // every rank passed
	Failures      []string // what failed on this rank
}

// verifyBudget bounds the float64 reference's work per Verify call; above
// it, evenly spaced tokens are checked.
const verifyBudget = 2e9

// Verify checks this rank's last forward of the layer against the float64
// reference: x and out must be what that Forward was given and produced. It
// is collective, and every rank learns whether every rank passed (OK). The
// reference needs every expert that this rank's tokens were routed to:
// weights from the seed are regenerated; caller-given weights need
// Options.KeepWeights, and the first Verify of such a layer all-gathers
// every rank's experts (each rank then holds the whole layer: meant for tests
// and small models). The error is for what kept the check from running;
// a failed check is OK false.
func (l *Layer) Verify(tokens int, x, out []float32) (Verification, error) {
	r := l.rt
	if err := r.usable("verify"); err != nil {
		return Verification{}, err
	}
	h := l.cfg.Hidden
	var local error
	switch {
	case l.source == weightsDevice:
		local = fmt.Errorf("layer %d has device weights: Verify checks host forwards", l.id)
	case l.source == weightsHost && l.kept == nil:
		local = fmt.Errorf("layer %d has caller-given weights and the runtime keeps no copy: open it with Options.KeepWeights to verify", l.id)
	case l.lastTokens < 0:
		local = fmt.Errorf("layer %d has not run a forward on the host", l.id)
	case tokens != l.lastTokens:
		local = fmt.Errorf("layer %d's last forward had %d tokens on this rank, not %d: verify right after the forward, with its x and out", l.id, l.lastTokens, tokens)
	case len(x) < tokens*h || len(out) < tokens*h:
		local = fmt.Errorf("verify of %d tokens needs x and out of %d values; x has %d, out %d", tokens, tokens*h, len(x), len(out))
	}
	if err := agree(r.comm, fmt.Sprintf("verify layer %d", l.id), fmt.Sprintf("layer %d", l.id), local); err != nil {
		return Verification{}, err
	}
	cfg := l.cfg
	cfg.Tokens = tokens
	gate := l.gate()
	var src reference.ExpertSource
	if l.source == weightsSeed {
		src = reference.CachedExperts(cfg, 1<<30)
	} else {
		if l.all == nil {
			all, err := gatherExperts(r.comm, cfg, l.kept)
			if err != nil {
				r.failed = err
				return Verification{}, fmt.Errorf("rank %d: verify layer %d: %w", r.comm.Rank(), l.id, err)
			}
			l.all = all
		}
		src = func(e int) *datagen.Expert { return l.all[e] }
	}
	rep := reference.Check(reference.CheckInput{
		Cfg: cfg, X: x[:tokens*h], Gate: gate, Expert: src, Out: out[:tokens*h], TopKIdx: l.topkIdx,
		MaxChecked: reference.SampleBudget(cfg, verifyBudget),
	})
	failed := 0.0
	if !rep.OK() {
		failed = 1
	}
	sums := []float64{failed, float64(rep.Wrong), float64(rep.RouteMismatch)}
	maxes := []float64{rep.RelErr}
	if err := r.comm.AllReduceF64(transport.Sum, sums); err != nil {
		r.failed = err
		return Verification{}, fmt.Errorf("rank %d: verify layer %d: %w", r.comm.Rank(), l.id, err)
	}
	if err := r.comm.AllReduceF64(transport.Max, maxes); err != nil {
		r.failed = err
		return Verification{}, fmt.Errorf("rank %d: verify layer %d: %w", r.comm.Rank(), l.id, err)
	}
	return Verification{
		Checked: rep.Checked, RelErr: maxes[0], Wrong: int(sums[1]), RouteMismatch: int(sums[2]),
		OK: sums[0] == 0, Failures: rep.Failures,
	}, nil
}

// gate is the layer's gate weights on the host.
func (l *Layer) gate() []float32 {
	if l.kept != nil {
		return l.kept.Gate
	}
	return datagen.Gate(l.cfg)
}

// gatherExperts all-gathers every rank's experts: each sends its own, in
// ascending id order, as float32 values.
func gatherExperts(c Comm, cfg config.Layer, w *Weights) (map[int]*datagen.Expert, error) {
	sizes := expertSizes(cfg)
	ids := make([]int, 0, len(w.Experts))
	for e := range w.Experts {
		ids = append(ids, e)
	}
	sort.Ints(ids)
	var buf []byte
	for _, e := range ids {
		ex := w.Experts[e]
		buf = binary.LittleEndian.AppendUint32(buf, uint32(e))
		for i, v := range expertParts(ex) {
			if len(v) != sizes[i] {
				return nil, fmt.Errorf("expert %d part %d has %d values, want %d", e, i, len(v), sizes[i])
			}
			for _, f := range v {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(f))
			}
		}
	}
	all, err := c.AllGather(buf)
	if err != nil {
		return nil, fmt.Errorf("gather every rank's experts: %w", err)
	}
	out := make(map[int]*datagen.Expert, cfg.Experts)
	for r, b := range all {
		for len(b) > 0 {
			if len(b) < 4 {
				return nil, fmt.Errorf("rank %d sent a truncated expert", r)
			}
			e := int(binary.LittleEndian.Uint32(b))
			b = b[4:]
			parts := make([][]float32, len(sizes))
			for i, n := range sizes {
				if len(b) < 4*n {
					return nil, fmt.Errorf("rank %d sent a truncated expert %d", r, e)
				}
				if n > 0 {
					parts[i] = make([]float32, n)
					for j := range parts[i] {
						parts[i][j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
					}
				}
				b = b[4*n:]
			}
			out[e] = &datagen.Expert{W1: parts[0], Wu: parts[1], W2: parts[2], B1: parts[3], B2: parts[4]}
		}
	}
	for e := range cfg.Experts {
		if out[e] == nil {
			return nil, errors.New("expert " + fmt.Sprint(e) + " came from no rank")
		}
	}
	return out, nil
}

// expertSizes are the value counts of W1, Wu, W2, B1, B2 for cfg.
func expertSizes(cfg config.Layer) []int {
	h, i := cfg.Hidden, cfg.FFNHidden
	if cfg.FFN == config.FFNSwiGLU {
		return []int{h * i, h * i, i * h, 0, 0}
	}
	return []int{h * i, 0, i * h, i, h}
}

func expertParts(ex *datagen.Expert) [][]float32 {
	return [][]float32{ex.W1, ex.Wu, ex.W2, ex.B1, ex.B2}
}
