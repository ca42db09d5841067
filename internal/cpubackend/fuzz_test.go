package cpubackend

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

// fuzzShape turns the fuzzer's numbers into a small configuration on w
// ranks and each rank's token counts for two calls.
type fuzzShape struct {
	w       int
	cfg     config.Layer // Tokens unset
	tokens  [2][]int     // [call][rank]
	toggleR bool         // the second call flips renormalisation
	toggleK bool         // the second call flips softmax/skew
}

func makeShape(seed uint64, world, experts, topk, hidden, ffnHidden uint8, tokens []byte, cf float64, kind uint8, renorm, skew bool) fuzzShape {
	s := fuzzShape{w: 1 + int(world%4)}
	c := config.Default()
	c.Experts = s.w * (1 + int(experts%4))
	c.TopK = 1 + int(topk)%c.Experts
	c.Hidden, c.FFNHidden = 1+int(hidden%16), 1+int(ffnHidden%16)
	c.FFN = []config.FFN{config.FFNReLU, config.FFNGeLU, config.FFNSwiGLU}[kind%3]
	c.DType = []config.DType{config.FP32, config.TF32, config.BF16}[(kind/3)%3]
	c.CapacityFactor = cf
	c.Renormalize = renorm
	c.Route = config.RouteSoftmax
	if skew {
		c.Route = config.RouteSkew
	}
	c.Seed = seed
	maxT := 0
	for call := range 2 {
		s.tokens[call] = make([]int, s.w)
		for r := range s.w {
			i := call*s.w + r
			switch {
			case i < len(tokens):
				s.tokens[call][r] = int(tokens[i] % 41)
			case call == 1:
				s.tokens[call][r] = s.tokens[0][r]
			}
			maxT = max(maxT, s.tokens[call][r])
		}
	}
	c.MaxTokens = maxT + int(seed%3)
	s.cfg = c
	s.toggleR, s.toggleK = seed&8 != 0, seed&16 != 0
	return s
}

// fuzzTokens is rank r's input: the generated tokens, or, when the fuzzer
// gives bytes, values on a grid of 1/16 in [-8, 8) (exact ties in the gate).
func fuzzTokens(c config.Layer, r int, xs []byte) []float32 {
	if len(xs) == 0 {
		return datagen.Tokens(c, r, c.Tokens)
	}
	x := make([]float32, c.Tokens*c.Hidden)
	for i := range x {
		x[i] = float32(int8(xs[(i+7*r)%len(xs)])) / 16
	}
	return x
}

