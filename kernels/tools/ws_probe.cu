// ws_probe.cu: a COMPILE-ONLY probe of the tile that docs/performance.md
// plans ("Next: the GEMM at one block per SM"): one block per SM, 384
// threads (a producer warpgroup that issues TMA stages, setmaxnreg down;
// two consumer warpgroups of 64 x 256 each, wgmma m64n256k16, setmaxnreg
// up), 128 x 256 bf16 tile, four 48 KB stages on mbarriers, the epilogue
// straight from registers. It answers what ptxas makes of that layout
// (registers, spills, the HGMMA shape, whether the MMAs stay asynchronous)
// before any of it goes into the kernel: `make kernels-probe`. It is not
// launched by anything and has never run on a GPU; its waits are unbounded
// and its epilogue's row/column map is unchecked, so it is no template for
// kernel code as it stands. The tile it probed is built in kernels/gemm_ws.cuh
// (seventh session: run, checked and measured; docs/benchmarks.md).
#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

constexpr int kStages = 4, kM = 128, kN = 256, kKB = 128;  // 64 bf16 of K per stage
constexpr int kStageBytes = (kM + kN) * kKB;               // 48 KB

__device__ __forceinline__ uint32_t su32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ uint64_t desc(uint32_t a) {
  return (uint64_t)((a & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void mbar_init(uint32_t b, uint32_t n) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(b), "r"(n)); }
__device__ __forceinline__ void arrive(uint32_t b) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(b) : "memory"); }
__device__ __forceinline__ void expect(uint32_t b, uint32_t n) { asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(n) : "memory"); }
__device__ __forceinline__ void wait(uint32_t b, uint32_t ph) {
  asm volatile("{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}" ::"r"(b), "r"(ph) : "memory");
}
__device__ __forceinline__ void tma(uint32_t dst, const CUtensorMap* m, int c0, int c1, uint32_t b) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
               ::"r"(dst), "l"((uint64_t)m), "r"(c0), "r"(c1), "r"(b) : "memory");
}
__device__ __forceinline__ void wgmma256(float (&d)[128], uint64_t da, uint64_t db) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127]) : "l"(da), "l"(db), "r"(1));
}

extern "C" __global__ void __launch_bounds__(384, 1)
ws_tile(const __grid_constant__ CUtensorMap amap, const __grid_constant__ CUtensorMap bmap, __nv_bfloat16* out, int ksteps) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t sbase = su32(smem);
  const uint32_t bars = sbase + kStages * kStageBytes;  // full[s], then empty[s]
  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) { mbar_init(bars + 8 * s, 1); mbar_init(bars + 8 * (kStages + s), 2); }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x == 0) {
      for (int kt = 0; kt < ksteps; ++kt) {
        const int s = kt % kStages, use = kt / kStages;
        if (use > 0) wait(bars + 8 * (kStages + s), (use - 1) & 1);
        const uint32_t dst = sbase + s * kStageBytes;
        expect(bars + 8 * s, kStageBytes);
        tma(dst, &amap, kt * 64, blockIdx.x * kM, bars + 8 * s);
        tma(dst + kM * kKB, &bmap, kt * 64, 0, bars + 8 * s);
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;
    const uint32_t a_off = (wg - 1) * 64 * kKB;
    for (int kt = 0; kt < ksteps; ++kt) {
      const int s = kt % kStages;
      wait(bars + 8 * s, (kt / kStages) & 1);
      const uint32_t st = sbase + s * kStageBytes;
      const uint64_t da = desc(st + a_off), db = desc(st + kM * kKB);
      asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma256(acc, da + 2 * kk, db + 2 * kk);
      asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
#pragma unroll
      for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(acc[i])::"memory");
      if (kt > 0 && (threadIdx.x & 127) == 0) arrive(bars + 8 * (kStages + (kt - 1) % kStages));
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(acc[i])::"memory");
    // Epilogue straight from registers: element i of this thread is row
    // 16 * warp + lane / 4 (+ 8), column 8 * (i / 4) + 2 * (lane % 4) + (i & 1).
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
    __nv_bfloat16* o = out + (size_t)blockIdx.x * kM * kN;
#pragma unroll
    for (int i = 0; i < 128; i += 2) {
      const int r = (wg - 1) * 64 + warp * 16 + lane / 4 + ((i >> 1) & 1) * 8;
      const int c = 8 * (i / 4) + 2 * (lane % 4);
      *reinterpret_cast<__nv_bfloat162*>(o + r * kN + c) = __floats2bfloat162_rn(acc[i], acc[i + 1]);
    }
  }
}
