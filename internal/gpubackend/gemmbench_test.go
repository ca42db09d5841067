package gpubackend

import (
	"testing"
)

// TestGemmBenchCheck runs both GEMM-phase entries on small shapes with
// every row compared against float64 (every tile position, both experts'
// weights, task counts that do not divide the grid).
func TestGemmBenchCheck(t *testing.T) {
	needHopper(t)
	b := openOneRank(t)
	defer closeBackend(t, b)
	seed := uint64(300)
	for _, tile := range []GemmTile{GemmTC, GemmWS, GemmWide} {
		for _, c := range []GemmCase{
			{Experts: 1, Rows: 128, N: 256, K: 64},
			{Experts: 2, Rows: 384, N: 512, K: 576},
			{Experts: 3, Rows: 256, N: 768, K: 2048},
			{Experts: 3, Rows: 512, N: 512, K: 128, Sources: 4}, // the forward's order: every tile still once
		} {
			c.Tile, c.Seed, c.Iters, c.CheckEvery = tile, seed, 1, 1
			seed++
			r, err := b.GemmBench(c)
			if err != nil {
				t.Error(err)
				continue
			}
			t.Logf("%s: grid %d (%d/SM), %d elements checked, max rel. error %.2g", c, r.Grid, r.BlocksPerSM, r.Checked, r.MaxErr)
		}
	}
}

// TestGemmPhaseThroughput measures the GEMM phase of the paper's shape at
// W = 4 (8 local experts, 2048 rows each, H = I = 2048) with the forward's
// tile, the warp-specialised one and the same without its producer, in
// expert-major order, and the first two in the forward's arrival order of 4
// sources; twice each in alternation (the second round says the noise).
// Sampled rows are checked; figures only, no timing is asserted.
func TestGemmPhaseThroughput(t *testing.T) {
	needHopper(t)
	if testing.Short() {
		t.Skip("-short")
	}
	b := openOneRank(t)
	defer closeBackend(t, b)
	for rep := 0; rep < 2; rep++ {
		// 8 experts x 2048 rows: the forward's GEMM0 at W = 4; 32 x 512: at
		// W = 1 (a weight slab serves 4 row tiles, not 16), the same FLOPs.
		for _, tc := range []struct {
			tile          GemmTile
			sources       int
			experts, rows int
		}{{GemmTC, 1, 8, 2048}, {GemmWS, 1, 8, 2048}, {GemmWide, 1, 8, 2048}, {GemmTC, 4, 8, 2048}, {GemmWS, 4, 8, 2048},
			{GemmTC, 1, 32, 512}, {GemmWS, 1, 32, 512}} {
			c := GemmCase{Tile: tc.tile, Experts: tc.experts, Rows: tc.rows, N: 2048, K: 2048, Sources: tc.sources, Seed: uint64(400 + rep),
				Warmup: 3, Iters: 20, CheckEvery: 61}
			r, err := b.GemmBench(c)
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := r.Times[0], r.Times[0]
			for _, x := range r.Times {
				lo, hi = min(lo, x), max(hi, x)
			}
			t.Logf("%s: grid %d (%d/SM): median %v (min %v, max %v over %d) = %.1f TFLOP/s; %d elements checked, max rel. error %.2g",
				c, r.Grid, r.BlocksPerSM, r.Median, lo, hi, len(r.Times), r.TFLOPs, r.Checked, r.MaxErr)
		}
	}
}
