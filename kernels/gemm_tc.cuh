// gemm_tc.cuh: the tensor-core GEMM tile (tf32 and bf16 inputs, fp32
// accumulate) of the expert FFN, with warp-level mma.sync.
//
// Shapes (params.h): one 256-thread block computes kTcTileM (128) rows of A
// times kTcTileN (128) "B rows". B is the transposed weight, W^T [N][K], K
// contiguous (the host uploads it so in tf32/bf16 mode), so both operands are
// K-contiguous and both are read from shared memory with ldmatrix (no
// transpose: this is also the layout that tf32 needs, which has no
// transposing ldmatrix nor, in wgmma, a transposed tf32 operand).
//
// Warps: 2 (M) x 4 (N); warp (wm, wn) owns rows wm*64..+63 and B rows
// wn*32..+31: 4 m16 tiles x 4 n8 tiles, acc[mi][j][4] (64 fp32 registers).
//
// K advances by kTcKBytes (128) bytes per stage: 64 bf16 or 32 tf32 values,
// i.e. 4 mma k-steps of 32 bytes each (m16n8k16 bf16 / m16n8k8 tf32). The
// smem layout and the ldmatrix addressing are the SAME bytes for both types:
// an mma k-step always consumes two 16-byte chunks of every row.
//
// Shared memory per stage: A [128][128 B] then B [128][128 B] (32 KB); a row
// is 8 chunks of 16 B stored at chunk ^ (row & 7) (XOR swizzle), so that the 8
// row addresses of an ldmatrix phase and the 8 chunks a cp.async phase writes
// hit distinct banks. kTcStages stages (MOE_TC_STAGES: 3, a build option);
// with cp.async one __syncthreads per stage. Loads are cp.async.cg 16 B (L2
// only: A rows are written by other GPUs / blocks during the launch); rows
// past mrows and B rows past ncols are zero-filled (src-size 0), never read.
//
// NB = 2 (swiglu: gate and up projections share A): the 128 B rows are the
// two operands interleaved by 16: B rows 32w..32w+15 are Wg^T rows
// n0+16w..+15 and 32w+16..+31 are Wu^T rows n0+16w..+15; so each warp holds
// gate (n8 tiles 0, 1) and up (n8 tiles 2, 3) for the same 16 output
// columns, and the epilogue needs no exchange. A task then covers 64 output
// columns instead of 128.
//
// Epilogue: tc_stage writes the (bias, activation) fp32 results into a
// padded smem tile, tc_copy_out writes whole rows from it with 16-byte
// stores (fp32 or bf16; a 512 / 256 B contiguous run per row of the tile),
// which is what remote NVLink stores and L2 want.
//
// Two mainloops share the loader, the smem layout and the epilogue, chosen at
// build time by MOE_TC_WGMMA:
//   1 (default): Hopper warpgroup MMA. Warpgroup g (warps 4g..4g+3) computes
//     rows 64g..64g+63 against all 128 B rows with wgmma.mma_async
//     m64n128k16 (bf16) / m64n128k8 (tf32), both operands read by the tensor
//     cores straight from shared memory through matrix descriptors. The
//     layout above IS the hardware's 128-byte swizzle (16-byte chunk c of row
//     r at c ^ (r & 7), 8-row groups 1024 B apart), given a 1024-byte aligned
//     stage base: the phase buffer is aligned so (common.cuh phase_base).
//     The wgmmas of stage kt run while the threads wait for stage kt + 1.
//   0: the SM80-style warp MMA (mma.sync m16n8k8 / m16n8k16 fed by ldmatrix),
//     kept to measure against (make kernels NVCC_EXTRA=-DMOE_TC_WGMMA=0).
// Both leave the same 64 fp32 accumulators per thread, in different places
// (tc_acc_pos says where), so that tc_stage is the one reader.
//
// Loaders of the wgmma mainloop, chosen per tile by TcArgs::tmap:
//   TMA (tmap != 0, MOE_FLAG_TMA; never a gather): thread 0 issues each
//     stage as cp.async.bulk.tensor boxes (A: one 128-row box; B: one
//     128-row box, or 8 boxes of 16 rows for the interleaved swiglu
//     operands) through the host's tensor maps, whose 128-byte swizzle
//     writes exactly the layout above. Completion is counted
//     in bytes on the stage's "full" mbarrier; each warpgroup arrives on the
//     stage's "empty" mbarrier once its MMAs of the stage are done, and thread
//     0 refills the stage after both. No __syncthreads in the loop, and the
//     MMAs of step k - 1 and k overlap (wgmma.wait_group 1).
//   cp.async (tmap == 0): every thread copies 16-byte chunks, one
//     __syncthreads per stage, the MMAs of step k drain before step k + 1.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "gemm.cuh"

#ifndef MOE_TC_WGMMA
#define MOE_TC_WGMMA 1
#endif
// MOE_TC_L2_PREFETCH (build-time, measured in docs/benchmarks.md): the
// prefetch-size hint of every tile cp.async (0, 64, 128 or 256 bytes): with
// 256, the load of stage k also brings stage k + 1's bytes of the same row (a
// K row is 128 B per stage) into L2. (An explicit prefetch.global.L2 of the B
// bytes four stages ahead measured 7 % slower and was removed.)
#ifndef MOE_TC_L2_PREFETCH
#define MOE_TC_L2_PREFETCH 256
#endif

