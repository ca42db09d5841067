package symheap

import (
	"sort"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/kernels"
)

func layer(t, h, i, e, k int, ffn config.FFN) config.Layer {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.FFN = t, t, h, i, e, k, ffn
	return c
}

func checkArena(t *testing.T, what string, regs []Region, total uint64) {
	t.Helper()
	sorted := append([]Region(nil), regs...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].Off < sorted[b].Off })
	names := map[string]bool{}
	for idx, r := range sorted {
		if names[r.Name] {
			t.Errorf("%s: region %q twice", what, r.Name)
		}
		names[r.Name] = true
		if r.Off%Align != 0 {
			t.Errorf("%s: %s at %d, not %d-aligned", what, r.Name, r.Off, Align)
		}
		if r.End() > total {
			t.Errorf("%s: %s ends at %d, past the total %d", what, r.Name, r.End(), total)
		}
		if idx > 0 && sorted[idx-1].End() > r.Off {
			t.Errorf("%s: %s [%d,%d) overlaps %s [%d,%d)", what, sorted[idx-1].Name, sorted[idx-1].Off,
				sorted[idx-1].End(), r.Name, r.Off, r.End())
		}
	}
	if total%Align != 0 {
		t.Errorf("%s: total %d not aligned", what, total)
	}
}

func TestPlanSizes(t *testing.T) {
	// The paper's shape on 4 ranks: E/W = 8, k = 2.
	c := layer(8192, 2048, 2048, 32, 2, config.FFNReLU)
	p, err := Plan(c, 4)
	if err != nil {
		t.Fatal(err)
	}
	if p.RowsPerSource != 8192*2 {
		t.Errorf("RowsPerSource %d, want %d (MaxTokens*min(k,E/W))", p.RowsPerSource, 8192*2)
	}
	if want := uint64(4 * 8192 * 2 * 2048 * 4); p.RecvRows.Size != want {
		t.Errorf("recv rows %d, want %d (W*T*min(k,E/W)*H*4, not W*(E/W)*T*H*4)", p.RecvRows.Size, want)
	}
	if want := uint64(8192 * 2 * 2048 * 4); p.RetRows.Size != want {
		t.Errorf("return rows %d, want %d", p.RetRows.Size, want)
	}
	if p.SigDispatch.Size != 4*8 || p.SigReturn.Size != 4*8 || p.Seq.Size != 8 {
		t.Errorf("signals %d/%d seq %d", p.SigDispatch.Size, p.SigReturn.Size, p.Seq.Size)
	}
	if p.Status.Size != uint64(kernels.StatusSize) {
		t.Errorf("status %d, want %d", p.Status.Size, kernels.StatusSize)
	}
	if want := 4 * 8192; p.GatePartRows != want || p.LogitsPart.Size != uint64(want*32*4) {
		t.Errorf("gate partial sums: %d rows, %d bytes; want %d rows (4 splits of 8192 tokens)", p.GatePartRows, p.LogitsPart.Size, want)
	}
	if small, err := Plan(layer(128, 2048, 2048, 32, 2, config.FFNReLU), 4); err != nil || small.GatePartRows != kernels.GateMaxSplit*128 {
		t.Errorf("max-tokens 128: %d partial-sum rows, want %d (every split) (%v)", small.GatePartRows, kernels.GateMaxSplit*128, err)
	}
	if want := 2 * 4 * (16384/64 + 8); p.MaxRowTiles != want {
		t.Errorf("MaxRowTiles %d, want %d", p.MaxRowTiles, want)
	}
	if p.Wu.Name != "" || p.B1.Size != 8*2048*4 || p.B2.Size != 8*2048*4 {
		t.Errorf("relu: wu %+v b1 %+v b2 %+v", p.Wu, p.B1, p.B2)
	}
	if want := uint64(8 * 2048 * 2048 * 4); p.W1.Size != want || p.W2.Size != want {
		t.Errorf("W1 %d W2 %d, want %d", p.W1.Size, p.W2.Size, want)
	}
	checkArena(t, "symmetric", p.SymRegions(), p.SymTotal)
	checkArena(t, "local", p.LocalRegions(), p.LocalTotal)
	if !strings.Contains(p.String(), "symmetric") {
		t.Errorf("String: %q", p.String())
	}
}

func TestPlanSwiGLUAndSmallExpertsPerRank(t *testing.T) {
	// E/W = 1 < k: a token reaches an owner at most once.
	c := layer(100, 128, 192, 8, 4, config.FFNSwiGLU)
	p, err := Plan(c, 8)
	if err != nil {
		t.Fatal(err)
	}
	if p.RowsPerSource != 100 {
		t.Errorf("RowsPerSource %d, want 100 (min(k=4, E/W=1) = 1)", p.RowsPerSource)
	}
	if p.Wu.Size != 128*192*4 || p.B1.Name != "" || p.B2.Name != "" {
		t.Errorf("swiglu: wu %+v b1 %+v b2 %+v", p.Wu, p.B1, p.B2)
	}
	checkArena(t, "symmetric", p.SymRegions(), p.SymTotal)
	checkArena(t, "local", p.LocalRegions(), p.LocalTotal)
}

