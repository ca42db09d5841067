// route.cuh: per-expert lists of (token, slot) pairs in token order, capacity.
//
// One block per expert e (strided): it scans topk_idx in token order,
// kRouteTokPerThread tokens per thread and kThreads*kRouteTokPerThread
// tokens per step, with a block-wide exclusive scan of the per-thread hit
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
  for (int e = blockIdx.x; e < E; e += gridDim.x) {
    const uint64_t t0 = tid == 0 ? globaltimer() : 0;
    int* elist = list + static_cast<int64_t>(e) * p.max_tokens;
    int running = 0;
    for (int base = 0; base < T; base += kStep) {
      int slot[kRouteTokPerThread];  // j of the hit, or -1
      int hits = 0;
#pragma unroll
      for (int i = 0; i < kRouteTokPerThread; ++i) {
        const int t = base + tid * kRouteTokPerThread + i;
        slot[i] = -1;
        if (t < T) {
          for (int j = 0; j < k; ++j) {
            if (ld_cg(tidx + t * k + j) == e) slot[i] = j;
          }
        }
        hits += slot[i] >= 0;
      }
      // exclusive scan of hits over the block
      int incl = hits;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += y;
      }
      if (lane == 31) c.sh.scan_warp[warp] = incl;
      __syncthreads();
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
      __syncthreads();
      int pos = running + c.sh.scan_warp[warp] + incl - hits;
#pragma unroll
      for (int i = 0; i < kRouteTokPerThread; ++i) {
        if (slot[i] < 0) continue;
        const int t = base + tid * kRouteTokPerThread + i;
        const int pair = t * k + slot[i];
        if (cap < 0 || pos < cap) {
          elist[pos] = pair;
        } else {
          tw[pair] = 0.f;  // dropped by capacity
        }
        ++pos;
      }
      running += c.sh.scan_warp[kWarps];
      __syncthreads();
    }
    if (tid == 0) {
      count[e] = cap < 0 ? running : min(running, cap);
      c.busy += globaltimer() - t0;
    }
  }
}

}  // namespace moe
