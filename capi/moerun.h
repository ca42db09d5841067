/*
 * moerun.h: the C ABI of moerun, a distributed Mixture-of-Experts layer.
 *
 * Build the library (Go 1.26, cgo, Open MPI's development files):
 *
 *     go build -buildmode=c-shared -tags mpi -o build/libmoerun.so ./capi
 *
 * and link a program against it:
 *
 *     mpicc -I capi prog.c -L build -lmoerun -Wl,-rpath,$PWD/build
 *
 * One process per rank, started by mpirun or srun (or by any launcher, with
 * moerun_get_unique_id / moerun_open_with_id). Every call that the comments
 * mark collective must be made by every rank, in the same order.
 *
 * Rules (capi/README.md says more):
 *  - Threads: call the library from one thread. Over MPI it must be the
 *    thread that initialised MPI (the library's first moerun_open does that
 *    unless the program called MPI_Init itself). Each call runs on the
 *    calling thread, locked to it for the call; the library keeps nothing
 *    running between calls.
 *  - MPI: if the program has called MPI_Init or MPI_Init_thread, the library
 *    uses that MPI and never finalizes it; otherwise its first moerun_open
 *    calls MPI_Init_thread(MPI_THREAD_FUNNELED) and moerun_finalize calls
 *    MPI_Finalize. Call moerun_finalize once, at the end.
 *  - Loading: a program that loads the library with dlopen (Python's ctypes)
 *    must use RTLD_GLOBAL, so that Open MPI's plugins find libmpi's symbols
 *    (builds whose plugins do not link libmpi themselves fail otherwise).
 *  - Memory: the library never keeps the caller's pointers after a call
 *    returns (weights are copied), and returns no pointer into its own
 *    memory except moerun_last_error's text.
 *  - Errors: every call returns a moerun_status; on failure
 *    moerun_last_error() says what happened. A forward that failed in flight
 *    leaves the runtime refusing further forwards until it is closed; one
 *    refused before any work (MOERUN_ENOTSUP, a bad argument) does not.
 *  - Environment: moerun_open, moerun_open_with_id and moerun_get_unique_id
 *    read the process's environment as it is when they are called (what the
 *    program set with setenv or Python's os.environ included).
 *  - CUDA context: calls that use the GPU make the runtime's device's primary
 *    context current on the calling thread for their work, and every call
 *    returns with the thread's previous current context (or none) restored.
 *
 * Layouts: row-major float32. Tokens x and outputs [tokens, H]; the gate
 * [H, E]; an expert's W1 [H, I] (swiglu: gate projection), Wu [H, I] (swiglu
 * up projection), W2 [I, H] (down projection), B1 [I], B2 [H] (relu and
 * gelu only). Expert e lives on rank e / (E / ranks); each rank passes its
 * own experts stacked by local index: w1 [E/ranks, H, I] and so on.
 */
#ifndef MOERUN_H
#define MOERUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOERUN_ABI_VERSION 1
#define MOERUN_UNIQUE_ID_SIZE 128

/* Status codes. */
typedef enum moerun_status {
    MOERUN_OK = 0,
    MOERUN_EINVAL = 1,    /* a bad argument: null pointer, unknown handle, bad enum value */
    MOERUN_ENOTSUP = 2,   /* not supported by this backend (device pointers on the CPU backend, bf16
                             forwards on device pointers on the GPU backend); the runtime stays usable */
    MOERUN_EFAILED = 3,   /* the call failed: a config that cannot run, a peer's failure, a timeout */
    MOERUN_ECLOSED = 4,   /* the runtime is closed, or the library finalized */
    MOERUN_EVERIFY = 5,   /* moerun_verify ran and the output is wrong */
    MOERUN_EINTERNAL = 6  /* a bug in moerun: please report it */
} moerun_status;

enum { MOERUN_BACKEND_CPU = 0, MOERUN_BACKEND_GPU = 1 };
enum { MOERUN_FFN_RELU = 0, MOERUN_FFN_GELU = 1, MOERUN_FFN_SWIGLU = 2 };
enum { MOERUN_DTYPE_FP32 = 0, MOERUN_DTYPE_TF32 = 1, MOERUN_DTYPE_BF16 = 2 };

