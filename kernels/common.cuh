// common.cuh: constants, the per-block context, memory-ordering primitives.
#pragma once

#include <stdint.h>

#include "params.h"

namespace moe {

// MOE_WS (a build option, 0 by default): the forward at one block per SM
// whose MOE_THREADS worker threads (every role below, as in the default
// build) are joined by a producer warpgroup that takes and loads the bf16
// GEMM tasks and stores their results (gemm_ws.cuh, expert.cuh). Block
// barriers of the roles then count the workers only (block_sync).
#ifndef MOE_WS
#define MOE_WS 0
#endif

// Every constant the kernel uses comes from params.h so the host agrees.
constexpr int kThreads = MOE_THREADS;
// Threads of a block of the forward: the workers, plus the producer
// warpgroup in MOE_WS builds (the cubin exports it: moerun_block_threads).
#define MOE_BLOCK_THREADS (MOE_THREADS + (MOE_WS ? 128 : 0))
constexpr int kBlockThreads = MOE_BLOCK_THREADS;
// Blocks per SM the forward (and the entries that share its tile functions)
// is built for: two of MOE_THREADS, or one with the producer warpgroup
// (MOE_WS: its 128 x 256 tiles hold 128 accumulators a thread).
#if MOE_WS
#define MOE_MIN_BLOCKS 1
#else
#define MOE_MIN_BLOCKS 2
#endif
// Named barrier 1 (0 is __syncthreads) of MOE_THREADS threads of a block,
// whichever arrive: a MOE_WS block's workers, the WS benchmark's consumers.
__device__ __forceinline__ void workers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory"); }
// Barrier of the worker threads (all of the block but a MOE_WS producer).
__device__ __forceinline__ void block_sync() {
#if MOE_WS
  workers_sync();
#else
  __syncthreads();
#endif
}
constexpr int kWarps = kThreads / 32;
constexpr int kTileM = MOE_TILE_M;
constexpr int kTileN = MOE_TILE_N;
constexpr int kTileK = MOE_TILE_K;
constexpr int kMaxWorld = MOE_MAX_WORLD;
constexpr int kMaxTopK = MOE_MAX_TOPK;
constexpr int kMaxExperts = MOE_MAX_EXPERTS;
constexpr int kRouteTokPerThread = 8;  // tokens per thread per step of the route scan
constexpr unsigned kFull = 0xffffffffu;

static_assert(kThreads == 256, "the GEMM tiles map 256 threads (16x16 SIMT, 8 warps tensor-core)");
static_assert(kTileM == 64 && kTileN == 64 && kTileK == 16, "SIMT tile loaders assume 64x64x16");
static_assert(sizeof(MoeParams) % 8 == 0, "MoeParams padding");
static_assert(sizeof(MoeStatus) % 8 == 0, "MoeStatus padding");
static_assert(sizeof(MoeSched) % 8 == 0, "MoeSched padding");
static_assert(sizeof(MoeRowTile) == 16, "MoeRowTile is 16 bytes");
static_assert(sizeof(MoeTraceEvent) == 32, "MoeTraceEvent is 32 bytes (two 16-byte stores)");

// Bytes of the shared buffer that phases reuse (GEMM stages, epilogue
// staging, prefix tables): the block's dynamic shared memory, which the host
// passes at launch (params.h; checked at kernel entry): kPhaseBytes in
// tf32/bf16 mode, kSimtPhaseBytes in fp32 mode. Everything but the
// tensor-core tile fits the smaller one.
constexpr int kPhaseBytes = MOE_PHASE_BYTES;
constexpr int kSimtPhaseBytes = MOE_SIMT_PHASE_BYTES;
static_assert(kSimtPhaseBytes <= kPhaseBytes, "phase sizes");
static_assert(2 * (kMaxExperts + 1) * 4 <= kSimtPhaseBytes, "prefix tables fit the fp32 phase buffer");
// In tf32/bf16 mode the buffer starts at the first MOE_PHASE_ALIGN boundary of
// the dynamic shared memory (the wgmma swizzle needs 1024-byte aligned
// stages); kPhaseBytes pays for the shift, kTcPhaseUsable is what is left.
constexpr int kPhaseAlign = MOE_PHASE_ALIGN;
constexpr int kTcPhaseUsable = kPhaseBytes - kPhaseAlign;

// The phase buffer of a launch: raw (the dynamic shared memory) rounded up
// to kPhaseAlign in the tensor-core modes, as is in fp32 mode (its smaller
// buffer has no room to shift, and the SIMT tiles need only 128 bytes).
__device__ __forceinline__ unsigned char* phase_base(unsigned char* raw, bool tensor_cores) {
  if (!tensor_cores) return raw;
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  const uint32_t pad = (kPhaseAlign - (a & (kPhaseAlign - 1))) & (kPhaseAlign - 1);
  return raw + pad;
}

// Static shared memory of one block; the phase buffer is dynamic.
struct Shared {
  uint64_t peer_base[kMaxWorld];  // nvshmem_ptr(heap_base, pe), by PE
  int scan_warp[kWarps + 1];      // block scan scratch
  int bcast[8];                   // thread 0 -> block broadcast
  uint64_t seq;                   // this launch's sequence number
  int ok;                         // 0 after an abort
  int pad_;
};

// Per-thread view of the launch, built once at kernel entry.
struct Ctx {
  const MoeParams& p;
  Shared& sh;
  unsigned char* phase;  // the phase buffer (phase_base): 1024-byte aligned in tf32/bf16 mode
  uint64_t seq;
  uint64_t busy;   // thread 0: ns spent in task work
  uint64_t bytes;  // thread 0 / lane 0s: payload bytes stored to other PEs
  uint64_t tasks;  // thread 0: GEMM tasks run
  int tn;          // thread 0: trace events of this block so far (params.trace)
};

// Storage of the mode: bytes of an element of x, received rows, the
// intermediate and the expert weights; and of a returned row's element.
__device__ __forceinline__ int elem_bytes(const MoeParams& p) { return p.dtype == MOE_DTYPE_BF16 ? 2 : 4; }
__device__ __forceinline__ int ret_elem_bytes(const MoeParams& p) { return p.dtype == MOE_DTYPE_BF16 ? 2 : 4; }
// Tensor-core modes (tf32, bf16) use the gemm_tc.cuh tiles and the
// transposed weight layout; fp32 the SIMT tiles of gemm.cuh.
__device__ __forceinline__ bool tc_mode(const MoeParams& p) { return p.dtype != MOE_DTYPE_FP32; }
// Whether a bf16 forward streams its weights: at most MOE_TC_TILE_M rows
// per local expert from all sources together on average (T k W <= E 128),
// so that a weight slab serves about one row tile (pooled, at W >= 2) and
// nothing re-reads it soon. The weight loads of its WS tiles (W = 1) and its
// gathered tiles (pooled at W >= 2) then go evict-first in L2 (gemm_tc.cuh
// l2_evict_first), so that streamed weights no longer push out what the
// forward reads again. Measured (docs/benchmarks.md, ninth session): -15 to
// -19 % at T = 128 on 4 GPUs; where a slab serves two row tiles (T = 1024,
// W = 4) it was +1.5 %, so those forwards keep the default policy; tf32 at
// T = 128 showed no clear gain and keeps it too.
__device__ __forceinline__ bool weights_streamed(const MoeParams& p) {
  return p.dtype == MOE_DTYPE_BF16 &&
         static_cast<int64_t>(p.tokens) * p.topk * p.world <= static_cast<int64_t>(p.experts) * MOE_TC_TILE_M;
}
// Small forwards (few rows per source and expert): with a row tile per
// (source, expert), every task would be a 128-row tile of a few rows, each
// expert's weight slabs read once per source, W times the tasks. Instead the
// owner waits for all sources and pools them (expert.cuh pool_tiles): the per-source
// tiles of an expert, in arrival order, are packed whole into pooled row
// tiles of up to 128 rows, whose rows the tasks gather from the sources'
// receive regions; GEMM0 and GEMM1 tasks go out column-tile-major, so the
// pooled tiles that read one weight slab run at the same time. Chosen by the
// owner alone (its own T stands for the sources'); -DMOE_MERGE_ROWS=0 turns
// it off. Up to 128 rows per source and expert on average (one tile's worth):
// measured faster than the per-source order through T = 2048 at E = 32, 4
// GPUs (docs/benchmarks.md, fifth session); above that a source's rows fill
// whole tiles and the overlap with the dispatch matters more.
constexpr int kMergeRows = MOE_MERGE_ROWS;  // params.h: at most this many kept rows per source and expert on average
__device__ __forceinline__ bool pool_sources(const MoeParams& p) {
  return kMergeRows > 0 && p.world > 1 && tc_mode(p) &&
         static_cast<int64_t>(p.tokens) * p.topk <= static_cast<int64_t>(p.experts) * kMergeRows;
}

// bf16 mode, MOE_FLAG_LOCAL_GATHER: this rank's own rows stay in x (dispatch.cuh, expert.cuh).
// Off in MOE_WS builds: their GEMM0 tasks load every row with TMA, and
// gathered rows cannot be (the dispatch copies the own rows instead).
__device__ __forceinline__ bool local_gather(const MoeParams& p) {
  return !MOE_WS && p.dtype == MOE_DTYPE_BF16 && (p.flags & MOE_FLAG_LOCAL_GATHER) != 0;
}

__device__ __forceinline__ uint32_t dynamic_smem_bytes() {
  uint32_t n;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
  return n;
}

// 4 bf16 (8 bytes) widened to fp32 (exact).
__device__ __forceinline__ float4 bf16x4_to_float4(uint2 u) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

__device__ __forceinline__ MoeStatus* status_of(const MoeParams& p) {
  return reinterpret_cast<MoeStatus*>(p.heap_base + p.off_status);
}
__device__ __forceinline__ MoeSched* sched_of(const MoeParams& p) {
  return reinterpret_cast<MoeSched*>(p.sched);
}
// Address of byte offset off of the symmetric heap on PE pe (P2P mapping).
__device__ __forceinline__ char* peer_heap(const Ctx& c, int pe, uint64_t off) {
  return reinterpret_cast<char*>(c.sh.peer_base[pe] + off);
}
__device__ __forceinline__ char* my_heap(const MoeParams& p, uint64_t off) {
  return reinterpret_cast<char*>(p.heap_base + off);
}

// Orders this thread's generic-proxy global stores before async-proxy (TMA)
// reads of them that a release/acquire chain leads to: the writers of rows
// that tensor-core tiles load with TMA (dispatch, GEMM0 epilogue) fence
// before their arrival.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

__device__ __forceinline__ uint64_t globaltimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// ---- trace (params.trace != 0) --------------------------------------------
// Thread 0 of a block records its tasks into the block's own trace_cap slots
// (block-major: no atomics, no reset race); events past trace_cap are
// counted in tn and not stored; the count goes to trace_counts[block] at exit.
// Off, an event costs one uniform branch on a kernel parameter.
// Out of line, so defined in one object of the cubin only: the other
// translation units (gemm_bench_*.cu, which define MOE_NO_FORWARD_DEFS)
// see the declaration, and nvlink finds one definition.
__device__ __noinline__ void trace_store(uint64_t base, int cap, int n, int kind, uint64_t t0, uint64_t t1, int src,
                                         int a, int b, int e)
#ifdef MOE_NO_FORWARD_DEFS
    ;
#else
{
  if (n >= cap) return;
  uint4* ev = reinterpret_cast<uint4*>(base + (static_cast<uint64_t>(blockIdx.x) * cap + n) * sizeof(MoeTraceEvent));
  ev[0] = make_uint4(static_cast<uint32_t>(t0), static_cast<uint32_t>(t0 >> 32), static_cast<uint32_t>(t1),
                     static_cast<uint32_t>(t1 >> 32));
  ev[1] = make_uint4((static_cast<uint32_t>(kind) & 0xffffu) | (static_cast<uint32_t>(src) << 16),
                     static_cast<uint32_t>(a), static_cast<uint32_t>(b), static_cast<uint32_t>(e));
}
#endif
// Thread 0 only. t0: start (%globaltimer), t1: end.
__device__ __forceinline__ void trace_ev(Ctx& c, int kind, uint64_t t0, uint64_t t1, int src = -1, int a = -1,
                                         int b = -1, int e = -1) {
  if (c.p.trace != 0) {
    trace_store(c.p.trace, c.p.trace_cap, c.tn, kind, t0, t1, src, a, b, e);
    ++c.tn;
  }
}
__device__ __forceinline__ bool tracing(const Ctx& c) { return c.p.trace != 0; }
// Items of n that this block's warps take in a loop over i = global warp,
// step = all warps of the grid (for the trace).
__device__ __forceinline__ int block_warp_items(int n) {
  const int nw = gridDim.x * kWarps;
  int cnt = 0;
  for (int w = 0; w < kWarps; ++w) {
    const int gw = blockIdx.x * kWarps + w;
    if (gw < n) cnt += (n - gw + nw - 1) / nw;
  }
  return cnt;
}

// Loads that see stores of other GPUs (system scope) or other blocks (gpu
// scope), and the matching stores. Polling always goes through these.
__device__ __forceinline__ uint64_t ld_acquire_sys_u64(const uint64_t* ptr) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t ld_acquire_gpu_u64(const uint64_t* ptr) {
  uint64_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_acquire_gpu_u32(const uint32_t* ptr) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_relaxed_gpu_u32(const uint32_t* ptr) {
  uint32_t v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ptr) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu_u32(uint32_t* ptr, uint32_t v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(ptr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_release_sys_u64(uint64_t* ptr, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(ptr), "l"(v) : "memory");
}
// Data written in this launch by another block or GPU: read through L2
// (never the non-coherent read-only path).
__device__ __forceinline__ int ld_cg(const int* ptr) { return __ldcg(ptr); }
__device__ __forceinline__ float ld_cg(const float* ptr) { return __ldcg(ptr); }
__device__ __forceinline__ float4 ld_cg4(const float* ptr) {
  return __ldcg(reinterpret_cast<const float4*>(ptr));
}
__device__ __forceinline__ void st4(float* ptr, float4 v) { *reinterpret_cast<float4*>(ptr) = v; }

// Exclusive block-wide scan of arr[0..n) in place (shared or global memory
// written only by this block); arr[n] receives the total, which is returned
// to every thread. Every thread of the block must call it.
__device__ inline int block_exclusive_scan(int* arr, int n, Shared& sh) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int carry = 0;
  for (int base = 0; base < n; base += kThreads) {
    const int i = base + tid;
    const int v = i < n ? arr[i] : 0;
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) sh.scan_warp[warp] = incl;
    block_sync();
    if (warp == 0) {
      int w = lane < kWarps ? sh.scan_warp[lane] : 0;
      int wincl = w;
#pragma unroll
      for (int o = 1; o < kWarps; o <<= 1) {
        const int y = __shfl_up_sync(kFull, wincl, o);
        if (lane >= o) wincl += y;
      }
      if (lane < kWarps) sh.scan_warp[lane] = wincl - w;  // exclusive warp offsets
      if (lane == kWarps - 1) sh.scan_warp[kWarps] = wincl;
    }
    block_sync();
    if (i < n) arr[i] = carry + sh.scan_warp[warp] + incl - v;
    carry += sh.scan_warp[kWarps];
    block_sync();
  }
  if (tid == 0) arr[n] = carry;
  block_sync();
  return carry;
}

// Largest i in [0, n) with pre[i] <= x, for a non-decreasing pre with pre[0] <= x.
__device__ __forceinline__ int upper_index(const int* pre, int n, int x) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (pre[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace moe
