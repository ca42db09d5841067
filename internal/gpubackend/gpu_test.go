package gpubackend

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/kernels"
)

// needHopper skips the test where there is no Hopper GPU to run on.
func needHopper(t *testing.T) {
	t.Helper()
	d, err := cuda.Load()
	if err != nil {
		t.Skip("no GPU: ", err)
	}
	n, err := d.DeviceCount()
	if err != nil || n == 0 {
		t.Skip("no GPU: no CUDA device visible")
	}
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Skip("no GPU: ", err)
	}
	if maj, min, err := d.ComputeCapability(dev); err != nil || maj != 9 || min != 0 {
		t.Skipf("no GPU the kernel runs on: device 0 is sm_%d%d (%v)", maj, min, err)
	}
	if os.Getenv(kernels.EnvCubin) == "" && !kernels.Embedded() {
		for _, p := range []string{"../../build/moerun.cubin", "../../kernels/moerun.cubin"} {
			if _, err := os.Stat(p); err == nil {
				t.Setenv(kernels.EnvCubin, p)
				return
			}
		}
		t.Fatal("a Hopper GPU is here but no kernel cubin: run `make kernels` or set MOERUN_CUBIN")
	}
}

// firstBitDiff is the first index of a whose bits differ from b's (an index
// past the end of b counts as different), or -1: the outputs that must be
// bitwise equal.
func firstBitDiff(a, b []float32) int {
	for i := range a {
		if i >= len(b) || math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// ref is a plain float64 computation of one rank's forward on one rank
// (world 1): every expert is local, capacity counts this rank's pairs.
type ref struct {
	out    []float64 // [T, H]
	w      []float64 // [T, k]: combine weights of the kernel's ids (0 when dropped)
	logits []float64 // [T, E]
}

// tolerances of a precision mode (DESIGN.md 1.5): relative output error and
// the routing tie gap.
func tolerances(d config.DType) (relTol, gap float64) {
	switch d {
	case config.TF32:
		return 5e-3, 1e-3
	case config.BF16:
		return 2e-2, 1e-2
	}
	return 1e-5, 1e-5
}

func reference(t *testing.T, c config.Layer, x []float32, ids []int32) ref {
	t.Helper()
	T, H, I, E, k := c.Tokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK
	gate := datagen.Gate(c)
	ex := make([]datagen.Expert, E)
	for e := range ex {
		ex[e] = datagen.ExpertWeights(c, e)
	}
	r := ref{out: make([]float64, T*H), w: make([]float64, T*k), logits: make([]float64, T*E)}
	capacity := c.Capacity(T)
	taken := make([]int, E)
	for tok := 0; tok < T; tok++ {
		xr := x[tok*H : (tok+1)*H]
		lg := r.logits[tok*E : (tok+1)*E]
		m := math.Inf(-1)
		for e := 0; e < E; e++ {
			s := 0.0
			for h := 0; h < H; h++ {
				s += float64(xr[h]) * float64(gate[h*E+e])
			}
			lg[e] = s
			m = math.Max(m, s)
		}
		prob := make([]float64, E)
		sum := 0.0
		for e := range prob {
			prob[e] = math.Exp(lg[e] - m)
			sum += prob[e]
		}
		for e := range prob {
			prob[e] /= sum
		}
		// routing: the kernel's ids must be the reference's where the gap allows no tie
		order := make([]int, E)
		for e := range order {
			order[e] = e
		}
		sort.SliceStable(order, func(a, b int) bool { return prob[order[a]] > prob[order[b]] })
		mine := ids[tok*k : (tok+1)*k]
		if c.Route == config.RouteSkew {
			for j := range mine {
				if int(mine[j]) != j {
					t.Fatalf("token %d: skew ids %v, want 0..k-1", tok, mine)
				}
			}
		} else if _, gap := tolerances(c.DType); k < E && prob[order[k-1]]-prob[order[k]] > gap {
			want := map[int]bool{}
			for _, e := range order[:k] {
				want[e] = true
			}
			for _, e := range mine {
				if !want[int(e)] {
					t.Fatalf("token %d: kernel chose %v, reference top-%d %v (gap %.3g)", tok, mine, k, order[:k], prob[order[k-1]]-prob[order[k]])
				}
			}
		}
		ws := 0.0
		for _, e := range mine {
			ws += prob[e]
		}
		for j, e := range mine {
			w := prob[e]
			if c.Renormalize {
				w /= ws
			}
			if capacity >= 0 {
				if taken[e] >= capacity {
					w = 0
				}
				taken[e]++
			}
			r.w[tok*k+j] = w
			if w == 0 {
				continue
			}
			y := expert(c, ex[e], xr, I)
			for h := 0; h < H; h++ {
				r.out[tok*H+h] += w * y[h]
			}
		}
	}
	return r
}

func expert(c config.Layer, w datagen.Expert, x []float32, I int) []float64 {
	H := len(x)
	a := make([]float64, I)
	for i := 0; i < I; i++ {
		s, u := 0.0, 0.0
		for h := 0; h < H; h++ {
			s += float64(x[h]) * float64(w.W1[h*I+i])
			if c.FFN == config.FFNSwiGLU {
				u += float64(x[h]) * float64(w.Wu[h*I+i])
			}
		}
		switch c.FFN {
		case config.FFNSwiGLU:
			a[i] = s / (1 + math.Exp(-s)) * u
		case config.FFNGeLU:
			s += float64(w.B1[i])
			a[i] = 0.5 * s * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(s+0.044715*s*s*s)))
		default:
			a[i] = math.Max(0, s+float64(w.B1[i]))
		}
	}
	y := make([]float64, H)
	for h := 0; h < H; h++ {
		s := 0.0
		for i := 0; i < I; i++ {
			s += a[i] * float64(w.W2[i*H+h])
		}
		if c.FFN != config.FFNSwiGLU {
			s += float64(w.B2[h])
		}
		y[h] = s
	}
	return y
}