/* A runtime and a layer, by handle (> 0). */
typedef int64_t moerun_runtime;
typedef int64_t moerun_layer;

/* One MoE layer's configuration (DESIGN.md section 1). */
typedef struct moerun_config {
    int32_t hidden;          /* H */
    int32_t ffn_hidden;      /* I */
    int32_t experts;         /* E, a multiple of the number of ranks */
    int32_t topk;            /* k */
    int32_t max_tokens;      /* most tokens one rank gives one forward */
    int32_t ffn;             /* MOERUN_FFN_* */
    int32_t dtype;           /* MOERUN_DTYPE_* */
    int32_t renormalize;     /* nonzero: the top-k weights are renormalised to sum 1 */
    double capacity_factor;  /* 0: dropless */
    uint64_t seed;           /* weights of moerun_add_layer_seed */
} moerun_config;

/* Options of moerun_open; NULL means all defaults. */
typedef struct moerun_options {
    int32_t backend;         /* MOERUN_BACKEND_* */
    int32_t local_rank;      /* moerun_open_with_id: the GPU among the visible ones; -1: $LOCAL_RANK, else 0.
                                moerun_open takes the launcher's local rank */
    int32_t keep_weights;    /* nonzero: keep a host copy of the weights, for moerun_verify */
    int32_t reserved;        /* 0 */
    int64_t timeout_ms;      /* bound on every wait for other ranks, MPI start-up and
                                NVSHMEM's collectives included (past it in those, the
                                process exits 1); 0: 60 s */
    int64_t watchdog_ms;     /* bound on every wait inside the GPU kernel; 0: its default */
} moerun_options;

/* A layer's weights in device memory (CUdeviceptr values), laid out as the
 * host weights of moerun_add_layer; unused ones 0. */
typedef struct moerun_device_weights {
    uint64_t gate, w1, wu, w2, b1, b2;
} moerun_device_weights;

/* Counters of forwards on this rank. */
typedef struct moerun_stats {
    int64_t forwards;
    int64_t tokens;          /* tokens this rank gave them */
    int64_t elapsed_ns;      /* backend-measured time, summed */
    int64_t bytes_put;       /* payload bytes this rank sent to other ranks */
} moerun_stats;

/* What moerun_verify found (DESIGN.md section 1, item 5). */
typedef struct moerun_verification {
    int64_t checked;         /* tokens checked on this rank */
    double rel_err;          /* |out - ref| / |ref|, the largest over ranks */
    int64_t wrong;           /* elements beyond the tolerance, summed over ranks */
    int64_t route_mismatch;  /* tokens routed differently beyond the tie gap, summed over ranks */
    int32_t ok;              /* 1: every rank passed */
    int32_t reserved;
} moerun_verification;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(moerun_config) == 48, "moerun_config is 48 bytes");
_Static_assert(sizeof(moerun_options) == 32, "moerun_options is 32 bytes");
_Static_assert(sizeof(moerun_device_weights) == 48, "moerun_device_weights is 48 bytes");
_Static_assert(sizeof(moerun_stats) == 32, "moerun_stats is 32 bytes");
_Static_assert(sizeof(moerun_verification) == 40, "moerun_verification is 40 bytes");
#endif

#ifndef MOERUN_NO_PROTOTYPES

/* MOERUN_ABI_VERSION of the library. */
int32_t moerun_abi_version(void);

/* The message of the last call that failed; never NULL ("" before any
 * failure). Valid until the next call that fails. */
const char *moerun_last_error(void);

/* Joins the MPI job (initialising MPI unless the program did) and opens a
 * runtime whose buffers fit shape; every layer added must match its hidden,
 * experts, topk, max_tokens and dtype, with ffn_hidden at most its. Collective. */
moerun_status moerun_open(const moerun_options *opts, const moerun_config *shape, moerun_runtime *rt);

/* For jobs started without MPI (torchrun): rank 0 calls this, which starts
 * listening for the other ranks, and hands the id to every rank itself. */
moerun_status moerun_get_unique_id(uint8_t *id /* MOERUN_UNIQUE_ID_SIZE bytes */);

