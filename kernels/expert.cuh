// expert.cuh: the expert FFN as tile tasks, handed out dynamically.
//
// Roles during this phase:
// - the OS block (the last block) is the subscriber: it polls the W dispatch
//   signals (bounded by the watchdog) and, as each source s arrives, decodes
//   s's counts into row tiles (<= row_tile_rows(p) rows of one (s, local
//   expert): 64 in fp32, 128 in tf32/bf16), writes
//   their descriptors and publishes the arrival (arr_src / arr_task0 /
//   arr_tile0, then arr_n with release). A source that sent no rows gets its
//   return signal at once. After the last arrival it becomes a processor.
// - processors take tasks:
//   GEMM0 tickets from an atomic counter, in arrival order: ticket i is valid
//     once a published arrival covers it; task = (row tile, I-column tile),
//     row-tile-major (small forwards: column-major over all sources, see
//     g0_col_major):
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
#include "sync.cuh"

namespace moe {

enum TaskType : int { kTaskNone = 0, kTaskG0 = 1, kTaskG1 = 2, kTaskExit = 3 };

// Task geometry of the mode. Row tiles: rows of one task. GEMM0 / GEMM1
// column tiles: tasks per row tile. H and I are multiples of 64, so only a
// 128-wide tensor-core column tile can be partial (64 of 128 columns).
__device__ __forceinline__ int row_tile_rows(const MoeParams& p) { return tc_mode(p) ? kTcTileM : kTileM; }
__device__ __forceinline__ int g0_tile_cols(const MoeParams& p) {
  return tc_mode(p) ? (p.ffn == MOE_FFN_SWIGLU ? kTcTileN / 2 : kTcTileN) : kTileN;
}
__device__ __forceinline__ int g1_tile_cols(const MoeParams& p) { return tc_mode(p) ? kTcTileN : kTileN; }
__device__ __forceinline__ int g0_col_tiles(const MoeParams& p) {
  const int w = g0_tile_cols(p);
  return (p.ffn_hidden + w - 1) / w;
}
__device__ __forceinline__ int g1_col_tiles(const MoeParams& p) {
  const int w = g1_tile_cols(p);
  return (p.hidden + w - 1) / w;
}

// Generic address of the launch's tensor map i (MOE_TMAP_*; a GEMM's B maps
// follow its A map), or 0 (the cp.async loader) without MOE_FLAG_TMA. The
// maps live in the kernel's argument, in parameter space (__grid_constant__).
__device__ __forceinline__ uint64_t tmap_of(const MoeParams& p, int i) {
  return (p.flags & MOE_FLAG_TMA) != 0 ? reinterpret_cast<uint64_t>(&p.tmap[i * MOE_TMAP_WORDS]) : 0;
}

// Small forwards (few rows per source and expert): every expert's weights
// would stream from HBM once per source, each source's row tiles a wave of
// their own. Instead the owner publishes the sources together, once all have
// arrived, and hands out GEMM0 and GEMM1 tasks column-tile-major over all row
// tiles: the W row tiles of an expert that read the same weight slab run at
// the same time and share it through L2. Chosen by the owner alone (its own
// T stands for the sources'); -DMOE_MERGE_ROWS=0 turns it off.
#ifndef MOE_MERGE_ROWS
#define MOE_MERGE_ROWS 32  // at most this many kept rows per expert on average
#endif
constexpr int kMergeRows = MOE_MERGE_ROWS;
__device__ __forceinline__ bool g0_col_major(const MoeParams& p) {
  return p.world > 1 && tc_mode(p) &&
         static_cast<int64_t>(p.tokens) * p.topk <= static_cast<int64_t>(p.experts) * kMergeRows;
}

// The subscriber loop of the OS block. Returns false after an abort.
__device__ inline bool os_subscribe(Ctx& c) {
  const MoeParams& p = c.p;
  const int W = p.world, El = p.experts_per_rank;
  const int nt0 = g0_col_tiles(p), nt1 = g1_col_tiles(p), tm = row_tile_rows(p);
  MoeSched* s = sched_of(p);
  const uint64_t* sig = reinterpret_cast<const uint64_t*>(my_heap(p, p.off_sig_dispatch));
  int* rows = reinterpret_cast<int*>(c.phase);     // [El + 1] row prefix
  int* tiles = rows + (El + 1);                    // [El + 1] tile prefix
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
      if (found >= 0) {
        arrived |= 1ull << found;
        if (tracing(c)) trace_ev(c, MOE_EV_WAIT_DISPATCH, tw0, globaltimer(), found);
      }
    }
    __syncthreads();
    const int src = c.sh.bcast[0];
    if (src < 0) return false;
    const uint64_t tw = threadIdx.x == 0 ? globaltimer() : 0;
    const int* cnt = reinterpret_cast<const int*>(my_heap(p, p.off_recv_counts)) + src * El;
    for (int le = threadIdx.x; le < El; le += kThreads) {
      const int r = ld_cg(cnt + le);
      rows[le] = r;
      tiles[le] = (r + tm - 1) / tm;
    }
    __syncthreads();
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
    __syncthreads();
    if (threadIdx.x == 0) {
      s->arr_src[n] = src;
      s->arr_tile0[n + 1] = tile0 + ntiles;
      s->arr_task0[n + 1] = ld_cg(&s->arr_task0[n]) + ntiles * nt0;
      s->ret_target[src] = ntiles * nt1;
      __threadfence();
      // Column-major GEMM0: all sources published at once, after the last.
      if (!g0_col_major(p) || n + 1 == W) st_release_gpu_u32(&s->arr_n, static_cast<uint32_t>(n + 1));
      if (ntiles == 0) send_signal(c, p.off_sig_return, src);
      const uint64_t t1 = globaltimer();
      c.busy += t1 - tw;
      trace_ev(c, MOE_EV_DECODE, tw, t1, src, ntiles);
    }
    __syncthreads();
    t0 = globaltimer();  // the next source gets a full watchdog period from here
    tw0 = t0;
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
  const bool col_major = g0_col_major(p);
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

// After a GEMM0 task's stores: the block that completes the last GEMM0 tile
// of row tile rt queues it for GEMM1.
__device__ inline void finish_gemm0(Ctx& c, int rt) {
  const MoeParams& p = c.p;
  if ((p.flags & MOE_FLAG_TMA) != 0) fence_proxy_async_global();  // GEMM1 reads the intermediate with TMA
  __syncthreads();
  if (threadIdx.x == 0) {
    MoeSched* sc = sched_of(p);
    __threadfence();
    const unsigned done = atomicAdd(reinterpret_cast<unsigned*>(p.tile_done) + rt, 1u) + 1u;
    if (done == static_cast<unsigned>(g0_col_tiles(p))) {
      const unsigned pos = atomicAdd(&sc->g1_tail, 1u);
      st_release_gpu_u32(reinterpret_cast<uint32_t*>(p.g1_list) + pos, static_cast<uint32_t>(rt + 1));
    }
  }
}

// After a GEMM1 task's stores into source src's return rows (bytes of them
// remote): the block that completes src's last GEMM1 task sends its signal.
__device__ inline void finish_gemm1(Ctx& c, int src, uint64_t bytes) {
  const MoeParams& p = c.p;
  __syncthreads();
  if (threadIdx.x == 0) {
    if (src != p.rank) c.bytes += bytes;
    MoeSched* sc = sched_of(p);
    __threadfence_system();
    const int done = atomicAdd(&sc->ret_done[src], 1) + 1;
    if (done == ld_cg(&sc->ret_target[src])) send_signal(c, p.off_sig_return, src);
  }
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
  finish_gemm1(c, d.src, static_cast<uint64_t>(d.nrows) * kTileN * sizeof(float));
}

// ---- tensor-core tasks (tf32, bf16) ----------------------------------------

// GEMM0: act(A.W1 + b1) or silu(A.Wg) * (A.Wu) for rows of row tile d and
// output columns nt*w..+w (w = 128, or 64 for swiglu) into the intermediate,
// stored in the storage dtype (tf32-rounded fp32, or bf16).
template <class Mma, int NB>
__device__ inline void run_gemm0_tc(Ctx& c, const MoeRowTile& d, int rt, int nt) {
  using T = typename Mma::T;
  const MoeParams& p = c.p;
  const int H = p.hidden, I = p.ffn_hidden;
  const int64_t grow = static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;  // row in recv / inter
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
  g.tmap = tmap_of(p, MOE_TMAP_RECV);  // then W1, Wu
  g.arow0 = static_cast<int>(grow);
  g.brow0 = d.le * I + n0;
  const int op = NB == 2 ? kOpSwiGLU : (p.ffn == MOE_FFN_GELU ? kOpGeLU : kOpReLU);
  const float* bias = NB == 1 ? reinterpret_cast<const float*>(p.b1) + static_cast<int64_t>(d.le) * I + n0 : nullptr;
  bool gathered = false;
  if constexpr (!Mma::kTF32) {
    if (d.src == p.rank && local_gather(p)) {
      // This rank's own rows were not copied: read them from x by token
      // (return slot t*k+j / k). Row tid/8 + 32 i of the tile is this
      // thread's loader row of pass i. The cp.async loader: a TMA box of
      // one row would not be swizzled by its row (params.h MOE_TMAP_*).
      const int* meta = reinterpret_cast<const int*>(my_heap(p, p.off_recv_meta)) + grow;
      const int lr = threadIdx.x >> 3;
      int tk[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = lr + kTcRowsPerPass * i;
        tk[i] = r < d.nrows ? ld_cg(meta + r) / p.topk : 0;
      }
      g.a = reinterpret_cast<const T*>(p.x);
      g.atok = make_int4(tk[0], tk[1], tk[2], tk[3]);
      tc_tile_stage<Mma, NB, true>(g, c.phase, op, bias);
      gathered = true;
    }
  }
  if (!gathered) tc_tile_stage<Mma, NB>(g, c.phase, op, bias);
  const float* cs = reinterpret_cast<const float*>(c.phase);
  __syncthreads();
  T* out = reinterpret_cast<T*>(p.inter) + grow * I + n0;
  tc_copy_out<T>(cs, d.nrows, g.ncols, Mma::kTF32, [&](int r) { return out + static_cast<int64_t>(r) * I; });
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
  const int64_t grow = static_cast<int64_t>(d.src) * p.rows_per_source + d.row0;
  int* slots = reinterpret_cast<int*>(c.phase + kTcMainBytes);  // untouched by the tile
  if (threadIdx.x < d.nrows) {
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
  g.tmap = tmap_of(p, MOE_TMAP_INTER);  // then W2
  g.arow0 = static_cast<int>(grow);
  g.brow0 = d.le * H + n0;
  const float* bias = p.ffn != MOE_FFN_SWIGLU
                          ? reinterpret_cast<const float*>(p.b2) + static_cast<int64_t>(d.le) * H + n0
                          : nullptr;
  tc_tile_stage<Mma, 1>(g, c.phase, kOpNone, bias);  // the tile's first __syncthreads also publishes slots[]
  const float* cs = reinterpret_cast<const float*>(c.phase);
  __syncthreads();
  T* ret = reinterpret_cast<T*>(peer_heap(c, d.src, p.off_ret_rows)) + n0;
  tc_copy_out<T>(cs, d.nrows, g.ncols, false,
                 [&](int r) { return ret + static_cast<int64_t>(slots[r]) * H; });
  finish_gemm1(c, d.src, static_cast<uint64_t>(d.nrows) * g.ncols * sizeof(T));
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

// The processor loop. Returns false after an abort.
__device__ inline bool process(Ctx& c) {
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
    __syncthreads();
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
      trace_ev(c, type == kTaskG0 ? MOE_EV_GEMM0 : MOE_EV_GEMM1, t0, t1, d.src, trt, tnt,
               p.rank * p.experts_per_rank + d.le);
    }
    __syncthreads();
  }
}

}  // namespace moe
