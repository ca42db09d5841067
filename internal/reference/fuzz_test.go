package reference

import (
	"math"
	"testing"
)

// FuzzRouting: on any probability vector (from the fuzzer's bytes: a
// coarse grid with exact ties and zeros, or raw float64 bits of any
// magnitude) and any k, TopK, Gap and Weights keep their properties; on any
// routing of T tokens (ids from the bytes) ApplyCapacity with any capacity
// drops exactly the pairs beyond the first C of each expert in token order.
func FuzzRouting(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4}, uint8(2), false, true, int16(1))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0}, uint8(3), false, false, int16(-1))
	f.Add([]byte{9, 9, 1, 9, 1, 0, 255, 7, 7}, uint8(4), false, true, int16(0))
	f.Add([]byte{0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0}, uint8(1), true, true, int16(3))
	f.Add([]byte("the quick brown fox jumps over the lazy dog"), uint8(7), false, true, int16(2))
	f.Fuzz(func(t *testing.T, data []byte, kRaw uint8, rawBits, renorm bool, capRaw int16) {
		p := probsFromBytes(data, rawBits)
		e := len(p)
		if e == 0 {
			return
		}
		k := 1 + int(kRaw)%e
		ids := TopK(p, k)
		if msg := topKProblem(p, k, ids); msg != "" {
			t.Fatalf("p %v k %d: %s", p, k, msg)
		}
		if msg := gapProblem(p, k, Gap(p, k)); msg != "" {
			t.Fatalf("p %v: %s", p, msg)
		}
		if msg := weightsProblem(p, ids, renorm, Weights(p, ids, renorm)); msg != "" {
			t.Fatalf("p %v ids %v renorm %v: %s", p, ids, renorm, msg)
		}

		// A routing of T tokens over E experts, k distinct ids per token:
		// token t takes the top k of a rotation of p by data[t].
		tokens := min(len(data), 64)
		routes := make([]Route, tokens)
		rot := make([]float64, e)
		for i := range routes {
			s := int(data[i]) % e
			for j := range rot {
				rot[j] = p[(j+s)%e]
			}
			tid := TopK(rot, k)
			for j := range tid {
				tid[j] = (tid[j] + s) % e
			}
			routes[i] = Route{IDs: tid, W: Weights(p, tid, renorm)}
		}
		capacity := int(capRaw)%(tokens+2) - 1 // -1 (dropless) .. T
		if capRaw < 0 {
			capacity = -1
		}
		before := copyRoutes(routes)
		dropped := ApplyCapacity(routes, e, capacity)
		if msg := capacityProblem(before, routes, e, capacity, dropped); msg != "" {
			t.Fatalf("T %d E %d k %d C %d: %s", tokens, e, k, capacity, msg)
		}
	})
}

// probsFromBytes makes a probability vector of at most 64 experts: raw
// float64 bits (any finite non-negative value, not normalised: TopK and Gap
// must not care) or bytes on a coarse grid, normalised, with exact ties.
func probsFromBytes(data []byte, rawBits bool) []float64 {
	var p []float64
	if rawBits {
		for i := 0; i+8 <= len(data) && len(p) < 64; i += 8 {
			var u uint64
			for _, b := range data[i : i+8] {
				u = u<<8 | uint64(b)
			}
			v := math.Abs(math.Float64frombits(u))
			if math.IsNaN(v) || math.IsInf(v, 0) {
				v = 0
			}
			p = append(p, v)
		}
		return p
	}
	var s float64
	for _, b := range data[:min(len(data), 64)] {
		v := float64(b % 8)
		p = append(p, v)
		s += v
	}
	if s > 0 {
		for i := range p {
			p[i] /= s
		}
	}
	return p
}