namespace moe {

constexpr int kTcTileM = MOE_TC_TILE_M;
constexpr int kTcTileN = MOE_TC_TILE_N;
constexpr int kTcKBytes = MOE_TC_K_BYTES;
constexpr int kTcStages = MOE_TC_STAGES;
constexpr int kTcStageBytes = (kTcTileM + kTcTileN) * kTcKBytes;
constexpr int kTcMainBytes = kTcStages * kTcStageBytes;  // stages; slots follow
// Stages of a short tile (<= 64 rows: 64 A rows and 128 B rows a stage) in
// the same bytes.
constexpr int kTcShortStages = kTcMainBytes / ((64 + kTcTileN) * kTcKBytes);
constexpr int kTcCsStride = kTcTileN + 8;                // floats per staged output row (+8: no bank conflicts)
constexpr int kTcWarpM = 64, kTcWarpN = 32;              // warp tile
constexpr int kTcRowsPerPass = kThreads * 16 / kTcKBytes;  // rows one cp.async pass covers (32)
constexpr int kTcPasses = kTcTileM / kTcRowsPerPass;       // cp.async per thread per operand and stage (4)

static_assert(kTcTileM == 128 && kTcTileN == 128 && kTcKBytes == 128, "the tile code assumes 128 x 128 x 128 B");
static_assert(kWarps == (kTcTileM / kTcWarpM) * (kTcTileN / kTcWarpN), "8 warps of 64 x 32");
static_assert(kTcStages >= 2, "cp.async pipeline needs at least 2 stages");
static_assert(kTcShortStages >= kTcStages && ((64 + kTcTileN) * kTcKBytes) % 1024 == 0 && (64 * kTcKBytes) % 1024 == 0,
              "short-tile stages and their B parts start on 1024-byte swizzle boundaries");
static_assert(kTcTileM * kTcCsStride * 4 <= kTcMainBytes, "the staged output tile fits the stage buffers");
// The TMA loader's mbarriers: full[s] then empty[s], 8 bytes each, after the
// row slots (kTcTileM ints) that the epilogues keep across the tile (the
// per-row sources of pooled tiles follow them: expert.cuh kTcRowSrcOff).
constexpr int kTcBarOff = kTcMainBytes + kTcTileM * 4;
constexpr int kTcWarpgroups = kThreads / 128;
static_assert(kTcBarOff + 2 * kTcStages * 8 <= kTcPhaseUsable,
              "stages, row slots and barriers fit the aligned phase buffer");
static_assert(kTcBarOff % 8 == 0, "mbarriers are 8-byte aligned");
static_assert(kTcStageBytes % 1024 == 0 && (kTcTileM * kTcKBytes) % 1024 == 0 && kPhaseAlign == 1024,
              "every stage and its B part start on a 1024-byte swizzle boundary");
constexpr int kTcAcc = kTcTileM * kTcTileN / kThreads;  // fp32 accumulators per thread (64)
static_assert(kTcPasses * kTcRowsPerPass == kTcTileM && kTcTileN == kTcTileM, "loader covers A and B");
static_assert(kTcPasses == 4, "a loader thread covers rows tid/8 + 32 i, i < 4 (TcArgs::arow)");

// ---- PTX wrappers ----------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared, through L2 only; zero-filled when !valid (no read).
#if MOE_TC_L2_PREFETCH == 256
#define MOE_CP_PREFETCH ".L2::256B"
#elif MOE_TC_L2_PREFETCH == 128
#define MOE_CP_PREFETCH ".L2::128B"
#elif MOE_TC_L2_PREFETCH == 64
#define MOE_CP_PREFETCH ".L2::64B"
#elif MOE_TC_L2_PREFETCH == 0
#define MOE_CP_PREFETCH ""
#else
#error "MOE_TC_L2_PREFETCH must be 0, 64, 128 or 256"
#endif
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global" MOE_CP_PREFETCH " [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
               : "memory");
}
// The same with an L2 cache policy (l2_evict_first) for the line it reads.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid, uint64_t pol) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint" MOE_CP_PREFETCH " [%0], [%1], 16, %2, %3;\n" ::"r"(dst),
               "l"(src), "r"(n), "l"(pol)
               : "memory");
}
// The L2 policy of a tile's weight (B) loads when the forward streams its
// weights (each slab serves about one row tile, so nothing re-reads it soon:
// common.cuh weights_streamed): evict-first, so that they do not push the
// rest of the forward's data out of L2. Other forwards load without a policy
// (an evict-normal one measured 1.5-4 % slower at T >= 4096: benchmarks.md,
// ninth session).
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  return pol;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// fp32 -> tf32 (round to nearest, ties away from zero), as fp32 bits.
__device__ __forceinline__ float round_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
}

