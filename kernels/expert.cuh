// expert.cuh: the expert FFN as tile tasks, handed out dynamically.
//
// Roles during this phase:
// - the OS block (the last block) is the subscriber: it polls the W dispatch
//   signals (bounded by the watchdog) and, as each source s arrives, decodes
//   s's counts into row tiles (<= row_tile_rows(p) rows of one (s, local
//   expert): 64 in fp32, 128 in tf32/bf16), writes
//   their descriptors and publishes the arrival (arr_src / arr_task0 /
//   arr_tile0, then arr_n with release); a pooled forward (pool_sources)
//   only keeps each arrival's counts and describes every tile after the last
//   (pool_tiles). A source that sent no rows gets its return signal at once.
//   After the last arrival it becomes a processor.
// - processors take tasks:
//   GEMM0 tickets from an atomic counter, in arrival order: ticket i is valid
//     once a published arrival covers it; task = (row tile, I-column tile),
//     row-tile-major (small forwards: pooled row tiles, column-major, see
//     pool_sources):
//     act(A.W1 + b1) (or silu(A.Wg) * (A.Wu)) into the intermediate buffer.
//     The block that completes the last GEMM0 tile of a row tile appends the
//     row tile to the GEMM1 queue (g1_list).
//   GEMM1 tasks = (queued row tile, H-column tile) (column-major with
//     GEMM0's), reserved by CAS only
//     while queued work exists, so a block never blocks on a GEMM1 slot that
//     depends on a GEMM0 ticket it holds. The epilogue (+ b2) stores rows
//     straight into the source's return buffer at row t*k+j; the block that
//     completes a source's last GEMM1 task sends that source its return
//     signal (after a system fence).
// A processor exits when every source has arrived, GEMM0 tickets are
// exhausted and every GEMM1 task has been taken.
//
// Tiles by mode: fp32 runs the SIMT tile (gemm.cuh, 64 x 64); tf32 and bf16
// the tensor-core tile (gemm_tc.cuh, 128 rows x 128 output columns, or 64
// output columns of both swiglu operands), with weights transposed ([N][K]).
#pragma once

#include "gemm.cuh"
#include "gemm_tc.cuh"
#include "gemm_ws.cuh"
#include "sync.cuh"

