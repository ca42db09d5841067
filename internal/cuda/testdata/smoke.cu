// Regenerate smoke.ptx with: nvcc -ptx -arch=compute_90 smoke.cu -o smoke.ptx
// Kernel of the GPU smoke test: out[i] = i + add for i < n.
struct SmokeArg {
  unsigned long long out;
  unsigned int n;
  unsigned int add;
};
extern "C" __global__ void smoke(SmokeArg a) {
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < a.n) reinterpret_cast<unsigned int *>(a.out)[i] = i + a.add;
}
