// gemm_bench_ws.cu: the GEMM phase alone (params.h MoeGemmBench) with the
// tiles of gemm_ws.cuh, one block per SM, tasks of 128 rows x 256 columns:
//   moerun_gemm_bench_ws    384 threads, a producer warpgroup;
//   moerun_gemm_bench_wide  256 threads, thread 0 issues the loads.
// Built without the forward's register cap (kernels.mk): a consumer thread
// holds 128 accumulators.
#include "gemm_bench.cuh"
#include "gemm_ws.cuh"

extern __shared__ __align__(128) unsigned char ws_smem[];

// Both entries' start: the argument check (a refusal counted in status by
// thread 0), the stages and barriers (sm), the block synchronised. false:
// the block leaves (uniform).
__device__ __forceinline__ bool bench_ws_start(const MoeGemmBench& g, int threads, moe::WsSmem& sm) {
  using namespace moe;
  if (static_cast<int>(blockDim.x) != threads || !gemm_bench_ok(g, kWsTileN, MOE_WS_SMEM_BYTES)) {
    if (threadIdx.x == 0 && g.status != 0) gemm_bench_done(g, false);
    return false;
  }
  const uint32_t sbase = smem_u32(phase_base(ws_smem, true));
  sm = WsSmem{sbase, sbase + kWsBarOff};
  if (threadIdx.x == 0) {
    ws_init_barriers(sm);
    mbar_init_fence();
  }
  __syncthreads();
  return true;
}

// The task list both entries walk over 256-column tiles (bench_task's
// order): task t, and the operands of its loads.
struct WsBenchPlan {
  const MoeGemmBench& g;
  int mtiles, ntiles, tasks, ksteps;
  __device__ explicit WsBenchPlan(const MoeGemmBench& gb)
      : g(gb), mtiles(gb.rows / moe::kTcTileM), ntiles(gb.n / moe::kWsTileN), tasks(gb.experts * mtiles * ntiles),
        ksteps(gb.k / moe::kWsKElems) {}
  __device__ moe::BenchTask task(int t) const { return moe::bench_task(t, mtiles, ntiles, g.experts, g.sources); }
  __device__ moe::WsLoad load(int t) const {
    const moe::BenchTask bt = task(t);
    return moe::WsLoad{reinterpret_cast<uint64_t>(&g.tmap[0]), reinterpret_cast<uint64_t>(&g.tmap[MOE_TMAP_WORDS]),
                       bt.e * g.rows + bt.mt * moe::kTcTileM, bt.e * g.n + bt.nt * moe::kWsTileN, ksteps, 0, 0};
  }
};

// The epilogue from registers: relu, two bf16 a store, this thread's
// elements of rows row0 + 64 c.. of the consumer's 64.
__device__ __forceinline__ void bench_store(const MoeGemmBench& g, const moe::BenchTask& bt, int c,
                                            const float (&acc)[moe::kWsAcc]) {
  using namespace moe;
  __nv_bfloat16* o = reinterpret_cast<__nv_bfloat16*>(g.c) +
                     static_cast<int64_t>(bt.e * g.rows + bt.mt * kTcTileM + 64 * c) * g.n + bt.nt * kWsTileN;
  ws_store_bf16(acc, o, static_cast<int64_t>(g.n), g.relu ? kOpReLU : kOpNone, nullptr, kWsTileN);
}

extern "C" __global__ void __launch_bounds__(MOE_WS_THREADS, 1) moerun_gemm_bench_ws(const __grid_constant__ MoeGemmBenchArg arg) {
  using namespace moe;
  const MoeGemmBench& g = arg.g;
  WsSmem sm;
  if (!bench_ws_start(g, kWsThreads, sm)) return;
  const WsBenchPlan plan(g);
  const int wg = threadIdx.x / 128;
  WsStage st;
  if (wg == 0) {
    if (threadIdx.x != 0) return;
    for (int t = blockIdx.x; t < plan.tasks; t += gridDim.x) ws_produce(sm, st, plan.load(t));
    return;
  }
  const int c = wg - 1;
  for (int t = blockIdx.x; t < plan.tasks; t += gridDim.x) {
    float acc[kWsAcc];
    ws_consume(sm, st, c, plan.ksteps, acc);
    bench_store(g, plan.task(t), c, acc);  // the producer already loads the next task
  }
  workers_sync();  // both consumers' stores, before the block counts itself done
  if (threadIdx.x == 128) gemm_bench_done(g, true);
}

extern "C" __global__ void __launch_bounds__(MOE_THREADS, 1) moerun_gemm_bench_wide(const __grid_constant__ MoeGemmBenchArg arg) {
  using namespace moe;
  const MoeGemmBench& g = arg.g;
  WsSmem sm;
  if (!bench_ws_start(g, kThreads, sm)) return;
  const WsBenchPlan plan(g);
  auto sched = [&](int i, WsLoad& l) {  // this block's i-th task
    const int t = blockIdx.x + i * gridDim.x;
    if (t >= plan.tasks) return false;
    l = plan.load(t);
    return true;
  };
  WsStage st;
  WsPump pu;
  if (threadIdx.x == 0) ws_pump(sm, pu, kWsStages, sched);
  __syncwarp();
  for (int t = blockIdx.x; t < plan.tasks; t += gridDim.x) {
    float acc[kWsAcc];
    ws_consume_inline(sm, st, pu, plan.ksteps, acc, sched);
    bench_store(g, plan.task(t), threadIdx.x >> 7, acc);
  }
  if (threadIdx.x == 0) gemm_bench_done(g, true);
}
