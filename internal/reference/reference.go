// Package reference is the float64 definition of the MoE layer (DESIGN.md
// section 1): gate, top-k routing, capacity dropping, the expert FFNs and the
// combine. Every backend is checked against it, and the CPU backend is built
// from the same functions, so that it agrees with it bit for bit.
package reference

import (
	"math"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// Logits computes one token's gate logits x·Wg in float64, summing over the
// hidden dimension in index order. x is [H], gate is [H, E].
func Logits(x []float32, gate []float32, experts int, dst []float64) {
	for e := range dst[:experts] {
		dst[e] = 0
	}
	for h, xv := range x {
		xh := float64(xv)
		row := gate[h*experts : (h+1)*experts]
		for e, g := range row {
			dst[e] += xh * float64(g)
		}
	}
}

// Softmax overwrites logits with their softmax (max-subtracted for range).
func Softmax(v []float64) {
	m := math.Inf(-1)
	for _, x := range v {
		m = math.Max(m, x)
	}
	var s float64
	for i, x := range v {
		v[i] = math.Exp(x - m)
		s += v[i]
	}
	for i := range v {
		v[i] /= s
	}
}

// TopK returns the k indices of the largest probabilities in descending
// order, ties going to the lower index. Selection is by repeated scans, which
// is exact and fast for the expert counts in use (E <= a few hundred).
func TopK(p []float64, k int) []int {
	ids := make([]int, 0, k)
	taken := make([]bool, len(p))
	for range k {
		best := -1
		for e, v := range p {
			if taken[e] {
				continue
			}
			if best < 0 || v > p[best] { // strict: an equal value keeps the lower index
				best = e
			}
		}
		taken[best] = true
		ids = append(ids, best)
	}
	return ids
}

// Gap is the margin between the k-th and (k+1)-th largest probability: how
// far the top-k choice is from a tie. It is +Inf when k equals E.
func Gap(p []float64, k int) float64 {
	if k >= len(p) {
		return math.Inf(1)
	}
	s := append([]float64(nil), p...)
	// partial selection sort of the k+1 largest
	for i := 0; i <= k; i++ {
		b := i
		for j := i + 1; j < len(s); j++ {
			if s[j] > s[b] {
				b = j
			}
		}
		s[i], s[b] = s[b], s[i]
	}
	return s[k-1] - s[k]
}

// Route is one token's routing: global expert ids in combine order and their
// combine weights.
type Route struct {
	IDs []int
	W   []float64
}

// Weights returns the combine weights for the chosen ids from the token's
// probabilities: renormalised to sum 1, or the raw probabilities.
func Weights(p []float64, ids []int, renorm bool) []float64 {
	w := make([]float64, len(ids))
	var s float64
	for j, e := range ids {
		w[j] = p[e]
		s += p[e]
	}
	if renorm && s > 0 {
		for j := range w {
			w[j] /= s
		}
	}
	return w
}

// SkewIDs are the experts every token picks under --route skew: 0..k-1.
func SkewIDs(k int) []int {
	ids := make([]int, k)
	for j := range ids {
		ids[j] = j
	}
	return ids
}

// RouteToken computes one token's gate probabilities and its routing.
func RouteToken(c config.Layer, x, gate []float32) (probs []float64, r Route) {
	probs = make([]float64, c.Experts)
	Logits(x, gate, c.Experts, probs)
	Softmax(probs)
	if c.Route == config.RouteSkew {
		r.IDs = SkewIDs(c.TopK)
	} else {
		r.IDs = TopK(probs, c.TopK)
	}
	r.W = Weights(probs, r.IDs, c.Renormalize)
	return probs, r
}

// ApplyCapacity zeroes the weights of the (token, expert) pairs that one
// source rank cannot send: each expert takes the first capacity pairs in
// token order. Other weights are not renormalised. capacity < 0 is dropless.
// It returns the number of dropped pairs.
func ApplyCapacity(routes []Route, experts, capacity int) int {
	if capacity < 0 {
		return 0
	}
	used := make([]int, experts)
	dropped := 0
	for t := range routes {
		for j, e := range routes[t].IDs {
			if used[e] >= capacity {
				routes[t].W[j] = 0
				dropped++
				continue
			}
			used[e]++
		}
	}
	return dropped
}

// FFN computes one expert's output for one token in float64, into out [H].
// Sums run in index order; biases are added after the sum.
func FFN(c config.Layer, ex *datagen.Expert, x []float64, out []float64) {
	h, inner := c.Hidden, c.FFNHidden
	act := make([]float64, inner)
	switch c.FFN {
	case config.FFNSwiGLU:
		up := make([]float64, inner)
		for i := range h {
			xi := x[i]
			g, u := ex.W1[i*inner:(i+1)*inner], ex.Wu[i*inner:(i+1)*inner]
			for j := range inner {
				act[j] += xi * float64(g[j])
				up[j] += xi * float64(u[j])
			}
		}
		for j := range act {
			act[j] = silu(act[j]) * up[j]
		}
	default:
		for i := range h {
			xi := x[i]
			w := ex.W1[i*inner : (i+1)*inner]
			for j := range inner {
				act[j] += xi * float64(w[j])
			}
		}
		for j := range act {
			v := act[j] + float64(ex.B1[j])
			if c.FFN == config.FFNGeLU {
				act[j] = gelu(v)
			} else {
				act[j] = math.Max(v, 0)
			}
		}
	}
	for i := range out[:h] {
		out[i] = 0
	}
	for j, a := range act {
		w := ex.W2[j*h : (j+1)*h]
		for i := range h {
			out[i] += a * float64(w[i])
		}
	}
	if ex.B2 != nil {
		for i := range out[:h] {
			out[i] += float64(ex.B2[i])
		}
	}
}

func silu(x float64) float64 { return x / (1 + math.Exp(-x)) }

// gelu is the tanh form: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))).
func gelu(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

// Combine adds the weighted expert outputs of one token in j order:
// out = Σ_j w[j]·y[j]. Pairs with weight 0 (dropped) are skipped, so that a
// dropped pair needs no expert output.
func Combine(w []float64, ys [][]float64, out []float64) {
	for i := range out {
		out[i] = 0
	}
	for j, wj := range w {
		if wj == 0 {
			continue
		}
		for i, v := range ys[j] {
			out[i] += wj * v
		}
	}
}

// StoredTokens returns tokens x as a layer of c's dtype stores them: rounded
// to bf16 in bf16 mode (DESIGN.md section 1: the reference computes from the
// rounded values), x itself otherwise or when they are bf16 values already.
func StoredTokens(c config.Layer, x []float32) []float32 {
	if c.DType != config.BF16 {
		return x
	}
	return datagen.RoundedBF16(x)
}

// Widen converts a float32 row to float64.
func Widen(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

// ExpertSource returns a global expert's weights; callers cache or
// regenerate as suits them.
type ExpertSource func(e int) *datagen.Expert

// Forward is the whole layer for one rank's tokens x [T, H]: routing with
// capacity, the experts and the combine, all in float64. It returns the
// output [T, H] and the routing used.
func Forward(c config.Layer, x, gate []float32, expert ExpertSource) ([]float64, []Route) {
	x = StoredTokens(c, x)
	t, h := len(x)/c.Hidden, c.Hidden
	routes := make([]Route, t)
	for i := range routes {
		_, routes[i] = RouteToken(c, x[i*h:(i+1)*h], gate)
	}
	ApplyCapacity(routes, c.Experts, c.Capacity(t))
	out := make([]float64, t*h)
	ys := make([][]float64, c.TopK)
	for i := range routes {
		xi := Widen(x[i*h : (i+1)*h])
		for j, e := range routes[i].IDs {
			ys[j] = nil
			if routes[i].W[j] == 0 {
				continue
			}
			ys[j] = make([]float64, h)
			FFN(c, expert(e), xi, ys[j])
		}
		Combine(routes[i].W, ys, out[i*h:(i+1)*h])
	}
	return out, routes
}
