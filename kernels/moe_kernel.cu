// moe_kernel.cu: the persistent MoE kernel, entry point and orchestration.
//
// One cooperative launch per forward; grid = blocks per SM (occupancy API) x
// SMs, every block resident. Phases:
//   0  start: check params, read the launch's sequence number, map peers'
//      heaps (nvshmem_ptr), reset this launch's scheduler state
//   1  gate GEMM tiles (logits partials; bf16: on tensor cores)  | barrier
//   2  softmax + top-k, one warp per token                       | barrier
//   3  route: per-expert pair lists in token order, capacity     | barrier
//   4  dispatch: kept rows into the owners' heaps (bf16: not the
//      rank's own rows, which GEMM0 reads from x), no barrier after it:
//      a few blocks copy the other owners' rows and the last of them sends
//      their signals; the others handle the own rows, signal this rank and
//      go on to the experts' work (dispatch.cuh)
//   5  experts: the OS block subscribes to the W dispatch signals and
//      publishes row tiles as sources arrive; processors run GEMM0 tasks of
//      any arrived source and GEMM1 tasks of any completed row tile; each
//      source's last GEMM1 task sends that source its return signal
//   6  combine: wait for the W return signals, weighted sum per token
// With params.trace set, thread 0 of every block stamps each task
// (%globaltimer, start and end) into the block's slots of the trace buffer
// (common.cuh trace_ev; kinds MOE_EV_* in params.h).
// Nothing of a launch lives on the host: the sequence number is a counter in
// the heap that the kernel advances itself (a launch can be captured in a
// CUDA graph and replayed).
//
// Shared memory: a small static part (Shared) and the phase buffer in
// dynamic shared memory (GEMM stages, epilogue staging, prefix tables):
// MOE_PHASE_BYTES in tf32/bf16 mode, MOE_SIMT_PHASE_BYTES in fp32 mode, which
// the host passes at launch; the kernel refuses less.
//
// moerun_tile_test, a second entry in the same cubin, runs one tensor-core
// tile for a host-side check (params.h MoeTileTest).
#include <nvshmem.h>
#include <nvshmemx.h>

#include "combine.cuh"
#include "dispatch.cuh"
#include "expert.cuh"
#include "gate.cuh"
#include "route.cuh"
#include "sync.cuh"

// Read by the host with cuModuleGetGlobal before the first launch.
extern "C" __device__ int moerun_abi_version = MOE_ABI_VERSION;
extern "C" __device__ int moerun_params_size = static_cast<int>(sizeof(MoeParams));
// Dynamic shared memory a tf32/bf16 launch of this build needs (MOE_PHASE_BYTES,
// which a build's -DMOE_TC_STAGES changes): the host launches with it.
extern "C" __device__ int moerun_phase_bytes = MOE_PHASE_BYTES;
// Threads of a forward block (MOE_THREADS; + a producer warpgroup in MOE_WS
// builds): the host launches with it.
extern "C" __device__ int moerun_block_threads = MOE_BLOCK_THREADS;
extern "C" __device__ int moerun_nvshmem_version[3] = {NVSHMEM_VENDOR_MAJOR_VERSION, NVSHMEM_VENDOR_MINOR_VERSION,
                                                       NVSHMEM_VENDOR_PATCH_VERSION};