namespace moe {

enum TaskType : int { kTaskNone = 0, kTaskG0 = 1, kTaskG1 = 2, kTaskExit = 3 };

// Generic address of the launch's tensor map i (MOE_TMAP_*; a GEMM's B maps
// follow its A map), or 0 (the cp.async loader) without MOE_FLAG_TMA. The
// maps live in the kernel's argument, in parameter space (__grid_constant__).
__device__ __forceinline__ uint64_t tmap_of(const MoeParams& p, int i) {
  return (p.flags & MOE_FLAG_TMA) != 0 ? reinterpret_cast<uint64_t>(&p.tmap[i * MOE_TMAP_WORDS]) : 0;
}

// MOE_WS builds: the bf16 tasks of the relu / gelu FFN with TMA and
// per-source row tiles are 128 rows x kWsTileN columns, loaded by the
// block's producer warpgroup (gemm_ws.cuh). Everything else (tf32, fp32,
// swiglu, pooled tiles) runs the worker threads' tiles as in the default build.
__device__ __forceinline__ bool ws_tiles(const MoeParams& p) {
  return MOE_WS && p.dtype == MOE_DTYPE_BF16 && p.ffn != MOE_FFN_SWIGLU && (p.flags & MOE_FLAG_TMA) != 0 &&
         !pool_sources(p) && p.hidden >= MOE_WS_MIN_DIM && p.ffn_hidden >= MOE_WS_MIN_DIM;
}

// Task geometry of the mode. Row tiles: rows of one task. GEMM0 / GEMM1
// column tiles: tasks per row tile. H and I are multiples of 64, so only a
// tensor-core column tile can be partial (64 of 128, or 64, 128 or 192 of
// MOE_WS's 256 columns).
__device__ __forceinline__ int row_tile_rows(const MoeParams& p) { return tc_mode(p) ? kTcTileM : kTileM; }
__device__ __forceinline__ int g0_tile_cols(const MoeParams& p) {
  return tc_mode(p) ? (p.ffn == MOE_FFN_SWIGLU ? kTcTileN / 2 : (ws_tiles(p) ? kWsTileN : kTcTileN)) : kTileN;
}
__device__ __forceinline__ int g1_tile_cols(const MoeParams& p) {
  return tc_mode(p) ? (ws_tiles(p) ? kWsTileN : kTcTileN) : kTileN;
}
__device__ __forceinline__ int g0_col_tiles(const MoeParams& p) {
  const int w = g0_tile_cols(p);
  return (p.ffn_hidden + w - 1) / w;
}
__device__ __forceinline__ int g1_col_tiles(const MoeParams& p) {
  const int w = g1_tile_cols(p);
  return (p.hidden + w - 1) / w;
}

// A pooled row tile's descriptor: src = -(segments), row0 = index in rt_desc
// of its first segment; its segments follow, each a per-source row tile of
// the same expert (a source's rows of one expert are split into tiles of
// 128, so a pooled tile holds at most one segment per source).
__device__ __forceinline__ bool is_pooled(const MoeRowTile& d) { return d.src < 0; }
__device__ __forceinline__ int pooled_segments(const MoeRowTile& d) { return -d.src; }

// Per-row tables of a tensor-core task in the phase buffer: the A row
// addresses until the tile starts (in stage 0; pooled tiles), and, kept
// across the tile (past the stages), the row's output index (rowtab) and
// source (rowsrc; pooled GEMM1).
constexpr int kTcRowTabOff = kTcMainBytes;              // int [kTcTileM]
constexpr int kTcRowSrcOff = kTcBarOff + 2 * kTcStages * 8;  // u8 [kTcTileM], after the TMA mbarriers
// MOE_WS: the forward's stages (kWsFwdStages of kWsStageBytes) are the
// phase buffer's first bytes (a MOE_WS build sets MOE_TC_STAGES=6 so that
// the buffer holds them); a task's results are staged in its last two
// (gemm_ws.cuh ws_store_bf16). Its barriers, task ring and hand-over (WsFwd)
// sit after the row tables, kept for the whole launch.
constexpr int kWsFwdStages = 4;
constexpr int kWsFwdBarOff = (kTcRowSrcOff + kTcTileM + 7) & ~7;
constexpr int kTcSegOff = kTcTileM * static_cast<int>(sizeof(void*));  // int [3][kMaxWorld], in stage 0
static_assert(kTcRowSrcOff + kTcTileM <= kTcPhaseUsable, "row tables fit the phase buffer");
static_assert(kTcSegOff + 3 * kMaxWorld * 4 <= kTcStageBytes, "pooled tile tables fit stage 0");
static_assert(kMaxWorld <= 256, "a pooled row's source fits a byte");
// The OS block's tables while it pools (W >= 2, so E/W <= kMaxExperts / 2),
// in its phase buffer after the decode's rows and tiles [E/W + 1] each.
struct PoolTables {
  int* prow;  // [W][E/W + 1] arrival n's rows an expert, scanned
  int* psrc;  // [W] source of arrival n
  int* cseg;  // [E/W + 1] segments of expert le, then their prefix
  int* cmt;   // [E/W + 1] pooled tiles of expert le, then their prefix
  int* tgt;   // [W] GEMM1 tasks per source
};
__device__ __forceinline__ PoolTables pool_tables(int* base, int W, int El) {
  PoolTables t;
  t.prow = base;
  t.psrc = t.prow + W * (El + 1);
  t.cseg = t.psrc + W;
  t.cmt = t.cseg + (El + 1);
  t.tgt = t.cmt + (El + 1);
  return t;
}
static_assert((4 * (kMaxExperts / 2 + 1) + kMaxExperts + 3 * kMaxWorld) * 4 <= kTcPhaseUsable,
              "the decode's and the pooling's tables fit the phase buffer");

// Local experts up to which one thread of the OS block scans a pooled
// forward's tables alone (pool_arrival, pool_tiles): a serial pass over a few
// dozen shared-memory entries is shorter than a block scan's barriers and
// shuffles, and it is a few instructions where the block scan's are ~2 KB.
// This code runs once a launch, from a cold instruction cache, so its loops
// are not unrolled either (pool_tiles 26 -> 18 KB of SASS, most of it the
// block scans that only E / W > kSerialScanMax runs).
constexpr int kSerialScanMax = 128;

// Whether a segment of r rows joins a pooled tile that holds segs segments of
// rows rows so far: an expert's segments (its per-source tiles, in order) are
// packed whole while the rows fit kTcTileM. The kMaxWorld bound is a guard:
// a source's tiles of one expert are full but for its last, so a pooled tile
// holds at most one segment per source.
__device__ __forceinline__ bool pool_fits(int segs, int rows, int r) {
  return segs == 0 || (rows + r <= kTcTileM && segs < kMaxWorld);
}

// After the last arrival of a pooled forward (pool_sources): from the
// arrivals' scanned rows an expert (prow[n][le], arrival n from source
// psrc[n]) writes the N per-source tiles expert-major to rt_desc[M..M+N)
// (the segments: a source's rows of an expert in tiles of kTcTileM, in
// arrival order), the M pooled tiles to rt_desc[0..M), sets each source's
// GEMM1 task count and publishes: arr_src, arr_tile0[W] = M, arr_task0[W] =
// M * GEMM0 column tiles, then arr_n = W. Every thread of the OS block calls
// it; one thread per expert. All of it from shared memory: the arrivals write
// no descriptors and publish nothing (one fence and one release in all, no
// descriptor read back: each arrival ~1 us shorter at T = 128, W = 2), and
// up to kSerialScanMax experts one thread scans, with loops not unrolled:
// the pooling 5.4 -> 3.2 us (benchmarks.md, thirteenth session). Returns M, or -(M + N)
// when the descriptors do not fit (nothing published). Out of line, and
// without the Ctx: a Ctx whose address a call takes lives in local memory
// for the whole kernel.
__device__ __noinline__ int pool_tiles(const MoeParams& p, Shared& sh, PoolTables pt) {
  const int W = p.world, El = p.experts_per_rank;
  const int nt0 = g0_col_tiles(p), nt1 = g1_col_tiles(p);
  constexpr int tm = kTcTileM;  // row_tile_rows of the tensor-core modes, the only pooled ones
  MoeSched* s = sched_of(p);
  MoeRowTile* desc = reinterpret_cast<MoeRowTile*>(p.rt_desc);
  const int *prow = pt.prow, *psrc = pt.psrc;
  int *cseg = pt.cseg, *cmt = pt.cmt, *tgt = pt.tgt;
  #pragma unroll 1
  for (int i = threadIdx.x; i < W; i += kThreads) tgt[i] = 0;
  // Segments and pooled tiles per expert (the same packing as below).
  #pragma unroll 1
  for (int le = threadIdx.x; le < El; le += kThreads) {
    int segs = 0, tiles = 0, tsegs = 0, trows = 0;
    #pragma unroll 1
    for (int n = 0; n < W; ++n) {
      const int rows = prow[n * (El + 1) + le + 1] - prow[n * (El + 1) + le];
      #pragma unroll 1
      for (int r0 = 0; r0 < rows; r0 += tm) {
        const int r = min(tm, rows - r0);
        if (!pool_fits(tsegs, trows, r)) tsegs = trows = 0;
        if (tsegs == 0) ++tiles;
        ++tsegs;
        trows += r;
        ++segs;
      }
    }
    cseg[le] = segs;
    cmt[le] = tiles;
  }
  block_sync();
  int N, M;
  if (El <= kSerialScanMax) {
    if (threadIdx.x == 0) {
      int ns = 0, nm = 0;
      #pragma unroll 1
      for (int le = 0; le < El; ++le) {
        const int a = cseg[le], b = cmt[le];
        cseg[le] = ns;
        cmt[le] = nm;
        ns += a;
        nm += b;
      }
      cseg[El] = ns;
      cmt[El] = nm;
    }
    block_sync();
    N = cseg[El];
    M = cmt[El];
  } else {
    N = block_exclusive_scan(cseg, El, sh);
    M = block_exclusive_scan(cmt, El, sh);
  }
  if (M + N > p.max_row_tiles) return -(M + N);  // cannot happen with a plan from symheap (2x the tiles)
  #pragma unroll 1
  for (int le = threadIdx.x; le < El; le += kThreads) {
    const int q0 = M + cseg[le];
    int q = q0, m = cmt[le], first = 0, tsegs = 0, trows = 0;
    auto emit = [&]() {
      MoeRowTile d;
      d.src = -tsegs;
      d.le = le;
      d.row0 = q0 + first;
      d.nrows = trows;
      desc[m++] = d;
    };
    #pragma unroll 1
    for (int n = 0; n < W; ++n) {
      const int row0 = prow[n * (El + 1) + le], rows = prow[n * (El + 1) + le + 1] - row0;
      #pragma unroll 1
      for (int r0 = 0; r0 < rows; r0 += tm) {
        MoeRowTile v;
        v.src = psrc[n];
        v.le = le;
        v.row0 = row0 + r0;
        v.nrows = min(tm, rows - r0);
        if (!pool_fits(tsegs, trows, v.nrows)) {
          emit();
          first = q - q0;
          tsegs = trows = 0;
        }
        ++tsegs;
        trows += v.nrows;
        desc[q++] = v;
        atomicAdd(&tgt[v.src], nt1);
      }
    }
    if (tsegs > 0) emit();
  }
  block_sync();
  if (threadIdx.x == 0) {
    #pragma unroll 1
    for (int i = 0; i < W; ++i) {
      s->ret_target[i] = tgt[i];
      s->arr_src[i] = psrc[i];
    }
    s->arr_tile0[W] = M;
    s->arr_task0[W] = M * nt0;
    __threadfence();
    st_release_gpu_u32(&s->arr_n, static_cast<uint32_t>(W));
  }
  block_sync();
  return M;
}

// A pooled forward's arrival n, from source src: its rows an expert into
// pt.prow[n] (scanned) and src into pt.psrc[n] for pool_tiles. Returns the
// arrival's rows; sh.bcast[1] (0 before the call) gets its per-source tiles
// (the trace). Every thread of the OS block calls it. Out of line: the
// other forwards' kernel keeps its registers.
__device__ __noinline__ int pool_arrival(const MoeParams& p, Shared& sh, PoolTables pt, int n, int src) {
  const int El = p.experts_per_rank;
  const int* cnt = reinterpret_cast<const int*>(my_heap(p, p.off_recv_counts)) + src * El;
  int* pr = pt.prow + n * (El + 1);
  if (El <= kSerialScanMax) {
    #pragma unroll 1
    for (int le = threadIdx.x; le < El; le += kThreads) pr[le] = ld_cg(cnt + le);
    block_sync();
    if (threadIdx.x == 0) {
      int rows = 0, ntiles = 0;
      #pragma unroll 1
      for (int le = 0; le < El; ++le) {
        const int r = pr[le];
        pr[le] = rows;
        rows += r;
        ntiles += (r + kTcTileM - 1) / kTcTileM;
      }
      pr[El] = rows;
      sh.bcast[1] = ntiles;
      pt.psrc[n] = src;
    }
    block_sync();
    return pr[El];
  }
  int ntiles = 0;
  #pragma unroll 1
  for (int le = threadIdx.x; le < El; le += kThreads) {
    const int r = ld_cg(cnt + le);
    pr[le] = r;
    ntiles += (r + kTcTileM - 1) / kTcTileM;
  }
  ntiles = __reduce_add_sync(kFull, ntiles);
  if ((threadIdx.x & 31) == 0 && ntiles != 0) atomicAdd(&sh.bcast[1], ntiles);
  if (threadIdx.x == 0) pt.psrc[n] = src;
  block_sync();
  return block_exclusive_scan(pr, El, sh);  // ends with a barrier: bcast[1] is complete
}

// The subscriber loop of the OS block. Returns false after an abort.
__device__ inline bool os_subscribe(Ctx& c) {
  const MoeParams& p = c.p;
  const int W = p.world, El = p.experts_per_rank;
  const int nt0 = g0_col_tiles(p), nt1 = g1_col_tiles(p), tm = row_tile_rows(p);
  MoeSched* s = sched_of(p);
  const uint64_t* sig = reinterpret_cast<const uint64_t*>(my_heap(p, p.off_sig_dispatch));
  const bool pool = pool_sources(p);
  int* rows = reinterpret_cast<int*>(c.phase);     // [El + 1] row prefix
  int* tiles = rows + (El + 1);                    // [El + 1] tile prefix
  const PoolTables pt = pool_tables(tiles + (El + 1), W, El);  // pool
  MoeRowTile* desc = reinterpret_cast<MoeRowTile*>(p.rt_desc);
  uint64_t arrived = 0;  // bit s: source s decoded (thread 0's view)
  uint64_t t0 = globaltimer();
  uint64_t tw0 = t0;     // trace: start of this wait
  for (int n = 0; n < W; ++n) {
    if (threadIdx.x == 0) {
      int found = -1;
      unsigned ns = 32;
      while (found < 0) {
        // Polled from this rank on (rank, rank + 1, ...): when several
        // sources have arrived, the owners take them in rotated order, so
        // their GEMM1 results go back to different sources at once rather
        // than all to source 0 (the return path's incast).
        for (int i = 0; i < W; ++i) {
          const int src = p.rank + i < W ? p.rank + i : p.rank + i - W;
          if ((arrived >> src) & 1ull) continue;
          if (ld_acquire_sys_u64(sig + src) >= c.seq) {
            found = src;
            break;
          }
        }
        if (found >= 0) break;
        int first = 0;
        while ((arrived >> first) & 1ull) ++first;
        if (wait_expired(c, t0, p.watchdog_ns, MOE_WAIT_DISPATCH, first, c.seq, ld_acquire_sys_u64(sig + first))) {
          break;
        }
        __nanosleep(ns);
        if (ns < 256) ns <<= 1;
      }
      c.sh.bcast[0] = found;
      c.sh.bcast[1] = 0;  // pooled: the arrival's tiles, summed by the warps
      if (found >= 0) {
        arrived |= 1ull << found;
        if (tracing(c)) trace_ev(c, MOE_EV_WAIT_DISPATCH, tw0, globaltimer(), found);
      }
    }
    block_sync();
    const int src = c.sh.bcast[0];
    if (src < 0) return false;
    const uint64_t tw = threadIdx.x == 0 ? globaltimer() : 0;
    if (pool) {
      // Pooled: the arrival's rows an expert, kept for pool_tiles, which
      // writes every descriptor after the last arrival.
      const int total = pool_arrival(p, c.sh, pt, n, src);
      if (threadIdx.x == 0) {
        if (total == 0) send_signal(c, p.off_sig_return, src);  // no GEMM1 task will
        const uint64_t t1 = globaltimer();
        c.busy += t1 - tw;
        trace_ev(c, MOE_EV_DECODE, tw, t1, src, c.sh.bcast[1]);
      }
      block_sync();
      t0 = globaltimer();
      tw0 = t0;
      continue;
    }
    const int* cnt = reinterpret_cast<const int*>(my_heap(p, p.off_recv_counts)) + src * El;
    for (int le = threadIdx.x; le < El; le += kThreads) {
      const int r = ld_cg(cnt + le);
      rows[le] = r;
      tiles[le] = (r + tm - 1) / tm;
    }
    block_sync();
    block_exclusive_scan(rows, El, c.sh);
    const int ntiles = block_exclusive_scan(tiles, El, c.sh);
    const int tile0 = ld_cg(&s->arr_tile0[n]);
    const int room = p.max_row_tiles - tile0;
    if (ntiles > room) {  // cannot happen with a plan from symheap; refuse rather than overrun
      if (threadIdx.x == 0) watchdog_trip(c, MOE_STATUS_BAD_PARAMS, MOE_WAIT_DISPATCH, src, 0, ntiles, room);
      return false;
    }
    for (int i = threadIdx.x; i < ntiles; i += kThreads) {
      const int le = upper_index(tiles, El, i);
      const int mt = i - tiles[le];
      const int nr = rows[le + 1] - rows[le];
      MoeRowTile d;
      d.src = src;
      d.le = le;
      d.row0 = rows[le] + mt * tm;
      d.nrows = min(tm, nr - mt * tm);
      desc[tile0 + i] = d;
    }
    block_sync();
    if (threadIdx.x == 0) {
      s->arr_src[n] = src;
      s->arr_tile0[n + 1] = tile0 + ntiles;
      s->arr_task0[n + 1] = ld_cg(&s->arr_task0[n]) + ntiles * nt0;
      s->ret_target[src] = ntiles * nt1;
      __threadfence();
      st_release_gpu_u32(&s->arr_n, static_cast<uint32_t>(n + 1));
      if (ntiles == 0) send_signal(c, p.off_sig_return, src);
      const uint64_t t1 = globaltimer();
      c.busy += t1 - tw;
      trace_ev(c, MOE_EV_DECODE, tw, t1, src, ntiles);
    }
    block_sync();
    t0 = globaltimer();  // the next source gets a full watchdog period from here
    tw0 = t0;
  }
  if (!pool) return true;
  const uint64_t tw = threadIdx.x == 0 ? globaltimer() : 0;
  const int m = pool_tiles(p, c.sh, pt);
  if (m < 0) {
    if (threadIdx.x == 0) watchdog_trip(c, MOE_STATUS_BAD_PARAMS, MOE_WAIT_DISPATCH, -1, 0, -m, p.max_row_tiles);
    return false;
  }
  if (threadIdx.x == 0) {  // the pooling, as a decode event of no source
    const uint64_t t1 = globaltimer();
    c.busy += t1 - tw;
    trace_ev(c, MOE_EV_DECODE, tw, t1, -1, m);
  }
  return true;
}

// Thread 0 picks the block's next task. Returns kTaskExit when all work has
// been handed out, kTaskNone after an abort.
//
// Both queues hand out tickets with atomicAdd, never a compare-and-swap race:
// a block holds at most one ticket of each kind and keeps it until the task
// behind it exists (GEMM0: its source's rows have arrived; GEMM1: its row
// tile's GEMM0 is complete). With a CAS on the GEMM1 head, the blocks that had
// just finished a task always won the race (their read and CAS were back to
// back) while the ones that had been waiting kept losing it: at T = 8192 about
// half the grid sat idle through the whole GEMM1 phase (trace, 2x H200).
// Tickets are served in order, so every block gets work as soon as there is
// work for it.
__device__ inline int next_task(Ctx& c, int& g0_ticket, bool& g0_done, int& g1_ticket, int& rt, int& nt) {
  const MoeParams& p = c.p;
  MoeSched* s = sched_of(p);
  const int W = p.world;
  const int nt0 = g0_col_tiles(p), nt1 = g1_col_tiles(p);
  const bool col_major = pool_sources(p);
  const uint64_t t0 = globaltimer();
  // Waiting for work is legitimate while a slow peer's rows are on their way:
  // the OS block's watchdog covers that. This bound is only a backstop.
  const uint64_t limit = 4 * p.watchdog_ns;
  unsigned ns = 32;
  for (;;) {
    const int narr = static_cast<int>(ld_acquire_gpu_u32(&s->arr_n));
    const bool all = narr == W;
    // GEMM1 first: a ready GEMM1 task is later in its row tile's life than
    // any GEMM0 task, and its block would otherwise hold it back.
    if (g1_ticket < 0) g1_ticket = static_cast<int>(atomicAdd(&s->g1_head, 1u));
    const uint32_t tail = ld_acquire_gpu_u32(&s->g1_tail);
    const uint32_t t1 = static_cast<uint32_t>(g1_ticket);
    uint32_t slot;
    bool ready;
    if (col_major) {  // ticket = column tile * row tiles + queue slot
      const uint32_t nrt = all ? static_cast<uint32_t>(ld_cg(&s->arr_tile0[W])) : 0u;
      ready = nrt > 0 && t1 < nrt * static_cast<uint32_t>(nt1) && t1 % nrt < tail;
      slot = ready ? t1 % nrt : 0u;
      nt = ready ? static_cast<int>(t1 / nrt) : 0;
    } else {  // ticket = queue slot * column tiles + column tile
      ready = t1 < tail * static_cast<uint32_t>(nt1);
      slot = t1 / nt1;
      nt = static_cast<int>(t1 % nt1);
    }
    if (ready) {
      const uint64_t ts = globaltimer();
      unsigned sns = 16;
      for (;;) {  // the slot's row tile is written right after the tail moved
        const uint32_t v = ld_acquire_gpu_u32(reinterpret_cast<const uint32_t*>(p.g1_list) + slot);
        if (v != 0) {
          rt = static_cast<int>(v) - 1;
          g1_ticket = -1;
          return kTaskG1;
        }
        if (wait_expired(c, ts, p.watchdog_ns, MOE_WAIT_SLOT, -1, slot, 0)) return kTaskNone;
        __nanosleep(sns);
      }
    }
    if (!g0_done && g0_ticket < 0) g0_ticket = static_cast<int>(atomicAdd(&s->g0_next, 1u));
    if (g0_ticket >= 0) {
      if (g0_ticket < ld_cg(&s->arr_task0[narr])) {
        if (col_major) {  // narr == W: every row tile's column nt, then nt + 1
          const int nrt = ld_cg(&s->arr_tile0[W]);
          rt = g0_ticket % nrt;
          nt = g0_ticket / nrt;
        } else {
          int n = 0;
          while (ld_cg(&s->arr_task0[n + 1]) <= g0_ticket) ++n;
          const int local = g0_ticket - ld_cg(&s->arr_task0[n]);
          rt = ld_cg(&s->arr_tile0[n]) + local / nt0;
          nt = local % nt0;
        }
        g0_ticket = -1;
        return kTaskG0;
      }
      if (all) {
        g0_ticket = -1;
        g0_done = true;
      }
    }
    // Every row tile is known once all sources have arrived: a GEMM1 ticket
    // past the last task means this block's work is over.
    if (all && g0_done &&
        static_cast<uint32_t>(g1_ticket) >= static_cast<uint32_t>(ld_cg(&s->arr_tile0[W])) * static_cast<uint32_t>(nt1)) {
      return kTaskExit;
    }
    if (wait_expired(c, t0, limit, MOE_WAIT_TASK, -1, 0, narr)) return kTaskNone;
    __nanosleep(ns);
    if (ns < 512) ns <<= 1;
  }
}

// After a GEMM0 task's stores, ordered before this by a barrier of the
// threads that stored (one thread): the block that completes the last GEMM0
// tile of row tile rt queues it for GEMM1.
__device__ inline void publish_gemm0(Ctx& c, int rt) {
  const MoeParams& p = c.p;
  MoeSched* sc = sched_of(p);
  __threadfence();
  const unsigned done = atomicAdd(reinterpret_cast<unsigned*>(p.tile_done) + rt, 1u) + 1u;
  if (done == static_cast<unsigned>(g0_col_tiles(p))) {
    const unsigned pos = atomicAdd(&sc->g1_tail, 1u);
    st_release_gpu_u32(reinterpret_cast<uint32_t*>(p.g1_list) + pos, static_cast<uint32_t>(rt + 1));
  }
}
__device__ inline void finish_gemm0(Ctx& c, int rt) {
  if ((c.p.flags & MOE_FLAG_TMA) != 0) fence_proxy_async_global();  // GEMM1 reads the intermediate with TMA
  block_sync();
  if (threadIdx.x == 0) publish_gemm0(c, rt);
}

// After a GEMM1 task's stores into the return rows of row tile d's sources
// (row_bytes per row, counted when remote), ordered before this by a barrier
// of the threads that stored (one thread): the block that completes a
// source's last GEMM1 task sends it its signal.
__device__ inline void publish_gemm1(Ctx& c, const MoeRowTile& d, uint64_t row_bytes) {
  const MoeParams& p = c.p;
  MoeSched* sc = sched_of(p);
  __threadfence_system();
  const int nseg = is_pooled(d) ? pooled_segments(d) : 1;
  for (int i = 0; i < nseg; ++i) {
    int src = d.src, rows = d.nrows;
    if (is_pooled(d)) {  // segment i
      const int4 v = __ldcg(reinterpret_cast<const int4*>(reinterpret_cast<const MoeRowTile*>(p.rt_desc) + d.row0 + i));
      src = v.x;
      rows = v.w;
    }
    if (src != p.rank) c.bytes += static_cast<uint64_t>(rows) * row_bytes;
    const int done = atomicAdd(&sc->ret_done[src], 1) + 1;
    if (done == ld_cg(&sc->ret_target[src])) send_signal(c, p.off_sig_return, src);
  }
}
__device__ inline void finish_gemm1(Ctx& c, const MoeRowTile& d, uint64_t row_bytes) {
  block_sync();
  if (threadIdx.x == 0) publish_gemm1(c, d, row_bytes);
}

template <int NB>
__device__ inline void run_gemm0(Ctx& c, const MoeRowTile& d, int rt, int nt) {
  const MoeParams& p = c.p;
  const int H = p.hidden, I = p.ffn_hidden;
  const int64_t grow = static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;  // row in recv / inter
  auto& s = *reinterpret_cast<GemmSmem<NB>*>(c.phase);
  GemmArgs<NB> g;
  g.a = reinterpret_cast<const float*>(my_heap(p, p.off_recv_rows)) + grow * H;
  g.lda = H;
  g.mrows = d.nrows;
  const int64_t wofs = static_cast<int64_t>(d.le) * H * I + static_cast<int64_t>(nt) * kTileN;
  g.b[0] = reinterpret_cast<const float*>(p.w1) + wofs;
  if (NB == 2) g.b[NB - 1] = reinterpret_cast<const float*>(p.wu) + wofs;
  g.ldb = I;
  g.ncols = kTileN;
  g.K = H;
  g.bvec = true;
  float acc[NB][4][4];
  gemm_tile(g, s, acc);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int n = nt * kTileN + tx * 4;
  float bias[4] = {0.f, 0.f, 0.f, 0.f};
  if (NB == 1) {
    const float4 b = __ldg(reinterpret_cast<const float4*>(reinterpret_cast<const float*>(p.b1) +
                                                          static_cast<int64_t>(d.le) * I + n));
    bias[0] = b.x; bias[1] = b.y; bias[2] = b.z; bias[3] = b.w;
  }
  float* out = reinterpret_cast<float*>(p.inter) + grow * I + n;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= d.nrows) continue;
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (NB == 2) {
        v[j] = act_silu(acc[0][i][j]) * acc[NB - 1][i][j];
      } else {
        const float h = acc[0][i][j] + bias[j];
        v[j] = p.ffn == MOE_FFN_GELU ? act_gelu(h) : act_relu(h);
      }
    }
    st4(out + static_cast<int64_t>(r) * I, make_float4(v[0], v[1], v[2], v[3]));
  }
  finish_gemm0(c, rt);
}

