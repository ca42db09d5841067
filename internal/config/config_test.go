package config

import (
	"math"
	"strings"
	"testing"
)

func TestValidateAcceptsDefault(t *testing.T) {
	for _, w := range []int{1, 2, 4, 8, 32} {
		if err := Default().Validate(w); err != nil {
			t.Errorf("world %d: %v", w, err)
		}
	}
}

func TestValidateNamesEveryBadValue(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Layer)
		w    int
		want string
	}{
		{func(c *Layer) { c.Hidden = 0 }, 1, "hidden 0"},
		{func(c *Layer) { c.FFNHidden = -3 }, 1, "ffn-hidden -3"},
		{func(c *Layer) { c.Experts = 0 }, 1, "experts 0"},
		{func(c *Layer) { c.Experts = 8 }, 3, "experts 8: must be a multiple of the number of ranks 3"},
		{func(c *Layer) { c.TopK = 0 }, 1, "topk 0"},
		{func(c *Layer) { c.TopK = 33 }, 1, "topk 33: must not exceed experts 32"},
		{func(c *Layer) { c.Tokens = -1 }, 1, "tokens -1"},
		{func(c *Layer) { c.Tokens = 9000 }, 1, "tokens 9000: exceeds max-tokens 8192"},
		{func(c *Layer) { c.MaxTokens = MaxTokens + 1; c.Tokens = 0 }, 1, "max-tokens"},
		{func(c *Layer) { c.FFN = "tanh" }, 1, `ffn "tanh"`},
		{func(c *Layer) { c.DType = "fp16" }, 1, `dtype "fp16"`},
		{func(c *Layer) { c.Route = "random" }, 1, `route "random"`},
		{func(c *Layer) { c.CapacityFactor = -1 }, 1, "capacity-factor -1"},
		{func(c *Layer) { c.CapacityFactor = math.NaN() }, 1, "capacity-factor NaN"},
		{func(c *Layer) { c.Experts = MaxExperts + 1 }, 1, "experts 4097"},
		{func(c *Layer) {}, 0, "world size 0"},
	} {
		c := Default()
		tc.mod(&c)
		err := c.Validate(tc.w)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}

func TestValidateReportsAllProblemsAtOnce(t *testing.T) {
	c := Default()
	c.Hidden, c.TopK = 0, 0
	err := c.Validate(1)
	if err == nil || !strings.Contains(err.Error(), "hidden 0") || !strings.Contains(err.Error(), "topk 0") {
		t.Errorf("got %v, want both problems", err)
	}
}

func TestOwnerIsContiguousBlocks(t *testing.T) {
	c := Default() // E = 32
	for e, want := range map[int]int{0: 0, 7: 0, 8: 1, 31: 3} {
		if got := c.Owner(e, 4); got != want {
			t.Errorf("Owner(%d, 4) = %d, want %d", e, got, want)
		}
	}
}

func TestStaticIgnoresTokensOnly(t *testing.T) {
	a, b := Default(), Default()
	b.Tokens = 17
	if a.Static() != b.Static() {
		t.Error("tokens changed the static part")
	}
	b.Hidden = 1024
	if a.Static() == b.Static() {
		t.Error("hidden did not change the static part")
	}
}
