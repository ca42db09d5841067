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
  __syncthreads();
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
  // kCombineChunks column chunks of 128 per pass: each lane has that many
  // independent loads in flight per pair instead of one (the loop was
  // latency-bound at ~1.6 TB/s; trace, 2x H200).
  constexpr int kCombineChunks = 4;
  for (int t = gwarp; t < T; t += nwarps) {
    const float wl = lane < k ? ld_cg(tw + t * k + lane) : 0.f;
    const char* rrow = ret + static_cast<int64_t>(t) * k * rrb;
    float* orow = out + static_cast<int64_t>(t) * H;
    for (int c0 = 0; c0 < H; c0 += 128 * kCombineChunks) {  // every lane iterates: the shuffles need the full warp
      float4 acc[kCombineChunks];
#pragma unroll
      for (int u = 0; u < kCombineChunks; ++u) acc[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int j = 0; j < k; ++j) {
        const float w = __shfl_sync(kFull, wl, j);
        if (w == 0.f) continue;
        const char* rp = rrow + j * rrb;
        float4 r[kCombineChunks];
#pragma unroll
        for (int u = 0; u < kCombineChunks; ++u) {
          const int col = c0 + u * 128 + lane * 4;
          if (col < H) {
            r[u] = bf16 ? bf16x4_to_float4(__ldcg(reinterpret_cast<const uint2*>(rp) + col / 4))
                        : ld_cg4(reinterpret_cast<const float*>(rp) + col);
          } else {
            r[u] = make_float4(0.f, 0.f, 0.f, 0.f);
          }
        }
#pragma unroll
        for (int u = 0; u < kCombineChunks; ++u) {
          acc[u].x = fmaf(w, r[u].x, acc[u].x);
          acc[u].y = fmaf(w, r[u].y, acc[u].y);
          acc[u].z = fmaf(w, r[u].z, acc[u].z);
          acc[u].w = fmaf(w, r[u].w, acc[u].w);
        }
      }
#pragma unroll
      for (int u = 0; u < kCombineChunks; ++u) {
        const int col = c0 + u * 128 + lane * 4;
        if (col < H) st4(orow + col, acc[u]);
      }
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
