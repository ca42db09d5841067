// gemm_ws.cuh: the warp-specialised tensor-core GEMM tile planned in
// docs/performance.md ("Next: the GEMM at one block per SM"), bf16 in, fp32
// accumulate, tiles of 128 rows x kWsTileN (256) columns at one block per SM.
//
// Roles (kWsThreads = 384 threads):
//   the producer (warpgroup 0 in the benchmark, the block's last warpgroup
//     in a MOE_WS forward): one thread issues every stage as TMA boxes (A:
//     128 rows; B: 256 rows in boxes of kWsBBoxRows; 64 bf16 of K each, the
//     hardware's 128-byte swizzle) on the stage's "full" mbarrier, once the
//     stage's "empty" mbarrier says both consumers are done with its last use;
//   two consumer warpgroups: consumer c multiplies A rows 64c..+63 of a
//     stage by its 256 B rows with wgmma m64n256k16 (128 fp32 accumulators a
//     thread), keeps one stage's MMAs in flight (wgmma.wait_group 1) and frees
//     the stage before it (every consumer warp arrives on "empty").
// Stage s: A [128][128 B] then B [256][128 B] (48 KB), a ring of them from a
// 1024-byte aligned base (kWsStages in the benchmarks, kWsFwdStages in the
// forward); the barriers elsewhere (WsSmemT). The stage
// counter runs on across tasks (WsStage), so producer and consumers agree on
// every stage's parity as long as both walk the same task sequence.
//
// Users: gemm_bench_ws.cu (the GEMM phase alone: the producer walks the
// block's fixed task list and loads the next task while the consumers run
// the epilogue; and the same tile with thread 0 issuing the loads, ws_pump);
// expert.cuh (the MOE_WS forward: the producer thread also takes the
// block's tasks, the consumers stage each task's bf16 results in the stages
// of its last two steps, and three storer warps write them out and hand
// those stages back while the consumers run the next task).
//
// Registers: no `setmaxnreg`. ptxas ignores it in a relocatable (-rdc)
// object, which the cubin's device link with NVSHMEM needs ("C7504:
// 'setmaxnreg' ignored to maintain compatibility across compilation units"),
// so every thread gets the 168 registers of 384 threads at one block per SM;
// that holds the 128 accumulators with no spill in the main loop. A
// whole-program build could move them (the forward uses only nvshmem_ptr and
// nvshmemx_signal_op from NVSHMEM).
//
// Every wait is bounded (mbar_wait traps past kTmaWaitNs: a TMA either lands
// or faults, so an expiry is a bug, and the launch fails rather than hangs;
// the forward's hand-overs between its roles wait with mbar_wait_for and
// their callers' limits).
#pragma once

#include "gemm_tc.cuh"

namespace moe {

constexpr int kWsThreads = MOE_WS_THREADS;
constexpr int kWsTileN = MOE_WS_TILE_N;
constexpr int kWsStages = MOE_WS_STAGES;
constexpr int kWsABytes = kTcTileM * kTcKBytes;                  // A part of a stage (16 KB)
constexpr int kWsStageBytes = (kTcTileM + kWsTileN) * kTcKBytes;  // 48 KB
constexpr int kWsBarOff = kWsStages * kWsStageBytes;             // the benchmarks' barriers (WsSmem)
constexpr int kWsAcc = 64 * kWsTileN / 128;                      // fp32 accumulators a consumer thread (128)
constexpr int kWsConsumerWarps = 8;                              // arrivals that free a stage
constexpr int kWsKElems = kTcKBytes / 2;                         // bf16 of K a stage (64)
static_assert(kWsThreads == 3 * 128, "a producer warpgroup and two consumer warpgroups");
static_assert(kWsStageBytes % 1024 == 0 && kWsABytes % 1024 == 0, "stages and their B parts on 1024-byte swizzle atoms");
static_assert(kTcTileM == 128 && kWsTileN == 256, "wgmma m64n256 for two 64-row consumers");

#define MOE_WS_D16(i)                                                                                        \
  "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7]), "+f"(d[i + 8]), "+f"(d[i + 9]), "+f"(d[i + 10]), "+f"(d[i + 11]), "+f"(d[i + 12]),         \
      "+f"(d[i + 13]), "+f"(d[i + 14]), "+f"(d[i + 15])
// D[64 x 256] += A[64 x 16] * B[16 x 256], both K-major, 128-byte swizzle.
__device__ __forceinline__ void wgmma_bf16_n256(float (&d)[kWsAcc], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, "
      "%85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, "
      "%105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, "
      "%122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
      : MOE_WS_D16(0), MOE_WS_D16(16), MOE_WS_D16(32), MOE_WS_D16(48), MOE_WS_D16(64), MOE_WS_D16(80),
        MOE_WS_D16(96), MOE_WS_D16(112)
      : "l"(da), "l"(db), "r"(1));
}
#undef MOE_WS_D16

