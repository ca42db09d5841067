// gemm.cuh: the block-level GEMM tile (fp32 SIMT) and the activations.
//
// One 256-thread block computes a kTileM x kTileN (64 x 64) tile of
// A[rows, K] * B[K, N] for NB B operands at once (NB = 2 for swiglu's gate and
// up projections, which share A). Thread (ty, tx) of a 16 x 16 grid owns rows
// ty*4..ty*4+3 and columns tx*4..tx*4+3. K advances by kTileK (16) with two
// shared-memory stages and a register prefetch of the next stage, so one
// __syncthreads per K step. Rows >= mrows and columns >= ncols are predicated
// (loaded as zero, never stored by the epilogues).
//
// The fp32 mode's expert GEMMs and the gate GEMM of every mode use it; the
// tf32/bf16 expert GEMMs use the tensor-core tile of gemm_tc.cuh. TA is the
// storage type of A: float, or __nv_bfloat16 (the gate reading bf16 tokens;
// widened exactly, the math stays fp32).
#pragma once

#include <cuda_bf16.h>

#include "common.cuh"

namespace moe {

template <int NB>
struct GemmSmem {
  float As[2][kTileK][kTileM + 4];  // A transposed: As[k][m]; +4 staggers banks
  float Bs[2][NB][kTileK][kTileN];  // B as is: Bs[k][n]
};
static_assert(sizeof(GemmSmem<2>) + kTileM * sizeof(int) <= kSimtPhaseBytes, "GEMM stages fit the phase buffer");

template <int NB, typename TA = float>
struct GemmArgs {
  const TA* a;        // A[0][0] of the tile; rows are lda elements apart
  int64_t lda;
  int mrows;          // valid rows, 0..kTileM
  const float* b[NB]; // B[0][n0] of the tile; rows are ldb floats apart
  int64_t ldb;
  int ncols;          // valid columns, 0..kTileN
  int K;              // multiple of kTileK
  bool bvec;          // B rows 16-byte aligned and ncols == kTileN: float4 loads
};

template <int NB, typename TA>
__device__ __forceinline__ void gemm_load(const GemmArgs<NB, TA>& g, int k0, float4& ra, float4 (&rb)[NB]) {
  const int tid = threadIdx.x;
  // A: 64 rows x 16 k = 256 float4, one per thread.
  {
    const int r = tid >> 2, kq = (tid & 3) * 4;
    const TA* src = g.a + static_cast<int64_t>(r) * g.lda + k0 + kq;
    if (r >= g.mrows) {
      ra = make_float4(0.f, 0.f, 0.f, 0.f);
    } else if constexpr (sizeof(TA) == 4) {
      ra = ld_cg4(reinterpret_cast<const float*>(src));
    } else {
      ra = bf16x4_to_float4(__ldcg(reinterpret_cast<const uint2*>(src)));
    }
  }
  // B: 16 k x 64 n = 256 float4, one per thread.
  const int kr = tid >> 4, nq = (tid & 15) * 4;
#pragma unroll
  for (int o = 0; o < NB; ++o) {
    const float* row = g.b[o] + static_cast<int64_t>(k0 + kr) * g.ldb;
    if (g.bvec) {
      rb[o] = __ldg(reinterpret_cast<const float4*>(row + nq));
    } else {
      rb[o].x = nq + 0 < g.ncols ? __ldg(row + nq + 0) : 0.f;
      rb[o].y = nq + 1 < g.ncols ? __ldg(row + nq + 1) : 0.f;
      rb[o].z = nq + 2 < g.ncols ? __ldg(row + nq + 2) : 0.f;
      rb[o].w = nq + 3 < g.ncols ? __ldg(row + nq + 3) : 0.f;
    }
  }
}

template <int NB>
__device__ __forceinline__ void gemm_store(GemmSmem<NB>& s, int st, const float4& ra, const float4 (&rb)[NB]) {
  const int tid = threadIdx.x;
  const int r = tid >> 2, kq = (tid & 3) * 4;
  s.As[st][kq + 0][r] = ra.x;
  s.As[st][kq + 1][r] = ra.y;
  s.As[st][kq + 2][r] = ra.z;
  s.As[st][kq + 3][r] = ra.w;
  const int kr = tid >> 4, nq = (tid & 15) * 4;
#pragma unroll
  for (int o = 0; o < NB; ++o) *reinterpret_cast<float4*>(&s.Bs[st][o][kr][nq]) = rb[o];
}

// acc[o][i][j]: row ty*4+i, column tx*4+j of B operand o. The caller must
// __syncthreads() before reusing the shared buffer.
template <int NB, typename TA>
__device__ __forceinline__ void gemm_tile(const GemmArgs<NB, TA>& g, GemmSmem<NB>& s, float (&acc)[NB][4][4]) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int o = 0; o < NB; ++o)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[o][i][j] = 0.f;

  float4 ra, rb[NB];
  gemm_load(g, 0, ra, rb);
  gemm_store<NB>(s, 0, ra, rb);
  block_sync();
  const int steps = g.K / kTileK;
  for (int step = 0; step < steps; ++step) {
    const int st = step & 1;
    const bool more = step + 1 < steps;
    if (more) gemm_load(g, (step + 1) * kTileK, ra, rb);
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      const float4 a = *reinterpret_cast<const float4*>(&s.As[st][kk][ty * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int o = 0; o < NB; ++o) {
        const float4 b = *reinterpret_cast<const float4*>(&s.Bs[st][o][kk][tx * 4]);
        const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[o][i][j] = fmaf(av[i], bv[j], acc[o][i][j]);
      }
    }
    if (more) gemm_store<NB>(s, st ^ 1, ra, rb);
    block_sync();
  }
}

__device__ __forceinline__ float act_relu(float x) { return fmaxf(x, 0.f); }
// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float act_gelu(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
}
__device__ __forceinline__ float act_silu(float x) { return x / (1.f + expf(-x)); }
// SiLU for the tensor-core epilogue: approximate exp and division (a few ulp,
// far inside the tf32/bf16 tolerances) because IEEE division compiles to a
// subroutine call, and ptxas serialises wgmma in any function with a call.
// x / inf (x very negative) gives 0 here as there.
__device__ __forceinline__ float act_silu_fast(float x) { return __fdividef(x, 1.f + __expf(-x)); }

}  // namespace moe
