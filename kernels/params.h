/*
 * params.h: the ONE declaration of what crosses from the Go host to the
 * moerun kernel, shared by the CUDA sources and (through cgo, in a test) by
 * the Go mirror in internal/gpubackend/params.go.
 *
 * Rules (a Go test checks sizeof/offsetof of every field against the Go side):
 *   - plain C, fixed-width types only, explicit padding, no pointers: device
 *     addresses are uint64_t;
 *   - every uint64_t sits at an 8-byte-aligned offset, every struct size is a
 *     multiple of 8;
 *   - change a struct here, then change the Go mirror and MOE_ABI_VERSION.
 */
#ifndef MOERUN_PARAMS_H
#define MOERUN_PARAMS_H

#include <stdint.h>

/* Bumped whenever a struct or constant below changes meaning; the kernel
 * exports it (moerun_abi_version) and the host refuses a cubin that differs. */
#define MOE_ABI_VERSION 1

/* Block shape and tiles. The host needs kThreads (launch), the tile sizes
 * (task counts, row-tile bounds of the heap plan) and the limits. */
#define MOE_THREADS 256          /* threads per block, every role */
#define MOE_TILE_M 64            /* rows of a GEMM tile (tokens) */
#define MOE_TILE_N 64            /* columns of a GEMM tile */
#define MOE_TILE_K 16            /* K step of the GEMM main loop */
#define MOE_MAX_WORLD 64         /* ranks the kernel's tables can hold */
#define MOE_MAX_TOPK 32          /* largest k the gate supports */
#define MOE_GATE_MAX_SPLIT 4     /* largest K split of the gate GEMM */
#define MOE_MAX_EXPERTS 4096     /* largest E (shared-memory prefix table) */
#define MOE_SHAPE_MULTIPLE 64    /* H and I must be multiples of this */

/* Expert FFN kinds (config.FFN). */
#define MOE_FFN_RELU 0
#define MOE_FFN_GELU 1
#define MOE_FFN_SWIGLU 2

/* Precision modes (config.DType). Only FP32 is implemented so far. */
#define MOE_DTYPE_FP32 0
#define MOE_DTYPE_TF32 1
#define MOE_DTYPE_BF16 2

/* Routing modes (config.Route). */
#define MOE_ROUTE_SOFTMAX 0
#define MOE_ROUTE_SKEW 1

/* MoeStatus.code. */
#define MOE_STATUS_OK 0
#define MOE_STATUS_WATCHDOG 1   /* a bounded wait expired */
#define MOE_STATUS_NOT_P2P 2    /* nvshmem_ptr to a peer was NULL */
#define MOE_STATUS_BAD_PARAMS 3 /* the kernel refused its parameters */

/* MoeStatus.kind: what a block was waiting for when the watchdog fired. */
#define MOE_WAIT_NONE 0
#define MOE_WAIT_DISPATCH 1 /* dispatch signal from peer (rows for our experts) */
#define MOE_WAIT_RETURN 2   /* return signal from peer (expert outputs for our tokens) */
#define MOE_WAIT_BARRIER 3  /* in-kernel grid barrier (a block of this grid) */
#define MOE_WAIT_TASK 4     /* processor waiting for work (backstop) */
#define MOE_WAIT_SLOT 5     /* processor waiting for a GEMM1 queue slot */