// The mma flavours. T is the storage type of A and B.
struct MmaTF32 {
  using T = float;
  static constexpr bool kTF32 = true;
  static constexpr const char* kName = "tf32";
  // m16n8k8: a 16x8 tf32, b 8x8 tf32, d 16x8 fp32.
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct MmaBF16 {
  using T = __nv_bfloat16;
  static constexpr bool kTF32 = false;
  static constexpr const char* kName = "bf16";
  // m16n8k16: a 16x16 bf16, b 16x8 bf16, d 16x8 fp32.
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

#if MOE_TC_WGMMA
// ---- Hopper warpgroup MMA ------------------------------------------------------

// Shared-memory matrix descriptor of a K-major operand in the 128-byte
// swizzle layout: start address >> 4 (bits 0-13), leading byte offset (unused
// for swizzled K-major: 1), stride byte offset 1024 >> 4 (8-row groups, bits
// 32-45), base offset 0 (1024-aligned atoms), layout SWIZZLE_128B (1 << 62).
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait(float (&d)[kTcAcc]) {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
  // The accumulators are outputs of the async MMAs: tie them to the wait so
  // that no read of them is scheduled before it.
#pragma unroll
  for (int i = 0; i < kTcAcc; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// cp.async wrote the stage through the generic proxy; wgmma reads it through
// the async proxy.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#define MOE_WG_D16(i)                                                                                        \
  "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7]), "+f"(d[i + 8]), "+f"(d[i + 9]), "+f"(d[i + 10]), "+f"(d[i + 11]), "+f"(d[i + 12]),         \
      "+f"(d[i + 13]), "+f"(d[i + 14]), "+f"(d[i + 15])
#define MOE_WG_REGS                                                                                             \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// D[64 x 128] += A[64 x k] * B[k x 128], both K-major in shared memory;
// k = 16 bf16 / 8 tf32 (32 bytes of every row).
__device__ __forceinline__ void wgmma_bf16(float (&d)[kTcAcc], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MOE_WG_REGS ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : MOE_WG_D16(0), MOE_WG_D16(16), MOE_WG_D16(32), MOE_WG_D16(48)
      : "l"(da), "l"(db), "r"(1));
}
__device__ __forceinline__ void wgmma_tf32(float (&d)[kTcAcc], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " MOE_WG_REGS ", %64, %65, p, 1, 1;\n}\n"
      : MOE_WG_D16(0), MOE_WG_D16(16), MOE_WG_D16(32), MOE_WG_D16(48)
      : "l"(da), "l"(db), "r"(1));
}
#undef MOE_WG_D16
#undef MOE_WG_REGS

// ---- TMA and mbarriers --------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_inval(uint32_t bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// The initialised barriers are visible to the other threads and to the
// async proxy (the TMA unit's complete_tx) before anyone uses them.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// count arrivals at once (one thread standing in for count others).
__device__ __forceinline__ void mbar_arrive_n(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// One arrival that also announces bytes the current phase must receive.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for the barrier's phase of the given parity to complete, at most
// kTmaWaitNs. A TMA load either lands or faults, so an expiry is a bug (byte
// counts that disagree): the block traps rather than hang or run on stale
// stages, and the launch fails with an error on this rank (its peers'
// watchdogs then fire). No call here: the tile is a leaf function (see
// tc_tile_stage).
constexpr uint64_t kTmaWaitNs = 4000000000ull;
// The bounded wait itself: false when limit_ns passed first (the caller
// decides what an expiry means).
__device__ __forceinline__ bool mbar_wait_for(uint32_t bar, uint32_t parity, uint64_t limit_ns) {
  if (mbar_try_wait(bar, parity)) return true;
  const uint64_t t0 = globaltimer();
  for (uint32_t i = 1;; ++i) {
    if (mbar_try_wait(bar, parity)) return true;
    if ((i & 63) == 0 && globaltimer() - t0 > limit_ns) return false;
  }
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (!mbar_wait_for(bar, parity, kTmaWaitNs)) __trap();
}
// Generic-proxy accesses of this thread (rows acquired from other blocks and
// GPUs; the last task's staging in shared memory) are ordered before its
// later async-proxy (TMA) accesses.
__device__ __forceinline__ void fence_proxy_async_all() { asm volatile("fence.proxy.async;\n" ::: "memory"); }
// A 2-D box at (c0 = K element, c1 = row) of the map at generic address map
// into shared memory at dst; its bytes complete on bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, uint64_t map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// The same with an L2 cache policy (l2_evict_first) for the box's lines.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, uint64_t map, int c0, int c1, uint32_t bar, uint64_t pol) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar), "l"(pol)
      : "memory");
}
#endif  // MOE_TC_WGMMA

// ---- the tile ---------------------------------------------------------------

