// Package config holds the MoE layer configuration that every backend, the
// reference and the command line share, and the rules that make one valid.
package config

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// FFN is the kind of expert feed-forward network.
type FFN string

// The expert FFN kinds (DESIGN.md section 1, item 2).
const (
	FFNReLU   FFN = "relu"
	FFNGeLU   FFN = "gelu" // tanh form
	FFNSwiGLU FFN = "swiglu"
)

// DType is the precision mode (DESIGN.md section 1, item 5).
type DType string

// The precision modes.
const (
	FP32 DType = "fp32"
	TF32 DType = "tf32"
	BF16 DType = "bf16"
)

// Route selects how tokens pick experts.
type Route string

// Routing modes: softmax is the real gate; skew sends every token to the same
// k experts (0..k-1), to test hot spots.
const (
	RouteSoftmax Route = "softmax"
	RouteSkew    Route = "skew"
)

// ParseFFN parses an FFN kind, naming the bad value on error.
func ParseFFN(s string) (FFN, error) {
	switch f := FFN(strings.ToLower(strings.TrimSpace(s))); f {
	case FFNReLU, FFNGeLU, FFNSwiGLU:
		return f, nil
	}
	return "", fmt.Errorf("ffn %q: must be relu, gelu or swiglu", s)
}

// ParseDType parses a precision mode, naming the bad value on error.
func ParseDType(s string) (DType, error) {
	switch d := DType(strings.ToLower(strings.TrimSpace(s))); d {
	case FP32, TF32, BF16:
		return d, nil
	}
	return "", fmt.Errorf("dtype %q: must be fp32, tf32 or bf16", s)
}

// ParseRoute parses a routing mode, naming the bad value on error.
func ParseRoute(s string) (Route, error) {
	switch r := Route(strings.ToLower(strings.TrimSpace(s))); r {
	case RouteSoftmax, RouteSkew:
		return r, nil
	}
	return "", fmt.Errorf("route %q: must be softmax or skew", s)
}

// Limits that keep sizes inside int32 indexing on the GPU and inside memory
// that a single rank can plausibly hold.
const (
	MaxHidden  = 65536
	MaxExperts = 4096
	MaxTokens  = 1 << 20
)

// Layer is one MoE layer configuration. Tokens is the per-rank token count of
// one call; MaxTokens sizes buffers and bounds Tokens.
type Layer struct {
	Tokens         int     `json:"tokens"`
	MaxTokens      int     `json:"max_tokens"`
	Hidden         int     `json:"hidden"`
	FFNHidden      int     `json:"ffn_hidden"`
	Experts        int     `json:"experts"`
	TopK           int     `json:"topk"`
	FFN            FFN     `json:"ffn"`
	DType          DType   `json:"dtype"`
	CapacityFactor float64 `json:"capacity_factor"`
	Renormalize    bool    `json:"renormalize"`
	Route          Route   `json:"route"`
	Seed           uint64  `json:"seed"`
}

// Default returns the paper's shape: H = I = 2048, E = 32, k = 2, T = 8192.
func Default() Layer {
	return Layer{
		Tokens: 8192, MaxTokens: 8192, Hidden: 2048, FFNHidden: 2048,
		Experts: 32, TopK: 2, FFN: FFNReLU, DType: FP32,
		Renormalize: true, Route: RouteSoftmax, Seed: 1,
	}
}