func TestPlanDTypes(t *testing.T) {
	// The paper's shape on 4 ranks in each mode: rows, intermediate and
	// expert weights in the storage dtype; out, gate, biases fp32.
	for _, tc := range []struct {
		d      config.DType
		es, rs uint64
	}{{config.FP32, 4, 4}, {config.TF32, 4, 4}, {config.BF16, 2, 2}} {
		c := layer(8192, 2048, 2048, 32, 2, config.FFNReLU)
		c.DType = tc.d
		p, err := Plan(c, 4)
		if err != nil {
			t.Fatalf("%s: %v", tc.d, err)
		}
		if p.ElemSize != tc.es || p.RetElemSize != tc.rs || p.DType != tc.d {
			t.Errorf("%s: elem %d ret %d", tc.d, p.ElemSize, p.RetElemSize)
		}
		if want := uint64(4*8192*2*2048) * tc.es; p.RecvRows.Size != want {
			t.Errorf("%s: recv rows %d, want %d", tc.d, p.RecvRows.Size, want)
		}
		if want := uint64(8192*2*2048) * tc.rs; p.RetRows.Size != want {
			t.Errorf("%s: return rows %d, want %d", tc.d, p.RetRows.Size, want)
		}
		if want := uint64(8192*2048) * tc.es; p.X.Size != want {
			t.Errorf("%s: x %d, want %d", tc.d, p.X.Size, want)
		}
		if want := uint64(4*8192*2*2048) * tc.es; p.Inter.Size != want {
			t.Errorf("%s: inter %d, want %d", tc.d, p.Inter.Size, want)
		}
		if want := uint64(8*2048*2048) * tc.es; p.W1.Size != want || p.W2.Size != want {
			t.Errorf("%s: W1 %d W2 %d, want %d", tc.d, p.W1.Size, p.W2.Size, want)
		}
		if p.Out.Size != 8192*2048*4 || p.GateW.Size != 2048*32*4 || p.B1.Size != 8*2048*4 || p.B2.Size != 8*2048*4 {
			t.Errorf("%s: out %d gate %d b1 %d b2 %d: float32 in every mode", tc.d, p.Out.Size, p.GateW.Size, p.B1.Size, p.B2.Size)
		}
		checkArena(t, string(tc.d)+" symmetric", p.SymRegions(), p.SymTotal)
		checkArena(t, string(tc.d)+" local", p.LocalRegions(), p.LocalTotal)
	}
}

func TestPlanZeroTokens(t *testing.T) {
	c := layer(0, 64, 64, 4, 1, config.FFNGeLU)
	p, err := Plan(c, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.RecvRows.Size != 0 || p.RetRows.Size != 0 {
		t.Errorf("MaxTokens 0: rows %d %d", p.RecvRows.Size, p.RetRows.Size)
	}
	if p.SymTotal == 0 || p.LocalTotal == 0 {
		t.Error("totals must be positive (signals, status, weights)")
	}
	checkArena(t, "symmetric", p.SymRegions(), p.SymTotal)
	checkArena(t, "local", p.LocalRegions(), p.LocalTotal)
	if p.MaxRowTiles != 2*2*(0+2) {
		t.Errorf("MaxRowTiles %d", p.MaxRowTiles)
	}
}

func TestPlanSameOnEveryRankAndIndependentOfTokens(t *testing.T) {
	a := layer(512, 256, 256, 16, 2, config.FFNReLU)
	b := a
	b.Tokens = 3
	pa, err := Plan(a, 4)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := Plan(b, 4)
	if err != nil {
		t.Fatal(err)
	}
	if pa != pb {
		t.Error("the layout must depend on MaxTokens only, not on Tokens")
	}
}

func TestPlanRefusals(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*config.Layer)
		world int
		want  string
	}{
		{"hidden", func(c *config.Layer) { c.Hidden = 100 }, 2, "multiple of 64"},
		{"ffn hidden", func(c *config.Layer) { c.FFNHidden = 96 }, 2, "ffn-hidden 96"},
		{"topk", func(c *config.Layer) { c.Experts = 64; c.TopK = 33 }, 2, "at most 32"},
		{"world", func(c *config.Layer) { c.Experts = 128 }, 128, "at most 64 ranks"},
		{"experts not divisible", func(c *config.Layer) { c.Experts = 6 }, 4, "multiple of the number of ranks"},
	}
	for _, tc := range cases {
		c := layer(64, 128, 128, 8, 2, config.FFNReLU)
		tc.mod(&c)
		_, err := Plan(c, tc.world)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want mention of %q", tc.name, err, tc.want)
		}
	}
}

func TestAddr(t *testing.T) {
	if Addr(0x1000, Region{Name: "a", Off: 0x200}) != 0x1200 {
		t.Error("Addr")
	}
	if Addr(0x1000, Region{}) != 0 {
		t.Error("an unplanned region has address 0")
	}
	if Bytes(3<<30) != "3.00 GiB" || Bytes(12) != "12 B" {
		t.Errorf("Bytes: %s %s", Bytes(3<<30), Bytes(12))
	}
}