__device__ inline void run_gemm1(Ctx& c, const MoeRowTile& d, int nt) {
  const MoeParams& p = c.p;
  const int H = p.hidden, I = p.ffn_hidden;
  const int64_t grow = static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;
  auto& s = *reinterpret_cast<GemmSmem<1>*>(c.phase);
  int* slots = reinterpret_cast<int*>(c.phase + sizeof(GemmSmem<1>));
  if (threadIdx.x < d.nrows) {
    slots[threadIdx.x] = ld_cg(reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta)) + grow + threadIdx.x);
  }
  GemmArgs<1> g;
  g.a = reinterpret_cast<const float*>(p.inter) + grow * I;
  g.lda = I;
  g.mrows = d.nrows;
  g.b[0] = reinterpret_cast<const float*>(p.w2) + static_cast<int64_t>(d.le) * I * H +
           static_cast<int64_t>(nt) * kTileN;
  g.ldb = H;
  g.ncols = kTileN;
  g.K = I;
  g.bvec = true;
  float acc[1][4][4];
  gemm_tile(g, s, acc);  // its first __syncthreads also publishes slots[]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int n = nt * kTileN + tx * 4;
  float bias[4] = {0.f, 0.f, 0.f, 0.f};
  if (p.ffn != MOE_FFN_SWIGLU) {
    const float4 b = __ldg(reinterpret_cast<const float4*>(reinterpret_cast<const float*>(p.b2) +
                                                          static_cast<int64_t>(d.le) * H + n));
    bias[0] = b.x; bias[1] = b.y; bias[2] = b.z; bias[3] = b.w;
  }
  float* ret = reinterpret_cast<float*>(peer_heap(c, d.src, p.off_ret_rows));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (r >= d.nrows) continue;
    const int64_t slot = slots[r];
    st4(ret + slot * H + n, make_float4(acc[0][i][0] + bias[0], acc[0][i][1] + bias[1], acc[0][i][2] + bias[2],
                                        acc[0][i][3] + bias[3]));
  }
  finish_gemm1(c, d, kTileN * sizeof(float));
}