func relErr(got []float32, want []float64) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// openOneRank opens the backend on GPU 0 as a world of one rank, with a 2 s
// watchdog and the test's log.
func openOneRank(t *testing.T) *Backend {
	t.Helper()
	comm := transport.NewLocal(1, time.Minute).Rank(0)
	b, err := Open(comm, 0, Options{Watchdog: 2 * time.Second, DebugWithholdPeer: -1,
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// closeBackend closes b and reports its error.
func closeBackend(t *testing.T, b *Backend) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// TestForwardOneRank runs the tensor-core tile alone against a host
// reference (precise messages for a wrong tile), then forwards of small
// configurations on one GPU (world 1) in every precision mode, compared with
// a float64 computation; then graph replay; then the watchdog.
func TestForwardOneRank(t *testing.T) {
	needHopper(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	b := openOneRank(t)
	defer closeBackend(t, b)
	k := b.Kernel()
	t.Logf("kernel: %d registers, %d B local, %d B smem + %d B dynamic, %d blocks/SM x %d SMs = grid %d, flags %d",
		k.Registers, k.LocalBytes, k.StaticSmem, k.DynamicSmem, k.BlocksPerSM, k.SMs, k.Grid, b.KernelFlags())
	if w, ok := b.KernelWS(); ok {
		t.Logf("MOE_WS kernel beside it (%s): %d registers, %d B local, %d B dynamic, grid %d", w.CubinFrom, w.Registers, w.LocalBytes, w.DynamicSmem, w.Grid)
	}
	if u := b.UUID(); !strings.HasPrefix(u, "GPU-") || len(u) != 40 {
		t.Errorf("UUID %q: want NVML's GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", u)
	} else {
		t.Logf("device %s (%s)", u, b.Card())
	}

	// The tile alone: every fragment, swizzle and predicate, with a message
	// that names the first wrong element.
	t.Run("tile", func(t *testing.T) {
		seed := uint64(1)
		for _, d := range []config.DType{config.TF32, config.BF16} {
			for _, tc := range []TileCase{
				{NB: 1, MRows: 128, NCols: 128, K: 64}, {NB: 1, MRows: 128, NCols: 128, K: 512},
				{NB: 1, MRows: 77, NCols: 128, K: 192}, {NB: 1, MRows: 1, NCols: 64, K: 256},
				{NB: 1, MRows: 128, NCols: 8, K: 128}, {NB: 2, MRows: 128, NCols: 64, K: 128},
				{NB: 2, MRows: 33, NCols: 64, K: 320}, {NB: 2, MRows: 128, NCols: 16, K: 64},
				{NB: 1, MRows: 128, NCols: 96, K: 512}, {NB: 1, MRows: 5, NCols: 96, K: 192}, // the tensor-core gate's shape
			} {
				for _, tma := range []bool{false, true} {
					tc.DType, tc.Seed, tc.TMA = d, seed, tma
					seed++
					r, err := b.TileCheck(tc)
					if err != nil {
						t.Error(err)
						continue
					}
					t.Logf("tile %s: max rel. error %.2g over %d elements, %d zero pads, %v", tc, r.MaxErr, r.Checked, r.ZeroPads, r.Elapsed)
				}
			}
		}
	})

	base := config.Default()
	base.MaxTokens, base.Hidden, base.FFNHidden, base.Experts, base.TopK = 200, 128, 192, 8, 2
	cases := []struct {
		name string
		mod  func(*config.Layer)
	}{
		{"relu T=37", func(c *config.Layer) { c.Tokens = 37 }},
		{"relu T=200", func(c *config.Layer) { c.Tokens = 200 }},
		{"relu T=1", func(c *config.Layer) { c.Tokens = 1 }},
		{"relu T=0", func(c *config.Layer) { c.Tokens = 0 }},
		{"relu capacity 0.5", func(c *config.Layer) { c.Tokens = 150; c.CapacityFactor = 0.5 }},
		{"relu no renorm", func(c *config.Layer) { c.Tokens = 64; c.Renormalize = false }},
		{"relu skew", func(c *config.Layer) { c.Tokens = 100; c.Route = config.RouteSkew }},
		{"gelu", func(c *config.Layer) { c.Tokens = 77; c.FFN = config.FFNGeLU }},
		{"swiglu k=3", func(c *config.Layer) { c.Tokens = 90; c.FFN = config.FFNSwiGLU; c.TopK = 3 }},
		{"relu E=64 k=4 H=256", func(c *config.Layer) { c.Tokens = 130; c.Experts = 64; c.TopK = 4; c.Hidden = 256 }},
		// Row tiles of 128 full and partial (200 rows per expert), GEMM1 column
		// tiles partial (H = 192: 128 + 64), swiglu with > 128 rows.
		{"relu E=2 k=2 T=200", func(c *config.Layer) { c.Tokens = 200; c.Experts = 2 }},
		{"relu H=192 I=320", func(c *config.Layer) { c.Tokens = 150; c.Hidden = 192; c.FFNHidden = 320 }},
		{"swiglu E=2 k=2 T=200 I=256", func(c *config.Layer) {
			c.Tokens = 200
			c.Experts = 2
			c.FFN = config.FFNSwiGLU
			c.FFNHidden = 256
		}},
	}
	for _, dt := range []config.DType{config.FP32, config.TF32, config.BF16} {
		for _, tc := range cases {
			t.Run(string(dt)+" "+tc.name, func(t *testing.T) {
				c := base
				c.DType = dt
				tc.mod(&c)
				forwardCase(t, b, c)
			})
		}
	}

	// Graph replay: the same outputs, bitwise, as a plain launch; a second
	// replay; another T (another graph).
	t.Run("graph", func(t *testing.T) {
		defer func() { b.opt.Graph = false }()
		for _, dt := range []config.DType{config.FP32, config.BF16} {
			for _, T := range []int{150, 37} {
				c := base
				c.DType, c.Tokens = dt, T
				if err := b.Prepare(c); err != nil {
					t.Fatal(err)
				}
				x := datagen.Tokens(c, 0, c.Tokens)
				b.opt.Graph = false
				if _, err := b.Forward(c, x); err != nil {
					t.Fatal(err)
				}
				plain, err := b.Result()
				if err != nil {
					t.Fatal(err)
				}
				b.opt.Graph = true
				for rep := 0; rep < 2; rep++ {
					tm, err := b.Forward(c, x)
					if err != nil {
						t.Fatalf("%s T=%d graph forward %d: %v", dt, T, rep, err)
					}
					g, err := b.Result()
					if err != nil {
						t.Fatal(err)
					}
					if i := firstBitDiff(plain.Out, g.Out); i >= 0 {
						t.Fatalf("%s T=%d graph forward %d differs at %d: %g vs %g", dt, T, rep, i, g.Out[i], plain.Out[i])
					}
					t.Logf("%s T=%d graph forward %d: %v (%d graphs)", dt, T, rep, tm.Elapsed, len(b.graphs))
				}
			}
		}
	})

	// The serial-phase switches (params.h MOE_FLAG_*), bf16: the local
	// gather must give the same bits as copying the rows; the tensor-core
	// gate the SIMT gate's logits to fp32 accuracy (and the reference checks
	// above ran with both on).
	t.Run("flags", func(t *testing.T) {
		defer func() { b.flags = kernels.FlagsDefault }()
		for _, tc := range []struct {
			name string
			mod  func(*config.Layer)
		}{
			{"relu T=200", func(c *config.Layer) { c.Tokens = 200 }},
			{"relu capacity 0.5", func(c *config.Layer) { c.Tokens = 150; c.CapacityFactor = 0.5 }},
			{"swiglu E=2 k=2 T=200 I=256", func(c *config.Layer) {
				c.Tokens, c.Experts, c.FFN, c.FFNHidden = 200, 2, config.FFNSwiGLU, 256
			}},
			{"relu H=192 I=320", func(c *config.Layer) { c.Tokens = 150; c.Hidden = 192; c.FFNHidden = 320 }},
			{"relu E=64 k=4 H=256", func(c *config.Layer) { c.Tokens = 130; c.Experts = 64; c.TopK = 4; c.Hidden = 256 }},
		} {
			c := base
			c.DType = config.BF16
			tc.mod(&c)
			if err := b.Prepare(c); err != nil {
				t.Fatal(err)
			}
			x := datagen.Tokens(c, 0, c.Tokens)
			res := map[int]*backend.Result{}
			for _, f := range []int{0, kernels.FlagLocalGather, kernels.FlagGateTC, kernels.FlagsDefault} {
				b.flags = int32(f)
				if _, err := b.Forward(c, x); err != nil {
					t.Fatalf("%s flags %d: %v", tc.name, f, err)
				}
				r, err := b.Result()
				if err != nil {
					t.Fatal(err)
				}
				res[f] = r
			}
			same := func(a, b int) {
				ra, rb := res[a], res[b]
				if i := firstBitDiff(ra.Out, rb.Out); i >= 0 {
					t.Fatalf("%s: out[%d] with flags %d = %g, with flags %d = %g: the local gather must not change a bit",
						tc.name, i, a, ra.Out[i], b, rb.Out[i])
				}
			}
			same(0, kernels.FlagLocalGather)
			same(kernels.FlagGateTC, kernels.FlagsDefault)
			worst := 0.0
			for i, l := range res[0].Logits {
				d := math.Abs(float64(res[kernels.FlagGateTC].Logits[i]) - float64(l))
				worst = math.Max(worst, d/math.Max(1, math.Abs(float64(l))))
			}
			if worst > 1e-5 {
				t.Errorf("%s: tensor-core gate logits differ from the SIMT gate's by %.3g (relative)", tc.name, worst)
			}
			t.Logf("%s: gather bitwise equal; tensor-core gate logits within %.2g of the SIMT gate", tc.name, worst)
		}
	})

	// The TMA loads (kernels.FlagTMA) move the same bytes into the same
	// shared-memory layout for the same MMAs in the same order: every output
	// bit equals the cp.async loader's, with and without the bf16 gather of
	// the own rows (which keeps cp.async), in full, partial and swiglu tiles.
	t.Run("tma", func(t *testing.T) {
		defer func() { b.flags = kernels.FlagsDefault }()
		for _, dt := range []config.DType{config.TF32, config.BF16} {
			for _, tc := range []struct {
				name string
				mod  func(*config.Layer)
			}{
				{"relu T=200", func(c *config.Layer) { c.Tokens = 200 }},
				{"swiglu E=2 k=2 T=200 I=256", func(c *config.Layer) {
					c.Tokens, c.Experts, c.FFN, c.FFNHidden = 200, 2, config.FFNSwiGLU, 256
				}},
				{"swiglu k=3", func(c *config.Layer) { c.Tokens = 90; c.FFN = config.FFNSwiGLU; c.TopK = 3 }},
				{"relu H=192 I=320", func(c *config.Layer) { c.Tokens = 150; c.Hidden = 192; c.FFNHidden = 320 }},
				{"gelu E=64 k=4 H=256", func(c *config.Layer) {
					c.Tokens, c.Experts, c.TopK, c.Hidden, c.FFN = 130, 64, 4, 256, config.FFNGeLU
				}},
			} {
				c := base
				c.DType = dt
				tc.mod(&c)
				if err := b.Prepare(c); err != nil {
					t.Fatal(err)
				}
				x := datagen.Tokens(c, 0, c.Tokens)
				flags := []int{kernels.FlagsDefault, kernels.FlagsDefault | kernels.FlagTMA, kernels.FlagGateTC | kernels.FlagTMA}
				var first *backend.Result
				for _, f := range flags {
					b.flags = int32(f)
					if _, err := b.Forward(c, x); err != nil {
						t.Fatalf("%s %s flags %d: %v", dt, tc.name, f, err)
					}
					r, err := b.Result()
					if err != nil {
						t.Fatal(err)
					}
					if first == nil {
						first = r
						continue
					}
					if i := firstBitDiff(r.Out, first.Out); i >= 0 {
						t.Fatalf("%s %s: out[%d] with flags %d = %g, with flags %d = %g: the TMA loads must not change a bit",
							dt, tc.name, i, f, r.Out[i], flags[0], first.Out[i])
					}
				}
				t.Logf("%s %s: flags %v bitwise equal", dt, tc.name, flags)
			}
		}
	})

	// The trace: present, consistent, and without effect on the results.
	t.Run("trace", func(t *testing.T) {
		defer func() { b.opt.Trace = false; b.prepared = false }()
		for _, dt := range []config.DType{config.FP32, config.BF16} {
			c := base
			c.DType, c.Tokens = dt, 150
			b.opt.Trace, b.prepared = false, false
			if err := b.Prepare(c); err != nil {
				t.Fatal(err)
			}
			x := datagen.Tokens(c, 0, c.Tokens)
			if _, err := b.Forward(c, x); err != nil {
				t.Fatal(err)
			}
			plain, err := b.Result()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.TraceEvents(); err == nil {
				t.Error("TraceEvents without Options.Trace: want an error")
			}
			b.opt.Trace, b.prepared = true, false
			if err := b.Prepare(c); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Forward(c, x); err != nil {
				t.Fatal(err)
			}
			traced, err := b.Result()
			if err != nil {
				t.Fatal(err)
			}
			if i := firstBitDiff(plain.Out, traced.Out); i >= 0 {
				t.Fatalf("%s: tracing changed out[%d]: %g vs %g", dt, i, traced.Out[i], plain.Out[i])
			}
			evs, err := b.TraceEvents()
			if err != nil {
				t.Fatal(err)
			}
			checkTrace(t, c, b.LastGrid(), evs, b.TraceDropped())
			pt := b.PhaseTimes()
			order := []string{"gate", "barrier1", "topk", "barrier2", "route", "barrier3", "dispatch", "gemm1", "combine", "total"}
			for i, n := range order {
				if _, ok := pt[n]; !ok {
					t.Errorf("%s: PhaseTimes has no %q: %v", dt, n, pt)
				}
				if i > 0 && i%2 == 1 && pt[order[i-1]] > pt[n] { // a phase ends before the barrier after it
					t.Errorf("%s: %s ends at %v, after %s at %v", dt, order[i-1], pt[order[i-1]], n, pt[n])
				}
			}
			var buf strings.Builder
			if err := WriteChromeTrace(&buf, 0, evs); err != nil {
				t.Fatal(err)
			}
			var doc struct {
				TraceEvents []map[string]any `json:"traceEvents"`
			}
			if err := json.Unmarshal([]byte(buf.String()), &doc); err != nil || len(doc.TraceEvents) != len(evs)+1 {
				t.Fatalf("%s: chrome trace: %v, %d entries for %d events", dt, err, len(doc.TraceEvents), len(evs))
			}
			t.Logf("%s T=%d: %d events, %d dropped; %s", dt, c.Tokens, len(evs), b.TraceDropped(), phaseLine(Phases(evs)))
		}
	})

	// The paper's shape (H = I = 2048, E = 32, k = 2, T = 8192, bf16 and
	// tf32): latency with the serial-phase switches off and on, and where the
	// time goes (the trace), for the record. No reference (too slow on a CPU).
	t.Run("paper", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short")
		}
		defer func() { b.opt.Trace, b.prepared, b.flags = false, false, kernels.FlagsDefault }()
		for _, dt := range []config.DType{config.BF16, config.TF32} {
			c := config.Default()
			c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.DType = 8192, 8192, 2048, 2048, 32, 2, dt
			b.opt.Trace, b.prepared = false, false
			if err := b.Prepare(c); err != nil {
				t.Fatal(err)
			}
			x := datagen.Tokens(c, 0, c.Tokens)
			var outs [2][]float32
			for i, f := range []int{0, kernels.FlagsDefault} {
				b.flags = int32(f)
				var ts []time.Duration
				for it := 0; it < 15; it++ {
					tm, err := b.Forward(c, x)
					if err != nil {
						t.Fatal(err)
					}
					if it >= 3 {
						ts = append(ts, tm.Elapsed)
					}
				}
				sort.Slice(ts, func(a, b int) bool { return ts[a] < ts[b] })
				r, err := b.Result()
				if err != nil {
					t.Fatal(err)
				}
				outs[i] = r.Out
				t.Logf("paper %s flags %d: p50 %v (min %v, max %v)", dt, f, ts[len(ts)/2], ts[0], ts[len(ts)-1])
			}
			var num, den float64
			for i := range outs[0] {
				d := float64(outs[1][i]) - float64(outs[0][i])
				num += d * d
				den += float64(outs[0][i]) * float64(outs[0][i])
			}
			t.Logf("paper %s: flags 0 vs %d: relative difference %.3g", dt, kernels.FlagsDefault, math.Sqrt(num/math.Max(den, 1e-300)))
			b.opt.Trace, b.prepared = true, false
			if err := b.Prepare(c); err != nil {
				t.Fatal(err)
			}
			for _, f := range []int{0, kernels.FlagsDefault} {
				b.flags = int32(f)
				var tm backend.Timing
				for it := 0; it < 3; it++ {
					var err error
					if tm, err = b.Forward(c, x); err != nil {
						t.Fatal(err)
					}
				}
				evs, err := b.TraceEvents()
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("paper %s flags %d traced %v: %d events, %d dropped; %s", dt, f, tm.Elapsed, len(evs), b.TraceDropped(), phaseLine(Phases(evs)))
				if dir := os.Getenv("MOERUN_TRACE_DIR"); dir != "" {
					name := fmt.Sprintf("%s/paper-%s-flags%d.json", dir, dt, f)
					fh, err := os.Create(name)
					if err == nil {
						err = WriteChromeTrace(fh, 0, evs)
						if cerr := fh.Close(); err == nil {
							err = cerr
						}
					}
					if err != nil {
						t.Error(err)
					}
				}
			}
		}
	})

	// Last: the watchdog. Rank 0 withholds its dispatch signal to rank
	// (0+1)%1 = itself; the kernel must end with the watchdog's message well
	// within the host's bound, and the runtime must refuse further forwards.
	t.Run("watchdog", func(t *testing.T) {
		c := base
		c.Tokens = 10
		if err := b.Prepare(c); err != nil {
			t.Fatal(err)
		}
		b.opt.DebugWithholdPeer = 0
		start := time.Now()
		_, err := b.Forward(c, datagen.Tokens(c, 0, c.Tokens))
		el := time.Since(start)
		if err == nil {
			t.Fatal("forward with a withheld signal succeeded")
		}
		if !strings.Contains(err.Error(), "watchdog: rank 0 waited") || !strings.Contains(err.Error(), "dispatch signal from rank 0") {
			t.Errorf("error %q", err)
		}
		if el > 10*time.Second {
			t.Errorf("took %v with a 2s watchdog", el)
		}
		if _, err := b.Forward(c, datagen.Tokens(c, 0, c.Tokens)); err == nil || !strings.Contains(err.Error(), "refuses") {
			t.Errorf("forward after a trip: %v", err)
		}
		t.Logf("%v after %v", err, el)
	})
}

// forwardCase runs one forward of c on b, checks it against the float64
// reference with the mode's tolerance, and checks that a second forward is
// bitwise equal.
func forwardCase(t *testing.T, b *Backend, c config.Layer) {
	t.Helper()
	if err := b.Prepare(c); err != nil {
		t.Fatal(err)
	}
	x := datagen.Tokens(c, 0, c.Tokens)
	tm, err := b.Forward(c, x)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Result()
	if err != nil {
		t.Fatal(err)
	}
	r := reference(t, c, x, res.TopKIdx)
	for i, v := range res.Out {
		if v != v {
			t.Fatalf("out[%d] is NaN (row %d never written?)", i, i/c.Hidden)
		}
	}
	tol, _ := tolerances(c.DType)
	e := relErr(res.Out, r.out)
	if e > tol || math.IsNaN(e) {
		t.Errorf("relative error %.3g > %g", e, tol)
	}
	// The gate is fp32 in every mode (on the same, possibly bf16-rounded,
	// inputs as the reference): weights and logits to fp32 accuracy.
	for i, w := range r.w {
		if (w == 0) != (res.TopKW[i] == 0) || math.Abs(float64(res.TopKW[i])-w) > 1e-5*math.Max(1, math.Abs(w)) {
			t.Fatalf("topk_w[%d] = %g, reference %g", i, res.TopKW[i], w)
		}
	}
	for i, l := range r.logits {
		if math.Abs(float64(res.Logits[i])-l) > 1e-4*math.Max(1, math.Abs(l)) {
			t.Fatalf("logits[%d] = %g, reference %g", i, res.Logits[i], l)
		}
	}
	// Deterministic: a second forward is bitwise equal.
	if _, err := b.Forward(c, x); err != nil {
		t.Fatal(err)
	}
	again, err := b.Result()
	if err != nil {
		t.Fatal(err)
	}
	if i := firstBitDiff(res.Out, again.Out); i >= 0 {
		t.Fatalf("second forward differs at %d: %g vs %g", i, res.Out[i], again.Out[i])
	}
	t.Logf("%s: rel. error %.3g, %v, SM util %.2f, %d bytes put", c.DType, e, tm.Elapsed, tm.SMUtil, tm.BytesPut)
}

// checkTrace checks a world-1 forward's trace against what the kernel must
// have done: one setup per block, every block at each of the three barriers,
// dispatch events covering every kept row once,
// one route scan per expert, top-k and combine covering every token once,
// GEMM tasks with sane ids and times.
func checkTrace(t *testing.T, c config.Layer, grid int, evs []TraceEvent, dropped int) {
	t.Helper()
	if dropped != 0 {
		t.Errorf("%d events dropped on a small forward", dropped)
	}
	setup := map[int]int{}
	barriers := map[int]int{}
	routes := map[int]bool{}
	topk, comb, disp, g0, g1 := 0, 0, 0, 0, 0
	for _, e := range evs {
		if e.End < e.Start || e.Block < 0 || e.Block >= grid {
			t.Fatalf("bad event %+v", e)
		}
		switch e.Kind {
		case TraceSetup:
			setup[e.Block]++
		case TraceBarrier:
			barriers[e.A]++
		case TraceRoute:
			if routes[e.A] || e.A < 0 || e.A >= c.Experts {
				t.Errorf("route event for expert %d (twice or out of range)", e.A)
			}
			routes[e.A] = true
		case TraceTopK:
			topk += e.A
		case TraceCombine:
			comb += e.A
		case TraceDispatch:
			disp += e.A
		case TraceGEMM0, TraceGEMM1:
			if e.Src != 0 || e.Expert < 0 || e.Expert >= c.Experts || e.A < 0 || e.B < 0 {
				t.Errorf("GEMM event %+v", e)
			}
			if e.Kind == TraceGEMM0 {
				g0++
			} else {
				g1++
			}
		}
	}
	if len(setup) != grid {
		t.Errorf("setup events from %d blocks, grid %d", len(setup), grid)
	}
	for i := 1; i <= 3; i++ { // the dispatch has no barrier after it
		if barriers[i] != grid {
			t.Errorf("barrier %d: %d events, grid %d", i, barriers[i], grid)
		}
	}
	if len(routes) != c.Experts {
		t.Errorf("route events for %d experts of %d", len(routes), c.Experts)
	}
	if c.CapacityFactor == 0 && disp != c.Tokens*c.TopK { // one rank, dropless: every pair is a row of its own
		t.Errorf("dispatch events cover %d rows, want T*k = %d", disp, c.Tokens*c.TopK)
	}
	if topk != c.Tokens || comb != c.Tokens {
		t.Errorf("top-k covered %d tokens, combine %d, want %d", topk, comb, c.Tokens)
	}
	if g0 == 0 || g1 == 0 {
		t.Errorf("%d GEMM0 and %d GEMM1 events", g0, g1)
	}
}

// phaseLine is a one-line phase table: name end (busy/blocks).
func phaseLine(ps []PhaseStat) string {
	var sb strings.Builder
	for i, p := range ps {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "%s %.1fus (n=%d, first %.1f, busy %.1f)", p.Name, float64(p.End)/1e3, p.Count,
			float64(p.First)/1e3, float64(p.Busy)/1e3)
	}
	return sb.String()
}

// checkLayerOut compares a forward of c (one rank) with the float64
// reference of c's seed, within the mode's tolerance.
func checkLayerOut(t *testing.T, c config.Layer, x []float32, res *backend.Result) {
	t.Helper()
	r := reference(t, c, x, res.TopKIdx)
	tol, _ := tolerances(c.DType)
	if e := relErr(res.Out, r.out); e > tol || math.IsNaN(e) {
		t.Errorf("%s: relative error %.3g > %g", c, e, tol)
	}
}

// TestLayers prepares several layers on one GPU (world 1) sharing the
// buffers: layer 0 by Prepare (seed 1), layer 1 from host weights (those of
// seed 7), layer 2 generated (seed 9) narrower and of another FFN kind,
// layer 3 (fp32 only) from device weights (seed 11); runs them alternately,
// each against the float64 reference of its weights, twice (bitwise the
// same: the layers do not disturb each other); then (fp32) a forward on
// device pointers on a stream of the test's own, bitwise equal to
// ForwardLayer's.
func TestLayers(t *testing.T) {
	needHopper(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := openOneRank(t)
	defer closeBackend(t, b)
	for _, dt := range []config.DType{config.FP32, config.BF16} {
		t.Run(string(dt), func(t *testing.T) {
			// The test itself calls the driver (device weights, a stream of
			// its own): CUDA's context is per thread, so pin this goroutine
			// and make the backend's context current on it.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
				t.Fatal(err)
			}
			c0 := config.Default()
			c0.Tokens, c0.MaxTokens, c0.Hidden, c0.FFNHidden, c0.Experts, c0.TopK = 0, 200, 128, 192, 8, 2
			c0.DType, c0.Seed, c0.FFN = dt, 1, config.FFNReLU
			if err := b.Prepare(c0); err != nil {
				t.Fatal(err)
			}
			c1 := c0
			c1.Seed = 7
			w1 := &backend.Weights{Gate: datagen.Gate(c1), Experts: map[int]*datagen.Expert{}}
			for e := 0; e < c1.Experts; e++ {
				ex := datagen.ExpertWeights(c1, e)
				w1.Experts[e] = &ex
			}
			if err := b.PrepareLayer(1, c1, w1); err != nil {
				t.Fatal(err)
			}
			c2 := c0
			c2.Seed, c2.FFNHidden, c2.FFN = 9, 128, config.FFNSwiGLU
			if err := b.PrepareLayer(2, c2, nil); err != nil {
				t.Fatal(err)
			}
			wide := c0
			wide.FFNHidden = 256
			if err := b.PrepareLayer(5, wide, nil); err == nil || !strings.Contains(err.Error(), "ffn-hidden") {
				t.Errorf("a layer wider than the buffers: %v", err)
			}
			ids := []int{0, 1, 2}
			cfgs := map[int]config.Layer{0: c0, 1: c1, 2: c2}
			var dw []cuda.DevicePtr
			if dt == config.FP32 {
				c3 := c0
				c3.Seed, c3.FFN = 11, config.FFNGeLU
				dws, bufs := uploadDeviceWeights(t, b, c3)
				dw = bufs
				if err := b.PrepareLayerDevice(3, c3, dws); err != nil {
					t.Fatal(err)
				}
				ids, cfgs[3] = append(ids, 3), c3
			}
			defer func() {
				for _, p := range dw {
					b.drv.MemFree(p)
				}
			}()
			first := map[int][]float32{}
			for round := 0; round < 2; round++ {
				for _, id := range ids {
					c := cfgs[id]
					c.Tokens = 37 + 50*id
					x := datagen.Tokens(c, 0, c.Tokens)
					var err error
					if id == 0 && round == 0 {
						_, err = b.Forward(c, x)
					} else {
						_, err = b.ForwardLayer(id, c, x)
					}
					if err != nil {
						t.Fatalf("layer %d: %v", id, err)
					}
					res, err := b.Result()
					if err != nil {
						t.Fatal(err)
					}
					if round == 0 {
						checkLayerOut(t, c, x, res)
						first[id] = res.Out
						continue
					}
					if i := firstBitDiff(res.Out, first[id]); i >= 0 {
						t.Fatalf("layer %d, second round: out[%d] = %g, first round %g", id, i, res.Out[i], first[id][i])
					}
				}
			}
			// Device forwards in every dtype (bf16: the tokens converted on
			// the device) give ForwardLayer's output bit for bit.
			for _, id := range ids {
				c := cfgs[id]
				c.Tokens = 37 + 50*id
				deviceForwardCase(t, b, id, c, first[id])
			}
		})
	}
}

// uploadDeviceWeights puts c's generated weights for rank 0 of 1 in device
// memory (fp32), stacked as DeviceWeights says.
func uploadDeviceWeights(t *testing.T, b *Backend, c config.Layer) (*DeviceWeights, []cuda.DevicePtr) {
	t.Helper()
	var bufs []cuda.DevicePtr
	put := func(v []float32) DevicePtr {
		p, err := b.drv.MemAlloc(uint64(len(v)) * 4)
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, p)
		if err := b.drv.MemcpyHtoD(p, v); err != nil {
			t.Fatal(err)
		}
		return DevicePtr(p)
	}
	var w1, w2, wu, b1, b2 []float32
	for e := 0; e < c.Experts; e++ {
		ex := datagen.ExpertWeights(c, e)
		w1, w2, wu = append(w1, ex.W1...), append(w2, ex.W2...), append(wu, ex.Wu...)
		b1, b2 = append(b1, ex.B1...), append(b2, ex.B2...)
	}
	w := &DeviceWeights{Gate: put(datagen.Gate(c)), W1: put(w1), W2: put(w2)}
	if c.FFN == config.FFNSwiGLU {
		w.Wu = put(wu)
	} else {
		w.B1, w.B2 = put(b1), put(b2)
	}
	return w, bufs
}

