// gemm_bench_tc.cu: moerun_gemm_bench_tc, the GEMM phase alone (params.h
// MoeGemmBench) with the forward's own tile: MOE_THREADS threads, the
// forward's blocks per SM (MOE_MIN_BLOCKS) and register cap (kernels.mk), 128 x 128 tasks,
// the TMA mainloop, tc_stage and tc_copy_out's 16-byte stores, as a GEMM0
// task of the forward runs them (without its scheduling and signals): the
// baseline the warp-specialised entry is measured against.
#include "gemm_bench.cuh"

extern "C" __global__ void __launch_bounds__(MOE_THREADS, MOE_MIN_BLOCKS) moerun_gemm_bench_tc(const __grid_constant__ MoeGemmBenchArg arg) {
  using namespace moe;
  const MoeGemmBench& g = arg.g;
  extern __shared__ __align__(128) unsigned char tc_smem[];
  if (blockDim.x != kThreads || !gemm_bench_ok(g, kTcTileN, kPhaseBytes)) {
    if (threadIdx.x == 0 && g.status != 0) gemm_bench_done(g, false);
    return;
  }
  unsigned char* smem = phase_base(tc_smem, true);
  const int mtiles = g.rows / kTcTileM, ntiles = g.n / kTcTileN, tasks = g.experts * mtiles * ntiles;
  __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(g.c);
  for (int t = blockIdx.x; t < tasks; t += gridDim.x) {
    const BenchTask bt = bench_task(t, mtiles, ntiles, g.experts, g.sources);
    TcArgs<1> a;
    a.a = nullptr;  // the TMA loader reads A and B through the maps only
    a.lda = g.k;
    a.mrows = kTcTileM;
    a.b[0] = nullptr;
    a.ldb = g.k;
    a.ncols = kTcTileN;
    a.K = g.k;
    a.tmap = reinterpret_cast<uint64_t>(&g.tmap[0]);  // A, then B kTmapBytes on
    a.arow0 = bt.e * g.rows + bt.mt * kTcTileM;
    a.brow0 = bt.e * g.n + bt.nt * kTcTileN;
    tc_tile_run<MmaBF16, 1>(a, smem, g.relu ? kOpReLU : kOpNone, nullptr);
    __syncthreads();
    __nv_bfloat16* o = out + static_cast<int64_t>(a.arow0) * g.n + bt.nt * kTcTileN;
    tc_copy_out<__nv_bfloat16>(reinterpret_cast<const float*>(smem), kTcTileM, kTcTileN, false,
                               [&](int r) { return o + static_cast<int64_t>(r) * g.n; });
    __syncthreads();  // the staging is read before the next tile's loads overwrite it
  }
  if (threadIdx.x == 0) gemm_bench_done(g, true);
}