// ---- tensor-core tasks (tf32, bf16) ----------------------------------------

// The rows of pooled row tile d (is_pooled) before its tile: row r lies in
// the segment whose rows cover r (in order). Sets g.arow of this thread's
// loader rows and keeps across the tile rowtab[r] and rowsrc[r]:
//   GEMM0 (base = received rows): A from the row in recv (this rank's own
//     rows under LOCAL_GATHER: from x, by token); rowtab = that row (the
//     intermediate's row), rowsrc unused;
//   GEMM1 (base = the intermediate): A from its row; rowtab = the return
//     slot t*k+j at the row's source, rowsrc = the source.
// Every thread calls it; the block has synchronised on return. Out of line
// (it is not hot) and without the Ctx (see pool_tiles).
struct TcRowPtrs {
  const void* a[kTcPasses];
};
__device__ __noinline__ TcRowPtrs pooled_rows(const MoeParams& p, unsigned char* phase, MoeRowTile d, bool gemm1,
                                              const char* base, int64_t rowbytes) {
  const int tid = threadIdx.x, nseg = pooled_segments(d);
  const char** aptr = reinterpret_cast<const char**>(phase);  // [kTcTileM], until the tile's loads
  int* seg = reinterpret_cast<int*>(phase + kTcSegOff);       // source, first row, rows [kMaxWorld] each
  int* rowtab = reinterpret_cast<int*>(phase + kTcRowTabOff);
  unsigned char* rowsrc = phase + kTcRowSrcOff;
  const int* meta = reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta));
  if (tid < nseg) {
    const int4 v = __ldcg(reinterpret_cast<const int4*>(reinterpret_cast<const MoeRowTile*>(p.rt_desc) + d.row0 + tid));
    seg[tid] = v.x;
    seg[kMaxWorld + tid] = v.x * p.rows_per_source + v.z;
    seg[2 * kMaxWorld + tid] = v.w;
  }
  block_sync();
  if (tid < d.nrows) {
    int i = 0, r0 = 0;
    while (i + 1 < nseg && tid >= r0 + seg[2 * kMaxWorld + i]) r0 += seg[2 * kMaxWorld + i++];
    const int src = seg[i], row = seg[kMaxWorld + i] + (tid - r0);
    const char* a = base + row * rowbytes;
    if (gemm1) {
      rowtab[tid] = ld_cg(meta + row);
      rowsrc[tid] = static_cast<unsigned char>(src);
    } else {
      rowtab[tid] = row;
      if (src == p.rank && local_gather(p)) a = reinterpret_cast<const char*>(p.x) + (ld_cg(meta + row) / p.topk) * rowbytes;
    }
    aptr[tid] = a;
  }
  block_sync();
  TcRowPtrs out;
