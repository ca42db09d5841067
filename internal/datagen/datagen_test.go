package datagen

import (
	"math"
	"testing"

	"github.com/moerun/moerun/internal/config"
)

func TestUniformIsDeterministicAndInRange(t *testing.T) {
	var sum, sum2 float64
	const n = 100000
	for i := range uint64(n) {
		v := Uniform(1, tensorID(kindW1, 3, 0), i)
		if v != Uniform(1, tensorID(kindW1, 3, 0), i) {
			t.Fatal("not deterministic")
		}
		if v < -1 || v >= 1 {
			t.Fatalf("value %v out of [-1, 1)", v)
		}
		sum += float64(v)
		sum2 += float64(v) * float64(v)
	}
	mean, variance := sum/n, sum2/n
	if math.Abs(mean) > 0.01 || math.Abs(variance-1.0/3) > 0.01 {
		t.Errorf("mean %v, variance %v: not U(-1, 1)", mean, variance)
	}
}

func TestTensorsDifferBySeedExpertAndRank(t *testing.T) {
	c := config.Default()
	c.Hidden, c.FFNHidden = 8, 8
	a, b := ExpertWeights(c, 0), ExpertWeights(c, 1)
	if a.W1[0] == b.W1[0] && a.W1[1] == b.W1[1] {
		t.Error("experts 0 and 1 share weights")
	}
	if Tokens(c, 0, 4)[0] == Tokens(c, 1, 4)[0] {
		t.Error("ranks 0 and 1 share tokens")
	}
	d := c
	d.Seed = 2
	if Gate(c)[0] == Gate(d)[0] {
		t.Error("seed does not change the gate")
	}
}

func TestTokensShareRowsAcrossCallSizes(t *testing.T) {
	c := config.Default()
	c.Hidden = 16
	short, long := Tokens(c, 2, 3), Tokens(c, 2, 50)
	for i := range short {
		if short[i] != long[i] {
			t.Fatalf("element %d differs between T=3 and T=50", i)
		}
	}
}

func TestParallelFillEqualsSerial(t *testing.T) {
	dst := make([]float32, 1<<17)
	fill(dst, 5, tensorID(kindW2, 1, 0), 0.5, false)
	ref := make([]float32, len(dst))
	fillRange(ref, 0, len(ref), 5, tensorID(kindW2, 1, 0), 0.5, false)
	for i := range dst {
		if dst[i] != ref[i] {
			t.Fatalf("element %d: parallel %v, serial %v", i, dst[i], ref[i])
		}
	}
}

func TestRoundBF16(t *testing.T) {
	for _, tc := range []struct{ in, want float32 }{
		{1, 1},
		{1 + 1.0/256, 1},           // exactly halfway to the next bf16: ties to even (down)
		{1 + 3.0/256, 1 + 4.0/256}, // halfway, odd below: rounds up
		{1 + 1.0/128 + 1e-6, 1.0078125},
		{-2.5, -2.5},
	} {
		if got := RoundBF16(tc.in); got != tc.want {
			t.Errorf("RoundBF16(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	c := config.Default()
	c.Hidden, c.FFNHidden, c.DType = 8, 8, config.BF16
	for _, v := range ExpertWeights(c, 0).W1 {
		if math.Float32bits(v)&0xffff != 0 {
			t.Fatalf("bf16 weight %v has low mantissa bits", v)
		}
	}
}

func TestRoundedBF16CopiesOnlyWhenAValueChanges(t *testing.T) {
	exact := []float32{0, 1, -2.5, 0.15625, float32(math.Inf(1))}
	if got := RoundedBF16(exact); &got[0] != &exact[0] {
		t.Error("bf16 values: a copy was made")
	}
	x := []float32{1, 1.00390625 /* 1 + 2^-8: a tie, to even: 1 */, 1.01171875 /* 1 + 3·2^-8: to 1 + 2^-6 */, -3.14159}
	orig := append([]float32(nil), x...)
	got := RoundedBF16(x)
	want := []float32{1, 1, 1.015625, -3.140625}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("RoundedBF16(%v)[%d] = %v, want %v", orig[i], i, got[i], want[i])
		}
		if x[i] != orig[i] {
			t.Errorf("the input changed at %d: %v", i, x[i])
		}
	}
}

func TestStoredAsRoundsMatricesInBF16Only(t *testing.T) {
	ex := &Expert{W1: []float32{1.01171875}, B1: []float32{1.01171875}, W2: []float32{0.5}, B2: nil, Wu: []float32{-3.14159}}
	if ex.StoredAs(config.FP32) != ex || ex.StoredAs(config.TF32) != ex {
		t.Error("fp32/tf32: not the expert itself")
	}
	r := ex.StoredAs(config.BF16)
	if r == ex || r.W1[0] != 1.015625 || r.Wu[0] != -3.140625 || r.W2[0] != 0.5 {
		t.Errorf("bf16: %+v", r)
	}
	if r.B1[0] != 1.01171875 || ex.W1[0] != 1.01171875 {
		t.Errorf("bf16: the bias was rounded or the input changed: %+v, %+v", r, ex)
	}
	same := &Expert{W1: []float32{1}, W2: []float32{2}}
	if same.StoredAs(config.BF16) != same {
		t.Error("bf16 values already: a copy was made")
	}
}