// The tile's contract: a points at A[0][0] of the tile (rows lda elements
// apart, mrows valid rows, 1..128); b[o] at row 0 of operand o's W^T tile
// (rows ldb elements apart; ncols valid rows = output columns per operand:
// NB 1: 1..128, NB 2: 1..64); K a multiple of kTcKBytes / sizeof(T).
template <int NB>
struct TcArgs {
  const void* a;
  int64_t lda;
  int mrows;
  const void* b[NB];
  int64_t ldb;
  int ncols;
  int K;
  // kGather only: where the A rows of this thread's loader rows tid/8 + 32 i
  // (i < kTcPasses) start (a is then unused but for rows past mrows, which
  // are never read). Per-thread values: each thread passes its own rows.
  const void* arow[kTcPasses];
  // TMA loader (tmap != 0; wgmma builds only): generic address of the
  // CUtensorMap of A, followed by those of the B operands (kTmapBytes
  // apart), the tile's first row in A's map and its first row in the B maps
  // (NB 2: the output column; those maps' boxes are 16 rows). Zero unless a
  // caller sets them: the cp.async loader.
  uint64_t tmap = 0;
  int arow0 = 0, brow0 = 0;
  // The forward streams its weights (weights_streamed): a gathered tile
  // (pooled at W >= 2, or the own rows read from x: LOCAL_GATHER) loads B
  // evict-first in L2 (l2_evict_first). Other tiles ignore it (their code
  // unchanged).
  int bstream = 0;
};
constexpr int kTmapBytes = MOE_TMAP_WORDS * 8;

// Where accumulator i of this thread sits in the 128 x 128 tile: its row and
// its B row (output column of the packed B operands). Both mainloops give each
// warp m16n8 fragments: element e of an m16n8 tile is at row lane/4 (+8 for
// e >= 2), column 2 (lane % 4) + (e & 1).
//   wgmma: warpgroup g = warp / 4 owns rows 64g..+63, warp w = warp % 4 rows
//     16w..+15 of those, and all 128 columns: acc[4j + e] is n8 tile j.
//   mma.sync: warp (wm, wn) = (warp / 4, warp % 4) owns rows wm*64..+63 and
//     columns wn*32..+31: acc[(4 mi + j) * 4 + e] is m16 tile mi, n8 tile j.
struct TcPos {
  int row, col;
};
__device__ __forceinline__ TcPos tc_acc_pos(int i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e = i & 3, frag_row = (lane >> 2) + ((e >> 1) << 3), frag_col = 2 * (lane & 3) + (e & 1);
#if MOE_TC_WGMMA
  const int j = i >> 2;
  return TcPos{(warp >> 2) * 64 + (warp & 3) * 16 + frag_row, j * 8 + frag_col};
#else
  const int mi = i >> 4, j = (i >> 2) & 3;
  return TcPos{(warp >> 2) * kTcWarpM + mi * 16 + frag_row, (warp & 3) * kTcWarpN + j * 8 + frag_col};
#endif
}

#if MOE_TC_WGMMA
// One stage's MMAs of this thread's warpgroup: its 64 A rows (a_off into the
// stage at sst) times the stage's 128 B rows, kTcKBytes / 32 k-steps, issued
// asynchronously and committed as one group (both mainloops).
// The stage's B rows start after its kAm A rows (kTcTileM; 64 in a short
// tile's stage).
template <class Mma, int kAm = kTcTileM>
__device__ __forceinline__ void tc_wgmma_stage(float (&acc)[kTcAcc], uint32_t sst, uint32_t a_off) {
  const uint64_t da = wgmma_desc(sst + a_off);
  const uint64_t db = wgmma_desc(sst + kAm * kTcKBytes);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kTcKBytes / 32; ++kk) {
    if constexpr (Mma::kTF32) {
      wgmma_tf32(acc, da + 2 * kk, db + 2 * kk);
    } else {
      wgmma_bf16(acc, da + 2 * kk, db + 2 * kk);
    }
  }
  wgmma_commit();
}