#pragma unroll
  for (int i = 0; i < kTcPasses; ++i) {
    const int r = (tid >> 3) + kTcRowsPerPass * i;
    out.a[i] = r < d.nrows ? aptr[r] : base;  // base: never read (past nrows)
  }
  block_sync();  // every thread holds its rows before the tile's loads overwrite aptr
  return out;
}

// GEMM0: act(A.W1 + b1) or silu(A.Wg) * (A.Wu) for rows of row tile d and
// output columns nt*w..+w (w = 128, or 64 for swiglu) into the intermediate,
// stored in the storage dtype (tf32-rounded fp32, or bf16).
template <class Mma, int NB>
__device__ inline void run_gemm0_tc(Ctx& c, const MoeRowTile& d, int rt, int nt) {
  using T = typename Mma::T;
  const MoeParams& p = c.p;
  const int H = p.hidden, I = p.ffn_hidden;
  const bool pooled = is_pooled(d);
  // Row in recv / inter (pooled: per row, rowtab).
  const int64_t grow = pooled ? 0 : static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;
  constexpr int kW = tc_out_cols<NB>();
  const int n0 = nt * kW;
  TcArgs<NB> g;
  g.a = reinterpret_cast<const T*>(my_heap(p, p.off_recv_rows)) + grow * H;
  g.lda = H;
  g.mrows = d.nrows;
  const int64_t wofs = static_cast<int64_t>(d.le) * I * H + static_cast<int64_t>(n0) * H;  // W^T [El][I][H]
  g.b[0] = reinterpret_cast<const T*>(p.w1) + wofs;
  if (NB == 2) g.b[NB - 1] = reinterpret_cast<const T*>(p.wu) + wofs;
  g.ldb = H;
  g.ncols = min(kW, I - n0);
  g.K = H;
  g.bstream = weights_streamed(p);
  g.tmap = tmap_of(p, MOE_TMAP_RECV);  // then W1, Wu
  g.arow0 = static_cast<int>(grow);
  g.brow0 = d.le * I + n0;
  const int op = NB == 2 ? kOpSwiGLU : (p.ffn == MOE_FFN_GELU ? kOpGeLU : kOpReLU);
  const float* bias = NB == 1 ? reinterpret_cast<const float*>(p.b1) + static_cast<int64_t>(d.le) * I + n0 : nullptr;
  // Gathered A rows (the cp.async loader: a TMA box of one row would not be
  // swizzled by its row, params.h MOE_TMAP_*): a pooled tile's, and under
  // LOCAL_GATHER this rank's own rows, which were not copied: read from x by
  // token (return slot t*k+j / k). Row tid/8 + 32 i of the tile is this
  // thread's loader row of pass i.
  bool gathered = false;
  if (pooled) {
    const TcRowPtrs r = pooled_rows(p, c.phase, d, false, my_heap(p, p.off_recv_rows), static_cast<int64_t>(H) * sizeof(T));
#pragma unroll
    for (int i = 0; i < kTcPasses; ++i) g.arow[i] = r.a[i];
    gathered = true;
  } else if (!Mma::kTF32 && d.src == p.rank && local_gather(p)) {
    const int* meta = reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta)) + grow;
    const T* x = reinterpret_cast<const T*>(p.x);
#pragma unroll
    for (int i = 0; i < kTcPasses; ++i) {
      const int r = (threadIdx.x >> 3) + kTcRowsPerPass * i;
      g.arow[i] = r < d.nrows ? x + static_cast<int64_t>(ld_cg(meta + r) / p.topk) * H : x;
    }
    gathered = true;
  }
  if (gathered) {
    tc_tile_run<Mma, NB, true>(g, c.phase, op, bias);
  } else {
    tc_tile_run<Mma, NB>(g, c.phase, op, bias);
  }
  const float* cs = reinterpret_cast<const float*>(c.phase);
  block_sync();
  T* out = reinterpret_cast<T*>(p.inter) + n0;
  if (pooled) {
    const int* rowtab = reinterpret_cast<const int*>(c.phase + kTcRowTabOff);
    tc_copy_out<T>(cs, d.nrows, g.ncols, Mma::kTF32, [&](int r) { return out + static_cast<int64_t>(rowtab[r]) * I; });
  } else {
    tc_copy_out<T>(cs, d.nrows, g.ncols, Mma::kTF32, [&](int r) { return out + (grow + r) * I; });
  }
  finish_gemm0(c, rt);
}

