// combine.cuh: out[t] = sum_j w[t,j] * ret[t*k+j], j ascending.
//
// A block enters combine when it has no expert work left; its thread 0 first
// waits (bounded) for the return signal of every owner: each owner sends one
// per launch, also when it had no rows of ours. Then one warp per token,
// 16-byte loads and stores, a fixed summation order: no atomics, bitwise
// reproducible. A dropped pair (w == 0) is skipped, so its never-written
// return row is never read; a token whose pairs were all dropped gets 0.
// Returned rows are fp32, or bf16 in bf16 mode (widened exactly); the sum is
// fp32 and out is fp32 in every mode.
#pragma once

#include "sync.cuh"

namespace moe {

// One token's sum by one warp. A lane owns 8 adjacent columns of each
// 256-column chunk (one 16-byte load of bf16, two of fp32) and issues the
// loads of kCombinePairs pairs' rows over kChunks chunks before the first
// FMA: the loop is bound by load latency (~1.6 TB/s with one 16-byte load
// per pair in flight, ~2 TB/s with four 8-byte loads of one pair at a time;
// traces, H200). Two chunks of bf16 (one of fp32) keep it within the
// default build's 128 registers; the MOE_WS build (168) takes four of bf16:
// its combine 50 -> 40 us at T = 8192, 2x H200 (twelfth session; an L2
// prefetch of the next tokens' rows instead gained nothing). The FMAs keep
// pair order j ascending per element, so the result is bitwise that of one
// pair at a time; a dropped pair (w == 0) is neither read nor added.
constexpr int kCombinePairs = 2;
constexpr int kCombineChunksBF16 = MOE_WS ? 4 : 2;
template <bool kBF16>
__device__ __forceinline__ void combine_token(const char* rrow, int64_t rrb, float* orow, int H, int k, float wl,
                                              int lane) {
  constexpr int kChunks = kBF16 ? kCombineChunksBF16 : 1;  // 256-column chunks per pass
  constexpr int kWords = kBF16 ? 4 : 8;   // 32-bit words of a lane's 8 values
  for (int c0 = 0; c0 < H; c0 += 256 * kChunks) {  // every lane iterates: the shuffles need the full warp
    float acc[kChunks][8];
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[u][e] = 0.f;
    }
    for (int j0 = 0; j0 < k; j0 += kCombinePairs) {
      float w[kCombinePairs];
      uint32_t raw[kCombinePairs][kChunks][kWords];
#pragma unroll
      for (int jj = 0; jj < kCombinePairs; ++jj) {
        const int j = j0 + jj;
        w[jj] = __shfl_sync(kFull, wl, j < k ? j : 0);
        if (j >= k) w[jj] = 0.f;
        const char* rp = rrow + j * rrb;
#pragma unroll
        for (int u = 0; u < kChunks; ++u) {
          const int col = c0 + u * 256 + lane * 8;
          if (w[jj] != 0.f && col < H) {
            if constexpr (kBF16) {
              const uint4 v = __ldcg(reinterpret_cast<const uint4*>(rp) + col / 8);
              raw[jj][u][0] = v.x; raw[jj][u][1] = v.y; raw[jj][u][2] = v.z; raw[jj][u][3] = v.w;
            } else {
              const float4 a = ld_cg4(reinterpret_cast<const float*>(rp) + col);
              const float4 b = ld_cg4(reinterpret_cast<const float*>(rp) + col + 4);
              raw[jj][u][0] = __float_as_uint(a.x); raw[jj][u][1] = __float_as_uint(a.y);
              raw[jj][u][2] = __float_as_uint(a.z); raw[jj][u][3] = __float_as_uint(a.w);
              raw[jj][u][4] = __float_as_uint(b.x); raw[jj][u][5] = __float_as_uint(b.y);
              raw[jj][u][6] = __float_as_uint(b.z); raw[jj][u][7] = __float_as_uint(b.w);
            }
          }
        }
      }
#pragma unroll
      for (int jj = 0; jj < kCombinePairs; ++jj) {
#pragma unroll
        for (int u = 0; u < kChunks; ++u) {
          const int col = c0 + u * 256 + lane * 8;
          if (w[jj] == 0.f || col >= H) continue;
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            // bf16 value e: the low (e even) or high half of word e / 2, widened exactly.
            float r;
            if constexpr (kBF16) {
              r = __uint_as_float((e & 1) ? (raw[jj][u][e / 2] & 0xffff0000u) : (raw[jj][u][e / 2] << 16));
            } else {
              r = __uint_as_float(raw[jj][u][e]);
            }
            acc[u][e] = fmaf(w[jj], r, acc[u][e]);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const int col = c0 + u * 256 + lane * 8;
      if (col < H) {
        st4(orow + col, make_float4(acc[u][0], acc[u][1], acc[u][2], acc[u][3]));
        st4(orow + col + 4, make_float4(acc[u][4], acc[u][5], acc[u][6], acc[u][7]));
      }
    }
  }
}

__device__ inline bool combine(Ctx& c) {
  const MoeParams& p = c.p;
  const int T = p.tokens, H = p.hidden, k = p.topk, W = p.world;
  if (threadIdx.x == 0) {
    const uint64_t tw = tracing(c) ? globaltimer() : 0;
    const uint64_t* sig = reinterpret_cast<const uint64_t*>(my_heap(p, p.off_sig_return));
    int ok = 1;
    for (int o = 0; o < W && ok; ++o) ok = wait_sys_geq(c, sig + o, c.seq, MOE_WAIT_RETURN, o);
    c.sh.ok = ok;
    if (tracing(c)) trace_ev(c, MOE_EV_WAIT_RETURN, tw, globaltimer());
  }
  block_sync();
  if (!c.sh.ok) return false;
  const char* ret = my_heap(p, p.off_ret_rows);
  const bool bf16 = p.dtype == MOE_DTYPE_BF16;
  const int64_t rrb = static_cast<int64_t>(H) * ret_elem_bytes(p);  // bytes of a returned row
  const float* tw = reinterpret_cast<const float*>(p.topk_w);
  float* out = reinterpret_cast<float*>(p.out);
  const int lane = threadIdx.x & 31;
  const int gwarp = blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int nwarps = gridDim.x * kWarps;
  const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
  for (int t = gwarp; t < T; t += nwarps) {
    const float wl = lane < k ? ld_cg(tw + t * k + lane) : 0.f;
    const char* rrow = ret + static_cast<int64_t>(t) * k * rrb;
    float* orow = out + static_cast<int64_t>(t) * H;
    if (bf16) {
      combine_token<true>(rrow, rrb, orow, H, k, wl, lane);
    } else {
      combine_token<false>(rrow, rrb, orow, H, k, wl, lane);
    }
  }
  if (threadIdx.x == 0 && blockIdx.x * kWarps < T) {
    const uint64_t t1 = globaltimer();
    c.busy += t1 - t0;
    trace_ev(c, MOE_EV_COMBINE, t0, t1, -1, block_warp_items(T));
  }
  return true;
}

}  // namespace moe
