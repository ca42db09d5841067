package cpubackend

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// routingProblems checks the routing a backend reported for one rank's
// forward (TopKIdx, TopKW) against the rules of DESIGN.md section 1, read
// independently of package reference's routing code:
//   - each token gets k distinct experts in [0, E);
//   - skew: experts 0..k-1 in that order; softmax: the k largest
//     probabilities, in descending order, ties to the lower index;
//   - a kept pair's weight is float32 of its probability, divided by the sum
//     of the token's k probabilities when renormalising (so a token with no
//     dropped pair has weights summing to 1 within float32 rounding);
//   - capacity: per expert, the kept pairs are exactly its first C pairs in
//     token order (C = ceil(cf·T·k/E); cf = 0 keeps all); the others weigh 0.
//
// It returns the problems found (nil when none).
func routingProblems(c config.Layer, x, gate []float32, res *backend.Result) []string {
	var probs []string
	bad := func(format string, a ...any) {
		if len(probs) < 10 {
			probs = append(probs, fmt.Sprintf(format, a...))
		}
	}
	t, h, k, e := c.Tokens, c.Hidden, c.TopK, c.Experts
	if len(res.TopKIdx) != t*k || len(res.TopKW) != t*k || len(res.Out) != t*h {
		bad("shapes: topk_idx %d, topk_w %d, out %d; want %d, %d, %d", len(res.TopKIdx), len(res.TopKW), len(res.Out), t*k, t*k, t*h)
		return probs
	}
	// Capacity: C from the formula, kept pairs counted per expert in token order.
	capacity := -1
	if c.CapacityFactor > 0 {
		capacity = int(math.Ceil(c.CapacityFactor * float64(t) * float64(k) / float64(e)))
		if capacity < 0 || capacity > t { // a huge factor: every pair fits
			capacity = t
		}
	}
	seen := make([]int, e) // pairs of each expert so far, in token order
	kept := make([]int, e)
	p := make([]float64, e)
	for i := range t {
		ids := res.TopKIdx[i*k : (i+1)*k]
		ws := res.TopKW[i*k : (i+1)*k]
		distinct := map[int32]bool{}
		for _, id := range ids {
			if id < 0 || int(id) >= e || distinct[id] {
				bad("token %d: expert ids %v are not %d distinct ids in [0, %d)", i, ids, k, e)
				return probs
			}
			distinct[id] = true
		}
		reference.Logits(x[i*h:(i+1)*h], gate, e, p)
		reference.Softmax(p)
		if c.Route == config.RouteSkew {
			for j, id := range ids {
				if int(id) != j {
					bad("token %d: skew routing chose %v, want 0..%d", i, ids, k-1)
					break
				}
			}
		} else {
			for j, id := range ids {
				if j > 0 {
					prev := ids[j-1]
					if p[id] > p[prev] || (p[id] == p[prev] && id < prev) {
						bad("token %d: ids %v not in descending probability order (ties to the lower index)", i, ids)
					}
				}
				for o := range e {
					if distinct[int32(o)] {
						continue
					}
					if p[o] > p[id] || (p[o] == p[id] && o < int(id)) {
						bad("token %d: expert %d (p=%v) was passed over for expert %d (p=%v)", i, o, p[o], id, p[id])
					}
				}
			}
		}
		var sum float64
		for _, id := range ids {
			sum += p[id]
		}
		dropped := false
		var wsum float64
		for j, id := range ids {
			want := p[id]
			if c.Renormalize {
				want /= sum
			}
			seen[id]++
			if capacity >= 0 && seen[id] > capacity {
				dropped = true
				if ws[j] != 0 {
					bad("token %d: pair (expert %d) is beyond capacity %d but weighs %v", i, id, capacity, ws[j])
				}
				continue
			}
			kept[id]++
			if ws[j] != float32(want) {
				bad("token %d slot %d: weight %v, want %v", i, j, ws[j], float32(want))
			}
			wsum += float64(ws[j])
		}
		if c.Renormalize && !dropped && math.Abs(wsum-1) > float64(k)*0x1p-24 {
			bad("token %d: renormalised weights sum to %v", i, wsum)
		}
	}
	for id, n := range kept {
		if capacity >= 0 && n > capacity {
			bad("expert %d keeps %d pairs, capacity %d", id, n, capacity)
		}
	}
	return probs
}

// propRanks runs fn on w in-process ranks with a bounded wait on every
// collective and returns each rank's error.
func propRanks(w int, fn func(c transport.Comm) error) []error {
	return transport.NewLocal(w, 20*time.Second).Run(fn) // a panic aborts the group: the peers are released
}