// GEMM1: A.W2 + b2 for rows of row tile d and output columns nt*128..+128,
// stored straight into the source's return rows (slot t*k+j) in the storage
// dtype of returned rows (fp32 in tf32 mode, bf16 in bf16 mode).
template <class Mma>
__device__ inline void run_gemm1_tc(Ctx& c, const MoeRowTile& d, int nt) {
  using T = typename Mma::T;
  const MoeParams& p = c.p;
  const int H = p.hidden, I = p.ffn_hidden;
  const bool pooled = is_pooled(d);
  const int64_t grow = pooled ? 0 : static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;
  int* slots = reinterpret_cast<int*>(c.phase + kTcRowTabOff);  // return slots, untouched by the tile
  if (!pooled && threadIdx.x < d.nrows) {
    slots[threadIdx.x] = ld_cg(reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta)) + grow + threadIdx.x);
  }
  const int n0 = nt * kTcTileN;
  TcArgs<1> g;
  g.a = reinterpret_cast<const T*>(p.inter) + grow * I;
  g.lda = I;
  g.mrows = d.nrows;
  g.b[0] = reinterpret_cast<const T*>(p.w2) + static_cast<int64_t>(d.le) * H * I + static_cast<int64_t>(n0) * I;
  g.ldb = I;
  g.ncols = min(kTcTileN, H - n0);
  g.K = I;
  g.bstream = weights_streamed(p);
  g.tmap = tmap_of(p, MOE_TMAP_INTER);  // then W2
  g.arow0 = static_cast<int>(grow);
  g.brow0 = d.le * H + n0;
  const float* bias = p.ffn != MOE_FFN_SWIGLU
                          ? reinterpret_cast<const float*>(p.b2) + static_cast<int64_t>(d.le) * H + n0
                          : nullptr;
  if (pooled) {
    const TcRowPtrs r =
        pooled_rows(p, c.phase, d, true, reinterpret_cast<const char*>(p.inter), static_cast<int64_t>(I) * sizeof(T));
#pragma unroll
    for (int i = 0; i < kTcPasses; ++i) g.arow[i] = r.a[i];
    tc_tile_run<Mma, 1, true>(g, c.phase, kOpNone, bias);
  } else {
    tc_tile_run<Mma, 1>(g, c.phase, kOpNone, bias);  // the tile's first __syncthreads also publishes slots[]
  }
  const float* cs = reinterpret_cast<const float*>(c.phase);
  block_sync();
  if (pooled) {
    const unsigned char* rowsrc = c.phase + kTcRowSrcOff;
    tc_copy_out<T>(cs, d.nrows, g.ncols, false, [&](int r) {
      return reinterpret_cast<T*>(peer_heap(c, rowsrc[r], p.off_ret_rows)) + n0 + static_cast<int64_t>(slots[r]) * H;
    });
  } else {
    T* ret = reinterpret_cast<T*>(peer_heap(c, d.src, p.off_ret_rows)) + n0;
    tc_copy_out<T>(cs, d.nrows, g.ncols, false, [&](int r) { return ret + static_cast<int64_t>(slots[r]) * H; });
  }
  finish_gemm1(c, d, static_cast<uint64_t>(g.ncols) * sizeof(T));
}


// One task of the tensor-core modes.
template <class Mma>
__device__ inline void run_task_tc(Ctx& c, int type, const MoeRowTile& d, int rt, int nt) {
  if (type == kTaskG0) {
    if (c.p.ffn == MOE_FFN_SWIGLU) {
      run_gemm0_tc<Mma, 2>(c, d, rt, nt);
    } else {
      run_gemm0_tc<Mma, 1>(c, d, rt, nt);
    }
  } else {
    run_gemm1_tc<Mma>(c, d, nt);
  }
}

#if MOE_WS
// ---- MOE_WS: the GEMM tasks at one block per SM -----------------------------
//
// Three roles run the tasks of a ws_tiles launch, each at its own pace:
//   the producer thread (the first of the producer warpgroup) takes the
//     block's next task (next_task) as soon as it has issued the last stage
//     of the one before, posts it in the task ring and loads its stages;
//   the consumers (the 256 workers) multiply each posted task, keep the
//     stages of its last two steps, stage op(acc + bias) as bf16 in them
//     and go on to the next task, whose first two stages the producer has
//     loaded meanwhile into the other two;
//   the storers (the producer warpgroup's last three warps) write a staged
//     task out (GEMM0: the intermediate; GEMM1: the sources' return rows,
//     16-byte stores), free its two stages for the producer, publish it
//     (publish_gemm0 / 1), record its trace event and free its ring entry.
// So a task's epilogue, publication and the next task's scheduling and
// first loads run under the consumers' MMAs, with four stages in flight.
// (A staging buffer of its own leaves room for three stages only: measured
// slower; docs/benchmarks.md, eighth session.) The workers start the roles
// when they reach the GEMM phase (start) and wait for the storers at its end
// (done), which hand back the trace counter and the busy figures.

constexpr int kWsRing = 2;            // task ring entries: the producer runs at most one task ahead
constexpr int kWsStorerThreads = 96;  // the producer warpgroup's warps 1..3
constexpr int kWsStorer0 = kThreads + 32;
// Barrier 2 (1: workers_sync) of the storer warps.
__device__ __forceinline__ void storers_sync() { asm volatile("bar.sync 2, %0;\n" ::"n"(kWsStorerThreads) : "memory"); }
// Whether v holds in every thread of named barrier B's N threads (a
// barrier itself). A bounded wait that expires in some threads of a role
// and not in others would split the role at its next barrier: each role
// decides together.
template <int B, int N>
__device__ __forceinline__ bool all_of_role(bool v) {
  uint32_t r;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbar.red.and.pred q, %2, %3, p;\nselp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(r)
      : "r"(static_cast<uint32_t>(v)), "n"(B), "n"(N)
      : "memory");
  return r != 0;
}
__device__ __forceinline__ bool all_workers(bool v) { return all_of_role<1, kThreads>(v); }
__device__ __forceinline__ bool all_storers(bool v) { return all_of_role<2, kWsStorerThreads>(v); }

// A task ring entry (written by the producer thread before it arrives on
// task_full; freed by the storers on task_empty).
struct WsTask {
  int type, rt, nt, pad_;
  int desc[4];           // rt's MoeRowTile: src, le, row0, nrows
  uint64_t tq, t0, ts;   // consumers: began waiting (trace), started, staged (trace)
};
// The trace counter and figures that the workers hand to the storers and
// take back.
struct WsHandoff {
  uint64_t busy, tasks;
  int tn, quit;  // quit: the workers never reached the GEMM phase
};
// The forward's WS state: stage barriers, then start, done, stg_full,
// task_full[kWsRing], task_empty[kWsRing]; the ring; the hand-over.
constexpr int kWsCtlOff = kWsFwdBarOff + 16 * kWsFwdStages;
constexpr int kWsRingOff = kWsCtlOff + 8 * (3 + 2 * kWsRing);
constexpr int kWsHandOff = kWsRingOff + kWsRing * static_cast<int>(sizeof(WsTask));
static_assert(sizeof(WsTask) == 56 && sizeof(WsHandoff) == 24, "ring and hand-over layout");
static_assert(!MOE_WS || (kWsFwdStages * kWsStageBytes <= kTcMainBytes &&
                          kWsHandOff + static_cast<int>(sizeof(WsHandoff)) <= kTcPhaseUsable),
              "MOE_WS: the phase buffer holds the stages (-DMOE_TC_STAGES=6) and the WS state");

