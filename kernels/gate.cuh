// gate.cuh: logits = X . Wg (fp32 FMA, every mode), softmax over E in fp32, top-k.
//
// Phase 1 (gate_gemm): tiles of 64 tokens x 64 experts x (H / ksplit),
// strided over the blocks; each tile writes its partial sums to
// logits_part[split] ([split][T][E]: split s of token t at (s T + t) E).
// The K split gives the gate enough tiles to occupy the grid when T*E is
// small (the host's gateSplit); the partials are added in split order
// (fixed), so the result is deterministic.
// Phase 2 (gate_topk), after a grid barrier: one warp per token sums the
// partials into logits, takes the softmax (max and sum by fixed butterflies)
// and selects the top k by probability, ties to the lower expert index.
#pragma once

#include "gemm.cuh"
#include "gemm_tc.cuh"
#include "sync.cuh"

namespace moe {

// TX: storage type of x (float, or __nv_bfloat16 in bf16 mode; gate_w and
// the math are fp32 in every mode).
template <typename TX>
__device__ inline void gate_gemm_t(Ctx& c) {
  const MoeParams& p = c.p;
  const int T = p.tokens, E = p.experts, H = p.hidden, ks = p.gate_ksplit;
  const int mt_n = (T + kTileM - 1) / kTileM, nt_n = (E + kTileN - 1) / kTileN;
  const int tiles = mt_n * nt_n * ks;
  const int kc = H / ks;
  auto& s = *reinterpret_cast<GemmSmem<1>*>(c.phase);
  const TX* x = reinterpret_cast<const TX*>(p.x);
  const float* wg = reinterpret_cast<const float*>(p.gate_w);
  float* part = reinterpret_cast<float*>(p.logits_part);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
    const int split = tile % ks;
    const int nt = (tile / ks) % nt_n;
    const int mt = tile / (ks * nt_n);
    GemmArgs<1, TX> g;
    g.a = x + static_cast<int64_t>(mt) * kTileM * H + static_cast<int64_t>(split) * kc;
    g.lda = H;
    g.mrows = min(kTileM, T - mt * kTileM);
    g.b[0] = wg + static_cast<int64_t>(split) * kc * E + nt * kTileN;
    g.ldb = E;
    g.ncols = min(kTileN, E - nt * kTileN);
    g.K = kc;
    g.bvec = false;
    float acc[1][4][4];
    gemm_tile(g, s, acc);
    float* dst = part + (static_cast<int64_t>(split) * T + static_cast<int64_t>(mt) * kTileM) * E +
                 nt * kTileN;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ty * 4 + i;
      if (r >= g.mrows) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n = tx * 4 + j;
        if (n < g.ncols) dst[static_cast<int64_t>(r) * E + n] = acc[0][i][j];
      }
    }
    if (threadIdx.x == 0) {
      const uint64_t t1 = globaltimer();
      c.busy += t1 - t0;
      trace_ev(c, MOE_EV_GATE, t0, t1, -1, mt, nt, split);
    }
  }
}

// The gate on bf16 tensor cores (bf16 mode, MOE_FLAG_GATE_TC). gate_t holds,
// for each group of kGateGroup experts, 3 x kGateGroup rows of H bf16: the
// pieces p1 = bf16(w), p2 = bf16(w - p1), p3 = bf16(w - p1 - p2) of the
// group's gate columns (the host splits them; zero rows past E). One task =
// 128 tokens x one group x H / ksplit of K: the tensor-core tile (96 of its
// 128 B rows used) gives x.p1, x.p2, x.p3 side by side; every product is
// exact in fp32 (bf16 x bf16) and the accumulation is fp32, so the partial
// logit (x.p1 + x.p2) + x.p3 has fp32 accuracy. Partials go to
// logits_part[split], summed in split order by gate_topk, as for the SIMT gate.
constexpr int kGateGroup = MOE_GATE_TC_GROUP;
static_assert(MOE_GATE_TC_ROWS == 3 * kGateGroup && MOE_GATE_TC_ROWS <= kTcTileN, "gate pieces fit one B tile");

__device__ __forceinline__ bool gate_tc(const MoeParams& p) {
  return p.dtype == MOE_DTYPE_BF16 && (p.flags & MOE_FLAG_GATE_TC) != 0;
}