/* The kernel's only argument, passed by value. */
typedef struct MoeParams {
    /* shapes of this call */
    int32_t tokens;           /* T: this rank's tokens in this call, 0..max_tokens */
    int32_t max_tokens;       /* sized the heap */
    int32_t hidden;           /* H */
    int32_t ffn_hidden;       /* I */
    int32_t experts;          /* E */
    int32_t topk;             /* k */
    int32_t world;            /* W */
    int32_t rank;             /* this PE */
    int32_t experts_per_rank; /* E / W */
    int32_t rows_per_source;  /* max_tokens * min(k, E/W): receive rows per source */
    int32_t capacity;         /* -1 dropless, else C per (this rank, expert) */
    int32_t ffn;              /* MOE_FFN_* */
    int32_t dtype;            /* MOE_DTYPE_* */
    int32_t route;            /* MOE_ROUTE_* */
    int32_t renormalize;      /* 1: top-k weights renormalised to sum 1 */
    int32_t gate_ksplit;      /* K split of the gate GEMM, 1..MOE_GATE_MAX_SPLIT */
    int32_t debug_withhold_peer; /* -1, or the rank that withholds its dispatch signal to rank+1 */
    int32_t max_row_tiles;    /* capacity of rt_desc / tile_done / g1_list */
    int32_t _pad0[2];
    uint64_t watchdog_ns;     /* bound of every spin-wait */

    /* symmetric heap: local address of its base, and byte offsets in it */
    uint64_t heap_base;
    uint64_t off_recv_rows;   /* [W][rows_per_source][H] f32, by source */
    uint64_t off_recv_meta;   /* [W][rows_per_source] i32: return slot t*k+j */
    uint64_t off_recv_counts; /* [W][E/W] i32: rows per (source, local expert) */
    uint64_t off_ret_rows;    /* [max_tokens*k][H] f32: expert outputs, row t*k+j */
    uint64_t off_sig_dispatch;/* [W] u64, by source: launch seq when its rows are in */
    uint64_t off_sig_return;  /* [W] u64, by owner: launch seq when its outputs are in */
    uint64_t off_seq;         /* u64: launches completed on this PE */
    uint64_t off_status;      /* MoeStatus */

    /* plain device memory of this rank */
    uint64_t x;           /* [max_tokens][H] f32 input */
    uint64_t out;         /* [max_tokens][H] f32 output */
    uint64_t logits;      /* [max_tokens][E] f32 */
    uint64_t logits_part; /* [gate_ksplit][max_tokens][E] f32: partial gate sums */
    uint64_t topk_idx;    /* [max_tokens][k] i32 */
    uint64_t topk_w;      /* [max_tokens][k] f32 */
    uint64_t gate_w;      /* [H][E] f32 */
    uint64_t w1;          /* [E/W][H][I]: relu/gelu W1, swiglu Wg */
    uint64_t b1;          /* [E/W][I] (0 for swiglu) */
    uint64_t w2;          /* [E/W][I][H]: relu/gelu W2, swiglu Wd */
    uint64_t b2;          /* [E/W][H] (0 for swiglu) */
    uint64_t wu;          /* [E/W][H][I]: swiglu Wu (0 otherwise) */
    uint64_t inter;       /* [W*rows_per_source][I] f32: GEMM0 output */
    uint64_t route_list;  /* [E][max_tokens] i32: kept pairs t*k+j per expert, token order */
    uint64_t route_count; /* [E] i32: kept pairs per expert */
    uint64_t sched;       /* MoeSched */
    uint64_t rt_desc;     /* [max_row_tiles] MoeRowTile */
    uint64_t tile_done;   /* [max_row_tiles] u32: GEMM0 tiles done per row tile */
    uint64_t g1_list;     /* [max_row_tiles] u32: row tile + 1, in GEMM0 completion order */
} MoeParams;

/* Status block (in the symmetric heap at off_status; the host reads it after
 * every launch). code/abort are sticky: a tripped runtime is never reused. */
typedef struct MoeStatus {
    uint32_t code;       /* MOE_STATUS_* (first writer wins) */
    uint32_t abort;      /* non-zero: every block leaves its waits and exits */
    int32_t rank;        /* the rank that recorded code */
    int32_t kind;        /* MOE_WAIT_* */
    int32_t peer;        /* peer waited for, or -1 */
    int32_t block;       /* block that recorded code */
    uint64_t seq;        /* launch sequence number (1 = first launch) */
    uint64_t elapsed_ns; /* how long the wait lasted */
    uint64_t target;     /* value waited for */
    uint64_t observed;   /* value seen last */
    /* per-launch figures, reset by the kernel at its start */
    uint64_t bytes_put;  /* payload bytes stored to other PEs */
    uint64_t busy_ns;    /* sum over blocks of time in task work */
    uint64_t t_start;    /* %globaltimer at the start of block 0 */
    uint64_t t_end;      /* latest %globaltimer at a block's exit */
    uint64_t tasks;      /* GEMM tasks run */
    uint64_t _pad1;
} MoeStatus;

/* One row tile of received rows: <= MOE_TILE_M rows of one (source, local expert). */
typedef struct MoeRowTile {
    int32_t src;   /* source rank */
    int32_t le;    /* local expert */
    int32_t row0;  /* first row inside the source's receive region */
    int32_t nrows; /* 1..MOE_TILE_M */
} MoeRowTile;

/* Scheduler state in plain device memory, reset by the kernel every launch. */
typedef struct MoeSched {
    uint64_t barrier;   /* grid barrier arrivals: monotonic across launches, never reset */
    uint32_t g0_next;   /* GEMM0 ticket counter */
    uint32_t g1_head;   /* GEMM1 tasks reserved */
    uint32_t g1_tail;   /* GEMM1 queue slots allocated (row tiles whose GEMM0 is complete) */
    uint32_t arr_n;     /* sources whose dispatch has arrived and been decoded */
    int32_t arr_src[MOE_MAX_WORLD];        /* source of the n-th arrival */
    int32_t arr_task0[MOE_MAX_WORLD + 1];  /* first GEMM0 ticket of the n-th arrival */
    int32_t arr_tile0[MOE_MAX_WORLD + 1];  /* first row tile of the n-th arrival */
    int32_t ret_done[MOE_MAX_WORLD];       /* GEMM1 tasks done per source */
    int32_t ret_target[MOE_MAX_WORLD];     /* GEMM1 tasks per source */
} MoeSched;

#endif /* MOERUN_PARAMS_H */