struct WsFwd {
  WsSmemT<kWsFwdStages> sm;
  uint32_t ctl;        // shared address of the hand-over barriers
  unsigned char* gen;  // the phase buffer (generic)
  __device__ __forceinline__ uint32_t start() const { return ctl; }
  __device__ __forceinline__ uint32_t done() const { return ctl + 8; }
  __device__ __forceinline__ uint32_t stg_full() const { return ctl + 16; }
  __device__ __forceinline__ uint32_t task_full(int s) const { return ctl + 24 + 8 * s; }
  __device__ __forceinline__ uint32_t task_empty(int s) const { return ctl + 24 + 8 * (kWsRing + s); }
  // Consumer c's staged rows of a task that ends at stage count n (ksteps
  // steps): the stage of its step ksteps - kWsStgKeep + c.
  __device__ __forceinline__ int stg_stage(uint32_t n_end, int c) const {
    return static_cast<int>((n_end - kWsStgKeep + c) % kWsFwdStages);
  }
  __device__ __forceinline__ __nv_bfloat16* stg(uint32_t n_end, int c) const {
    return reinterpret_cast<__nv_bfloat16*>(gen + stg_stage(n_end, c) * kWsStageBytes);
  }
  __device__ __forceinline__ volatile WsTask* task(int s) const {
    return reinterpret_cast<volatile WsTask*>(gen + kWsRingOff) + s;
  }
  __device__ __forceinline__ volatile WsHandoff* handoff() const {
    return reinterpret_cast<volatile WsHandoff*>(gen + kWsHandOff);
  }
};
__device__ __forceinline__ WsFwd ws_fwd_of(unsigned char* phase) {
  const uint32_t base = smem_u32(phase);
  return WsFwd{{base, base + static_cast<uint32_t>(kWsFwdBarOff)}, base + static_cast<uint32_t>(kWsCtlOff), phase};
}
// Thread 0 at kernel entry (the block syncs after it).
__device__ __forceinline__ void ws_fwd_init(const WsFwd& f) {
  ws_init_barriers(f.sm);
  mbar_init(f.start(), 1);
  mbar_init(f.done(), 1);
  mbar_init(f.stg_full(), kThreads);  // every consumer thread, after its staging stores
  for (int s = 0; s < kWsRing; ++s) {
    mbar_init(f.task_full(s), 1);
    mbar_init(f.task_empty(s), 1);
  }
  mbar_init_fence();
}
// Ring entry of the i-th task, and the parity of its i / kWsRing-th use.
__device__ __forceinline__ int ws_slot(uint32_t i) { return static_cast<int>(i % kWsRing); }
__device__ __forceinline__ uint32_t ws_use(uint32_t i) { return (i / kWsRing) & 1u; }

// The producer thread: takes the block's tasks and loads their stages until
// the scheduler says exit (or abort: kTaskNone), which it posts too.
__device__ inline void ws_producer(Ctx& c, const WsFwd& f) {
  const MoeParams& p = c.p;
  if (!mbar_wait_for(f.start(), 0, 16 * p.watchdog_ns) || f.handoff()->quit != 0) return;
  const uint64_t limit = 8 * p.watchdog_ns;
  WsStageT<kWsFwdStages> st;
  const uint64_t bpol = weights_streamed(p) ? l2_evict_first() : 0;
  int g0_ticket = -1, g1_ticket = -1, rt = 0, nt = 0;
  bool g0_done = false;
  for (uint32_t i = 0;; ++i) {
    const int slot = ws_slot(i);
    // The storers are done with the entry's last task (bounded: if they
    // are gone, the consumers' own bounded waits end the launch).
    if (i >= kWsRing && !mbar_wait_for(f.task_empty(slot), ws_use(i) ^ 1u, limit)) return;
    const int type = next_task(c, g0_ticket, g0_done, g1_ticket, rt, nt);
    const bool gemm = type == kTaskG0 || type == kTaskG1;
    const int4 dv = gemm ? __ldcg(reinterpret_cast<const int4*>(reinterpret_cast<const MoeRowTile*>(p.rt_desc) + rt))
                         : make_int4(0, 0, 0, 0);
    volatile WsTask* t = f.task(slot);
    t->type = type;
    t->rt = rt;
    t->nt = nt;
    t->desc[0] = dv.x;
    t->desc[1] = dv.y;
    t->desc[2] = dv.z;
    t->desc[3] = dv.w;
    mbar_arrive(f.task_full(slot));
    if (!gemm) return;
    const bool g0 = type == kTaskG0;
    const int amap = g0 ? MOE_TMAP_RECV : MOE_TMAP_INTER;  // its B map follows (W1, W2)
    const int n = g0 ? p.ffn_hidden : p.hidden, K = g0 ? p.hidden : p.ffn_hidden;
    const int64_t grow = static_cast<int64_t>(dv.x) * p.rows_per_source + dv.z;  // src, row0
    fence_proxy_async_all();  // the rows acquired in next_task, before this thread's TMA reads them
    ws_produce(f.sm, st, WsLoad{tmap_of(p, amap), tmap_of(p, amap + 1), static_cast<int>(grow), dv.y * n + nt * kWsTileN,
                                K / kWsKElems, 0, bpol});
  }
}

// The consumers' part of a task (ksteps >= kWsStgKeep stages from stage
// count n, nrows rows): the MMAs, then the bf16 staging in the stages of its
// last two steps, which the storers free (the producer's wait for them is
// the storers' hand-back); ts (thread 0 when tracing, else null): when it is
// staged. A consumer whose 64 rows are all past nrows (a partial row tile's
// second half) neither multiplies nor stages: ~half of the partial tiles at
// the paper's shape have <= 64 rows, and the storers write rows < nrows
// only. One leaf function
// (as tc_tile_stage, gemm_tc.cuh: inlined into the kernel, whose calls
// ptxas cannot see into, every wgmma would wait for the one before).
__device__ __noinline__ void ws_tile_stage(const WsFwd f, uint32_t n, int ksteps, int nrows, int op,
                                           const float* bias, int ncols, volatile uint64_t* ts) {
  float acc[kWsAcc];
  WsStageT<kWsFwdStages> st;
  st.n = n;
  const int c = threadIdx.x >> 7;
  const bool mma = c * (kTcTileM / 2) < nrows;
  ws_consume<kWsStgKeep>(f.sm, st, c, ksteps, acc, mma);
  workers_sync();  // both warpgroups' MMAs are done with the kept stages
  if (mma) ws_store_bf16(acc, f.stg(st.n, c), kWsStgStride, op, bias, ncols);
  fence_proxy_async_smem();  // these writes of the kept stages before the producer's next TMA writes
  if (ts != nullptr) *ts = globaltimer();
  mbar_arrive(f.stg_full());
}

// The workers' GEMM phase: every posted task's MMAs and staging, until exit
// (true) or abort (false); then the storers' hand-back.
__device__ inline bool process_ws(Ctx& c) {
  const MoeParams& p = c.p;
  const WsFwd f = ws_fwd_of(c.phase);
  const uint64_t limit = 8 * p.watchdog_ns;
  block_sync();  // the phase buffer's last generic uses, before the producer's TMA writes
  if (threadIdx.x == 0) {
    fence_proxy_async_all();
    volatile WsHandoff* h = f.handoff();
    h->tn = c.tn;
    h->quit = 0;
    mbar_arrive(f.start());
  }
  bool ok = true;
  uint32_t n = 0;  // stages consumed so far
  for (uint32_t i = 0;; ++i) {
    const int slot = ws_slot(i);
    const uint64_t tq = threadIdx.x == 0 && tracing(c) ? globaltimer() : 0;
    if (!all_workers(mbar_wait_for(f.task_full(slot), ws_use(i), limit))) {  // the producer's own waits are shorter
      if (threadIdx.x == 0) watchdog_trip(c, MOE_STATUS_WATCHDOG, MOE_WAIT_TASK, -1, limit, 0, i);
      ok = false;
      break;
    }
    volatile WsTask* t = f.task(slot);
    const int type = t->type;
    if (type != kTaskG0 && type != kTaskG1) {
      ok = type == kTaskExit;
      break;
    }
    if (threadIdx.x == 0) {
      t->tq = tq;
      t->t0 = globaltimer();
    }
    const bool g0 = type == kTaskG0;
    const int le = t->desc[1], n0 = t->nt * kWsTileN;
    const int K = g0 ? p.hidden : p.ffn_hidden, N = g0 ? p.ffn_hidden : p.hidden;
    const float* bias = reinterpret_cast<const float*>(g0 ? p.b1 : p.b2) + static_cast<int64_t>(le) * N + n0;
    const int op = g0 ? (p.ffn == MOE_FFN_GELU ? kOpGeLU : kOpReLU) : kOpNone;
    ws_tile_stage(f, n, K / kWsKElems, t->desc[3], op, bias, min(kWsTileN, N - n0),
                  threadIdx.x == 0 && tracing(c) ? &t->ts : nullptr);
    n += static_cast<uint32_t>(K / kWsKElems);
  }
  if (threadIdx.x == 0) {
    if (mbar_wait_for(f.done(), 0, limit)) {
      volatile WsHandoff* h = f.handoff();
      c.tn = h->tn;
      c.busy += h->busy;
      c.tasks += h->tasks;
    } else {
      watchdog_trip(c, MOE_STATUS_WATCHDOG, MOE_WAIT_TASK, -1, limit, 0, 0);
      ok = false;
    }
  }
  block_sync();  // the storers have read the staging: the phase buffer is the next phase's
  return ok;
}

