// weight_stream.cu: how fast can a GEMM phase stream its experts' weights
// from HBM, by access pattern? A standalone benchmark (not part of the
// kernel): `make -f kernels/kernels.mk kernels-weight-stream`, then
// build/tools/weight_stream on the GPU machine (one GPU, ~10 s).
//
// Each block is one task of a small forward's GEMM phase: R rows of a W^T
// [2048][2048] bf16 matrix (4 KB rows) read in 32 K steps of 128 bytes a row,
// cp.async 16 B into a 128-byte-swizzled stage, S stages in flight, one
// __syncthreads a stage: the pooled tiles' loads without their MMAs. Patterns:
// row-major (as the weights are stored: 128 B of each of R rows a step, with
// or without the L2::256B hint, with or without evict-first) against a tiled
// layout (each step's R x 128 B contiguous). 128 tasks = 8 experts x 16
// column tiles (T = 128 at W = 4), 256 = 16 x 16 (W = 2); 64-row tasks twice
// as many. Every launch reads a slice of a 2 GiB buffer that the previous
// ones did not touch (cold L2); median of 20 launches after 5, CUDA events.
// Measured on H200 (docs/benchmarks.md, tenth session): the pattern moves it
// by 3-4 % at most; 256 tasks stream at ~3.5 TB/s, 128 at ~2.9.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__); exit(1);} } while (0)
// A W^T matrix: kRows rows of kRowBytes (2048 bf16), read in kSteps K steps.
constexpr int kRowBytes = 4096, kSteps = 32, kRows = 2048;
// 16 bytes global -> shared through L2; PF: the L2 prefetch hint (0 or 256
// bytes), EF: evict-first policy pol.
template <int PF, bool EF>
__device__ __forceinline__ void cp16(uint32_t dst, const void* src, uint64_t pol) {
  if constexpr (EF) {
    if constexpr (PF == 256) asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(pol) : "memory");
    else asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(pol) : "memory");
  } else {
    if constexpr (PF == 256) asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
    else asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
  }
}
// One task a block: R rows (a column tile) of expert e0 + blockIdx / (kRows / R),
// S stages, TILED: the tiled layout (else row-major).
template <int R, int S, bool TILED, int PF, bool EF>
__global__ void __launch_bounds__(256) stream_tasks(const uint8_t* w, int e0, int* sink) {
  extern __shared__ __align__(1024) uint8_t smem[];
  const int tid = threadIdx.x, nt_per_e = kRows / R;
  const int e = e0 + blockIdx.x / nt_per_e, nt = blockIdx.x % nt_per_e;
  uint64_t pol = 0;
  if constexpr (EF) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  const uint32_t sb = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  auto issue = [&](int k) {
    const uint32_t st = sb + (k % S) * R * 128;
#pragma unroll
    for (int i = 0; i < R / 32; ++i) {
      const int r = tid / 8 + 32 * i, c = tid % 8;
      const uint8_t* src = TILED ? w + ((((size_t)e * nt_per_e + nt) * kSteps + k) * R * 128 + r * 128 + c * 16)
                                 : w + (((size_t)e * kRows + nt * R + r) * kRowBytes + k * 128 + c * 16);
      cp16<PF, EF>(st + r * 128 + ((c ^ (r & 7)) * 16), src, pol);
    }
  };
  int acc = 0;
  for (int s = 0; s < S - 1; ++s) { issue(s); asm volatile("cp.async.commit_group;\n" ::: "memory"); }
  for (int k = 0; k < kSteps; ++k) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2) : "memory");
    __syncthreads();
    acc += reinterpret_cast<const int*>(smem + (k % S) * R * 128)[tid];
    if (k + S - 1 < kSteps) issue(k + S - 1);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  }
  if (acc == 0x7fffffff) sink[0] = acc;
}
// Median time of 20 launches (after 5) of `tasks` tasks, each launch on the next
// of nslices untouched slices of the buffer, and the bandwidth it gives.
template <int R, int S, bool TILED, int PF, bool EF>
void run(const char* name, const uint8_t* w, int* sink, int tasks, int nslices) {
  auto kern = stream_tasks<R, S, TILED, PF, EF>;
  const int smem = 100 * 1024;  // two blocks per SM at most, as the forward's blocks
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  const int experts = tasks / (kRows / R);
  std::vector<float> ms;
  for (int it = 0; it < 25; ++it) {
    const int e0 = (it % nslices) * experts;
    CK(cudaEventRecord(a));
    kern<<<tasks, 256, smem>>>(w, e0, sink);
    CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
    float t; CK(cudaEventElapsedTime(&t, a, b)); if (it >= 5) ms.push_back(t);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  const double bytes = (double)experts * kRows * kRowBytes;
  printf("%-34s R=%3d S=%d tasks=%3d  %7.1f us  %6.0f GB/s  (%.0f MB)\n", name, R, S, tasks, ms[ms.size()/2]*1e3,
         bytes / (ms[ms.size()/2] * 1e-3) / 1e9, bytes / 1e6);
}
__global__ void copyk(const int4* s, int4* d, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) d[i] = s[i];
}
int main() {
  const size_t total = (size_t)256 * kRows * kRowBytes;  // 256 experts' matrices: 2 GiB
  uint8_t* w; int* sink; CK(cudaMalloc(&w, total)); CK(cudaMalloc(&sink, 64));
  CK(cudaMemset(w, 0x3c, total));
  { // copy reference
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); std::vector<float> ms;
    const size_t n = (size_t)512 << 20;
    for (int it = 0; it < 15; ++it) { CK(cudaEventRecord(a)); copyk<<<132*8, 512>>>((const int4*)w, (int4*)(w + n), n / 16);
      CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b)); float t; CK(cudaEventElapsedTime(&t, a, b)); ms.push_back(t); }
    std::sort(ms.begin(), ms.end()); printf("copy 512 MB: %.0f GB/s (read+write)\n", 2.0 * n / (ms[7] * 1e-3) / 1e9);
  }
  for (int tasks : {128, 256}) {
    const int ns8 = 256 / (tasks / 16);
    run<128, 4, false, 256, false>("rowmajor pf256 (today)", w, sink, tasks, ns8);
    run<128, 4, false, 256, true>("rowmajor pf256 evict-first (today)", w, sink, tasks, ns8);
    run<128, 4, false, 0, false>("rowmajor no-pf", w, sink, tasks, ns8);
    run<128, 4, true, 0, false>("tiled", w, sink, tasks, ns8);
    run<128, 4, true, 0, true>("tiled evict-first", w, sink, tasks, ns8);
    run<128, 6, false, 256, true>("rowmajor pf256 ef S=6", w, sink, tasks, ns8);
    run<128, 6, true, 0, true>("tiled ef S=6", w, sink, tasks, ns8);
  }
  for (int tasks : {256, 512}) {
    const int ns = 256 / (tasks / 32);
    run<64, 4, false, 256, true>("rowmajor pf256 ef, 64-col", w, sink, tasks, ns);
    run<64, 4, true, 0, true>("tiled ef, 64-col", w, sink, tasks, ns);
    run<64, 8, false, 256, true>("rowmajor pf256 ef, 64-col S=8", w, sink, tasks, ns);
    run<64, 8, true, 0, true>("tiled ef, 64-col S=8", w, sink, tasks, ns);
  }
  return 0;
}