// The TMA mainloop (see the file comment). Same contract as tc_gemm_tile.
template <class Mma, int NB>
__device__ __forceinline__ void tc_mainloop_tma(const TcArgs<NB>& g, unsigned char* smem, float (&acc)[kTcAcc]) {
  using T = typename Mma::T;
  constexpr int kKElems = kTcKBytes / static_cast<int>(sizeof(T));  // K elements per stage and row
  const int tid = threadIdx.x;
  const uint32_t sbase = smem_u32(smem);
  const uint32_t bars = sbase + kTcBarOff;  // full[s] = bars + 8 s, empty[s] = bars + 8 (kTcStages + s)
  const int ksteps = g.K * static_cast<int>(sizeof(T)) / kTcKBytes;
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < kTcStages; ++s) {
      mbar_init(bars + 8 * s, 1);                             // thread 0's arrive.expect_tx
      mbar_init(bars + 8 * (kTcStages + s), kTcWarpgroups);  // one arrival per warpgroup
    }
    mbar_init_fence();
  }
  // This thread's generic accesses before the async proxy's: the last tile's
  // staging in shared memory (overwritten by TMA), and for thread 0 the rows
  // it acquired in next_task (read by TMA).
  fence_proxy_async_all();
  block_sync();
  // Bytes of a stage: every box is transferred whole (zero fill outside the map).
  constexpr uint32_t kTx = static_cast<uint32_t>((kTcTileM + kTcTileN) * kTcKBytes);
  const uint64_t amap = g.tmap, bmap0 = amap + kTmapBytes, bmap1 = amap + (NB == 2 ? 2 : 1) * kTmapBytes;
  auto issue = [&](int stage, int kt) {  // thread 0
    const uint32_t full = bars + 8 * stage;
    const uint32_t dst = sbase + static_cast<uint32_t>(stage * kTcStageBytes);
    const int kc = kt * kKElems;
    mbar_arrive_expect_tx(full, kTx);
    tma_load_2d(dst, amap, kc, g.arow0, full);
    const uint32_t bdst = dst + kTcTileM * kTcKBytes;
    if (NB == 1) {
      tma_load_2d(bdst, bmap0, kc, g.brow0, full);
    } else {  // B rows 32w..+15: gate columns 16w..+15; 32w+16..+31: up, the same columns
#pragma unroll
      for (int w = 0; w < kTcTileN / 32; ++w) {
        tma_load_2d(bdst + 32 * w * kTcKBytes, bmap0, kc, g.brow0 + 16 * w, full);
        tma_load_2d(bdst + (32 * w + 16) * kTcKBytes, bmap1, kc, g.brow0 + 16 * w, full);
      }
    }
  };
  if (tid == 0) {
    for (int s = 0; s < kTcStages && s < ksteps; ++s) issue(s, s);
  }
  // Warpgroup wg multiplies A rows 64 wg..+63 by all 128 B rows; a k-step
  // is 32 bytes of every row, +2 in the descriptors' 16-byte units.
  const uint32_t a_off = static_cast<uint32_t>((tid >> 7) * 64 * kTcKBytes);
  const bool wg_rows = (tid >> 7) * 64 < g.mrows;  // no MMAs for rows past mrows (as in the cp.async loop)
  int st = 0;
  uint32_t phase = 0;  // parity of step kt's use of stage st
  for (int kt = 0; kt < ksteps; ++kt) {
    mbar_wait(bars + 8 * st, phase);
    if (wg_rows) tc_wgmma_stage<Mma>(acc, sbase + static_cast<uint32_t>(st * kTcStageBytes), a_off);
    wgmma_wait<1>(acc);  // step kt - 1's MMAs are done: its stage is free
    if (kt > 0) {
      const int ps = st == 0 ? kTcStages - 1 : st - 1;
      const uint32_t pphase = st == 0 ? phase ^ 1u : phase;  // parity of step kt - 1's use of ps
      if ((tid & 127) == 0) mbar_arrive(bars + 8 * (kTcStages + ps));
      const int nk = kt - 1 + kTcStages;
      if (tid == 0 && nk < ksteps) {
        mbar_wait(bars + 8 * (kTcStages + ps), pphase);  // both warpgroups are done with it
        issue(ps, nk);
      }
    }
    if (++st == kTcStages) {
      st = 0;
      phase ^= 1u;
    }
  }
  wgmma_wait<0>(acc);
  block_sync();  // every stage consumed, every wait passed: the barriers can go
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < 2 * kTcStages; ++s) mbar_inval(bars + 8 * s);
  }
}
#endif

// On return acc holds the tile (tc_acc_pos), all cp.async groups and MMAs
// have completed and the block has synchronised: the caller may reuse smem.
// kGather: A row r of the tile starts at the address its loader thread holds
// in arow (one 16-byte chunk per cp.async as always): LOCAL_GATHER reads the
// rank's own rows from x so, pooled tiles the rows of several sources.
// kShort (mrows <= 64, wgmma builds, the cp.async loader): a stage holds 64
// A rows and the 128 B rows (24 KB), so the same buffer holds one stage more
// (kTcShortStages): a small tile streams its weight slab with more bytes in
// flight (small forwards wait on that, not on the tensor cores); only
// warpgroup 0 multiplies.
template <class Mma, int NB, bool kGather = false, bool kShort = false>
__device__ __forceinline__ void tc_gemm_tile(const TcArgs<NB>& g, unsigned char* smem, float (&acc)[kTcAcc]) {
  using T = typename Mma::T;
  constexpr int kEs = static_cast<int>(sizeof(T));
  constexpr bool kShortA = kShort && MOE_TC_WGMMA;
  constexpr int kAm = kShortA ? 64 : kTcTileM;                  // A rows of a stage
  constexpr int kStageBytes = (kAm + kTcTileN) * kTcKBytes;     // bytes of a stage
  constexpr int kStages = kShortA ? kTcShortStages : kTcStages;  // stages in the buffer
  constexpr int kAPasses = kAm / kTcRowsPerPass;                // A loader passes
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kTcAcc; ++i) acc[i] = 0.f;
#if MOE_TC_WGMMA
  if constexpr (!kGather) {
    if (g.tmap != 0) {
      tc_mainloop_tma<Mma, NB>(g, smem, acc);
      return;
    }
  }
