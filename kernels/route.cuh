// route.cuh: per-expert lists of (token, slot) pairs in token order, capacity.
//
// One block per expert e (strided): it scans topk_idx in token order,
// kRouteTokPerThread tokens per thread (their 8k ids read as int4: one
// round trip per step) and kThreads*kRouteTokPerThread tokens per step, with a block-wide exclusive scan of the per-thread hit
// counts. The pair (t, j) with idx[t][j] == e gets position pos in e's list;
// pairs at pos >= capacity are dropped (their combine weight becomes 0, the
// others are not renormalised). The result depends only on topk_idx: it is
// deterministic whatever the timing.
#pragma once

#include "sync.cuh"

namespace moe {

__device__ inline void route(Ctx& c) {
  const MoeParams& p = c.p;
  const int T = p.tokens, E = p.experts, k = p.topk, cap = p.capacity;
  const int* tidx = reinterpret_cast<const int*>(p.topk_idx);
  float* tw = reinterpret_cast<float*>(p.topk_w);
  int* list = reinterpret_cast<int*>(p.route_list);
  int* count = reinterpret_cast<int*>(p.route_count);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kStep = kThreads * kRouteTokPerThread;
  static_assert(kRouteTokPerThread == 8, "hit mask / slot packing and the int4 alignment assume 8 tokens per thread");
  for (int e = blockIdx.x; e < E; e += gridDim.x) {
    const uint64_t t0 = tid == 0 ? globaltimer() : 0;
    int* elist = list + static_cast<int64_t>(e) * p.max_tokens;
    int running = 0;
    for (int base = 0; base < T; base += kStep) {
      // This thread's tokens tb..tb+7: bit i of hm says token tb+i chose e,
      // bits 5i.. of jp hold the slot j (top-k ids of a token are distinct).
      const int tb = base + tid * kRouteTokPerThread;
      uint32_t hm = 0;
      uint64_t jp = 0;
      if (tb + kRouteTokPerThread <= T) {
        // 8k contiguous ids, 16-byte aligned (tb*k*4 is a multiple of 32): int4 loads.
        const int4* src = reinterpret_cast<const int4*>(tidx + static_cast<int64_t>(tb) * k);
        int i = 0, j = 0;
#pragma unroll 4
        for (int q = 0; q < 2 * k; ++q) {
          const int4 v = __ldcg(src + q);
          const int vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            if (vv[u] == e) {
              hm |= 1u << i;
              jp |= static_cast<uint64_t>(j) << (5 * i);
            }
            if (++j == k) {
              j = 0;
              ++i;
            }
          }
        }
      } else {
        for (int i = 0; i < kRouteTokPerThread; ++i) {
          const int t = tb + i;
          if (t >= T) break;
          for (int j = 0; j < k; ++j) {
            if (ld_cg(tidx + t * k + j) == e) {
              hm |= 1u << i;
              jp |= static_cast<uint64_t>(j) << (5 * i);
            }
          }
        }
      }
      const int hits = __popc(hm);
      // exclusive scan of hits over the block
      int incl = hits;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += y;
      }
      if (lane == 31) c.sh.scan_warp[warp] = incl;
      block_sync();
      if (warp == 0) {
        const int w = lane < kWarps ? c.sh.scan_warp[lane] : 0;
        int wincl = w;
#pragma unroll
        for (int o = 1; o < kWarps; o <<= 1) {
          const int y = __shfl_up_sync(kFull, wincl, o);
          if (lane >= o) wincl += y;
        }
        if (lane < kWarps) c.sh.scan_warp[lane] = wincl - w;
        if (lane == kWarps - 1) c.sh.scan_warp[kWarps] = wincl;
      }
      block_sync();
      int pos = running + c.sh.scan_warp[warp] + incl - hits;
#pragma unroll
      for (int i = 0; i < kRouteTokPerThread; ++i) {
        if (((hm >> i) & 1u) == 0) continue;
        const int t = tb + i;
        const int pair = t * k + static_cast<int>((jp >> (5 * i)) & 31u);
        if (cap < 0 || pos < cap) {
          elist[pos] = pair;
        } else {
          tw[pair] = 0.f;  // dropped by capacity
        }
        ++pos;
      }
      running += c.sh.scan_warp[kWarps];
      block_sync();
    }
    if (tid == 0) {
      const int kept = cap < 0 ? running : min(running, cap);
      count[e] = kept;
      const uint64_t t1 = globaltimer();
      c.busy += t1 - t0;
      trace_ev(c, MOE_EV_ROUTE, t0, t1, -1, e, kept);
    }
  }
}

}  // namespace moe