namespace moe {

constexpr int kTmapAlign = 128;  // CUtensorMap's alignment (cuda.h 13)

__device__ inline bool params_ok(const MoeParams& p) {
  const bool shapes = p.world >= 1 && p.world <= kMaxWorld && p.rank >= 0 && p.rank < p.world &&
                      p.tokens >= 0 && p.tokens <= p.max_tokens && p.topk >= 1 && p.topk <= kMaxTopK &&
                      p.experts >= 1 && p.experts <= kMaxExperts && p.topk <= p.experts &&
                      p.experts_per_rank * p.world == p.experts && p.hidden > 0 && p.ffn_hidden > 0 &&
                      p.hidden % MOE_SHAPE_MULTIPLE == 0 && p.ffn_hidden % MOE_SHAPE_MULTIPLE == 0 &&
                      p.gate_ksplit >= 1 && p.gate_ksplit <= MOE_GATE_MAX_SPLIT &&
                      p.hidden % (p.gate_ksplit * kTileK) == 0 &&
                      (!gate_tc(p) || (p.hidden % (p.gate_ksplit * (kTcKBytes / 2)) == 0 && p.gate_t != 0)) &&
                      (p.trace == 0 || (p.trace_cap >= 0 && p.trace_counts != 0)) &&
                      p.rows_per_source == p.max_tokens * min(p.topk, p.experts_per_rank);
  const bool modes = p.ffn >= MOE_FFN_RELU && p.ffn <= MOE_FFN_SWIGLU && p.dtype >= MOE_DTYPE_FP32 &&
                     p.dtype <= MOE_DTYPE_BF16 && (p.route == MOE_ROUTE_SOFTMAX || p.route == MOE_ROUTE_SKEW);
  const uint32_t smem = static_cast<uint32_t>(p.dtype == MOE_DTYPE_FP32 ? kSimtPhaseBytes : kPhaseBytes);
  // Two blocks at least with other ranks: the dispatch's copying and own-row
  // roles each need one (dispatch.cuh); the host never launches fewer.
  const bool grid = p.world == 1 || gridDim.x >= 2;
  // TMA reads the tensor maps from the argument: 128-byte aligned (MoeArg).
  const bool tmaps = !tc_mode(p) || (p.flags & MOE_FLAG_TMA) == 0 ||
                     (reinterpret_cast<uintptr_t>(p.tmap) & (kTmapAlign - 1)) == 0;
  return shapes && modes && grid && tmaps && blockDim.x == kBlockThreads && dynamic_smem_bytes() >= smem &&
         moerun_params_size == static_cast<int>(sizeof(MoeParams)) && moerun_abi_version == MOE_ABI_VERSION;
}

__device__ inline void reset_launch_state(Ctx& c) {
  const MoeParams& p = c.p;
  MoeSched* s = sched_of(p);
  if (blockIdx.x == 0) {
    if (threadIdx.x == 0) {
      s->g0_next = 0;
      s->g1_head = 0;
      s->g1_tail = 0;
      s->arr_n = 0;
      s->disp_local = 0;
      s->disp_remote = 0;
      s->arr_task0[0] = 0;
      s->arr_tile0[0] = 0;
      MoeStatus* st = status_of(p);
      st->bytes_put = 0;
      st->busy_ns = 0;
      st->tasks = 0;
      st->t_end = 0;
      st->t_start = globaltimer();
    }
    for (int i = threadIdx.x; i < p.world; i += kThreads) {
      s->ret_done[i] = 0;
      s->disp_owner[i] = 0;
      s->ret_target[i] = 0;
    }
  }
  unsigned* done = reinterpret_cast<unsigned*>(p.tile_done);
  unsigned* list = reinterpret_cast<unsigned*>(p.g1_list);
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < p.max_row_tiles; i += gridDim.x * kThreads) {
    done[i] = 0;
    list[i] = 0;
  }
}

// Phases 1-6; false after an abort (the caller still records its figures).
__device__ inline bool run(Ctx& c, uint64_t t_entry) {
  const MoeParams& p = c.p;
  reset_launch_state(c);
  if (threadIdx.x == 0 && tracing(c)) trace_ev(c, MOE_EV_SETUP, t_entry, globaltimer());
  gate_gemm(c);
  if (!grid_sync(c, 1)) return false;
  // Every block has read the old counter before arriving at the barrier.
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *reinterpret_cast<volatile uint64_t*>(my_heap(p, p.off_seq)) = c.seq;
  }
  gate_topk(c);
  if (!grid_sync(c, 2)) return false;
  route(c);
  if (!grid_sync(c, 3)) return false;
  dispatch(c);  // sends the dispatch signals itself: no barrier after it
  if (blockIdx.x == gridDim.x - 1) {
    if (!os_subscribe(c)) return false;
  }
  if (!process(c)) return false;
  return combine(c);
}

}  // namespace moe

