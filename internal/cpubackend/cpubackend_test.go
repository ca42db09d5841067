package cpubackend

import (
	"fmt"
	"math"
	"testing"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// runRanks runs fn on w in-process ranks and collects their errors.
func runRanks(t *testing.T, w int, fn func(c transport.Comm) error) {
	t.Helper()
	for r, err := range transport.NewLocal(w, 0).Run(fn) {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// TestOutputBitwiseEqualsReference: the CPU backend performs the same float64
// operations in the same order as reference.Forward, so every rank's output
// is bitwise equal to it, with any T per rank (0 included), any FFN kind and
// with capacity dropping.
func TestOutputBitwiseEqualsReference(t *testing.T) {
	cases := []struct {
		w, e, k int
		ffn     config.FFN
		cf      float64
		tokens  []int // per rank
		route   config.Route
	}{
		{1, 4, 1, config.FFNReLU, 0, []int{9}, config.RouteSoftmax},
		{2, 8, 2, config.FFNGeLU, 0, []int{13, 0}, config.RouteSoftmax},
		{4, 8, 2, config.FFNSwiGLU, 0, []int{1, 37, 0, 20}, config.RouteSoftmax},
		{4, 8, 2, config.FFNReLU, 1, []int{37, 37, 5, 64}, config.RouteSoftmax},
		{3, 6, 3, config.FFNReLU, 0.5, []int{30, 11, 2}, config.RouteSoftmax},
		{4, 4, 1, config.FFNReLU, 0, []int{16, 16, 16, 16}, config.RouteSkew},
		{2, 8, 2, config.FFNSwiGLU, 1, []int{25, 25}, config.RouteSkew},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("W%d_E%d_k%d_%s_cf%v_%s", tc.w, tc.e, tc.k, tc.ffn, tc.cf, tc.route)
		t.Run(name, func(t *testing.T) {
			base := config.Default()
			base.Hidden, base.FFNHidden, base.Experts, base.TopK = 16, 24, tc.e, tc.k
			base.FFN, base.CapacityFactor, base.Route, base.MaxTokens, base.Seed = tc.ffn, tc.cf, tc.route, 64, 11
			runRanks(t, tc.w, func(comm transport.Comm) error {
				c := base
				c.Tokens = tc.tokens[comm.Rank()]
				b := New(comm)
				defer b.Close()
				if err := b.Prepare(c); err != nil {
					return err
				}
				x := datagen.Tokens(c, comm.Rank(), c.Tokens)
				if _, err := b.Forward(c, x); err != nil {
					return err
				}
				want, _ := reference.Forward(c, x, datagen.Gate(c), reference.CachedExperts(c, 1<<30))
				got := b.Out64()
				if len(got) != len(want) {
					return fmt.Errorf("len %d, want %d", len(got), len(want))
				}
				for i := range got {
					if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
						return fmt.Errorf("element %d: %v != reference %v (not bitwise equal)", i, got[i], want[i])
					}
				}
				res, err := b.Result()
				if err != nil {
					return err
				}
				rep := reference.Check(reference.CheckInput{Cfg: c, X: x, Gate: datagen.Gate(c),
					Expert: reference.CachedExperts(c, 1<<30), Out: res.Out, TopKIdx: res.TopKIdx})
				if !rep.OK() {
					return fmt.Errorf("verification failed: %v", rep.Failures)
				}
				return nil
			})
		})
	}
}

func TestForwardRefusesMismatchedInput(t *testing.T) {
	runRanks(t, 1, func(comm transport.Comm) error {
		c := config.Default()
		c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts = 4, 4, 8, 8, 2
		b := New(comm)
		if _, err := b.Forward(c, nil); err == nil {
			return fmt.Errorf("forward before Prepare succeeded")
		}
		if err := b.Prepare(c); err != nil {
			return err
		}
		if _, err := b.Forward(c, make([]float32, 3)); err == nil {
			return fmt.Errorf("forward with a short x succeeded")
		}
		return nil
	})
}

// In bf16 mode the layer stores its tokens and expert matrices as bf16:
// caller values that are not bf16 values give the output of the reference
// computed from the rounded values (DESIGN.md section 1), bit for bit.
func TestBF16CallerValuesAreRounded(t *testing.T) {
	c := config.Default()
	c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.MaxTokens, c.Tokens, c.Seed = 16, 24, 4, 2, 32, 19, 5
	c.DType, c.FFN = config.BF16, config.FFNSwiGLU
	f := c
	f.DType = config.FP32 // fp32 generation: values that are not bf16 values
	w := &backend.Weights{Gate: datagen.Gate(f), Experts: map[int]*datagen.Expert{}}
	for e := 0; e < c.Experts; e++ {
		ex := datagen.ExpertWeights(f, e)
		w.Experts[e] = &ex
	}
	x := datagen.Tokens(f, 0, c.Tokens)
	if got := datagen.RoundedBF16(x); &got[0] == &x[0] {
		t.Fatal("the test's tokens are bf16 values already: it would prove nothing")
	}
	runRanks(t, 1, func(comm transport.Comm) error {
		b := New(comm)
		defer b.Close()
		if err := b.PrepareLayer(0, c, w); err != nil {
			return err
		}
		if _, err := b.ForwardLayer(0, c, x); err != nil {
			return err
		}
		rounded := map[int]*datagen.Expert{}
		for e, ex := range w.Experts {
			rounded[e] = ex.StoredAs(config.BF16)
		}
		want, _ := reference.Forward(f, datagen.RoundedBF16(x), w.Gate, func(e int) *datagen.Expert { return rounded[e] })
		unrounded, _ := reference.Forward(f, x, w.Gate, func(e int) *datagen.Expert { return w.Experts[e] })
		got := b.Out64()
		same, differs := true, false
		for i := range want {
			same = same && math.Float64bits(got[i]) == math.Float64bits(want[i])
			differs = differs || got[i] != unrounded[i]
		}
		if !same {
			return fmt.Errorf("bf16 output differs from the reference on the rounded values")
		}
		if !differs {
			return fmt.Errorf("bf16 output equals the unrounded computation: the rounding did not happen")
		}
		return nil
	})
}
