// dispatch.cuh: kept token rows straight into the owners' heaps, overlapped
// with the experts' work.
//
// Every block builds, in shared memory, the exclusive prefix of the kept
// counts over all E experts. The kept pairs, ordered by expert and then by
// token, form one list of P rows. Row g of expert e (owner d = e / El) lands
// in d's receive region for this source at row g - prefix[d*El]: grouped by
// d's local expert, token order inside an expert, exact offsets, no padding.
// A row travels as 16-byte stores through the NVLink mapping (nvshmem_ptr),
// in the storage dtype (H fp32, or H bf16 in bf16 mode: half the bytes); in
// tf32 mode each value is rounded to tf32 (cvt.rna) on the way, so GEMM0's A
// operand is exact tf32. Lane 0 also stores the row's return slot t*k+j.
//
// Two roles, no grid barrier after them:
//   remote  the first dispatch_blocks() blocks copy the rows for the other
//           ranks, owner by owner from owner rank + 1 on: at any moment the
//           W ranks write to W different owners (a permutation) instead of
//           all to owner 0 first (incast). The last of them to finish an
//           owner's rows sends that owner its dispatch signal (pooled
//           tiles: the last to finish all of them sends every signal).
//   local   the other blocks handle the rank's own rows (LOCAL_GATHER, bf16:
//           only their return slots, GEMM0 gathers the rows from x; else a
//           copy within the heap) and the last of them to finish signals the
//           rank itself. Its experts' GEMMs then start while the remote
//           blocks are still copying: the dispatch, bound by NVLink, hides
//           behind the local source's GEMMs instead of running before them.
// A block's stores are ordered before its arrival (fence, then an atomic on
// a per-launch counter); the last arrival fences again before its signals,
// so an owner that sees a signal sees the rows, counts and return slots.
#pragma once

#include "gemm_tc.cuh"
#include "sync.cuh"