// deviceForwardCase runs layer id on device pointers on a stream of its
// own and checks the output bitwise against want (ForwardLayer's), twice
// in a row without waiting in between (stream order).
func deviceForwardCase(t *testing.T, b *Backend, id int, c config.Layer, want []float32) {
	t.Helper()
	d := b.drv
	x := datagen.Tokens(c, 0, c.Tokens)
	n := uint64(len(x)) * 4
	xd, err := d.MemAlloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(xd)
	od, err := d.MemAlloc(2 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(od)
	if err := d.MemcpyHtoD(xd, x); err != nil {
		t.Fatal(err)
	}
	s, err := d.StreamCreate(true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.StreamDestroy(s)
	for k := uint64(0); k < 2; k++ {
		if _, err := b.ForwardLayerDevice(id, c, DevicePtr(xd), DevicePtr(uint64(od)+k*n), Stream(s)); err != nil {
			t.Fatalf("layer %d on device pointers: %v", id, err)
		}
	}
	if err := d.StreamSynchronize(s); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 2*len(x))
	if err := d.MemcpyDtoH(got, od); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if math.Float32bits(v) != math.Float32bits(want[i%len(want)]) {
			t.Fatalf("layer %d on device pointers: out[%d] = %g, ForwardLayer gave %g", id, i, v, want[i%len(want)])
		}
	}
	// A host forward after device forwards waits for them and still works.
	if _, err := b.ForwardLayer(id, c, x); err != nil {
		t.Fatalf("host forward after device forwards: %v", err)
	}
}