#endif

  // Loader: thread copies chunk lc of rows lr + 32 i (i < 4) of A and of B.
  const int lc = tid & 7, lr = tid >> 3;
  const uint32_t sbase = smem_u32(smem);
  const uint32_t st_off = static_cast<uint32_t>(lr * kTcKBytes + ((lc ^ (lr & 7)) << 4));
  const char* asrc = static_cast<const char*>(g.a) + static_cast<int64_t>(lr) * g.lda * kEs + lc * 16;
  const int64_t astep = static_cast<int64_t>(kTcRowsPerPass) * g.lda * kEs;
  const char* bsrc;
  int64_t bstep;
  int bcol0, bcolstep;
  if (NB == 1) {
    bsrc = static_cast<const char*>(g.b[0]) + static_cast<int64_t>(lr) * g.ldb * kEs + lc * 16;
    bstep = static_cast<int64_t>(kTcRowsPerPass) * g.ldb * kEs;
    bcol0 = lr;
    bcolstep = kTcRowsPerPass;
  } else {
    // B row lr + 32 i: operand (lr / 16) & 1, output column 16 i + lr % 16.
    const void* bo = ((lr >> 4) & 1) ? g.b[NB - 1] : g.b[0];
    bsrc = static_cast<const char*>(bo) + static_cast<int64_t>(lr & 15) * g.ldb * kEs + lc * 16;
    bstep = static_cast<int64_t>(16) * g.ldb * kEs;
    bcol0 = lr & 15;
    bcolstep = 16;
  }
  const char* afall = static_cast<const char*>(g.a);     // never read (src-size 0)
  const char* bfall = static_cast<const char*>(g.b[0]);
  const int ksteps = g.K * kEs / kTcKBytes;
  const bool bstream = kGather && g.bstream != 0;  // uniform over the block
  const uint64_t bpol = bstream ? l2_evict_first() : 0;
  auto load = [&](int stage, int kt) {
    const uint32_t s = sbase + static_cast<uint32_t>(stage * kStageBytes) + st_off;
    const int64_t koff = static_cast<int64_t>(kt) * kTcKBytes;
#pragma unroll
    for (int i = 0; i < kTcPasses; ++i) {
      if (i < kAPasses) {
        const bool va = lr + kTcRowsPerPass * i < g.mrows;
        const char* ai = kGather ? static_cast<const char*>(g.arow[i]) + lc * 16 : asrc + i * astep;
        cp_async16(s + i * kTcRowsPerPass * kTcKBytes, va ? ai + koff : afall, va);
      }
      const bool vb = bcol0 + bcolstep * i < g.ncols;
      const char* bi = vb ? bsrc + i * bstep + koff : bfall;
      const uint32_t bs = s + (kAm + i * kTcRowsPerPass) * kTcKBytes;
      if (bstream) {
        cp_async16(bs, bi, vb, bpol);
      } else {
        cp_async16(bs, bi, vb);
      }
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ksteps) load(s, s);
    cp_async_commit();
  }
  // At step kt (in stage buffer st), after the barrier that frees the buffer
  // of step kt - 1: start the copies of step kt + kStages - 1 into it.
  auto load_next = [&](int kt, int st) {
    const int nk = kt + kStages - 1;
    int ns = st + kStages - 1;
    if (ns >= kStages) ns -= kStages;
    if (nk < ksteps) load(ns, nk);
    cp_async_commit();
  };
#if MOE_TC_WGMMA
  // Warpgroup g multiplies A rows 64g..+63 by all 128 B rows; a k-step is 32
  // bytes of every row, i.e. +2 in the descriptors' 16-byte address units.
  const uint32_t a_off = static_cast<uint32_t>((tid >> 7) * 64 * kTcKBytes);
  // A warpgroup whose 64 rows all lie past mrows (a tile of at most 64 rows)
  // issues no MMAs: its accumulators stay 0 and are never stored, and the
  // tensor cores do half the work. Uniform over the warpgroup.
  const bool wg_rows = (tid >> 7) * 64 < (kShortA ? 64 : g.mrows);
  int st = 0;  // stage buffer of step kt
  for (int kt = 0; kt < ksteps; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of step kt have landed
    fence_proxy_async_smem();      // ... and are visible to the tensor cores' reads
    wgmma_wait<0>(acc);            // this warpgroup is done reading step kt - 1
    block_sync();               // everyone's copies landed; step kt - 1's buffer is free
    load_next(kt, st);
    // The MMAs run while the threads wait for step kt + 1.
    if (wg_rows) tc_wgmma_stage<Mma, kAm>(acc, sbase + static_cast<uint32_t>(st * kStageBytes), a_off);
    if (++st == kStages) st = 0;
  }
  wgmma_wait<0>(acc);