template <int N>
__device__ __forceinline__ void ws_wgmma_wait(float (&d)[kWsAcc]) {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#pragma unroll
  for (int i = 0; i < kWsAcc; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The stage a running step count uses, and the parity of that use, in a
// ring of S stages (the benchmarks: kWsStages; the forward: kWsFwdStages,
// expert.cuh).
template <int S>
struct WsStageT {
  uint32_t n = 0;  // steps so far (over tasks)
  __device__ __forceinline__ int stage() const { return static_cast<int>(n % S); }
  __device__ __forceinline__ uint32_t parity() const { return (n / S) & 1u; }
};
using WsStage = WsStageT<kWsStages>;

// Shared memory of the tile: S stages at base (1024-byte aligned); at bars
// (8-byte aligned) full[s] and empty[s]: 16 S bytes. The benchmarks put bars
// right after the stages (kWsBarOff); the forward after its per-row tables
// (expert.cuh), followed by its own barriers.
template <int S>
struct WsSmemT {
  static constexpr int kStages = S;
  uint32_t base, bars;
  __device__ __forceinline__ uint32_t stage(int s) const { return base + static_cast<uint32_t>(s * kWsStageBytes); }
  __device__ __forceinline__ uint32_t full(int s) const { return bars + 8 * s; }
  __device__ __forceinline__ uint32_t empty(int s) const { return bars + 8 * (S + s); }
};
using WsSmem = WsSmemT<kWsStages>;

// Thread 0, before the roles split (the caller syncs the block after it and
// fences the initialisation with mbar_init_fence).
template <int S>
__device__ __forceinline__ void ws_init_barriers(const WsSmemT<S>& sm) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
    mbar_init(sm.full(s), 1);                  // the producer's arrive.expect_tx
    mbar_init(sm.empty(s), kWsConsumerWarps);  // one arrival per consumer warp
  }
}

// One task's operands: A rows arow..+127 of the A map, B rows brow..+255 of
// the B map (generic addresses of CUtensorMaps), K in ksteps stages. B comes
// in boxes of kWsBBoxRows rows: the forward's weight maps are those of its
// 128-column tiles (params.h MOE_TMAP_*), which the benchmarks share.
struct WsLoad {
  uint64_t amap, bmap;
  int arow, brow, ksteps, pad_;
  uint64_t bpol;  // the B boxes' L2 policy (l2_evict_first), or 0: none (a createpolicy value is never 0)
};
constexpr int kWsBBoxRows = kTcTileN;
constexpr int kWsBarBytes = 16 * kWsStages;
static_assert(kWsTileN % kWsBBoxRows == 0, "B boxes");
static_assert(kWsBarOff + kWsBarBytes + kPhaseAlign <= MOE_WS_SMEM_BYTES, "stages and barriers fit");

