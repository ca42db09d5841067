package reference

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// The checks below state the routing rules of DESIGN.md section 1 as
// properties, each written without calling the function it checks except
// for its result. They return "" when the property holds.

// topKProblem: TopK(p, k) gives k distinct ids in [0, E), in descending
// probability, ties to the lower index, and no id left out beats one taken.
func topKProblem(p []float64, k int, ids []int) string {
	if len(ids) != k {
		return fmt.Sprintf("TopK gave %d ids, want %d", len(ids), k)
	}
	taken := map[int]bool{}
	for _, id := range ids {
		if id < 0 || id >= len(p) || taken[id] {
			return fmt.Sprintf("ids %v are not %d distinct ids in [0, %d)", ids, k, len(p))
		}
		taken[id] = true
	}
	before := func(a, b int) bool { return p[a] > p[b] || (p[a] == p[b] && a < b) } // a ranks before b
	for j := 1; j < k; j++ {
		if !before(ids[j-1], ids[j]) {
			return fmt.Sprintf("ids %v (p %v) are not in descending order, ties to the lower index", ids, pick(p, ids))
		}
	}
	for e := range p {
		if !taken[e] && before(e, ids[k-1]) {
			return fmt.Sprintf("expert %d (p=%v) was left out for expert %d (p=%v)", e, p[e], ids[k-1], p[ids[k-1]])
		}
	}
	return ""
}

// gapProblem: Gap(p, k) is the k-th largest probability minus the (k+1)-th,
// so it is >= 0; +Inf when k = E.
func gapProblem(p []float64, k int, gap float64) string {
	if k >= len(p) {
		if !math.IsInf(gap, 1) {
			return fmt.Sprintf("Gap with k = E = %d is %v, want +Inf", k, gap)
		}
		return ""
	}
	// The k-th largest is the largest value v with at least k values >= v.
	kth, next := math.Inf(-1), math.Inf(-1)
	for _, v := range p {
		ge := 0
		for _, u := range p {
			if u >= v {
				ge++
			}
		}
		if ge >= k && v > kth {
			kth = v
		}
		if ge >= k+1 && v > next {
			next = v
		}
	}
	if gap != kth-next || gap < 0 {
		return fmt.Sprintf("Gap(k=%d) = %v, want %v - %v = %v", k, gap, kth, next, kth-next)
	}
	return ""
}

// weightsProblem: renormalised weights sum to 1 within 1e-12 and are
// proportional to the probabilities; raw weights are the probabilities.
func weightsProblem(p []float64, ids []int, renorm bool, w []float64) string {
	if len(w) != len(ids) {
		return fmt.Sprintf("%d weights for %d ids", len(w), len(ids))
	}
	var sum, psum float64
	for j, id := range ids {
		sum += w[j]
		psum += p[id]
		if !renorm && math.Float64bits(w[j]) != math.Float64bits(p[id]) {
			return fmt.Sprintf("raw weight %d is %v, want the probability %v", j, w[j], p[id])
		}
		if renorm && psum > 0 && w[j] < 0 {
			return fmt.Sprintf("negative weight %v", w[j])
		}
	}
	if renorm && psum > 0 && !math.IsInf(psum, 1) { // (an overflowing sum is no distribution)
		if math.Abs(sum-1) > 1e-12 {
			return fmt.Sprintf("renormalised weights %v sum to %v", w, sum)
		}
		for j, id := range ids {
			if math.Abs(w[j]-p[id]/psum) > 1e-15 {
				return fmt.Sprintf("weight %d is %v, want p/sum %v", j, w[j], p[id]/psum)
			}
		}
	}
	return ""
}

// capacityProblem compares routes after ApplyCapacity with before (a deep
// copy): with capacity C >= 0 each expert keeps exactly its first C pairs in
// token order, unchanged, and the rest weigh 0; C < 0 changes nothing. The
// returned count is the number of pairs dropped.
func capacityProblem(before, after []Route, experts, capacity, dropped int) string {
	seen := make([]int, experts)
	want := 0
	for t := range before {
		for j, e := range before[t].IDs {
			if after[t].IDs[j] != e {
				return fmt.Sprintf("token %d: ids changed from %v to %v", t, before[t].IDs, after[t].IDs)
			}
			seen[e]++
			w0, w1 := before[t].W[j], after[t].W[j]
			if capacity >= 0 && seen[e] > capacity {
				want++
				if w1 != 0 {
					return fmt.Sprintf("token %d: pair %d of expert %d is beyond capacity %d but weighs %v", t, seen[e], e, capacity, w1)
				}
			} else if math.Float64bits(w0) != math.Float64bits(w1) {
				return fmt.Sprintf("token %d: kept pair of expert %d changed weight %v -> %v", t, e, w0, w1)
			}
		}
	}
	if dropped != want {
		return fmt.Sprintf("ApplyCapacity says %d dropped, want %d", dropped, want)
	}
	return ""
}