// The storer warps: write each staged task out, publish it, free the
// staging and the ring entry; at the end hand back the trace counter and
// figures (done) and count the bytes they put.
__device__ inline void ws_storer(Ctx& c, const WsFwd& f) {
  const MoeParams& p = c.p;
  if (!all_storers(mbar_wait_for(f.start(), 0, 16 * p.watchdog_ns)) || f.handoff()->quit != 0) return;
  const uint64_t limit = 8 * p.watchdog_ns;
  const int sid = threadIdx.x - kWsStorer0, sw = sid >> 5, lane = sid & 31;
  constexpr int kWarps = kWsStorerThreads / 32;
  const bool lead = sid == 0;
  c.tn = f.handoff()->tn;
  uint64_t busy = 0, tasks = 0, last = 0;
  using T = __nv_bfloat16;
  uint32_t n = 0;  // the stage count, as the consumers keep it
  for (uint32_t i = 0;; ++i) {
    const int slot = ws_slot(i);
    if (!all_storers(mbar_wait_for(f.task_full(slot), ws_use(i), limit))) break;
    volatile WsTask* t = f.task(slot);
    const int type = t->type;
    if (type != kTaskG0 && type != kTaskG1) break;
    const bool g0 = type == kTaskG0;
    const int rt = t->rt, nt = t->nt;
    MoeRowTile d;
    d.src = t->desc[0];
    d.le = t->desc[1];
    d.row0 = t->desc[2];
    d.nrows = t->desc[3];
    const int64_t grow = static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;
    const int n0 = nt * kWsTileN, N = g0 ? p.ffn_hidden : p.hidden;
    const int ncols = min(kWsTileN, N - n0);
    T* out = g0 ? reinterpret_cast<T*>(p.inter) + grow * N + n0
                : reinterpret_cast<T*>(peer_heap(c, d.src, p.off_ret_rows)) + n0;
    // GEMM1: the return slot of this warp's row sw + kWarps j is lane j's
    // (j < 32) or lane j - 32's (a tile's 128 rows over 3 warps: 43 each at
    // most), loaded before the wait.
    int slot_a = 0, slot_b = 0;
    if (!g0) {
      const int* meta = reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta)) + grow;
      if (sw + kWarps * lane < d.nrows) slot_a = ld_cg(meta + sw + kWarps * lane);
      if (sw + kWarps * (lane + 32) < d.nrows) slot_b = ld_cg(meta + sw + kWarps * (lane + 32));
    }
    n += static_cast<uint32_t>((g0 ? p.hidden : p.ffn_hidden) / kWsKElems);
    mbar_wait(f.stg_full(), i & 1u);  // the consumers are one task's MMAs away at most
    const bool active = lane < ncols / 8;  // one 16-byte vector of a row a lane
    // Consumer 0's 64 rows first, then consumer 1's, each kept stage handed
    // back to the producer (the arrivals of the consumer warps that kept
    // it) as soon as its rows are out: the next task's third step loads
    // into consumer 0's. A GEMM1 task's rows go to the peers over NVLink,
    // and when most of the grid stores its returns at once those stores
    // back up: the task after such a one waited for its third stage (W = 4,
    // T = 8192: 44-50 us against 28, fifteenth session).
    int j = 0, r = sw;
    for (int h = 0; h < kWsStgKeep; ++h) {
      const int rend = min(d.nrows, (h + 1) * (kTcTileM / kWsStgKeep));
      for (; r < rend; ++j, r += kWarps) {  // warp-uniform
        const int sl = __shfl_sync(kFull, j < 32 ? slot_a : slot_b, j & 31);
        if (active) {
          const uint4 u = *reinterpret_cast<const uint4*>(f.stg(n, h) + (r & 63) * kWsStgStride + lane * 8);
          *reinterpret_cast<uint4*>(out + (g0 ? static_cast<int64_t>(r) : static_cast<int64_t>(sl)) * N + lane * 8) = u;
        }
      }
      fence_proxy_async_smem();  // these reads of the kept stage before the producer's next TMA writes
      if (h == kWsStgKeep - 1 && g0 && (p.flags & MOE_FLAG_TMA) != 0) fence_proxy_async_global();  // GEMM1 reads the intermediate with TMA
      storers_sync();
      if (lead) mbar_arrive_n(f.sm.empty(f.stg_stage(n, h)), kWsConsumerWarps);
    }
    if (lead) {
      if (g0) {
        publish_gemm0(c, rt);
      } else {
        publish_gemm1(c, d, static_cast<uint64_t>(ncols) * sizeof(T));
      }
      const uint64_t t1 = globaltimer(), t0 = t->t0;
      if (tracing(c)) {  // the task's event: from its MMAs' start to its staging (the next one's start)
        const uint64_t tq = t->tq;
        if (t0 - tq > 1000) trace_ev(c, MOE_EV_WAIT_TASK, tq, t0);
        trace_ev(c, g0 ? MOE_EV_GEMM0 : MOE_EV_GEMM1, t0, t->ts, d.src, rt, nt, p.rank * p.experts_per_rank + d.le);
      }
      mbar_arrive(f.task_empty(slot));  // the entry is read
      busy += t1 - max(t0, last);  // busy: the union of the tasks' [start, published]
      last = t1;
      ++tasks;
    }
  }
  if (lead) {
    volatile WsHandoff* h = f.handoff();
    h->tn = c.tn;
    h->busy = busy;
    h->tasks = tasks;
    mbar_arrive(f.done());
    if (c.bytes != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&status_of(p)->bytes_put), c.bytes);
  }
}
#endif

// The processor loop (process) of the worker threads' tiles.
__device__ inline bool process_loop(Ctx& c) {
  const MoeParams& p = c.p;
  const MoeRowTile* desc = reinterpret_cast<const MoeRowTile*>(p.rt_desc);
  int g0_ticket = -1, g1_ticket = -1, rt = 0, nt = 0;
  bool g0_done = false;
  for (;;) {
    uint64_t tq = 0;  // thread 0: when this block asked for its next task (trace)
    if (threadIdx.x == 0) {
      if (tracing(c)) tq = globaltimer();
      const int type = next_task(c, g0_ticket, g0_done, g1_ticket, rt, nt);
      c.sh.bcast[0] = type;
      c.sh.bcast[1] = rt;
      c.sh.bcast[2] = nt;
    }
    block_sync();
    const int type = c.sh.bcast[0];
    const int trt = c.sh.bcast[1], tnt = c.sh.bcast[2];
    if (type == kTaskNone) return false;
    if (type == kTaskExit) return true;
    const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
    if (threadIdx.x == 0 && tracing(c) && t0 - tq > 1000) trace_ev(c, MOE_EV_WAIT_TASK, tq, t0);
    const int4 dv = __ldcg(reinterpret_cast<const int4*>(desc + trt));
    MoeRowTile d;
    d.src = dv.x; d.le = dv.y; d.row0 = dv.z; d.nrows = dv.w;
    if (p.dtype == MOE_DTYPE_BF16) {
      run_task_tc<MmaBF16>(c, type, d, trt, tnt);
    } else if (p.dtype == MOE_DTYPE_TF32) {
      run_task_tc<MmaTF32>(c, type, d, trt, tnt);
    } else if (type == kTaskG0) {
      if (p.ffn == MOE_FFN_SWIGLU) run_gemm0<2>(c, d, trt, tnt); else run_gemm0<1>(c, d, trt, tnt);
    } else {
      run_gemm1(c, d, tnt);
    }
    if (threadIdx.x == 0) {
      const uint64_t t1 = globaltimer();
      c.busy += t1 - t0;
      c.tasks += 1;
      trace_ev(c, type == kTaskG0 ? MOE_EV_GEMM0 : MOE_EV_GEMM1, t0, t1, is_pooled(d) ? -1 : d.src, trt, tnt,
               p.rank * p.experts_per_rank + d.le);
    }
    block_sync();
  }
}

// The processor loop of this launch's mode. Returns false after an abort.
__device__ inline bool process(Ctx& c) {
#if MOE_WS
  if (ws_tiles(c.p)) return process_ws(c);
#endif
  return process_loop(c);
}

}  // namespace moe