// One stage: A's box and B's boxes, on full[s].
template <int S>
__device__ __forceinline__ void ws_issue(const WsSmemT<S>& sm, int s, const WsLoad& l, int kt) {
  const uint32_t dst = sm.stage(s);
  mbar_arrive_expect_tx(sm.full(s), static_cast<uint32_t>(kWsStageBytes));
  tma_load_2d(dst, l.amap, kt * kWsKElems, l.arow, sm.full(s));
#pragma unroll
  for (int h = 0; h < kWsTileN / kWsBBoxRows; ++h) {
    const uint32_t bdst = dst + kWsABytes + h * kWsBBoxRows * kTcKBytes;
    if (l.bpol != 0) {
      tma_load_2d(bdst, l.bmap, kt * kWsKElems, l.brow + h * kWsBBoxRows, sm.full(s), l.bpol);
    } else {
      tma_load_2d(bdst, l.bmap, kt * kWsKElems, l.brow + h * kWsBBoxRows, sm.full(s));
    }
  }
}

// The producer's thread: every stage of one task.
template <int S>
__device__ __forceinline__ void ws_produce(const WsSmemT<S>& sm, WsStageT<S>& st, const WsLoad& l) {
  for (int kt = 0; kt < l.ksteps; ++kt, ++st.n) {
    const int s = st.stage();
    if (st.n >= S) mbar_wait(sm.empty(s), st.parity() ^ 1u);  // the previous use is consumed
    ws_issue(sm, s, l, kt);
  }
}

// A consumer warpgroup (c = 0, 1): one task's 64 x 256 accumulators.
// after_step(n) runs after each step's MMAs are issued and the previous
// step's stage is freed, and once more at the end with the last one freed;
// n: the steps whose stages this warp has passed so far. The stages of the
// last kKeep steps are not freed: the forward stages its results in them
// and its storers free them (expert.cuh). mma false: the warpgroup's rows
// are all past the task's last row (a forward's partial row tile of <= 64
// rows): it walks the stages, freeing each, without multiplying, and its
// accumulators stay zero (rows nobody stores).
template <int kKeep, int S, class AfterStep>
__device__ __forceinline__ void ws_consume(const WsSmemT<S>& sm, WsStageT<S>& st, int c, int ksteps,
                                           float (&acc)[kWsAcc], bool mma, AfterStep after_step) {
#pragma unroll
  for (int i = 0; i < kWsAcc; ++i) acc[i] = 0.f;
  const uint32_t a_off = static_cast<uint32_t>(c * 64 * kTcKBytes);
  const bool warp_lead = (threadIdx.x & 31) == 0;
  int prev = -1;
  for (int kt = 0; kt < ksteps; ++kt) {
    const int s = st.stage();
    mbar_wait(sm.full(s), st.parity());
    if (mma) {
      const uint64_t da = wgmma_desc(sm.stage(s) + a_off), db = wgmma_desc(sm.stage(s) + kWsABytes);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kTcKBytes / 32; ++kk) wgmma_bf16_n256(acc, da + 2 * kk, db + 2 * kk);
      wgmma_commit();
      ws_wgmma_wait<1>(acc);  // the previous step's MMAs are done: its stage is free
    }
    if (prev >= 0 && warp_lead && kt - 1 < ksteps - kKeep) mbar_arrive(sm.empty(prev));
    prev = s;
    after_step(st.n);
    ++st.n;
  }
  if (mma) ws_wgmma_wait<0>(acc);
  if (prev >= 0 && warp_lead && kKeep == 0) mbar_arrive(sm.empty(prev));
  after_step(st.n);
}
template <int kKeep = 0, int S>
__device__ __forceinline__ void ws_consume(const WsSmemT<S>& sm, WsStageT<S>& st, int c, int ksteps,
                                           float (&acc)[kWsAcc], bool mma = true) {
  ws_consume<kKeep>(sm, st, c, ksteps, acc, mma, [](uint32_t) {});
}

// ---- the same tile without a producer warpgroup ------------------------------
//
// 256 threads, both warpgroups consume and thread 0 also issues the loads
// (after its own MMAs of a step, as gemm_tc.cuh's TMA mainloop does): one
// block per SM and 128 x 256 tiles without warp specialisation, to measure
// what the producer warpgroup itself is worth. Thread 0 keeps kWsStages - 1
// steps in flight ahead of the one being multiplied and, at a task's end,
// issues the next task's first stages before the epilogue. sched(i, l) gives
// the i-th task of this block in l (false past the last).