func pick(p []float64, ids []int) []float64 {
	out := make([]float64, len(ids))
	for j, id := range ids {
		out[j] = p[id]
	}
	return out
}

func copyRoutes(r []Route) []Route {
	out := make([]Route, len(r))
	for i := range r {
		out[i] = Route{IDs: append([]int(nil), r[i].IDs...), W: append([]float64(nil), r[i].W...)}
	}
	return out
}

// randomProbs is a probability vector; coarse draws many exact ties.
func randomProbs(rng *rand.Rand, e int, coarse bool) []float64 {
	p := make([]float64, e)
	for i := range p {
		if coarse {
			p[i] = float64(rng.IntN(4))
		} else {
			p[i] = rng.NormFloat64() * 3
		}
	}
	if coarse {
		var s float64
		for _, v := range p {
			s += v
		}
		if s == 0 {
			return p // all zero: ties everywhere, weights undefined
		}
		for i := range p {
			p[i] /= s
		}
		return p
	}
	Softmax(p)
	return p
}

func TestRoutingProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	for n := range 3000 {
		e := 1 + rng.IntN(40)
		k := 1 + rng.IntN(e)
		p := randomProbs(rng, e, n%3 == 0)
		ids := TopK(p, k)
		if msg := topKProblem(p, k, ids); msg != "" {
			t.Fatalf("p %v k %d: %s", p, k, msg)
		}
		if msg := gapProblem(p, k, Gap(p, k)); msg != "" {
			t.Fatalf("p %v: %s", p, msg)
		}
		for _, renorm := range []bool{false, true} {
			if msg := weightsProblem(p, ids, renorm, Weights(p, ids, renorm)); msg != "" {
				t.Fatalf("p %v ids %v renorm %v: %s", p, ids, renorm, msg)
			}
		}
	}
}

// randomRoutes is T tokens' routing: k distinct experts each, weights drawn
// at random (some exactly 0, as a probability can underflow).
func randomRoutes(rng *rand.Rand, tokens, experts, k int, skew bool) []Route {
	routes := make([]Route, tokens)
	for t := range routes {
		ids := rng.Perm(experts)[:k]
		if skew {
			ids = SkewIDs(k)
		}
		w := make([]float64, k)
		for j := range w {
			if rng.IntN(10) > 0 {
				w[j] = rng.Float64()
			}
		}
		routes[t] = Route{IDs: ids, W: w}
	}
	return routes
}

func TestApplyCapacityProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	for range 2000 {
		e := 1 + rng.IntN(12)
		k := 1 + rng.IntN(e)
		tokens := rng.IntN(50)
		capacity := rng.IntN(tokens+2) - 1 // -1 (dropless) .. T
		before := randomRoutes(rng, tokens, e, k, rng.IntN(5) == 0)
		after := copyRoutes(before)
		dropped := ApplyCapacity(after, e, capacity)
		if msg := capacityProblem(before, after, e, capacity, dropped); msg != "" {
			t.Fatalf("T %d E %d k %d C %d: %s", tokens, e, k, capacity, msg)
		}
	}
}

// TestCapacityFromFactorNeverExceeded: with C = Layer.Capacity(T) from the
// capacity factor, no expert keeps more than C pairs from one source, and C
// is ceil(cf·T·k/E) (so at least cf·T·k/E pairs fit).
func TestCapacityFromFactorNeverExceeded(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	for range 1000 {
		c := config.Default()
		c.Experts = 1 + rng.IntN(16)
		c.TopK = 1 + rng.IntN(c.Experts)
		c.Tokens = rng.IntN(100)
		c.CapacityFactor = []float64{0, 0.01, 0.5, 1, 1.25, 2, 7}[rng.IntN(7)]
		capacity := c.Capacity(c.Tokens)
		exact := c.CapacityFactor * float64(c.Tokens) * float64(c.TopK) / float64(c.Experts)
		switch {
		case c.CapacityFactor == 0 && capacity != -1:
			t.Fatalf("%v: dropless capacity is %d, want -1", c, capacity)
		case c.CapacityFactor > 0 && (float64(capacity) < math.Min(exact, float64(c.Tokens)) || float64(capacity-1) >= exact):
			t.Fatalf("%v: capacity %d is not ceil(%v)", c, capacity, exact)
		}
		routes := randomRoutes(rng, c.Tokens, c.Experts, c.TopK, rng.IntN(4) == 0)
		ApplyCapacity(routes, c.Experts, capacity)
		kept := make([]int, c.Experts)
		for _, r := range routes {
			for j, e := range r.IDs {
				if r.W[j] != 0 {
					kept[e]++
				}
			}
		}
		for e, n := range kept {
			if capacity >= 0 && n > capacity {
				t.Fatalf("%v: expert %d keeps %d pairs, capacity %d", c, e, n, capacity)
			}
		}
	}
}