/* Joins the job of id as rank of size ranks (over TCP through rank 0, which
 * must call it in the process that made the id) and opens a runtime as
 * moerun_open does. Collective. */
moerun_status moerun_open_with_id(const uint8_t *id, int32_t rank, int32_t size, const moerun_options *opts,
                                  const moerun_config *shape, moerun_runtime *rt);

/* This process's rank and the number of ranks. */
moerun_status moerun_rank(moerun_runtime rt, int32_t *rank, int32_t *size);

/* The CUDA device ordinal (among the visible devices, as torch.cuda counts
 * them) of the GPU the runtime uses; -1 for the CPU backend. */
moerun_status moerun_device(moerun_runtime rt, int32_t *ordinal);

/* The experts this rank owns in every layer: first, first+1, ..., first+count-1. */
moerun_status moerun_owned_experts(moerun_runtime rt, int32_t *first, int32_t *count);

/* Adds a layer with weights in host memory: gate [H, E] and this rank's
 * experts stacked by local index (w1, w2; wu for swiglu; b1, b2 for relu and
 * gelu; the others NULL). The library copies them. Collective: a bad
 * argument on any rank fails the call on every rank. */
moerun_status moerun_add_layer(moerun_runtime rt, const moerun_config *cfg, const float *gate, const float *w1,
                               const float *wu, const float *w2, const float *b1, const float *b2,
                               moerun_layer *layer);

/* Adds a layer whose weights are generated from cfg->seed (as moerun bench
 * does). Collective. */
moerun_status moerun_add_layer_seed(moerun_runtime rt, const moerun_config *cfg, moerun_layer *layer);

/* Adds a layer whose weights are in device memory. The CPU backend returns
 * MOERUN_ENOTSUP. Collective. */
moerun_status moerun_add_layer_device(moerun_runtime rt, const moerun_config *cfg, const moerun_device_weights *w,
                                      moerun_layer *layer);

/* Runs the layer on this rank's x [tokens, H] into out [tokens, H], host
 * memory, owned by the caller; tokens from 0 to max_tokens, and may differ
 * between ranks. Returns when out holds the result. Collective. */
moerun_status moerun_forward(moerun_layer layer, int32_t tokens, const float *x, float *out);

/* Runs the layer on device pointers, ordered on stream (a CUstream; 0 the
 * default stream): returns once enqueued. x and out are float32 in every
 * dtype (bf16 layers convert x on the device, on stream). The CPU backend
 * returns MOERUN_ENOTSUP; the runtime stays usable after it. Collective. */
moerun_status moerun_forward_device(moerun_layer layer, int32_t tokens, uint64_t x, uint64_t out, uint64_t stream);

/* Copies the last host forward's routing: for each of its tokens the k
 * global expert ids in combine order (topk_idx [tokens, k]) and their
 * combine weights (topk_w [tokens, k]; either may be NULL). tokens must be
 * that forward's. */
moerun_status moerun_routing(moerun_layer layer, int32_t tokens, int32_t *topk_idx, float *topk_w);

/* Checks the layer's last host forward (its x and out) against the float64
 * reference, on every rank: MOERUN_OK if every rank passed, MOERUN_EVERIFY if
 * not (v says how, moerun_last_error what). Layers with host weights need
 * keep_weights; their first check gathers every rank's experts (tests and
 * small layers). Collective. */
moerun_status moerun_verify(moerun_layer layer, int32_t tokens, const float *x, const float *out,
                            moerun_verification *v);

/* This rank's counters: of one layer, or of every layer of rt when layer is 0. */
moerun_status moerun_get_stats(moerun_runtime rt, moerun_layer layer, moerun_stats *st);

/* Closes the runtime and its layers. Collective. */
moerun_status moerun_close(moerun_runtime rt);

/* Closes every runtime and, if the library initialised MPI, finalizes it.
 * Call it once, at the end; nothing works afterwards. Collective. */
moerun_status moerun_finalize(void);

#endif /* MOERUN_NO_PROTOTYPES */

#ifdef __cplusplus
}
#endif

#endif /* MOERUN_H */