// TestRoutingPropertiesOfBackend runs the CPU backend on random small
// configurations (1 to 4 ranks, tokens differing per rank, capacity factors
// that drop, skew and softmax, renormalised or not) and checks the routing
// it reports against routingProblems.
func TestRoutingPropertiesOfBackend(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 17))
	cfs := []float64{0, 0.25, 0.5, 1, 1.5, 3}
	for n := range 60 {
		w := 1 + rng.IntN(4)
		c := config.Default()
		c.Experts = w * (1 + rng.IntN(4))
		c.TopK = 1 + rng.IntN(c.Experts)
		c.Hidden, c.FFNHidden = 1+rng.IntN(12), 1+rng.IntN(12)
		c.FFN = []config.FFN{config.FFNReLU, config.FFNGeLU, config.FFNSwiGLU}[rng.IntN(3)]
		c.CapacityFactor = cfs[rng.IntN(len(cfs))]
		c.Renormalize = rng.IntN(2) == 0
		c.Route = config.RouteSoftmax
		if rng.IntN(4) == 0 {
			c.Route = config.RouteSkew
		}
		c.Seed = rng.Uint64()
		tokens := make([]int, w)
		for r := range tokens {
			tokens[r] = rng.IntN(40)
		}
		c.MaxTokens = 40
		quantised := rng.IntN(3) == 0 // inputs on a coarse grid: exact ties in the gate
		errs := propRanks(w, func(comm transport.Comm) error {
			cr := c
			cr.Tokens = tokens[comm.Rank()]
			b := New(comm)
			defer b.Close()
			if err := b.Prepare(cr); err != nil {
				return err
			}
			x := datagen.Tokens(cr, comm.Rank(), cr.Tokens)
			if quantised {
				for i := range x {
					x[i] = float32(math.Round(float64(x[i]) * 2))
				}
			}
			if _, err := b.Forward(cr, x); err != nil {
				return err
			}
			res, err := b.Result()
			if err != nil {
				return err
			}
			if p := routingProblems(cr, x, datagen.Gate(cr), res); p != nil {
				return fmt.Errorf("%v", p)
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Errorf("case %d (%v, W=%d, tokens %v): rank %d: %v", n, c, w, tokens, r, err)
			}
		}
	}
}

// TestRoutingProblemsCatchesTampering: the checker itself is not vacuous.
// Each tampering of a correct result is reported.
func TestRoutingProblemsCatchesTampering(t *testing.T) {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 12, 12, 6, 5, 4, 2
	c.CapacityFactor, c.Seed = 1, 3 // C = ceil(12·2/4) = 6
	for _, tc := range []struct {
		name   string
		route  config.Route
		tamper func(idx []int32, w []float32)
	}{
		{"repeated id", config.RouteSoftmax, func(idx []int32, w []float32) { idx[1] = idx[0] }},
		{"out of range id", config.RouteSoftmax, func(idx []int32, w []float32) { idx[0] = 4 }},
		{"order swapped", config.RouteSoftmax, func(idx []int32, w []float32) { idx[0], idx[1] = idx[1], idx[0]; w[0], w[1] = w[1], w[0] }},
		{"not the top k", config.RouteSoftmax, func(idx []int32, w []float32) {
			for e := int32(0); e < 4; e++ {
				if e != idx[0] && e != idx[1] {
					idx[1] = e
					return
				}
			}
		}},
		{"weight off by one ulp", config.RouteSoftmax, func(idx []int32, w []float32) {
			w[0] = math.Nextafter32(w[0], 2)
		}},
		{"dropped pair weighs", config.RouteSkew, func(idx []int32, w []float32) { w[len(w)-1] = 0.5 }},
		{"kept pair dropped", config.RouteSkew, func(idx []int32, w []float32) { w[0] = 0 }},
		{"skew not 0..k-1", config.RouteSkew, func(idx []int32, w []float32) { idx[0], idx[1] = 1, 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := c
			cr.Route = tc.route
			errs := propRanks(1, func(comm transport.Comm) error {
				b := New(comm)
				if err := b.Prepare(cr); err != nil {
					return err
				}
				x := datagen.Tokens(cr, 0, cr.Tokens)
				if _, err := b.Forward(cr, x); err != nil {
					return err
				}
				res, _ := b.Result()
				if p := routingProblems(cr, x, datagen.Gate(cr), res); p != nil {
					return fmt.Errorf("untampered result: %v", p)
				}
				tampered := *res
				tampered.TopKIdx = append([]int32(nil), res.TopKIdx...)
				tampered.TopKW = append([]float32(nil), res.TopKW...)
				tc.tamper(tampered.TopKIdx, tampered.TopKW)
				if p := routingProblems(cr, x, datagen.Gate(cr), &tampered); p == nil {
					return fmt.Errorf("tampering not reported")
				}
				return nil
			})
			if errs[0] != nil {
				t.Fatal(errs[0])
			}
		})
	}
}