// TestTileThroughput runs the tensor-core tile alone on every SM (each block
// the same 128 x 128 tile over a long K, its operands in L2) with both
// loaders and one and two blocks per SM, checks block 0's tile against
// float64 and logs the rate: what the GEMM mainloop reaches without the
// forward's scheduling, epilogue and memory traffic. Figures only; no
// timing is asserted.
func TestTileThroughput(t *testing.T) {
	needHopper(t)
	if testing.Short() {
		t.Skip("-short")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := openOneRank(t)
	defer closeBackend(t, b)
	k := b.Kernel()
	const K = 16384
	seed := uint64(100)
	for _, d := range []config.DType{config.BF16, config.TF32} {
		for _, perSM := range []int{1, k.BlocksPerSM} {
			for _, tma := range []bool{false, true} {
				tc := TileCase{DType: d, NB: 1, MRows: 128, NCols: 128, K: K, Seed: seed, TMA: tma, Grid: perSM * k.SMs}
				seed++
				var best time.Duration
				for rep := 0; rep < 3; rep++ { // the first launch warms the operands into L2
					r, err := b.TileCheck(tc)
					if err != nil {
						t.Fatal(err)
					}
					if rep == 0 || r.Elapsed < best {
						best = r.Elapsed
					}
				}
				flop := float64(tc.Grid) * 2 * kernels.TCTileM * kernels.TCTileN * K
				t.Logf("tile throughput %s (%d blocks/SM): %.1f TFLOP/s (%v, best of 3)", tc, perSM, flop/best.Seconds()/1e12, best)
			}
		}
	}
}
