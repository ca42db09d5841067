// dispatch.cuh: kept token rows straight into the owners' heaps.
//
// Every block builds, in shared memory, the exclusive prefix of the kept
// counts over all E experts. The kept pairs, ordered by expert and then by
// token, form one list of P rows; warp w copies rows w, w + nwarps, ... Row g
// of expert e (owner d = e / El) lands in d's receive region for this source
// at row g - prefix[d*El]: grouped by d's local expert, token order inside an
// expert, exact offsets, no padding. The row travels as 16-byte stores
// through the NVLink mapping (nvshmem_ptr), in the storage dtype (H fp32, or
// H bf16 in bf16 mode: half the bytes); in tf32 mode each value is rounded to
// tf32 (cvt.rna) on the way, so GEMM0's A operand is exact tf32. Lane 0 also
// stores the row's return slot t*k+j. Block 0 stores the per-(source, local
// expert) counts.
// LOCAL_GATHER (bf16): rows for this rank's own experts are not copied (only
// their return slots are stored); GEMM0 gathers them from x by token.
// The dispatch signals follow the next grid barrier (moe_kernel.cu).
#pragma once

#include "gemm_tc.cuh"
#include "sync.cuh"

namespace moe {

__device__ inline void dispatch(Ctx& c) {
  const MoeParams& p = c.p;
  const int E = p.experts, El = p.experts_per_rank, H = p.hidden, k = p.topk;
  const int* count = reinterpret_cast<const int*>(p.route_count);
  const int* list = reinterpret_cast<const int*>(p.route_list);
  const char* x = reinterpret_cast<const char*>(p.x);
  int* pre = reinterpret_cast<int*>(c.phase);  // [E + 1]
  for (int e = threadIdx.x; e < E; e += kThreads) pre[e] = ld_cg(count + e);
  __syncthreads();
  const int total = block_exclusive_scan(pre, E, c.sh);

  if (blockIdx.x == 0) {
    for (int e = threadIdx.x; e < E; e += kThreads) {
      const int d = e / El, le = e - d * El;
      int* dst = reinterpret_cast<int*>(peer_heap(c, d, p.off_recv_counts)) + p.rank * El + le;
      *dst = pre[e + 1] - pre[e];
    }
  }

  const int lane = threadIdx.x & 31;
  const int gwarp = blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int nwarps = gridDim.x * kWarps;
  const int64_t rps = p.rows_per_source;
  const int64_t rowbytes = static_cast<int64_t>(H) * elem_bytes(p);
  const int vecs = static_cast<int>(rowbytes / 16);
  const bool tf32 = p.dtype == MOE_DTYPE_TF32;
  const uint64_t t0 = threadIdx.x == 0 ? globaltimer() : 0;
  uint64_t bytes = 0;
  // Rows for this rank's own experts are [l0, l1) of the list. With
  // LOCAL_GATHER (bf16) GEMM0 reads them from x: only their return slots are
  // stored here, one row per thread; the warps copy the others.
  const bool gather = local_gather(p);
  const int l0 = gather ? pre[p.rank * El] : 0, l1 = gather ? pre[(p.rank + 1) * El] : 0;
  if (gather) {
    int* meta = reinterpret_cast<int*>(my_heap(p, p.off_recv_meta)) + static_cast<int64_t>(p.rank) * rps;
    for (int g = l0 + blockIdx.x * kThreads + threadIdx.x; g < l1; g += gridDim.x * kThreads) {
      const int e = upper_index(pre, E, g);
      meta[g - l0] = ld_cg(list + static_cast<int64_t>(e) * p.max_tokens + (g - pre[e]));
    }
  }
  const int ncopy = total - (l1 - l0);
  for (int q = gwarp; q < ncopy; q += nwarps) {
    const int g = q < l0 ? q : q + (l1 - l0);
    const int e = upper_index(pre, E, g);
    const int d = e / El;
    const int pos = g - pre[e];
    const int row = g - pre[d * El];
    const int pair = ld_cg(list + static_cast<int64_t>(e) * p.max_tokens + pos);
    const int t = pair / k;
    const int64_t drow = static_cast<int64_t>(p.rank) * rps + row;
    const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(t) * rowbytes);
    uint4* dst = reinterpret_cast<uint4*>(peer_heap(c, d, p.off_recv_rows) + drow * rowbytes);
    if (tf32) {
      for (int v = lane; v < vecs; v += 32) {
        uint4 u = __ldg(src + v);
        u.x = __float_as_uint(round_tf32(__uint_as_float(u.x)));
        u.y = __float_as_uint(round_tf32(__uint_as_float(u.y)));
        u.z = __float_as_uint(round_tf32(__uint_as_float(u.z)));
        u.w = __float_as_uint(round_tf32(__uint_as_float(u.w)));
        dst[v] = u;
      }
    } else {
      for (int v = lane; v < vecs; v += 32) dst[v] = __ldg(src + v);
    }
    if (lane == 0) {
      reinterpret_cast<int*>(peer_heap(c, d, p.off_recv_meta))[drow] = pair;
      if (d != p.rank) bytes += static_cast<uint64_t>(rowbytes);
    }
  }
  if (lane == 0) c.bytes += bytes;
  if (threadIdx.x == 0 && (blockIdx.x * kWarps < ncopy || blockIdx.x * kThreads < l1 - l0)) {
    const uint64_t t1 = globaltimer();
    c.busy += t1 - t0;
    trace_ev(c, MOE_EV_DISPATCH, t0, t1, -1, block_warp_items(ncopy), 0);
  }
}

}  // namespace moe