// The kernels' arguments are the params.h structs, declared 128-byte aligned
// in parameter space so that the tensor maps inside them are (CUtensorMap's
// alignment); the same bytes as the structs, whose sizes are multiples of it.
struct __align__(128) MoeArg {
  MoeParams p;
};
struct __align__(128) MoeTileArg {
  MoeTileTest t;
};
static_assert(sizeof(MoeArg) == sizeof(MoeParams) && sizeof(MoeTileArg) == sizeof(MoeTileTest),
              "the aligned arguments add no bytes");
static_assert(offsetof(MoeParams, tmap) % moe::kTmapAlign == 0 && offsetof(MoeTileTest, tmap) % moe::kTmapAlign == 0,
              "tensor maps sit 128-byte aligned in the arguments");

extern "C" __global__ void __launch_bounds__(MOE_BLOCK_THREADS, MOE_MIN_BLOCKS) moerun_moe(const __grid_constant__ MoeArg arg) {
  using namespace moe;
  const MoeParams& p = arg.p;
  __shared__ Shared sh;
  extern __shared__ __align__(128) unsigned char moe_phase[];
  const uint64_t t_entry = p.trace != 0 && threadIdx.x == 0 ? globaltimer() : 0;
  if (!params_ok(p)) {
    if (blockIdx.x == 0 && threadIdx.x == 0 && p.heap_base != 0) {
      record_status(p, 0, MOE_STATUS_BAD_PARAMS, MOE_WAIT_NONE, -1, 0, 0, 0);
    }
    return;
  }
  if (threadIdx.x == 0) {
    sh.seq = *reinterpret_cast<volatile uint64_t*>(my_heap(p, p.off_seq)) + 1;
    sh.ok = 1;
  }
  if (threadIdx.x < p.world) {
    sh.peer_base[threadIdx.x] =
        reinterpret_cast<uint64_t>(nvshmem_ptr(reinterpret_cast<const void*>(p.heap_base), threadIdx.x));
  }
  __syncthreads();
  Ctx c{p, sh, phase_base(moe_phase, p.dtype != MOE_DTYPE_FP32), sh.seq, 0, 0, 0, 0};
  for (int pe = 0; pe < p.world; ++pe) {
    if (sh.peer_base[pe] == 0) {  // same answer in every block: all leave here
      if (blockIdx.x == 0 && threadIdx.x == 0) record_status(p, c.seq, MOE_STATUS_NOT_P2P, MOE_WAIT_NONE, pe, 0, 0, 0);
      return;
    }
  }
#if MOE_WS
  // The producer warpgroup: its first thread takes and loads the GEMM tasks,
  // its last three warps store their results (expert.cuh process_ws); they
  // wait for the workers to reach the GEMM phase, bounded like the
  // scheduler.
  const bool ws = ws_tiles(p);
  const WsFwd wsf = ws_fwd_of(c.phase);
  if (ws && threadIdx.x == 0) ws_fwd_init(wsf);
  __syncthreads();  // every thread of the block, the producer warpgroup's included
  if (threadIdx.x >= kThreads) {
    if (ws && threadIdx.x == kThreads) ws_producer(c, wsf);
    if (ws && threadIdx.x >= kWsStorer0) ws_storer(c, wsf);
    return;
  }
#endif
  run(c, t_entry);
#if MOE_WS
  // A launch that left before its GEMM phase releases the producer warpgroup.
  if (ws && threadIdx.x == 0 && !mbar_try_wait(wsf.start(), 0)) {
    wsf.handoff()->quit = 1;
    mbar_arrive(wsf.start());
  }
#endif
  if (threadIdx.x == 0 && p.trace != 0) reinterpret_cast<uint32_t*>(p.trace_counts)[blockIdx.x] = static_cast<uint32_t>(c.tn);
  MoeStatus* st = status_of(p);
  if (c.bytes != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&st->bytes_put), c.bytes);
  if (threadIdx.x == 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(&st->busy_ns), c.busy);
    atomicAdd(reinterpret_cast<unsigned long long*>(&st->tasks), c.tasks);
    atomicMax(reinterpret_cast<unsigned long long*>(&st->t_end), globaltimer());
  }
}

