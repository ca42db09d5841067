package reference

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/moerun/moerun/internal/config"
)

// Tolerances of DESIGN.md section 1, item 5.
type Tolerance struct {
	TieGap float64 // δ: top-k choices closer than this are legal tie-breaks
	RelErr float64 // bound on ‖out − ref‖ / ‖ref‖
}

// ToleranceFor returns the verification bounds for a precision mode.
func ToleranceFor(d config.DType) Tolerance {
	switch d {
	case config.TF32:
		return Tolerance{TieGap: 1e-3, RelErr: 5e-3}
	case config.BF16:
		return Tolerance{TieGap: 1e-2, RelErr: 2e-2}
	default:
		return Tolerance{TieGap: 1e-5, RelErr: 1e-5}
	}
}

// Report is the outcome of checking one rank's forward.
type Report struct {
	Checked       int     // tokens checked
	Tokens        int     // tokens in the forward
	RelErr        float64 // ‖out − ref‖ / ‖ref‖ over the checked tokens
	Wrong         int     // elements with |out − ref| > 4·tol·(|ref| + rms(ref))
	RouteMismatch int     // tokens whose top-k differs beyond the tie gap
	NaN           int     // non-finite output elements
	BadIDs        int     // tokens with out-of-range or repeated expert ids
	Failures      []string
}

// OK reports whether the forward passed.
func (r *Report) OK() bool { return len(r.Failures) == 0 }

// CheckInput is what a backend produced and what it was given.
type CheckInput struct {
	Cfg     config.Layer // Tokens = T of this forward
	X       []float32    // [T, H] the tokens the backend used
	Gate    []float32    // [H, E]
	Expert  ExpertSource // any global expert's weights
	Out     []float32    // [T, H] the backend's output
	TopKIdx []int32      // [T, k] the backend's routing, in combine order
	// MaxChecked bounds the tokens checked (evenly spaced, first and last
	// included); 0 checks every token.
	MaxChecked int
}

// SampleBudget picks how many tokens to check so that the float64 reference
// costs about flopBudget operations: all tokens for small configs.
func SampleBudget(c config.Layer, flopBudget float64) int {
	mats := 2.0
	if c.FFN == config.FFNSwiGLU {
		mats = 3
	}
	perToken := 2 * mats * float64(c.TopK) * float64(c.Hidden) * float64(c.FFNHidden)
	n := int(flopBudget / perToken)
	if n < 64 {
		n = 64
	}
	if n >= c.Tokens {
		return 0
	}
	return n
}