// FuzzCPUBackend runs the CPU backend on 1 to 4 in-process ranks with a
// random small shape (any T >= 0 per rank, ranks differing, two calls of
// different T on the same prepared weights, the second with renormalisation
// or routing flipped) and checks that every rank's output is bitwise equal
// to reference.Forward, that reference.Check passes, and that the routing
// it reports keeps the rules of routingProblems. An invalid capacity factor
// must be refused by Prepare on every rank, naming the value.
func FuzzCPUBackend(f *testing.F) {
	f.Add(uint64(1), uint8(0), uint8(3), uint8(1), uint8(15), uint8(23), []byte{9}, 0.0, uint8(0), true, false, []byte(nil))
	f.Add(uint64(11), uint8(1), uint8(3), uint8(1), uint8(15), uint8(23), []byte{13, 0, 0, 13}, 0.0, uint8(1), true, false, []byte(nil))
	f.Add(uint64(12), uint8(3), uint8(1), uint8(1), uint8(7), uint8(9), []byte{1, 37, 0, 20, 5, 0, 40, 3}, 0.0, uint8(2), true, false, []byte(nil))
	f.Add(uint64(13), uint8(3), uint8(1), uint8(1), uint8(7), uint8(9), []byte{37, 37, 5, 40}, 1.0, uint8(3), false, false, []byte(nil))
	f.Add(uint64(14), uint8(2), uint8(1), uint8(2), uint8(5), uint8(6), []byte{30, 11, 2, 0, 1, 2}, 0.5, uint8(7), true, false, []byte{0, 16, 240, 16})
	f.Add(uint64(15), uint8(3), uint8(0), uint8(0), uint8(3), uint8(3), []byte{16, 16, 16, 16}, 0.0, uint8(0), true, true, []byte(nil))
	f.Add(uint64(16), uint8(1), uint8(3), uint8(1), uint8(4), uint8(4), []byte{25, 25}, 1.0, uint8(2), true, true, []byte{0})
	f.Add(uint64(17), uint8(0), uint8(1), uint8(1), uint8(2), uint8(2), []byte{4}, -1.0, uint8(0), true, false, []byte(nil))
	f.Add(uint64(18), uint8(1), uint8(1), uint8(0), uint8(2), uint8(2), []byte{4, 4}, math.NaN(), uint8(0), true, false, []byte(nil))
	f.Add(uint64(19), uint8(1), uint8(1), uint8(1), uint8(2), uint8(2), []byte{40, 1}, 1e300, uint8(0), true, false, []byte(nil))
	// Found by the fuzzer: every output below float32's range (reference.Check
	// once failed float32 of the reference here; it now has an absolute floor).
	f.Add(uint64(143), uint8('E'), uint8(0x84), uint8(0), uint8(6), uint8(4), []byte("0"), 54.0, uint8(1), true, true, []byte("\x81"))
	f.Fuzz(func(t *testing.T, seed uint64, world, experts, topk, hidden, ffnHidden uint8, tokens []byte, cf float64,
		kind uint8, renorm, skew bool, xs []byte) {
		s := makeShape(seed, world, experts, topk, hidden, ffnHidden, tokens, cf, kind, renorm, skew)
		cfgValid := !math.IsNaN(cf) && !math.IsInf(cf, 0) && cf >= 0
		errs := propRanks(s.w, func(comm transport.Comm) error {
			me := comm.Rank()
			b := New(comm)
			defer b.Close()
			for call := range 2 {
				c := s.cfg
				c.Tokens = s.tokens[call][me]
				if call == 1 {
					c.Renormalize = c.Renormalize != s.toggleR
					if s.toggleK {
						c.Route = map[config.Route]config.Route{config.RouteSoftmax: config.RouteSkew, config.RouteSkew: config.RouteSoftmax}[c.Route]
					}
				}
				err := b.Prepare(c)
				if !cfgValid {
					if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("capacity-factor %v: ", cf)) {
						return fmt.Errorf("capacity factor %v: Prepare returned %v, want a refusal naming it", cf, err)
					}
					return nil
				}
				if err != nil {
					return fmt.Errorf("call %d: prepare %v: %w", call, c, err)
				}
				if err := checkCall(b, c, me, fuzzTokens(c, me, xs)); err != nil {
					return fmt.Errorf("call %d (%v): %w", call, c, err)
				}
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Errorf("W=%d tokens %v: rank %d: %v", s.w, s.tokens, r, err)
			}
		}
	})
}

// checkCall runs one forward on b and checks it against the reference.
func checkCall(b *Backend, c config.Layer, me int, x []float32) error {
	if _, err := b.Forward(c, x); err != nil {
		return err
	}
	gate := datagen.Gate(c)
	experts := reference.CachedExperts(c, 1<<30)
	want, _ := reference.Forward(c, x, gate, experts)
	got := b.Out64()
	if len(got) != len(want) {
		return fmt.Errorf("output has %d elements, reference %d", len(got), len(want))
	}
	for i := range got {
		if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
			return fmt.Errorf("element %d (token %d): %v, reference %v: not bitwise equal", i, i/c.Hidden, got[i], want[i])
		}
	}
	res, err := b.Result()
	if err != nil {
		return err
	}
	for i, v := range res.Out {
		if v != float32(want[i]) && !(math.IsNaN(float64(v)) && math.IsNaN(want[i])) {
			return fmt.Errorf("float32 output element %d: %v, want %v", i, v, float32(want[i]))
		}
	}
	rep := reference.Check(reference.CheckInput{Cfg: c, X: x, Gate: gate, Expert: experts, Out: res.Out, TopKIdx: res.TopKIdx})
	if !rep.OK() {
		return fmt.Errorf("reference.Check failed: %v", rep.Failures)
	}
	if p := routingProblems(c, x, gate, res); p != nil {
		return fmt.Errorf("routing: %v", p)
	}
	return nil
}