// Debug entry: one tensor-core tile, raw fp32 accumulators to t.out (see
// params.h MoeTileTest). One block of MOE_THREADS threads, MOE_PHASE_BYTES of
// dynamic shared memory. Runs the same tc_gemm_tile / tc_stage /
// tc_copy_out as the expert tasks.
namespace moe {
template <class Mma, int NB>
__device__ inline void tile_test_run(const MoeTileTest& t, unsigned char* smem) {
  TcArgs<NB> g;
  g.a = reinterpret_cast<const void*>(t.a);
  g.lda = t.k;
  g.mrows = t.mrows;
  g.b[0] = reinterpret_cast<const void*>(t.b0);
  if (NB == 2) g.b[NB - 1] = reinterpret_cast<const void*>(t.b1);
  g.ldb = t.k;
  g.ncols = t.ncols;
  g.K = t.k;
  // Maps of A, B0, B1, consecutive (t.tma 0: the cp.async loader).
  g.tmap = t.tma != 0 ? reinterpret_cast<uint64_t>(&t.tmap[0]) : 0;
  tc_tile_run<Mma, NB>(g, smem, kOpNone, nullptr);
  const float* cs = reinterpret_cast<const float*>(smem);
  __syncthreads();
  if (blockIdx.x != 0) return;  // a throughput run: every block computes the tile, block 0 reports it
  float* out = reinterpret_cast<float*>(t.out);
  tc_copy_out<float>(cs, kTcTileM, kTcTileN, false, [&](int r) { return out + static_cast<int64_t>(r) * kTcTileN; });
}
}  // namespace moe

extern "C" __global__ void __launch_bounds__(MOE_THREADS, MOE_MIN_BLOCKS) moerun_tile_test(const __grid_constant__ MoeTileArg arg) {
  using namespace moe;
  const MoeTileTest& t = arg.t;
  extern __shared__ __align__(128) unsigned char moe_phase[];
  const bool ok = blockDim.x == kThreads && dynamic_smem_bytes() >= static_cast<uint32_t>(kPhaseBytes) &&
                  (t.dtype == MOE_DTYPE_TF32 || t.dtype == MOE_DTYPE_BF16) && (t.nb == 1 || t.nb == 2) &&
                  t.mrows >= 1 && t.mrows <= kTcTileM && t.k > 0 && t.k % 64 == 0 && t.ncols > 0 && t.ncols % 8 == 0 &&
                  t.ncols <= kTcTileN / t.nb && (t.tma == 0 || t.tma == 1) && t.a != 0 && t.b0 != 0 &&
                  (t.nb == 1 || t.b1 != 0) && t.out != 0 &&
                  (reinterpret_cast<uintptr_t>(t.tmap) & (kTmapAlign - 1)) == 0;
  if (!ok) {
    if (threadIdx.x == 0 && t.status != 0) *reinterpret_cast<volatile uint32_t*>(t.status) = 2u;
    return;
  }
  unsigned char* phase = phase_base(moe_phase, true);
  if (t.dtype == MOE_DTYPE_BF16) {
    if (t.nb == 2) tile_test_run<MmaBF16, 2>(t, phase); else tile_test_run<MmaBF16, 1>(t, phase);
  } else {
    if (t.nb == 2) tile_test_run<MmaTF32, 2>(t, phase); else tile_test_run<MmaTF32, 1>(t, phase);
  }
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0 && t.status != 0) {
    __threadfence();
    *reinterpret_cast<volatile uint32_t*>(t.status) = 1u;
  }
}

// Tokens of a bf16 forward on device pointers (params.h MoeConvert): fp32 to
// bf16, round to nearest even like the host path, 4 values per thread step.
extern "C" __global__ void __launch_bounds__(MOE_THREADS) moerun_tokens_bf16(const __grid_constant__ MoeConvert c) {
  const float* src = reinterpret_cast<const float*>(c.src);
  __nv_bfloat16* dst = reinterpret_cast<__nv_bfloat16*>(c.dst);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n4 = (c.src % 16 == 0 && c.dst % 8 == 0) ? c.n / 4 : 0;  // aligned vectors
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(src) + i);
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo);
    u.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(dst)[i] = u;
  }
  for (int64_t i = 4 * n4 + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < c.n; i += stride) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}