// sampleTokens returns the indices of the tokens to check.
func sampleTokens(t, maxChecked int) []int {
	if maxChecked <= 0 || maxChecked >= t {
		idx := make([]int, t)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	idx := make([]int, 0, maxChecked)
	for s := range maxChecked {
		idx = append(idx, int(int64(s)*int64(t-1)/int64(maxChecked-1)))
	}
	return idx
}

// Check verifies one rank's forward by the rule of DESIGN.md section 1,
// item 5: routing must match the reference wherever the top-k gap exceeds δ;
// the output is compared with the reference computed on the backend's own
// expert choice (so a legal tie-break is not counted twice), with capacity
// dropping recomputed from that choice in token order.
func Check(in CheckInput) Report {
	c := in.Cfg
	t, h, k := c.Tokens, c.Hidden, c.TopK
	tol := ToleranceFor(c.DType)
	rep := Report{Tokens: t}
	fail := func(format string, a ...any) { rep.Failures = append(rep.Failures, fmt.Sprintf(format, a...)) }
	if len(in.Out) != t*h || len(in.TopKIdx) != t*k || len(in.X) != t*h {
		fail("shape: out %d, topk %d, x %d elements; want %d, %d, %d", len(in.Out), len(in.TopKIdx), len(in.X), t*h, t*k, t*h)
		return rep
	}

	// The backend's routing, validated, with capacity applied in token order.
	routes := make([]Route, t)
	for i := range routes {
		ids := make([]int, k)
		seen := map[int]bool{}
		bad := false
		for j := range ids {
			e := int(in.TopKIdx[i*k+j])
			if e < 0 || e >= c.Experts || seen[e] {
				bad = true
			}
			seen[e] = true
			ids[j] = e
		}
		if bad {
			rep.BadIDs++
			ids = nil
		}
		routes[i] = Route{IDs: ids, W: make([]float64, k)}
		for j := range routes[i].W {
			routes[i].W[j] = 1 // placeholder: only drop marks matter here
		}
	}
	if rep.BadIDs > 0 {
		fail("routing: %d tokens have out-of-range or repeated expert ids", rep.BadIDs)
		return rep
	}
	ApplyCapacity(routes, c.Experts, c.Capacity(t))

	in.X = StoredTokens(c, in.X) // the kernel's own tokens in bf16 mode
	tokens := sampleTokens(t, in.MaxChecked)
	rep.Checked = len(tokens)
	refs := make([][]float64, len(tokens))
	mismatch := make([]bool, len(tokens))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ys := make([][]float64, k)
			for s := range next {
				i := tokens[s]
				row := in.X[i*h : (i+1)*h]
				probs, ref := RouteToken(c, row, in.Gate)
				got := routes[i].IDs
				if c.Route == config.RouteSkew {
					mismatch[s] = !equalInts(got, ref.IDs)
				} else if Gap(probs, k) > tol.TieGap {
					mismatch[s] = !sameSet(got, ref.IDs)
				}
				w := Weights(probs, got, c.Renormalize)
				for j := range w {
					if routes[i].W[j] == 0 { // dropped by capacity
						w[j] = 0
					}
				}
				xi := Widen(row)
				for j, e := range got {
					ys[j] = nil
					if w[j] == 0 {
						continue
					}
					ys[j] = make([]float64, h)
					FFN(c, in.Expert(e), xi, ys[j])
				}
				refs[s] = make([]float64, h)
				Combine(w, ys, refs[s])
			}
		}()
	}
	for s := range tokens {
		next <- s
	}
	close(next)
	wg.Wait()

	var diff2, ref2 float64
	n := 0
	for s, i := range tokens {
		if mismatch[s] {
			rep.RouteMismatch++
		}
		for d, r := range refs[s] {
			o := float64(in.Out[i*h+d])
			if math.IsNaN(o) || math.IsInf(o, 0) {
				rep.NaN++
			}
			d := absDiff(o, r)
			diff2 += d * d
			ref2 += r * r
			n++
		}
	}
	rms := 0.0
	if n > 0 {
		rms = math.Sqrt(ref2 / float64(n))
	}
	switch {
	case diff2 == 0:
		rep.RelErr = 0
	case ref2 == 0:
		rep.RelErr = math.Inf(1)
	default:
		rep.RelErr = math.Sqrt(diff2 / ref2)
	}
	for s, i := range tokens {
		for d, r := range refs[s] {
			o := float64(in.Out[i*h+d])
			if !(absDiff(o, r) <= 4*tol.RelErr*(math.Abs(r)+rms)) { // NaN counts as wrong
				rep.Wrong++
			}
		}
	}
	if rep.NaN > 0 {
		fail("output: %d elements are NaN or Inf (unwritten or overflowed)", rep.NaN)
	}
	if !(rep.RelErr < tol.RelErr) {
		fail("output: relative error %.3g exceeds %.0e (%s)", rep.RelErr, tol.RelErr, c.DType)
	}
	if rep.Wrong > 0 {
		fail("output: %d of %d elements differ by more than 4·tol·(|ref| + rms(ref))", rep.Wrong, n)
	}
	if rep.RouteMismatch > 0 {
		fail("routing: %d of %d tokens chose other experts than the reference beyond the tie gap %.0e", rep.RouteMismatch, rep.Checked, tol.TieGap)
	}
	return rep
}

// absDiff is |o − r|, with differences below float32's smallest normal
// number (2^-126) taken as 0: a float32 output cannot resolve them, and GPUs
// flush such values to zero. NaN stays NaN.
func absDiff(o, r float64) float64 {
	d := math.Abs(o - r)
	if d < 0x1p-126 {
		return 0
	}
	return d
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sameSet(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[int]int{}
	for _, v := range a {
		m[v]++
	}
	for _, v := range b {
		if m[v] == 0 {
			return false
		}
		m[v]--
	}
	return true
}
