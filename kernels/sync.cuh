// sync.cuh: bounded waits (watchdog), the grid barrier, cross-GPU signals.
//
// Every spin-wait in the kernel goes through wait_* below: each polls its
// flag, the status block's abort word and %globaltimer. When a wait runs past
// params.watchdog_ns the first block to notice records who waited for what in
// the status block (first writer wins), raises abort, and every other waiting
// block sees abort and leaves: the grid exits within one poll interval.
#pragma once

#include <nvshmem.h>
#include <nvshmemx.h>

#include "common.cuh"

namespace moe {

__device__ __noinline__ void record_status(const MoeParams& p, uint64_t seq, int code, int kind, int peer,
                                           uint64_t elapsed, uint64_t target, uint64_t observed) {
  MoeStatus* st = status_of(p);
  if (atomicCAS(&st->code, 0u, static_cast<uint32_t>(code)) == 0u) {
    st->rank = p.rank;
    st->kind = kind;
    st->peer = peer;
    st->block = blockIdx.x;
    st->seq = seq;
    st->elapsed_ns = elapsed;
    st->target = target;
    st->observed = observed;
    __threadfence();
  }
  atomicExch(&st->abort, 1u);
  __threadfence_system();
}

__device__ __forceinline__ void watchdog_trip(const Ctx& c, int code, int kind, int peer, uint64_t elapsed,
                                              uint64_t target, uint64_t observed) {
  record_status(c.p, c.seq, code, kind, peer, elapsed, target, observed);
}

__device__ __forceinline__ bool aborted(const Ctx& c) {
  return *reinterpret_cast<volatile uint32_t*>(&status_of(c.p)->abort) != 0u;
}

// One step of a bounded wait: true when the caller must give up (abort raised
// elsewhere, or this wait expired: then it trips the watchdog itself).
__device__ __forceinline__ bool wait_expired(const Ctx& c, uint64_t t0, uint64_t limit_ns, int kind, int peer,
                                             uint64_t target, uint64_t observed) {
  if (aborted(c)) return true;
  const uint64_t dt = globaltimer() - t0;
  if (dt > limit_ns) {
    watchdog_trip(c, MOE_STATUS_WATCHDOG, kind, peer, dt, target, observed);
    return true;
  }
  return false;
}

// Wait until the 64-bit flag (written by another GPU) is >= target. One thread.
__device__ inline bool wait_sys_geq(const Ctx& c, const uint64_t* flag, uint64_t target, int kind, int peer) {
  const uint64_t t0 = globaltimer();
  unsigned ns = 32;
  for (;;) {
    const uint64_t v = ld_acquire_sys_u64(flag);
    if (v >= target) return true;
    if (wait_expired(c, t0, c.p.watchdog_ns, kind, peer, target, v)) return false;
    __nanosleep(ns);
    if (ns < 256) ns <<= 1;
  }
}

// Grid barrier over all blocks of the (cooperative) launch. The arrival
// counter is monotonic across launches (every launch makes the same number of
// barriers with the same grid), so it is never reset. Before arriving, each
// block orders all of its earlier stores, remote ones included, at system
// scope. Returns false after an abort.
// idx numbers the barrier (1..) in the trace.
__device__ inline bool grid_sync(Ctx& c, int idx) {
  block_sync();
  if (threadIdx.x == 0) {
    int ok = 1;
    const uint64_t ta = tracing(c) ? globaltimer() : 0;
    __threadfence_system();
    MoeSched* s = sched_of(c.p);
    const unsigned long long nb = gridDim.x;
    const unsigned long long old = atomicAdd(reinterpret_cast<unsigned long long*>(&s->barrier), 1ull);
    const uint64_t target = (old / nb + 1) * nb;
    const uint64_t t0 = globaltimer();
    for (;;) {
      const uint64_t v = ld_acquire_gpu_u64(&s->barrier);
      if (v >= target) break;
      if (wait_expired(c, t0, c.p.watchdog_ns, MOE_WAIT_BARRIER, -1, target, v)) {
        ok = 0;
        break;
      }
      __nanosleep(20);
    }
    if (tracing(c)) trace_ev(c, MOE_EV_BARRIER, ta, globaltimer(), -1, idx);
    c.sh.ok = ok;
  }
  block_sync();
  return c.sh.ok != 0;
}

// Signal word of this PE in the array at heap offset off on PE pe, set to the
// launch's sequence number. The caller has already made the data visible at
// system scope (__threadfence_system after all of its stores were ordered
// before it). For a P2P peer NVSHMEM's SIGNAL_SET is a volatile store through
// the NVLink mapping; a remote transport would take the proxy path.
__device__ inline void send_signal(const Ctx& c, uint64_t off, int pe) {
  uint64_t* local = reinterpret_cast<uint64_t*>(my_heap(c.p, off)) + c.p.rank;
  __threadfence_system();
  nvshmemx_signal_op(local, c.seq, NVSHMEM_SIGNAL_SET, pe);
}

}  // namespace moe