struct WsPump {
  WsStage st;  // the next step to issue
  int task = 0, kt = 0;
};

// Thread 0: issues steps until limit (a step count, exclusive).
template <class Sched>
__device__ __forceinline__ void ws_pump(const WsSmem& sm, WsPump& pu, uint32_t limit, Sched sched) {
  WsLoad l;
  while (pu.st.n < limit && sched(pu.task, l)) {
    const int s = pu.st.stage();
    if (pu.st.n >= kWsStages) mbar_wait(sm.empty(s), pu.st.parity() ^ 1u);
    ws_issue(sm, s, l, pu.kt);
    ++pu.st.n;
    if (++pu.kt == l.ksteps) {
      pu.kt = 0;
      ++pu.task;
    }
  }
}

// Every thread of the 256: one task, warpgroup c = threadIdx.x / 128;
// thread 0 keeps the steps up to kWsStages past the freed ones issued (each
// needs the stage freed kWsStages steps before it), which at the task's end
// are the next task's first stages.
template <class Sched>
__device__ __forceinline__ void ws_consume_inline(const WsSmem& sm, WsStage& st, WsPump& pu, int ksteps,
                                                  float (&acc)[kWsAcc], Sched sched) {
  ws_consume<0>(sm, st, threadIdx.x >> 7, ksteps, acc, true, [&](uint32_t n) {
    if (threadIdx.x == 0) ws_pump(sm, pu, n + kWsStages, sched);
    __syncwarp();  // warp 0 whole again before the next .sync.aligned wgmma
  });
}

// Where accumulator i of a consumer thread sits in its 64 x 256 part: row
// 16 w + lane / 4 (+ 8 for i % 4 >= 2), column 8 (i / 4) + 2 (lane % 4) + (i & 1).
struct WsPos {
  int row, col;
};
__device__ __forceinline__ WsPos ws_acc_pos(int i) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  return WsPos{16 * w + (lane >> 2) + ((i >> 1) & 1) * 8, 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)};
}


// op(acc + bias[c]) of a consumer's 64 x kWsTileN accumulators as bf16 at
// dst[r * ld + c] (r: the row within the consumer's 64), rounded as
// tc_copy_out rounds the default tiles' staged fp32; bias read for columns
// < ncols only (null: none): tc_bias_op, the op chosen once (tc_with_op).
// Users: the forward's staging below and the GEMM benchmark's epilogue
// (gemm_bench_ws.cu).
template <class Ld>
__device__ __forceinline__ void ws_store_bf16(const float (&acc)[kWsAcc], __nv_bfloat16* dst, Ld ld, int op,
                                              const float* bias, int ncols) {
  tc_with_op(op, [&](auto kop) {
#pragma unroll
    for (int i = 0; i < kWsAcc; i += 2) {
      const WsPos pos = ws_acc_pos(i);
      float v0 = acc[i], v1 = acc[i + 1];
      tc_bias_op<decltype(kop)::value>(v0, v1, bias, pos.col, ncols);
      *reinterpret_cast<__nv_bfloat162*>(dst + pos.row * ld + pos.col) = __floats2bfloat162_rn(v0, v1);
    }
  });
}

// A forward task's results, staged for the block's storer warps (expert.cuh
// ws_storer) in the stage buffers of the task's last two steps, consumer c's
// 64 rows in the one of step ksteps - 2 + c, kWsStgStride bf16 a row.
constexpr int kWsStgStride = kWsTileN + 8;  // +16 bytes: a store phase's 8 rows on distinct banks
constexpr int kWsStgKeep = 2;               // stages a task keeps for its staging
static_assert(64 * kWsStgStride * 2 <= kWsStageBytes, "a consumer's staged rows fit a stage");
static_assert(kWsStgKeep * kWsKElems == MOE_WS_MIN_DIM, "the forward's WS tiles need K of the kept stages at least");

}  // namespace moe