namespace moe {

// Blocks that copy rows to other ranks. 4x H200, paper shape, T = 8192: 32
// blocks were the fastest of 32, 64 and 128 (bf16 1.02 ms, tf32 1.70 ms; the
// whole grid copying, then a barrier: 1.16, 1.91 ms). Pooled tiles wait for
// every source's last row, so the copy is on their critical path: 16 blocks
// cost +5 us at T = 1024 there, and they keep 32. Per-source tiles (not
// pool_sources) take 16 whatever W: at W = 2 (2x H200, T = 8192, twelfth
// session, docs/benchmarks.md) 16 blocks copy the peer's rows by ~205 us
// instead of ~157, long before the owner runs out of its own rows' work
// (~350 us), and the 16 blocks freed start the GEMMs: -31 us (-4 %); 8
// blocks were too slow; TMA bulk copies by 4 or 8 blocks reached the same
// NVLink rate as 16 copying blocks and gained the same. At W = 4, with each
// owner signalled as soon as its rows are in (fifteenth session), 16 blocks
// against 32 and 48: bf16 T = 8192 726-733 us against 745-753 and 759-785,
// T = 16384 1314-1345 against 1322-1380 and 1460-1512 (before those signals
// 24, 32 and 48 measured the same). -DMOE_DISPATCH_BLOCKS=n and
// -DMOE_DISPATCH_BLOCKS_UNPOOLED=n build other counts for such an A/B.
#ifndef MOE_DISPATCH_BLOCKS
#define MOE_DISPATCH_BLOCKS 32
#endif
#ifndef MOE_DISPATCH_BLOCKS_UNPOOLED
#define MOE_DISPATCH_BLOCKS_UNPOOLED 16
#endif
constexpr int kDispatchBlocksPooled = MOE_DISPATCH_BLOCKS;
constexpr int kDispatchBlocksUnpooled = MOE_DISPATCH_BLOCKS_UNPOOLED;

__device__ __forceinline__ int dispatch_blocks(const MoeParams& p) {
  if (p.world == 1) return 0;
  const int n = pool_sources(p) ? kDispatchBlocksPooled : kDispatchBlocksUnpooled;
  return min(n, static_cast<int>(gridDim.x) / 2);
}

// One row: 16-byte vectors of the warp, tf32 rounding in tf32 mode. A lane
// issues the loads of kCopyBatch vectors before their stores (a 4 KB bf16
// row: all 8 of a lane's vectors in flight; the plain loop, which the
// compiler unrolled by 4, kept half of that). Measured (2x H200, T = 8192,
// docs/benchmarks.md, tenth session): the own-row copy at W = 1 36 -> 32 us
// (3.7 -> 4.2 TB/s of reads and writes); the copy to a peer is bound by
// NVLink either way.
constexpr int kCopyBatch = 8;
__device__ __forceinline__ void copy_row(const uint4* src, uint4* dst, int vecs, bool tf32, int lane) {
  for (int v0 = lane; v0 < vecs; v0 += 32 * kCopyBatch) {
    uint4 u[kCopyBatch];
#pragma unroll
    for (int i = 0; i < kCopyBatch; ++i) {
      if (v0 + 32 * i < vecs) u[i] = __ldg(src + v0 + 32 * i);
    }
#pragma unroll
    for (int i = 0; i < kCopyBatch; ++i) {
      if (v0 + 32 * i >= vecs) continue;
      if (tf32) {
        u[i].x = __float_as_uint(round_tf32(__uint_as_float(u[i].x)));
        u[i].y = __float_as_uint(round_tf32(__uint_as_float(u[i].y)));
        u[i].z = __float_as_uint(round_tf32(__uint_as_float(u[i].z)));
        u[i].w = __float_as_uint(round_tf32(__uint_as_float(u[i].w)));
      }
      dst[v0 + 32 * i] = u[i];
    }
  }
}

// The block's arrival on a role's counter; the last of n arrivals returns
// true (thread 0 only) after a fence, ready to signal.
__device__ __forceinline__ bool arrive_last(unsigned* counter, int n) {
  __threadfence_system();
  const unsigned old = atomicAdd(counter, 1u);
  if (old + 1 != static_cast<unsigned>(n)) return false;
  __threadfence_system();
  return true;
}

__device__ inline void send_dispatch_signal(const Ctx& c, int d) {
  const MoeParams& p = c.p;
  const bool withhold = p.debug_withhold_peer == p.rank && d == (p.rank + 1) % p.world;
  if (!withhold) send_signal(c, p.off_sig_dispatch, d);
}

__device__ inline void dispatch(Ctx& c) {
  const MoeParams& p = c.p;
  const int E = p.experts, El = p.experts_per_rank, H = p.hidden, k = p.topk, W = p.world;
  const int* count = reinterpret_cast<const int*>(p.route_count);
  const int* list = reinterpret_cast<const int*>(p.route_list);
  const char* x = reinterpret_cast<const char*>(p.x);
  int* pre = reinterpret_cast<int*>(c.phase);  // [E + 1]
  __shared__ int items;                        // rows this block handled (the trace)
  if (threadIdx.x == 0) items = 0;
  for (int e = threadIdx.x; e < E; e += kThreads) pre[e] = ld_cg(count + e);
  block_sync();
  block_exclusive_scan(pre, E, c.sh);  // pre[E]: every kept row

  const int nd = dispatch_blocks(p);
  const bool remote = static_cast<int>(blockIdx.x) < nd;
  const int rb = remote ? blockIdx.x : blockIdx.x - nd;  // block index within the role
  const int nb = remote ? nd : gridDim.x - nd;            // blocks of the role
  // Each role's first block stores the per-(source, local expert) counts of
  // the owners it serves.
  if (rb == 0) {
    for (int e = threadIdx.x; e < E; e += kThreads) {
      const int d = e / El, le = e - d * El;
      if ((d != p.rank) != remote) continue;
      int* dst = reinterpret_cast<int*>(peer_heap(c, d, p.off_recv_counts)) + p.rank * El + le;
      *dst = pre[e + 1] - pre[e];
    }
  }

  const int lane = threadIdx.x & 31;
  const int rwarp = rb * kWarps + (threadIdx.x >> 5);
  const int nwarps = nb * kWarps;
  const int64_t rps = p.rows_per_source;
  const int64_t rowbytes = static_cast<int64_t>(H) * elem_bytes(p);
  const int vecs = static_cast<int>(rowbytes / 16);
  const bool tf32 = p.dtype == MOE_DTYPE_TF32;
  const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
  uint64_t bytes = 0;
  const int l0 = pre[p.rank * El], l1 = pre[(p.rank + 1) * El];  // this rank's own rows
  // The (token, slot) pair of row g of the kept list.
  auto pair_of = [&](int g) {
    const int e = upper_index(pre, E, g);
    return ld_cg(list + static_cast<int64_t>(e) * p.max_tokens + (g - pre[e]));
  };
  if (remote) {
    // The other owners' rows in rotated order, owner rank + 1's first: at
    // any moment the W ranks write to W different owners (a permutation),
    // not all to owner 0 first. Row q of that order goes to warp q mod
    // nwarps of the role. Per-source tiles: each owner gets its signal from
    // the last block done with its rows, so it starts on them while the
    // role copies the next owner's (one signal after all owners' rows had
    // the first remote source of a W = 4 forward decoded at ~210-300 us, T
    // = 8192, fifteenth session). Pooled tiles wait for every source
    // anyway: one arrival at the end, without a barrier and a system fence
    // an owner (a build that gave them both, and each owner's rows to the
    // whole role in turn, took T = 128 at W = 4 from 125 to 135 us).
    const bool per_owner = !pool_sources(p);
    MoeSched* s = sched_of(p);
    int q0 = 0;  // owner d's first row in the rotated order
    for (int j = 1; j < W; ++j) {
      const int d = (p.rank + j) % W;
      const int g0 = pre[d * El], q1 = q0 + pre[(d + 1) * El] - g0;
      int q = q0 + ((rwarp - q0) % nwarps + nwarps) % nwarps;  // this warp's first row of d's
      // The next row's token index is loaded while this row copies (pair_of).
      int pair = q < q1 ? pair_of(g0 + q - q0) : 0;
      for (; q < q1; q += nwarps) {
        const int g = g0 + q - q0;
        const int pair_next = q + nwarps < q1 ? pair_of(g + nwarps) : 0;
        const int64_t drow = static_cast<int64_t>(p.rank) * rps + (g - g0);
        const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(pair / k) * rowbytes);
        copy_row(src, reinterpret_cast<uint4*>(peer_heap(c, d, p.off_recv_rows) + drow * rowbytes), vecs, tf32, lane);
        if (lane == 0) {
          reinterpret_cast<int*>(peer_heap(c, d, p.off_recv_meta))[drow] = pair;
          bytes += static_cast<uint64_t>(rowbytes);
          if (tracing(c)) atomicAdd(&items, 1);
        }
        pair = pair_next;
      }
      q0 = q1;
      if (!per_owner) continue;
      if ((p.flags & MOE_FLAG_TMA) != 0) fence_proxy_async_global();  // the rows are read by TMA (gemm_tc.cuh)
      block_sync();  // the block's stores to d (and block 0's counts), before its arrival
      if (threadIdx.x == 0 && arrive_last(&s->disp_owner[d], nb)) send_dispatch_signal(c, d);
    }
  } else if (local_gather(p)) {
    // GEMM0 reads these rows from x: only their return slots, one per thread.
    int* meta = reinterpret_cast<int*>(my_heap(p, p.off_recv_meta)) + static_cast<int64_t>(p.rank) * rps;
    for (int g = l0 + rb * kThreads + threadIdx.x; g < l1; g += nb * kThreads) {
      meta[g - l0] = pair_of(g);
      if (tracing(c)) atomicAdd(&items, 1);
    }
  } else {
    int pair = l0 + rwarp < l1 ? pair_of(l0 + rwarp) : 0;
    for (int g = l0 + rwarp; g < l1; g += nwarps) {
      const int pair_next = g + nwarps < l1 ? pair_of(g + nwarps) : 0;  // in flight during this row's copy
      const int64_t drow = static_cast<int64_t>(p.rank) * rps + (g - l0);
      const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(pair / k) * rowbytes);
      copy_row(src, reinterpret_cast<uint4*>(my_heap(p, p.off_recv_rows) + drow * rowbytes), vecs, tf32, lane);
      if (lane == 0) {
        reinterpret_cast<int*>(my_heap(p, p.off_recv_meta))[drow] = pair;
        if (tracing(c)) atomicAdd(&items, 1);
      }
      pair = pair_next;
    }
  }
  if (lane == 0) c.bytes += bytes;
  if ((p.flags & MOE_FLAG_TMA) != 0) fence_proxy_async_global();  // the rows are read by TMA (gemm_tc.cuh)
  block_sync();  // the block's stores, before its arrival; and pre is free again
  if (threadIdx.x == 0) {
    MoeSched* s = sched_of(p);
    if (!remote && arrive_last(&s->disp_local, nb)) {
      send_dispatch_signal(c, p.rank);
    } else if (remote && pool_sources(p) && arrive_last(&s->disp_remote, nb)) {
      for (int d = 0; d < W; ++d) {
        if (d != p.rank) send_dispatch_signal(c, d);
      }
    }
    const uint64_t t1 = globaltimer();
    c.busy += t1 - t0;
    if (items > 0) trace_ev(c, MOE_EV_DISPATCH, t0, t1, remote ? 1 : 0, items, 0);
  }
  block_sync();
}

}  // namespace moe
