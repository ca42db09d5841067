// gemm_bench.cuh: what the two GEMM-phase benchmark entries share (params.h
// MoeGemmBench): their task order, argument check and completion count.
#pragma once

// The forward's out-of-line functions are defined in moe_kernel.cu's object.
#define MOE_NO_FORWARD_DEFS 1
#include "gemm_tc.cuh"

namespace moe {

// Task t of the order g.sources picks (params.h MoeGemmBench), the same for
// every entry. Expert-major: expert slowest, then the column tile, the row
// tile fastest (concurrent tasks share one expert's operands). Arrival order
// of S sources: source slowest, then expert, then the source's row tiles of
// the expert, the column tile fastest: the forward's GEMM0 tickets when the
// sources' rows arrive one after another (concurrent tasks span experts, and
// an expert's weights are read again for every source).
struct BenchTask {
  int e, mt, nt;
};
__device__ __forceinline__ BenchTask bench_task(int t, int mtiles, int ntiles, int experts, int sources) {
  if (sources <= 1) {
    const int per = mtiles * ntiles, r = t % per;
    return BenchTask{t / per, r % mtiles, r / mtiles};
  }
  const int mts = mtiles / sources;  // row tiles of a source and expert
  const int per_src = experts * mts * ntiles, s = t / per_src, r = t % per_src;
  const int e = r / (mts * ntiles), r2 = r % (mts * ntiles);
  return BenchTask{e, s * mts + r2 / ntiles, r2 % ntiles};
}

__device__ __forceinline__ bool gemm_bench_ok(const MoeGemmBench& g, int tile_n, uint32_t smem) {
  return g.experts >= 1 && g.rows >= kTcTileM && g.rows % kTcTileM == 0 && g.n >= tile_n && g.n % tile_n == 0 &&
         g.k >= 64 && g.k % 64 == 0 && (g.relu == 0 || g.relu == 1) && g.c != 0 && g.status != 0 &&
         (g.sources <= 1 || (g.rows / kTcTileM) % g.sources == 0) &&
         dynamic_smem_bytes() >= smem;
}

// Every block counts itself into status when it is done; one that refused
// the argument sets bit 31 instead.
__device__ __forceinline__ void gemm_bench_done(const MoeGemmBench& g, bool ok) {
  __threadfence();
  if (ok) {
    atomicAdd(reinterpret_cast<unsigned*>(g.status), 1u);
  } else {
    atomicOr(reinterpret_cast<unsigned*>(g.status), 0x80000000u);
  }
}

}  // namespace moe

// The argument, 128-byte aligned in parameter space for its tensor maps.
struct __align__(128) MoeGemmBenchArg {
  MoeGemmBench g;
};
static_assert(sizeof(MoeGemmBenchArg) == sizeof(MoeGemmBench), "the aligned argument adds no bytes");
static_assert(offsetof(MoeGemmBench, tmap) % 128 == 0, "tensor maps sit 128-byte aligned in the argument");
