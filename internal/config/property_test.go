package config

import (
	"math"
	"testing"
)

// TestCapacityProperties: dropless is -1; otherwise the capacity is
// ceil(cf·T·k/E), or T where that is larger (one source sends one expert at
// most T pairs, so T keeps them all), at least 0, and monotone in T.
func TestCapacityProperties(t *testing.T) {
	c := Default()
	for _, e := range []int{1, 3, 8, 32} {
		for _, k := range []int{1, 2, 3} {
			if k > e {
				continue
			}
			c.Experts, c.TopK = e, k
			for _, cf := range []float64{0, 1e-300, 0.1, 0.5, 1, 1.25, 4} {
				c.CapacityFactor = cf
				prev := math.MinInt
				for tok := 0; tok <= 300; tok++ {
					got := c.Capacity(tok)
					exact := cf * float64(tok) * float64(k) / float64(e)
					switch {
					case cf == 0 && got != -1:
						t.Fatalf("%v: dropless capacity %d, want -1", c, got)
					case cf > 0 && (got < 0 || float64(got) < math.Min(exact, float64(tok)) || float64(got-1) >= exact):
						t.Fatalf("%v: Capacity(%d) = %d, want ceil(%v) or, above it, %d", c, tok, got, exact, tok)
					case got < prev:
						t.Fatalf("%v: Capacity(%d) = %d < Capacity(%d) = %d", c, tok, got, tok-1, prev)
					}
					prev = got
				}
			}
		}
	}
}

// TestCapacityHugeFactorIsDropless: a capacity factor so large that
// cf·T·k/E exceeds T must still mean "every pair fits". The capacity goes to
// the GPU kernel as an int32 (gpubackend: int32(cfg.Capacity(t))), so it must
// also fit one: 8388608 = 2^32·E/(T·k) for the default shape gives 2^32,
// which int32 makes 0 (every pair dropped); 1e300 overflows the conversion
// to int itself (implementation-defined; MinInt64 on amd64, int32 0).
func TestCapacityHugeFactorIsDropless(t *testing.T) {
	c := Default() // T 8192, E 32, k 2
	for _, cf := range []float64{1e6, 8388608, 1e12, 1e300} {
		c.CapacityFactor = cf
		got := c.Capacity(c.Tokens)
		if got != c.Tokens {
			t.Errorf("capacity-factor %g gives Capacity(%d) = %d (int32 %d in the GPU kernel's parameters), want %d",
				cf, c.Tokens, got, int32(got), c.Tokens)
		}
	}
}
