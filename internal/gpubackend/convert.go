package gpubackend

import (
	"math"
	"runtime"
	"sync"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/kernels"
)

// The host side of the precision modes (params.h, "Precision modes"):
//   - fp32: everything uploaded as float32, weights [K][N] as datagen makes them;
//   - tf32: float32 storage; expert weights transposed to [N][K] (K
//     contiguous, what the tensor-core tile reads) and rounded to tf32 the
//     way cvt.rna.tf32.f32 does (the kernel rounds token rows and the
//     intermediate itself); tokens uploaded as given;
//   - bf16: tokens and expert weights as bf16 (round to nearest even: exact
//     for datagen's values, which are bf16 already), weights transposed.
// The gate weights and the biases stay float32 in every mode (their values
// are bf16 values in bf16 mode, so nothing changes numerically).

// storageBytes is the size of a stored token / weight element of dtype.
func storageBytes(d config.DType) int {
	if d == config.BF16 {
		return 2
	}
	return 4
}

// tensorCore says whether dtype runs the tensor-core tiles (transposed weights).
func tensorCore(d config.DType) bool { return d == config.TF32 || d == config.BF16 }

// bf16Bits rounds x to the nearest bf16 (ties to even) and returns its bits;
// NaN stays a (quiet) NaN.
func bf16Bits(x float32) uint16 {
	b := math.Float32bits(x)
	if x != x {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// roundTF32 rounds x to tf32 (10 mantissa bits), to nearest with ties away
// from zero, as cvt.rna.tf32.f32; Inf and NaN pass through.
func roundTF32(x float32) float32 {
	b := math.Float32bits(x)
	if b&0x7f800000 == 0x7f800000 {
		return x
	}
	return math.Float32frombits((b + 0x1000) &^ 0x1fff)
}

// parallelRange calls fn on disjoint pieces [lo, hi) of [0, n), in parallel
// when n is large.
func parallelRange(n, minChunk int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n <= minChunk || workers < 2 {
		fn(0, n)
		return
	}
	chunk := max(minChunk, (n+workers-1)/workers)
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() { defer wg.Done(); fn(lo, hi) }()
	}
	wg.Wait()
}

// toBF16 converts src into dst (len(dst) >= len(src)).
func toBF16(dst []uint16, src []float32) {
	parallelRange(len(src), 1<<16, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			dst[i] = bf16Bits(src[i])
		}
	})
}

// transposeTF32 returns src [rows][cols] transposed to [cols][rows], each
// value rounded to tf32.
func transposeTF32(src []float32, rows, cols int) []float32 {
	dst := make([]float32, rows*cols)
	transposeBlocks(rows, cols, func(r, c int) { dst[c*rows+r] = roundTF32(src[r*cols+c]) })
	return dst
}

// transposeBF16 returns src [rows][cols] transposed to [cols][rows] as bf16.
func transposeBF16(src []float32, rows, cols int) []uint16 {
	dst := make([]uint16, rows*cols)
	transposeBlocks(rows, cols, func(r, c int) { dst[c*rows+r] = bf16Bits(src[r*cols+c]) })
	return dst
}

// transposeBlocks visits every (r, c) of a rows x cols matrix once, in 32 x
// 32 blocks (cache friendly both ways), blocks of destination rows (c) in
// parallel: each call writes only destination rows of its own block.
func transposeBlocks(rows, cols int, visit func(r, c int)) {
	const blk = 32
	nb := (cols + blk - 1) / blk
	parallelRange(nb, 4, func(lo, hi int) {
		for cb := lo; cb < hi; cb++ {
			c0, c1 := cb*blk, min(cb*blk+blk, cols)
			for r0 := 0; r0 < rows; r0 += blk {
				r1 := min(r0+blk, rows)
				for r := r0; r < r1; r++ {
					for c := c0; c < c1; c++ {
						visit(r, c)
					}
				}
			}
		}
	})
}

// gatePiecesBF16 lays out the gate weights gate [H][E] (float32) for the
// kernel's tensor-core gate (bf16 mode, MOE_FLAG_GATE_TC): for each group of
// kernels.GateTCGroup experts, kernels.GateTCRows rows of H bf16, row
// piece*32 + i holding piece `piece` of expert group*32 + i's column (zero
// past E), where w = p1 + p2 + p3 + r, p1 = bf16(w), p2 = bf16(w - p1),
// p3 = bf16(w - p1 - p2) (each difference exact in float32), |r| <= 2^-24|w|
// or so: x.p1 + x.p2 + x.p3 in fp32 has the accuracy of the fp32 gate.
func gatePiecesBF16(gate []float32, h, e int) []uint16 {
	const group, rows = kernels.GateTCGroup, kernels.GateTCRows
	groups := (e + group - 1) / group
	out := make([]uint16, groups*rows*h)
	for ex := 0; ex < e; ex++ {
		g, i := ex/group, ex%group
		for k := 0; k < h; k++ {
			r := gate[k*e+ex]
			for piece := 0; piece < 3; piece++ {
				b := bf16Bits(r)
				out[(g*rows+piece*group+i)*h+k] = b
				r -= math.Float32frombits(uint32(b) << 16)
			}
		}
	}
	return out
}