__device__ inline void gate_gemm_tc(Ctx& c) {
  const MoeParams& p = c.p;
  const int T = p.tokens, E = p.experts, H = p.hidden, ks = p.gate_ksplit;
  const int mt_n = (T + kTcTileM - 1) / kTcTileM, nt_n = (E + kGateGroup - 1) / kGateGroup;
  const int tiles = mt_n * nt_n * ks;
  const int kc = H / ks;
  const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(p.x);
  const __nv_bfloat16* gt = reinterpret_cast<const __nv_bfloat16*>(p.gate_t);
  float* part = reinterpret_cast<float*>(p.logits_part);
  float* cs = reinterpret_cast<float*>(c.phase);
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
    const int split = tile % ks;
    const int nt = (tile / ks) % nt_n;
    const int mt = tile / (ks * nt_n);
    TcArgs<1> g;
    g.a = x + static_cast<int64_t>(mt) * kTcTileM * H + static_cast<int64_t>(split) * kc;
    g.lda = H;
    g.mrows = min(kTcTileM, T - mt * kTcTileM);
    g.b[0] = gt + static_cast<int64_t>(nt) * MOE_GATE_TC_ROWS * H + static_cast<int64_t>(split) * kc;
    g.ldb = H;
    g.ncols = MOE_GATE_TC_ROWS;
    g.K = kc;
    tc_tile_stage<MmaBF16, 1>(g, c.phase, kOpNone, nullptr);
    block_sync();
    const int e0 = nt * kGateGroup, ne = min(kGateGroup, E - e0);
    float* dst = part + (static_cast<int64_t>(split) * T + static_cast<int64_t>(mt) * kTcTileM) * E + e0;
    for (int i = threadIdx.x; i < g.mrows * kGateGroup; i += kThreads) {
      const int r = i / kGateGroup, e = i % kGateGroup;
      if (e < ne) {
        const float* row = cs + r * kTcCsStride;
        dst[static_cast<int64_t>(r) * E + e] = (row[e] + row[kGateGroup + e]) + row[2 * kGateGroup + e];
      }
    }
    block_sync();  // cs is the next tile's stage buffer
    if (threadIdx.x == 0) {
      const uint64_t t1 = globaltimer();
      c.busy += t1 - t0;
      trace_ev(c, MOE_EV_GATE, t0, t1, -1, mt, nt, split);
    }
  }
}

__device__ inline void gate_gemm(Ctx& c) {
  if (c.p.dtype == MOE_DTYPE_BF16) {
    if (gate_tc(c.p)) {
      gate_gemm_tc(c);
    } else {
      gate_gemm_t<__nv_bfloat16>(c);
    }
  } else {
    gate_gemm_t<float>(c);
  }
}

// Ordering of candidates: higher probability first, then lower index.
__device__ __forceinline__ bool better(float pa, int ia, float pb, int ib) {
  return pa > pb || (pa == pb && ia < ib);
}

__device__ inline void gate_topk(Ctx& c) {
  const MoeParams& p = c.p;
  const int T = p.tokens, E = p.experts, k = p.topk, ks = p.gate_ksplit;
  const int lane = threadIdx.x & 31;
  const int gwarp = blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int nwarps = gridDim.x * kWarps;
  const float* part = reinterpret_cast<const float*>(p.logits_part);
  float* logits = reinterpret_cast<float*>(p.logits);
  int* tidx = reinterpret_cast<int*>(p.topk_idx);
  float* tw = reinterpret_cast<float*>(p.topk_w);
  const int64_t pstride = static_cast<int64_t>(T) * E;  // split s of token t: part[(s T + t) E + e]
  const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
  bool worked = false;
  for (int t = gwarp; t < T; t += nwarps) {
    worked = true;
    float* lrow = logits + static_cast<int64_t>(t) * E;
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) {
      const int64_t o = static_cast<int64_t>(t) * E + e;
      float l = ld_cg(part + o);
      for (int sp = 1; sp < ks; ++sp) l += ld_cg(part + sp * pstride + o);
      lrow[e] = l;
      m = fmaxf(m, l);
    }
    __syncwarp();  // lane 0 reads other lanes' logits below (skew)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) sum += expf(lrow[e] - m);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
    // Every lane now holds the same m and sum: probabilities are recomputed
    // bit-identically whenever needed as expf(l - m) / sum.
    float psum = 0.f;
    if (p.route == MOE_ROUTE_SKEW) {
      if (lane == 0) {
        for (int j = 0; j < k; ++j) {
          const float pr = expf(lrow[j] - m) / sum;
          tidx[t * k + j] = j;
          tw[t * k + j] = pr;
          psum += pr;
        }
      }
    } else {
      float prev_p = INFINITY;
      int prev_i = -1;
      for (int j = 0; j < k; ++j) {
        float bp = -1.f;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
          const float pr = expf(lrow[e] - m) / sum;
          if (better(prev_p, prev_i, pr, e) && better(pr, e, bp, bi)) {
            bp = pr;
            bi = e;
          }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          const float op = __shfl_xor_sync(kFull, bp, o);
          const int oi = __shfl_xor_sync(kFull, bi, o);
          if (better(op, oi, bp, bi)) {
            bp = op;
            bi = oi;
          }
        }
        if (lane == 0) {
          tidx[t * k + j] = bi;
          tw[t * k + j] = bp;
          psum += bp;
        }
        prev_p = bp;
        prev_i = bi;
      }
    }
    if (lane == 0 && p.renormalize) {
      for (int j = 0; j < k; ++j) tw[t * k + j] = tw[t * k + j] / psum;
    }
  }
  if (threadIdx.x == 0 && worked) {
    const uint64_t t1 = globaltimer();
    c.busy += t1 - t0;
    trace_ev(c, MOE_EV_TOPK, t0, t1, -1, block_warp_items(T));
  }
}

}  // namespace moe