#else
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  // ldmatrix addressing. A x4: matrices (rows 0-7, chunk lo), (rows 8-15, lo),
  // (rows 0-7, hi), (rows 8-15, hi) = a0..a3 of m16n8k16 bf16 / m16n8k8 tf32.
  // B x4 over 16 B rows: (rows 0-7, lo), (rows 0-7, hi), (rows 8-15, lo),
  // (rows 8-15, hi) = {b0, b1} of n8 tile 2np, then of 2np + 1.
  const int x7 = lane & 7;  // (row & 7) of every row this lane addresses
  const uint32_t a_row = static_cast<uint32_t>((wm * kTcWarpM + x7 + ((lane >> 3) & 1) * 8) * kTcKBytes);
  const uint32_t b_row = static_cast<uint32_t>((kTcTileM + wn * kTcWarpN + x7 + (lane >> 4) * 8) * kTcKBytes);
  const int a_hi = lane >> 4, b_hi = (lane >> 3) & 1;
  int st = 0;  // stage buffer of step kt
  for (int kt = 0; kt < ksteps; ++kt) {
    cp_async_wait<kTcStages - 2>();  // this thread's copies of step kt have landed
    block_sync();                 // everyone's have; everyone is done with step kt - 1
    load_next(kt, st);
    const uint32_t sst = sbase + static_cast<uint32_t>(st * kTcStageBytes);
#pragma unroll
    for (int kk = 0; kk < kTcKBytes / 32; ++kk) {
      uint32_t bf[4][2];
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, sst + b_row + np * 16 * kTcKBytes + (((kk * 2 + b_hi) ^ x7) << 4));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        uint32_t af[4];
        ldmatrix_x4(af, sst + a_row + mi * 16 * kTcKBytes + (((kk * 2 + a_hi) ^ x7) << 4));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float(&d)[4] = *reinterpret_cast<float(*)[4]>(&acc[(mi * 4 + j) * 4]);
          Mma::mma(d, af, bf[j]);
        }
      }
    }
    if (++st == kTcStages) st = 0;
  }
#endif
  cp_async_wait<0>();
  block_sync();
}

// ---- epilogue -----------------------------------------------------------------

enum TcOp : int { kOpNone = 0, kOpReLU = 1, kOpGeLU = 2, kOpSwiGLU = 3 };

// Output columns of a task: 128 for one operand, 64 for paired operands.
template <int NB>
__host__ __device__ constexpr int tc_out_cols() {
  return kTcTileN / NB;
}

// The epilogue's arithmetic of a column pair (col, col + 1) of one row:
// + bias (read for columns < ncols only; null: none), then kOp (relu, gelu or
// none). Shared by every tensor-core epilogue, so that they round alike.
template <int kOp>
__device__ __forceinline__ void tc_bias_op(float& v0, float& v1, const float* bias, int col, int ncols) {
  if (bias != nullptr && col < ncols) {
    v0 += __ldg(bias + col);
    v1 += __ldg(bias + col + 1);
  }
  if constexpr (kOp == kOpReLU) {
    v0 = act_relu(v0);
    v1 = act_relu(v1);
  } else if constexpr (kOp == kOpGeLU) {
    v0 = act_gelu(v0);
    v1 = act_gelu(v1);
  }
}

// Runs body(std::integral_constant<int, op>{}) for op kOpNone, kOpReLU or
// kOpGeLU (anything else: kOpNone). The epilogues unroll a loop over every
// accumulator; with the op chosen inside that loop, the code of one op lay
// spread over the whole unrolled loop between the other ops' bodies (gelu's
// tanhf is large), and a tile's epilogue fetched ~40 KB of instructions, line
// by line, to run a few KB of them whenever the SM's instruction caches did
// not hold them: bf16 relu and gelu forwards ran 8-20 % slower for it
// (docs/benchmarks.md, tenth session). Chosen once, each op's loop is one
// straight run of code.
template <class Body>
__device__ __forceinline__ void tc_with_op(int op, Body&& body) {
  if (op == kOpReLU) {
    body(std::integral_constant<int, kOpReLU>{});
  } else if (op == kOpGeLU) {
    body(std::integral_constant<int, kOpGeLU>{});
  } else {
    body(std::integral_constant<int, kOpNone>{});
  }
}

// Writes the tile's results into cs [128][kTcCsStride] fp32:
//   NB 1: cs[r][c] = op(acc + bias[c]) (bias may be null: 0), c < 128;
//   NB 2, kOpSwiGLU: cs[r][c] = silu(gate) * up, c < 64;
//   NB 2, kOpNone: cs[r][c] = gate, cs[r][64 + c] = up (the tile test).
// bias is read only for columns < ncols. The caller syncs before reading cs.
// NB 2: B rows 32q..32q+15 are the gate operand's columns 16q..16q+15 and
// 32q+16..+31 the up operand's same columns, so the up value of an
// accumulator in n8 tile j (j % 4 < 2) is the same element of tile j + 2:
// accumulator index + 8 in both layouts.
template <int NB>
__device__ __forceinline__ void tc_stage(const float (&acc)[kTcAcc], float* cs, int op, const float* bias, int ncols) {
  if constexpr (NB == 2) {
    // The op chosen once, as tc_with_op does for NB 1.
    auto pairs = [&](auto swiglu) {
#pragma unroll
      for (int i = 0; i < kTcAcc; i += 2) {
        const TcPos pos = tc_acc_pos(i);  // i even: columns col, col + 1
        if (pos.col & 16) continue;       // an up tile: read with its gate tile
        const int col = (pos.col >> 5) * 16 + (pos.col & 15);
        float* dst = cs + pos.row * kTcCsStride + col;
        const float v0 = acc[i], v1 = acc[i + 1];
        const float u0 = acc[i + 8], u1 = acc[i + 9];
        if constexpr (decltype(swiglu)::value) {
          *reinterpret_cast<float2*>(dst) = make_float2(act_silu_fast(v0) * u0, act_silu_fast(v1) * u1);
        } else {
          *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
          *reinterpret_cast<float2*>(dst + kTcTileN / 2) = make_float2(u0, u1);
        }
      }
    };
    if (op == kOpSwiGLU) {
      pairs(std::true_type{});
    } else {
      pairs(std::false_type{});
    }
  } else {
    tc_with_op(op, [&](auto kop) {
#pragma unroll
      for (int i = 0; i < kTcAcc; i += 2) {
        const TcPos pos = tc_acc_pos(i);  // i even: columns col, col + 1
        float v0 = acc[i], v1 = acc[i + 1];
        tc_bias_op<decltype(kop)::value>(v0, v1, bias, pos.col, ncols);
        *reinterpret_cast<float2*>(cs + pos.row * kTcCsStride + pos.col) = make_float2(v0, v1);
      }
    });
  }
}

