// moe_kernel.cu: the persistent MoE kernel, entry point and orchestration.
//
// One cooperative launch per forward; grid = blocks per SM (occupancy API) x
// SMs, every block resident. Phases:
//   0  start: check params, read the launch's sequence number, map peers'
//      heaps (nvshmem_ptr), reset this launch's scheduler state
//   1  gate GEMM tiles (logits partials)                         | barrier
//   2  softmax + top-k, one warp per token                       | barrier
//   3  route: per-expert pair lists in token order, capacity     | barrier
//   4  dispatch: kept rows into the owners' heaps                | barrier
//      then block 0 sends each owner its dispatch signal (seq)
//   5  experts: the OS block subscribes to the W dispatch signals and
//      publishes row tiles as sources arrive; processors run GEMM0 tasks of
//      any arrived source and GEMM1 tasks of any completed row tile; each
//      source's last GEMM1 task sends that source its return signal
//   6  combine: wait for the W return signals, weighted sum per token
// Nothing of a launch lives on the host: the sequence number is a counter in
// the heap that the kernel advances itself.
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
extern "C" __device__ int moerun_nvshmem_version[3] = {NVSHMEM_VENDOR_MAJOR_VERSION, NVSHMEM_VENDOR_MINOR_VERSION,
                                                       NVSHMEM_VENDOR_PATCH_VERSION};

namespace moe {

__device__ inline bool params_ok(const MoeParams& p) {
  const bool shapes = p.world >= 1 && p.world <= kMaxWorld && p.rank >= 0 && p.rank < p.world &&
                      p.tokens >= 0 && p.tokens <= p.max_tokens && p.topk >= 1 && p.topk <= kMaxTopK &&
                      p.experts >= 1 && p.experts <= kMaxExperts && p.topk <= p.experts &&
                      p.experts_per_rank * p.world == p.experts && p.hidden > 0 && p.ffn_hidden > 0 &&
                      p.hidden % MOE_SHAPE_MULTIPLE == 0 && p.ffn_hidden % MOE_SHAPE_MULTIPLE == 0 &&
                      p.gate_ksplit >= 1 && p.gate_ksplit <= MOE_GATE_MAX_SPLIT &&
                      p.hidden % (p.gate_ksplit * kTileK) == 0 &&
                      p.rows_per_source == p.max_tokens * min(p.topk, p.experts_per_rank);
  const bool modes = p.ffn >= MOE_FFN_RELU && p.ffn <= MOE_FFN_SWIGLU && p.dtype == MOE_DTYPE_FP32 &&
                     (p.route == MOE_ROUTE_SOFTMAX || p.route == MOE_ROUTE_SKEW);
  return shapes && modes && blockDim.x == kThreads && moerun_params_size == static_cast<int>(sizeof(MoeParams)) &&
         moerun_abi_version == MOE_ABI_VERSION;
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
__device__ inline bool run(Ctx& c) {
  const MoeParams& p = c.p;
  reset_launch_state(c);
  gate_gemm(c);
  if (!grid_sync(c)) return false;
  // Every block has read the old counter before arriving at the barrier.
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *reinterpret_cast<volatile uint64_t*>(my_heap(p, p.off_seq)) = c.seq;
  }
  gate_topk(c);
  if (!grid_sync(c)) return false;
  route(c);
  if (!grid_sync(c)) return false;
  dispatch(c);
  if (!grid_sync(c)) return false;
  if (blockIdx.x == 0 && threadIdx.x < p.world) {
    const int d = threadIdx.x;
    const bool withhold = p.debug_withhold_peer == p.rank && d == (p.rank + 1) % p.world;
    if (!withhold) send_signal(c, p.off_sig_dispatch, d);
  }
  if (blockIdx.x == gridDim.x - 1) {
    if (!os_subscribe(c)) return false;
  }
  if (!process(c)) return false;
  return combine(c);
}

}  // namespace moe

extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2) moerun_moe(const __grid_constant__ MoeParams p) {
  using namespace moe;
  __shared__ Shared sh;
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
  Ctx c{p, sh, sh.seq, 0, 0, 0};
  for (int pe = 0; pe < p.world; ++pe) {
    if (sh.peer_base[pe] == 0) {  // same answer in every block: all leave here
      if (blockIdx.x == 0 && threadIdx.x == 0) record_status(p, c.seq, MOE_STATUS_NOT_P2P, MOE_WAIT_NONE, pe, 0, 0, 0);
      return;
    }
  }
  run(c);
  MoeStatus* st = status_of(p);
  if (c.bytes != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&st->bytes_put), c.bytes);
  if (threadIdx.x == 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(&st->busy_ns), c.busy);
    atomicAdd(reinterpret_cast<unsigned long long*>(&st->tasks), c.tasks);
    atomicMax(reinterpret_cast<unsigned long long*>(&st->t_end), globaltimer());
  }
}