// TestRouteTokenProperties: a token's probabilities are a distribution
// (each in [0, 1], sum 1 within 1e-12); skew picks experts 0..k-1 in order,
// softmax the top k of those probabilities; the weights are Weights of them.
func TestRouteTokenProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for n := range 500 {
		c := config.Default()
		c.Hidden = 1 + rng.IntN(32)
		c.Experts = 1 + rng.IntN(24)
		c.TopK = 1 + rng.IntN(c.Experts)
		c.Renormalize = n%2 == 0
		c.Route = config.RouteSoftmax
		if n%3 == 0 {
			c.Route = config.RouteSkew
		}
		x := make([]float32, c.Hidden)
		gate := make([]float32, c.Hidden*c.Experts)
		coarse := n%4 == 0
		for i := range x {
			x[i] = float32(rng.NormFloat64())
			if coarse {
				x[i] = float32(rng.IntN(3) - 1)
			}
		}
		for i := range gate {
			gate[i] = float32(rng.NormFloat64())
			if coarse {
				gate[i] = float32(rng.IntN(3) - 1)
			}
		}
		probs, r := RouteToken(c, x, gate)
		var s float64
		for _, v := range probs {
			if !(v >= 0 && v <= 1) {
				t.Fatalf("%v: probability %v out of [0, 1]", c, v)
			}
			s += v
		}
		if math.Abs(s-1) > 1e-12 {
			t.Fatalf("%v: probabilities sum to %v", c, s)
		}
		if c.Route == config.RouteSkew {
			for j, id := range r.IDs {
				if id != j || len(r.IDs) != c.TopK {
					t.Fatalf("%v: skew picked %v, want 0..%d", c, r.IDs, c.TopK-1)
				}
			}
		} else if msg := topKProblem(probs, c.TopK, r.IDs); msg != "" {
			t.Fatalf("%v: %s", c, msg)
		}
		if msg := weightsProblem(probs, r.IDs, c.Renormalize, r.W); msg != "" {
			t.Fatalf("%v: %s", c, msg)
		}
	}
}

// TestSkewIDs: skew picks 0..k-1 for every k.
func TestSkewIDs(t *testing.T) {
	for k := 1; k <= 64; k++ {
		ids := SkewIDs(k)
		if len(ids) != k {
			t.Fatalf("SkewIDs(%d) has %d ids", k, len(ids))
		}
		for j, id := range ids {
			if id != j {
				t.Fatalf("SkewIDs(%d) = %v", k, ids)
			}
		}
	}
}

// TestCheckPassesOutputsBelowFloat32Range: an output that is float32 of the
// reference exactly must pass verification even when every value lies
// below float32's normal range (here expert 0's probability is 5e-48 for
// every token: --route skew --no-renorm with extreme inputs, found by
// FuzzCPUBackend).
func TestCheckPassesOutputsBelowFloat32Range(t *testing.T) {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 7, 7, 7, 5, 2, 1
	c.FFN, c.CapacityFactor, c.Renormalize, c.Route, c.Seed = config.FFNGeLU, 54, false, config.RouteSkew, 143
	x := make([]float32, c.Tokens*c.Hidden)
	for i := range x {
		x[i] = -127.0 / 16
	}
	gate, experts := datagen.Gate(c), CachedExperts(c, 1<<30)
	ref, routes := Forward(c, x, gate, experts)
	out := make([]float32, len(ref))
	idx := make([]int32, c.Tokens*c.TopK)
	for i, v := range ref {
		out[i] = float32(v)
		if math.Abs(v) >= 0x1p-126 {
			t.Fatalf("reference value %v is in float32's normal range: the case lost its point", v)
		}
	}
	for i, r := range routes {
		for j, e := range r.IDs {
			idx[i*c.TopK+j] = int32(e)
		}
	}
	rep := Check(CheckInput{Cfg: c, X: x, Gate: gate, Expert: experts, Out: out, TopKIdx: idx})
	if !rep.OK() {
		t.Errorf("float32 of the reference fails verification when the reference lies below float32's range (for example %v): %v",
			ref[0], rep.Failures)
	}
}