// The tile and its staging into cs = smem in one leaf function: ptxas
// serialises every wgmma (waits for each before the next) in a function that
// makes calls it cannot see into, and the kernel calls NVSHMEM's device
// library and its own out-of-line trace/status writers. Called as a
// function, the MMAs stay asynchronous; the call costs nothing next to a tile.
// On return the block has NOT synchronised after staging: sync before
// reading cs.
template <class Mma, int NB, bool kGather = false, bool kShort = false>
__device__ __noinline__ void tc_tile_stage(const TcArgs<NB> g, unsigned char* smem, int op, const float* bias) {
  float acc[kTcAcc];
  tc_gemm_tile<Mma, NB, kGather, kShort>(g, smem, acc);
  tc_stage<NB>(acc, reinterpret_cast<float*>(smem), op, bias, g.ncols);
}

// The tile of g (staged into smem as tc_tile_stage): a short tile (kShort)
// when it has at most 64 rows and loads with cp.async.
template <class Mma, int NB, bool kGather = false>
__device__ __forceinline__ void tc_tile_run(const TcArgs<NB>& g, unsigned char* smem, int op, const float* bias) {
  if (g.mrows <= 64 && (kGather || g.tmap == 0)) {
    tc_tile_stage<Mma, NB, kGather, true>(g, smem, op, bias);
  } else {
    tc_tile_stage<Mma, NB, kGather>(g, smem, op, bias);
  }
}

// 16-byte vector of 4 fp32 (tf32-rounded when asked) or 8 bf16 from cs.
template <typename TO>
__device__ __forceinline__ uint4 tc_pack(const float* src, bool tf32) {
  uint4 u;
  if constexpr (sizeof(TO) == 4) {
    float4 v = *reinterpret_cast<const float4*>(src);
    if (tf32) {
      v.x = round_tf32(v.x);
      v.y = round_tf32(v.y);
      v.z = round_tf32(v.z);
      v.w = round_tf32(v.w);
    }
    u = make_uint4(__float_as_uint(v.x), __float_as_uint(v.y), __float_as_uint(v.z), __float_as_uint(v.w));
  } else {
    const float4 a = *reinterpret_cast<const float4*>(src);
    const float4 b = *reinterpret_cast<const float4*>(src + 4);
    const __nv_bfloat162 p0 = __floats2bfloat162_rn(a.x, a.y);
    const __nv_bfloat162 p1 = __floats2bfloat162_rn(a.z, a.w);
    const __nv_bfloat162 p2 = __floats2bfloat162_rn(b.x, b.y);
    const __nv_bfloat162 p3 = __floats2bfloat162_rn(b.z, b.w);
    u.x = *reinterpret_cast<const uint32_t*>(&p0);
    u.y = *reinterpret_cast<const uint32_t*>(&p1);
    u.z = *reinterpret_cast<const uint32_t*>(&p2);
    u.w = *reinterpret_cast<const uint32_t*>(&p3);
  }
  return u;
}

// Copies rows 0..nrows-1, columns 0..ncols-1 (a multiple of 8) of cs to row(r) (a TO* at the tile's column 0) with 16-byte
// stores; a warp writes whole contiguous runs of a row. cs rows are kStride
// floats apart (gemm_ws.cuh stages 256 columns).
template <typename TO, int kStride = kTcCsStride, typename RowFn>
__device__ __forceinline__ void tc_copy_out(const float* cs, int nrows, int ncols, bool tf32, RowFn row) {
  constexpr int kEpv = 16 / static_cast<int>(sizeof(TO));  // elements per vector
  const int vpr = ncols / kEpv;                            // vectors per row
  const int n = nrows * vpr;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int r = i / vpr, v = i - r * vpr;
    const uint4 u = tc_pack<TO>(cs + r * kStride + v * kEpv, tf32);
    *reinterpret_cast<uint4*>(row(r) + v * kEpv) = u;
  }
}

}  // namespace moe
