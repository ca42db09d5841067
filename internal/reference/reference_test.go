package reference

import (
	"math"
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

func TestTopKTiesGoToLowerIndex(t *testing.T) {
	for _, tc := range []struct {
		p    []float64
		k    int
		want []int
	}{
		{[]float64{0.1, 0.4, 0.4, 0.1}, 1, []int{1}},
		{[]float64{0.1, 0.4, 0.4, 0.1}, 2, []int{1, 2}},
		{[]float64{0.25, 0.25, 0.25, 0.25}, 3, []int{0, 1, 2}},
		{[]float64{0.1, 0.2, 0.3, 0.4}, 2, []int{3, 2}},
		{[]float64{0.5, 0.1, 0.3, 0.1}, 4, []int{0, 2, 1, 3}},
	} {
		got := TopK(tc.p, tc.k)
		if !equalInts(got, tc.want) {
			t.Errorf("TopK(%v, %d) = %v, want %v", tc.p, tc.k, got, tc.want)
		}
	}
}

func TestGapIsMarginBetweenKthAndNext(t *testing.T) {
	p := []float64{0.1, 0.45, 0.3, 0.15}
	if g := Gap(p, 1); math.Abs(g-0.15) > 1e-15 {
		t.Errorf("Gap k=1 = %v, want 0.15", g)
	}
	if g := Gap(p, 2); math.Abs(g-0.15) > 1e-15 {
		t.Errorf("Gap k=2 = %v, want 0.15", g)
	}
	if g := Gap(p, 4); !math.IsInf(g, 1) {
		t.Errorf("Gap k=E = %v, want +Inf", g)
	}
}

func TestSoftmaxByHand(t *testing.T) {
	v := []float64{0, math.Log(3)}
	Softmax(v)
	if math.Abs(v[0]-0.25) > 1e-15 || math.Abs(v[1]-0.75) > 1e-15 {
		t.Errorf("softmax(0, ln 3) = %v, want (0.25, 0.75)", v)
	}
}

func TestWeightsRenormaliseOrNot(t *testing.T) {
	p := []float64{0.1, 0.3, 0.6}
	w := Weights(p, []int{2, 1}, true)
	if math.Abs(w[0]-2.0/3) > 1e-15 || math.Abs(w[1]-1.0/3) > 1e-15 {
		t.Errorf("renormalised = %v, want (2/3, 1/3)", w)
	}
	w = Weights(p, []int{2, 1}, false)
	if w[0] != 0.6 || w[1] != 0.3 {
		t.Errorf("raw = %v, want (0.6, 0.3)", w)
	}
}

func TestCapacityDropsInTokenOrder(t *testing.T) {
	// Three tokens all pick expert 1 first and expert 0 second; capacity 2.
	routes := []Route{
		{IDs: []int{1, 0}, W: []float64{0.7, 0.3}},
		{IDs: []int{1, 2}, W: []float64{0.6, 0.4}},
		{IDs: []int{1, 0}, W: []float64{0.8, 0.2}},
	}
	if n := ApplyCapacity(routes, 3, 2); n != 1 {
		t.Fatalf("dropped %d pairs, want 1", n)
	}
	// Token 2's pair with expert 1 is the third for expert 1: dropped, and
	// its other weight is NOT renormalised.
	if routes[2].W[0] != 0 || routes[2].W[1] != 0.2 {
		t.Errorf("token 2 weights = %v, want (0, 0.2)", routes[2].W)
	}
	if routes[0].W[0] != 0.7 || routes[1].W[0] != 0.6 {
		t.Errorf("earlier tokens lost weight: %v %v", routes[0].W, routes[1].W)
	}
	if ApplyCapacity(routes, 3, -1) != 0 {
		t.Errorf("dropless capacity dropped pairs")
	}
}

func TestCapacityFormula(t *testing.T) {
	c := config.Default()
	c.Experts, c.TopK, c.CapacityFactor = 8, 2, 1
	if got := c.Capacity(37); got != 10 { // ceil(37*2/8) = ceil(9.25)
		t.Errorf("Capacity(37) = %d, want 10", got)
	}
	c.CapacityFactor = 0
	if got := c.Capacity(37); got != -1 {
		t.Errorf("dropless Capacity = %d, want -1", got)
	}
}

// tinyExpert is a hand-checkable expert with H = 2, I = 2.
func tinyExpert() *datagen.Expert {
	return &datagen.Expert{
		W1: []float32{1, -1, 2, 0.5}, // [H=2, I=2]
		B1: []float32{0.5, -1},
		W2: []float32{1, 2, -1, 1}, // [I=2, H=2]
		B2: []float32{0.25, 0},
		Wu: []float32{1, 0, 0, 1},
	}
}

func TestFFNReLUByHand(t *testing.T) {
	c := config.Layer{Hidden: 2, FFNHidden: 2, FFN: config.FFNReLU}
	// x = (1, 2): x·W1 = (1+4, -1+1) = (5, 0); +b1 = (5.5, -1); relu = (5.5, 0)
	// ·W2 = (5.5, 11); +b2 = (5.75, 11)
	out := make([]float64, 2)
	FFN(c, tinyExpert(), []float64{1, 2}, out)
	if out[0] != 5.75 || out[1] != 11 {
		t.Errorf("relu FFN = %v, want (5.75, 11)", out)
	}
}

func TestFFNGeLUByHand(t *testing.T) {
	c := config.Layer{Hidden: 2, FFNHidden: 2, FFN: config.FFNGeLU}
	out := make([]float64, 2)
	FFN(c, tinyExpert(), []float64{1, 2}, out)
	g := func(x float64) float64 {
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	}
	a0, a1 := g(5.5), g(-1)
	want := []float64{a0*1 + a1*-1 + 0.25, a0*2 + a1*1}
	if math.Abs(out[0]-want[0]) > 1e-12 || math.Abs(out[1]-want[1]) > 1e-12 {
		t.Errorf("gelu FFN = %v, want %v", out, want)
	}
}

func TestFFNSwiGLUByHand(t *testing.T) {
	c := config.Layer{Hidden: 2, FFNHidden: 2, FFN: config.FFNSwiGLU}
	ex := tinyExpert()
	ex.B1, ex.B2 = nil, nil
	// gate = x·W1 = (5, 0); up = x·Wu = (1, 2); silu(5)·1, silu(0)·2 = 0
	s5 := 5 / (1 + math.Exp(-5))
	want := []float64{s5 * 1, s5 * 2}
	out := make([]float64, 2)
	FFN(c, ex, []float64{1, 2}, out)
	if math.Abs(out[0]-want[0]) > 1e-12 || math.Abs(out[1]-want[1]) > 1e-12 {
		t.Errorf("swiglu FFN = %v, want %v", out, want)
	}
}

func TestCombineFixedOrderSkipsDropped(t *testing.T) {
	out := make([]float64, 2)
	Combine([]float64{0.5, 0, 0.25}, [][]float64{{2, 4}, nil, {8, -4}}, out)
	if out[0] != 3 || out[1] != 1 {
		t.Errorf("combine = %v, want (3, 1)", out)
	}
}

func TestRouteTokenSkewPicksFirstExperts(t *testing.T) {
	c := config.Default()
	c.Hidden, c.Experts, c.TopK, c.Route = 4, 8, 3, config.RouteSkew
	gate := datagen.Gate(c)
	_, r := RouteToken(c, []float32{1, -1, 0.5, 0.25}, gate)
	if !equalInts(r.IDs, []int{0, 1, 2}) {
		t.Errorf("skew ids = %v, want [0 1 2]", r.IDs)
	}
	if s := r.W[0] + r.W[1] + r.W[2]; math.Abs(s-1) > 1e-12 {
		t.Errorf("renormalised skew weights sum to %v", s)
	}
}