// Validate checks every field on its own and against world, the number of
// ranks. Each problem is named with its value and the limit it breaks; all
// problems are reported together.
func (c Layer) Validate(world int) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if world < 1 {
		bad("world size %d: must be at least 1", world)
	}
	if c.Hidden < 1 || c.Hidden > MaxHidden {
		bad("hidden %d: must be in [1, %d]", c.Hidden, MaxHidden)
	}
	if c.FFNHidden < 1 || c.FFNHidden > MaxHidden {
		bad("ffn-hidden %d: must be in [1, %d]", c.FFNHidden, MaxHidden)
	}
	if c.Experts < 1 || c.Experts > MaxExperts {
		bad("experts %d: must be in [1, %d]", c.Experts, MaxExperts)
	} else if world >= 1 && c.Experts%world != 0 {
		bad("experts %d: must be a multiple of the number of ranks %d (each rank owns E/W experts)", c.Experts, world)
	}
	if c.TopK < 1 {
		bad("topk %d: must be at least 1", c.TopK)
	} else if c.Experts >= 1 && c.TopK > c.Experts {
		bad("topk %d: must not exceed experts %d", c.TopK, c.Experts)
	}
	if c.MaxTokens < 0 || c.MaxTokens > MaxTokens {
		bad("max-tokens %d: must be in [0, %d] (without --max-tokens it is the largest --tokens)", c.MaxTokens, MaxTokens)
	}
	if c.Tokens < 0 {
		bad("tokens %d: must not be negative", c.Tokens)
	} else if c.Tokens > c.MaxTokens {
		bad("tokens %d: exceeds max-tokens %d", c.Tokens, c.MaxTokens)
	}
	if _, err := ParseFFN(string(c.FFN)); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseDType(string(c.DType)); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseRoute(string(c.Route)); err != nil {
		errs = append(errs, err)
	}
	if math.IsNaN(c.CapacityFactor) || math.IsInf(c.CapacityFactor, 0) || c.CapacityFactor < 0 {
		bad("capacity-factor %v: must be 0 (dropless) or a positive finite number", c.CapacityFactor)
	}
	return errors.Join(errs...)
}

// ExpertsPerRank is E/W, the number of experts each rank owns.
func (c Layer) ExpertsPerRank(world int) int { return c.Experts / world }

// Owner is the rank that owns global expert e: contiguous blocks of E/W.
func (c Layer) Owner(e, world int) int { return e / c.ExpertsPerRank(world) }

// Capacity is the most (token, expert) pairs one source rank may send to one
// expert for a call of t tokens: ceil(cf*t*k/E), or -1 for dropless.
func (c Layer) Capacity(t int) int {
	if c.CapacityFactor == 0 {
		return -1
	}
	// A source never has more than t pairs for one expert (each token picks
	// an expert at most once), so t means "all fit"; clamping also keeps a
	// huge factor from overflowing int, and the kernel's int32 parameter.
	v := math.Ceil(c.CapacityFactor * float64(t) * float64(c.TopK) / float64(c.Experts))
	if v >= float64(t) {
		return t
	}
	return int(v)
}

// Static is the part of a configuration that every rank of a job must agree
// on: it fixes weights and buffer sizes. Tokens may differ between ranks.
type Static struct {
	Hidden, FFNHidden, Experts, TopK, MaxTokens int
	FFN                                         FFN
	DType                                       DType
	Seed                                        uint64
}

// Static returns the fields that must agree across ranks.
func (c Layer) Static() Static {
	return Static{c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.MaxTokens, c.FFN, c.DType, c.Seed}
}

// MisfitsShape lists how c fails to run in buffers sized for the static
// part s: hidden, experts, topk, max-tokens and dtype must be the same and
// ffn-hidden no larger (the FFN kind and the seed may differ). whose names
// the buffers' owner in the messages ("the runtime's"). Empty when c fits.
func (c Layer) MisfitsShape(s Static, whose string) []string {
	var diff []string
	field := func(name string, got, want any) {
		if got != want {
			diff = append(diff, fmt.Sprintf("%s %v (%s is %v)", name, got, whose, want))
		}
	}
	field("hidden", c.Hidden, s.Hidden)
	field("experts", c.Experts, s.Experts)
	field("topk", c.TopK, s.TopK)
	field("max-tokens", c.MaxTokens, s.MaxTokens)
	field("dtype", c.DType, s.DType)
	if c.FFNHidden > s.FFNHidden {
		diff = append(diff, fmt.Sprintf("ffn-hidden %d (%s is %d; a layer may only be narrower)", c.FFNHidden, whose, s.FFNHidden))
	}
	return diff
}

// String is a compact human-readable form, used in logs and errors.
func (c Layer) String() string {
	return fmt.Sprintf("T=%d H=%d I=%d E=%d k=%d ffn=%s dtype=%s cf=%g renorm=%t route=%s seed=%d",
		c.Tokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.FFN, c.DType, c.CapacityFactor, c.Renormalize, c.Route, c.Seed)
}
