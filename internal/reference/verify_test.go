package reference

import (
	"math"
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

func smallCfg() config.Layer {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 40, 40, 16, 24, 8, 2
	c.Seed = 7
	return c
}

// forwardAsBackend runs the reference and packages it as a backend would.
func forwardAsBackend(c config.Layer) CheckInput {
	x := datagen.Tokens(c, 0, c.Tokens)
	gate := datagen.Gate(c)
	ex := CachedExperts(c, 1<<30)
	out, routes := Forward(c, x, gate, ex)
	in := CheckInput{Cfg: c, X: x, Gate: gate, Expert: ex, Out: make([]float32, len(out)), TopKIdx: make([]int32, c.Tokens*c.TopK)}
	for i, v := range out {
		in.Out[i] = float32(v)
	}
	for i, r := range routes {
		for j, e := range r.IDs {
			in.TopKIdx[i*c.TopK+j] = int32(e)
		}
	}
	return in
}

func TestCheckPassesTheReferenceItself(t *testing.T) {
	for _, ffn := range []config.FFN{config.FFNReLU, config.FFNGeLU, config.FFNSwiGLU} {
		for _, cf := range []float64{0, 1} {
			c := smallCfg()
			c.FFN, c.CapacityFactor = ffn, cf
			rep := Check(forwardAsBackend(c))
			if !rep.OK() || rep.Checked != c.Tokens {
				t.Errorf("%s cf=%v: %+v", ffn, cf, rep)
			}
		}
	}
}

func TestCheckCatchesPoisonAndErrors(t *testing.T) {
	c := smallCfg()
	in := forwardAsBackend(c)
	in.Out[5] = float32(math.NaN())
	if rep := Check(in); rep.OK() || rep.NaN != 1 || rep.Wrong != 1 {
		t.Errorf("a NaN element passed: %+v", rep)
	}
	in = forwardAsBackend(c)
	in.Out[17] *= 1.01
	if rep := Check(in); rep.OK() || rep.Wrong != 1 {
		t.Errorf("a 1%% error on one element passed: %+v", rep)
	}
}

func TestCheckCountsRoutingMismatchBeyondTieGap(t *testing.T) {
	c := smallCfg()
	in := forwardAsBackend(c)
	// Swap token 3's first choice for an expert it did not pick.
	picked := map[int32]bool{in.TopKIdx[6]: true, in.TopKIdx[7]: true}
	for e := int32(0); e < int32(c.Experts); e++ {
		if !picked[e] {
			in.TopKIdx[6] = e
			break
		}
	}
	rep := Check(in)
	if rep.RouteMismatch != 1 || rep.OK() {
		t.Errorf("wrong expert not reported: %+v", rep)
	}
}

func TestCheckAcceptsLegalTieBreak(t *testing.T) {
	// A gate of zeros makes every probability 1/E: every choice is a tie,
	// so any distinct ids are legal, and the output is checked against the
	// reference computed with the backend's own ids.
	c := smallCfg()
	x := datagen.Tokens(c, 0, c.Tokens)
	gate := make([]float32, c.Hidden*c.Experts)
	ex := CachedExperts(c, 1<<30)
	in := CheckInput{Cfg: c, X: x, Gate: gate, Expert: ex, Out: make([]float32, c.Tokens*c.Hidden), TopKIdx: make([]int32, c.Tokens*c.TopK)}
	h := c.Hidden
	for i := range c.Tokens {
		ids := []int{(i + 3) % c.Experts, (i + 5) % c.Experts} // not the reference's 0, 1
		in.TopKIdx[i*2], in.TopKIdx[i*2+1] = int32(ids[0]), int32(ids[1])
		ys := make([][]float64, 2)
		for j, e := range ids {
			ys[j] = make([]float64, h)
			FFN(c, ex(e), Widen(x[i*h:(i+1)*h]), ys[j])
		}
		o := make([]float64, h)
		Combine([]float64{0.5, 0.5}, ys, o)
		for d, v := range o {
			in.Out[i*h+d] = float32(v)
		}
	}
	if rep := Check(in); !rep.OK() {
		t.Errorf("legal tie-break rejected: %+v", rep)
	}
}

func TestCheckRejectsRepeatedIDs(t *testing.T) {
	c := smallCfg()
	in := forwardAsBackend(c)
	in.TopKIdx[1] = in.TopKIdx[0]
	if rep := Check(in); rep.OK() || rep.BadIDs != 1 {
		t.Errorf("repeated ids passed: %+v", rep)
	}
}

func TestCheckSamplesLargeConfigs(t *testing.T) {
	c := smallCfg()
	in := forwardAsBackend(c)
	in.MaxChecked = 5
	rep := Check(in)
	if !rep.OK() || rep.Checked != 5 {
		t.Errorf("sampled check: %+v", rep)
	}
	if got := sampleTokens(100, 5); got[0] != 0 || got[4] != 99 {
		t.Errorf("sample %v must include the first and last token", got)
	}
}

func TestCheckZeroTokens(t *testing.T) {
	c := smallCfg()
	c.Tokens = 0
	if rep := Check(forwardAsBackend(c)); !rep.OK() {
		t.Errorf("T=0: %+v", rep)
	}
}
