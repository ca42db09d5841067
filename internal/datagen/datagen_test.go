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
