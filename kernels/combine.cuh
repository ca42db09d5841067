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
  for (int t = gwarp; t < T; t += nwarps) {
    const float wl = lane < k ? ld_cg(tw + t * k + lane) : 0.f;
    const char* rrow = ret + static_cast<int64_t>(t) * k * rrb;
    float* orow = out + static_cast<int64_t>(t) * H;
    for (int c0 = 0; c0 < H; c0 += 128) {  // every lane iterates: the shuffles need the full warp
      const int col = c0 + lane * 4;
      const bool mine = col < H;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int j = 0; j < k; ++j) {
        const float w = __shfl_sync(kFull, wl, j);
        if (w == 0.f || !mine) continue;
        const char* rp = rrow + j * rrb;
        const float4 r = bf16 ? bf16x4_to_float4(__ldcg(reinterpret_cast<const uint2*>(rp) + col / 4))
                              : ld_cg4(reinterpret_cast<const float*>(rp) + col);
        acc.x = fmaf(w, r.x, acc.x);
        acc.y = fmaf(w, r.y, acc.y);
        acc.z = fmaf(w, r.z, acc.z);
        acc.w = fmaf(w, r.w, acc.w);
      }
      if (mine) st4(orow + col, acc);
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
