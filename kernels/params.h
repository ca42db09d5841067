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
#define MOE_ABI_VERSION 6

/* Block shape and tiles. The host needs kThreads (launch), the tile sizes
 * (task counts, row-tile bounds of the heap plan) and the limits. */
#define MOE_THREADS 256          /* threads per block, every role */
#define MOE_TILE_M 64            /* fp32 (SIMT) tile: rows (tokens); the smallest row tile */
#define MOE_TILE_N 64            /* fp32 (SIMT) tile: columns */
#define MOE_TILE_K 16            /* fp32 (SIMT) tile: K step of the main loop */
/* Tensor-core tile (tf32, bf16; gemm_tc.cuh): MOE_TC_TILE_M rows x
 * MOE_TC_TILE_N B rows (output columns of all B operands together),
 * MOE_TC_K_BYTES bytes of K per row and pipeline stage (32 tf32 or 64 bf16
 * elements), MOE_TC_STAGES cp.async stages. */
#define MOE_TC_TILE_M 128
#define MOE_TC_TILE_N 128
#define MOE_TC_K_BYTES 128
#ifndef MOE_TC_STAGES
#define MOE_TC_STAGES 3 /* a build may set another (-DMOE_TC_STAGES=N); the cubin exports its phase size */
#endif
/* Dynamic shared memory of every block (the phase buffer that GEMM stages,
 * epilogue staging and prefix tables share). tf32/bf16: the tensor-core
 * stages plus 1 KB (per-row tables and the TMA mbarriers) plus MOE_PHASE_ALIGN (the kernel aligns the
 * buffer's start to it: wgmma reads the stages with the hardware's 128-byte
 * swizzle, whose pattern is fixed by address bits up to 1024); the largest,
 * it sizes the grid. fp32: what
 * the SIMT tiles and the prefix tables (E <= 4096) need, so that fp32 keeps
 * the L1 it had. The host passes the mode's size at launch; the kernel
 * refuses less. */
#define MOE_PHASE_ALIGN 1024
#define MOE_PHASE_BYTES (MOE_TC_STAGES * (MOE_TC_TILE_M + MOE_TC_TILE_N) * MOE_TC_K_BYTES + 1024 + MOE_PHASE_ALIGN)
#define MOE_SIMT_PHASE_BYTES 33792
#define MOE_MAX_WORLD 64         /* ranks the kernel's tables can hold */
#define MOE_MAX_TOPK 32          /* largest k the gate supports */
#define MOE_GATE_MAX_SPLIT 16    /* largest K split of the gate GEMM */
#define MOE_MAX_EXPERTS 4096     /* largest E (shared-memory prefix table) */
#define MOE_SHAPE_MULTIPLE 64    /* H and I must be multiples of this */

/* Expert FFN kinds (config.FFN). */
#define MOE_FFN_RELU 0
#define MOE_FFN_GELU 1
#define MOE_FFN_SWIGLU 2

/* Precision modes (config.DType).
 * FP32: fp32 storage, fp32 FMA (SIMT tiles), weights in the [K][N] layout.
 * TF32: fp32 storage, TF32 tensor cores (mma.sync m16n8k8), fp32 accumulate;
 *       expert weights transposed ([N][K], K contiguous) and rounded to tf32
 *       by the host; token rows rounded to tf32 (cvt.rna) by the dispatch,
 *       the intermediate by the GEMM0 epilogue; returned rows fp32.
 * BF16: bf16 storage of x, received rows, intermediate, expert weights
 *       (transposed as for TF32) and returned rows; bf16 tensor cores
 *       (mma.sync m16n8k16), fp32 accumulate, fp32 gate/softmax/combine.
 * In every mode gate_w, b1, b2, logits, topk_w and out are fp32. */
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

/* MoeParams.flags: switches of the serial phases (the host sets
 * MOE_FLAGS_DEFAULT; the old paths stay for comparison and as fallbacks).
 * GATE_TC: bf16 mode only: the gate GEMM on bf16 tensor cores against the
 *   gate weights split in three bf16 pieces (gate_t), fp32 accumulate: x is
 *   exact in bf16 and every product exact in fp32, so the logits keep fp32
 *   accuracy. Without it (and in fp32/tf32 mode): the fp32 SIMT gate.
 * LOCAL_GATHER: bf16 mode only: rows routed to this rank's own experts are
 *   not copied by the dispatch; GEMM0 reads them from x by token (the same
 *   bytes, so the results are bitwise those of the copy).
 * TMA: tf32/bf16: the tensor-core tiles load their stages with TMA
 *   (cp.async.bulk.tensor, one thread issuing, mbarriers per stage) from the
 *   tensor maps in MoeParams.tmap, which the host encodes; without it every
 *   thread copies with cp.async. Not in the default: measured no faster
 *   (docs/benchmarks.md, "TMA loads"). */
#define MOE_FLAG_GATE_TC 1
#define MOE_FLAG_LOCAL_GATHER 2
#define MOE_FLAG_TMA 4
#define MOE_FLAGS_DEFAULT 3

/* Tensor maps (CUtensorMap, 128 bytes = MOE_TMAP_WORDS u64, 128-byte
 * aligned as cuda.h 13 declares it) in MoeParams.tmap, by index. Each
 * describes a row-major matrix of the storage dtype with K contiguous,
 * SWIZZLE_128B, a box of 128 bytes of K (64 bf16 / 32 fp32) by the rows given:
 *   RECV  received rows [W * rows_per_source][H], box rows MOE_TC_TILE_M;
 *   INTER intermediate [W * rows_per_source][I], box rows MOE_TC_TILE_M;
 *   W1, WU transposed [E/W * I][H], box rows MOE_TC_TILE_N, or 16 for swiglu
 *         (the tile interleaves the two operands by 16 rows);
 *   W2    transposed [E/W * H][I], box rows MOE_TC_TILE_N.
 * A GEMM's maps are consecutive (A, then its B operands): RECV W1 WU for
 * GEMM0, INTER W2 for GEMM1; the kernel passes the tile one address.
 * Gathered tiles keep the cp.async loader (a TMA box of one row is not
 * swizzled by its row): the bf16 LOCAL_GATHER tiles (own rows read from x by
 * token) and the pooled row tiles of small forwards (rows of several
 * sources). */
#define MOE_TMAP_WORDS 16
#define MOE_TMAP_RECV 0
#define MOE_TMAP_W1 1
#define MOE_TMAP_WU 2
#define MOE_TMAP_INTER 3
#define MOE_TMAP_W2 4
#define MOE_TMAPS 5
#define MOE_TMAP_SWIGLU_ROWS 16
/* The tile test's maps: A, B0, B1 (box rows MOE_TC_TILE_M, MOE_TC_TILE_N, and
 * MOE_TMAP_SWIGLU_ROWS for both B operands of nb = 2). */
#define MOE_TILE_TMAPS 3

/* Gate of the GATE_TC path: experts per column group; gate_t holds, per
 * group, MOE_GATE_TC_ROWS = 3 x MOE_GATE_TC_GROUP rows of H bf16 (the three
 * pieces of the group's gate columns, zero past E). */
#define MOE_GATE_TC_GROUP 32
#define MOE_GATE_TC_ROWS 96

/* MoeTraceEvent.kind: what a block did (params.trace != 0 only). */
#define MOE_EV_SETUP 0        /* kernel entry to the start of phase 1 (params, peers, reset) */
#define MOE_EV_GATE 1         /* one gate tile: a = token tile, b = expert tile, e = K split */
#define MOE_EV_TOPK 2         /* the block's softmax/top-k tokens: a = tokens */
#define MOE_EV_ROUTE 3        /* one expert's route scan: a = expert, b = kept pairs */
#define MOE_EV_DISPATCH 4     /* the block's dispatch: src = 1 other owners' rows, 0 own rows; a = rows */
#define MOE_EV_GEMM0 5        /* one GEMM0 task: src, a = row tile, b = column tile, e = expert */
#define MOE_EV_GEMM1 6        /* one GEMM1 task: src, a = row tile, b = column tile, e = expert */
#define MOE_EV_COMBINE 7      /* the block's combine tokens: a = tokens */
#define MOE_EV_BARRIER 8      /* grid barrier, arrival to release: a = barrier number (1..) */
#define MOE_EV_WAIT_DISPATCH 9 /* OS block waiting for a dispatch signal: src = the source that came */
#define MOE_EV_WAIT_RETURN 10  /* waiting for the W return signals before combine */
#define MOE_EV_DECODE 11      /* OS block decoding a source's counts: src, a = row tiles */
#define MOE_EV_WAIT_TASK 12   /* processor waiting >= 1 us for its next task (starved) */
#define MOE_EV_KINDS 13

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
    int32_t trace_cap;        /* trace events per block (trace != 0) */
    int32_t flags;            /* MOE_FLAG_* */
    uint64_t watchdog_ns;     /* bound of every spin-wait */

    /* symmetric heap: local address of its base, and byte offsets in it */
    uint64_t heap_base;
    uint64_t off_recv_rows;   /* [W][rows_per_source][H] storage dtype (f32 / bf16), by source */
    uint64_t off_recv_meta;   /* [W][rows_per_source] i32: return slot t*k+j */
    uint64_t off_recv_counts; /* [W][E/W] i32: rows per (source, local expert) */
    uint64_t off_ret_rows;    /* [max_tokens*k][H] f32 (bf16 in BF16 mode): expert outputs, row t*k+j */
    uint64_t off_sig_dispatch;/* [W] u64, by source: launch seq when its rows are in */
    uint64_t off_sig_return;  /* [W] u64, by owner: launch seq when its outputs are in */
    uint64_t off_seq;         /* u64: launches completed on this PE */
    uint64_t off_status;      /* MoeStatus */

    /* plain device memory of this rank */
    uint64_t x;           /* [max_tokens][H] input, storage dtype (f32 / bf16) */
    uint64_t out;         /* [max_tokens][H] f32 output */
    uint64_t logits;      /* [max_tokens][E] f32 */
    uint64_t logits_part; /* [gate_ksplit][tokens][E] f32: partial gate sums (the host keeps split x tokens within it) */
    uint64_t topk_idx;    /* [max_tokens][k] i32 */
    uint64_t topk_w;      /* [max_tokens][k] f32 */
    uint64_t gate_w;      /* [H][E] f32 (every mode) */
    uint64_t w1;          /* relu/gelu W1, swiglu Wg: FP32 [E/W][H][I]; TF32/BF16 transposed [E/W][I][H] */
    uint64_t b1;          /* [E/W][I] f32 (0 for swiglu) */
    uint64_t w2;          /* relu/gelu W2, swiglu Wd: FP32 [E/W][I][H]; TF32/BF16 transposed [E/W][H][I] */
    uint64_t b2;          /* [E/W][H] f32 (0 for swiglu) */
    uint64_t wu;          /* swiglu Wu (0 otherwise): laid out as w1 */
    uint64_t inter;       /* [W*rows_per_source][I] storage dtype: GEMM0 output */
    uint64_t route_list;  /* [E][max_tokens] i32: kept pairs t*k+j per expert, token order */
    uint64_t route_count; /* [E] i32: kept pairs per expert */
    uint64_t sched;       /* MoeSched */
    uint64_t rt_desc;     /* [max_row_tiles] MoeRowTile */
    uint64_t tile_done;   /* [max_row_tiles] u32: GEMM0 tiles done per row tile */
    uint64_t g1_list;     /* [max_row_tiles] u32: row tile + 1, in GEMM0 completion order */
    uint64_t gate_t;      /* bf16 [ceil(E/32)][96][H]: gate pieces (flags & GATE_TC, bf16), else 0 */
    uint64_t trace;       /* 0: no trace; else [grid][trace_cap] MoeTraceEvent, block-major */
    uint64_t trace_counts;/* [grid] u32: events each block recorded, dropped ones included */
    uint64_t _pad_tmap[6];/* tmap starts 128-byte aligned (the kernel's argument is declared so) */
    uint64_t tmap[MOE_TMAPS * MOE_TMAP_WORDS]; /* flags & TMA, tf32/bf16: CUtensorMap by MOE_TMAP_* */
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

/* One row tile of received rows: <= MOE_TILE_M (fp32) or MOE_TC_TILE_M
 * (tf32, bf16) rows of one (source, local expert). A pooled tile (small
 * tf32/bf16 forwards, expert.cuh pool_tiles) holds the rows of several
 * sources' tiles of one expert: src = -(its segments), row0 = the index in
 * rt_desc of the first of them, which are per-source tiles. */
typedef struct MoeRowTile {
    int32_t src;   /* source rank; pooled: -(segments) */
    int32_t le;    /* local expert */
    int32_t row0;  /* first row inside the source's receive region; pooled: first segment */
    int32_t nrows; /* 1..rows of the mode's row tile */
} MoeRowTile;

/* Scheduler state in plain device memory, reset by the kernel every launch. */
typedef struct MoeSched {
    uint64_t barrier;   /* grid barrier arrivals: monotonic across launches, never reset */
    uint32_t g0_next;   /* GEMM0 ticket counter */
    uint32_t g1_head;   /* GEMM1 tasks reserved */
    uint32_t g1_tail;   /* GEMM1 queue slots allocated (row tiles whose GEMM0 is complete) */
    uint32_t arr_n;     /* sources whose dispatch has arrived and been decoded */
    int32_t arr_src[MOE_MAX_WORLD];        /* source of the n-th arrival */
    /* first GEMM0 ticket / row tile of the n-th arrival; pooled forwards: [W]
     * is the pooled tiles' GEMM0 tickets / pooled tiles */
    int32_t arr_task0[MOE_MAX_WORLD + 1];
    int32_t arr_tile0[MOE_MAX_WORLD + 1];
    int32_t ret_done[MOE_MAX_WORLD];       /* GEMM1 tasks done per source */
    int32_t ret_target[MOE_MAX_WORLD];     /* GEMM1 tasks per source */
    uint32_t disp_local;                   /* own rows' dispatch blocks done (the rank's own signal: the last) */
    uint32_t disp_remote;                  /* pooled tiles: copying blocks done with every owner's rows */
    uint32_t disp_owner[MOE_MAX_WORLD];    /* copying blocks done with owner d's rows (d's signal: the last) */
} MoeSched;

/* Argument of the debug entry moerun_tile_test: ONE block runs one
 * tensor-core tile (the same code as the expert GEMMs) of
 * A [mrows][k] times B^T (rows [ncols][k], K contiguous, the transposed weight
 * layout) and writes the raw fp32 accumulators to out [MOE_TC_TILE_M][128]
 * (all 128 rows, zeros where rows or columns are out of range). For nb = 2
 * (swiglu's paired operands, 64 output columns) columns 0..63 hold A.b0^T,
 * 64..127 hold A.b1^T. A launch with 256 threads and MOE_PHASE_BYTES of
 * dynamic shared memory; status = 1 when done, 2 when it refused its
 * arguments. A grid of several blocks measures the tile's throughput: every
 * block computes the same tile, block 0 writes out and status. */
typedef struct MoeTileTest {
    int32_t dtype;   /* MOE_DTYPE_TF32 or MOE_DTYPE_BF16 */
    int32_t nb;      /* 1, or 2 (paired B operands) */
    int32_t mrows;   /* 1..MOE_TC_TILE_M */
    int32_t ncols;   /* output columns per operand: nb 1: 64 or 128; nb 2: 64 */
    int32_t k;       /* multiple of 64 */
    int32_t tma;     /* 1: load with TMA through tmap; 0: cp.async */
    uint64_t a;      /* [mrows][k] storage dtype */
    uint64_t b0;     /* [ncols][k] storage dtype */
    uint64_t b1;     /* [ncols][k] storage dtype (nb 2), else 0 */
    uint64_t out;    /* [MOE_TC_TILE_M][128] f32 */
    uint64_t status; /* u32 */
    uint64_t _pad_tmap[8]; /* tmap starts 128-byte aligned */
    uint64_t tmap[MOE_TILE_TMAPS * MOE_TMAP_WORDS]; /* tma: maps of A, B0, B1 */
} MoeTileTest;

/* GEMM-phase benchmark (debug entries moerun_gemm_bench_tc, _ws and _wide,
 * kernels/gemm_bench_*.cu): the forward's GEMM0 alone,
 * bf16 in, fp32 accumulate, bf16 out: C[e * rows + r][c] =
 * op(sum_k A[e * rows + r][k] B[e * n + c][k]) over `experts` experts, a
 * persistent grid taking (expert, column tile, row tile) tasks in a fixed
 * order. _TC: the forward's tile (128 x 128, MOE_THREADS threads, the
 * forward's blocks per SM); _WS: one block per SM of MOE_WS_THREADS threads,
 * a producer warpgroup loading MOE_WS_STAGES TMA stages and two consumer
 * warpgroups, tiles of 128 x MOE_WS_TILE_N (gemm_ws.cuh); _WIDE: the same
 * tiles and stages at one block of MOE_THREADS per SM, no producer
 * warpgroup. */
#define MOE_WS_THREADS 384
/* A MOE_WS build's forward runs its 128 x MOE_WS_TILE_N tiles (kernels/expert.cuh
 * ws_tiles) for bf16 relu / gelu forwards that are not pooled (MOE_MERGE_ROWS) and
 * whose H and I are at least MOE_WS_MIN_DIM (two stages of K); the host launches the
 * MOE_WS kernel for exactly those (internal/gpubackend). */
#define MOE_WS_MIN_DIM 128
#define MOE_WS_TILE_N 256
/* Pooled row tiles (kernels/common.cuh pool_sources): with W >= 2, a tensor-core
 * forward of T tokens pools its sources' rows when T * k <= E * MOE_MERGE_ROWS; a
 * build may set another (0: never). */
#ifndef MOE_MERGE_ROWS
#define MOE_MERGE_ROWS 128
#endif
#ifndef MOE_WS_STAGES
#define MOE_WS_STAGES 4 /* the benchmarks' ring; a build may set another (the forward has its own: expert.cuh) */
#endif
/* Stages, then the mbarriers (full[s], empty[s]); plus the alignment shift. */
#define MOE_WS_SMEM_BYTES (MOE_WS_STAGES * (MOE_TC_TILE_M + MOE_WS_TILE_N) * MOE_TC_K_BYTES + 1024 + MOE_PHASE_ALIGN)
typedef struct MoeGemmBench {
    int32_t experts;
    int32_t rows;    /* per expert, a multiple of MOE_TC_TILE_M */
    int32_t n;       /* output columns, a multiple of MOE_WS_TILE_N */
    int32_t k;       /* a multiple of 64 */
    int32_t relu;    /* 1: relu epilogue; 0: none */
    int32_t sources; /* task order: <= 1: expert-major (an expert's column tile, its row tiles fastest);
                        S >= 2: as the forward meets them, each expert's rows from S sources that
                        arrive in turn: source, expert, row tile, column tile fastest (rows / 128 a
                        multiple of S) */
    uint64_t c;      /* [experts * rows][n] bf16 */
    uint64_t status; /* u32: blocks that finished; bit 31 set when a block refused the argument */
    uint64_t _pad_tmap[11]; /* tmap starts 128-byte aligned */
    uint64_t tmap[2 * MOE_TMAP_WORDS]; /* A [experts * rows][k], box MOE_TC_TILE_M rows; B [experts * n][k],
                                          box MOE_TC_TILE_N rows (the forward's weight boxes; the 256-column
                                          entries load two a stage) */
} MoeGemmBench;

/* Argument of moerun_tokens_bf16: converts n float32 tokens at src to bf16
 * (round to nearest even, as the host's conversion) at dst, the layer's token
 * buffer, so that a bf16 forward can take its tokens from device memory. Any
 * grid; MOE_THREADS threads per block. */
typedef struct MoeConvert {
    uint64_t src;    /* [n] f32 */
    uint64_t dst;    /* [n] bf16 */
    int64_t n;
} MoeConvert;

/* One traced task (params.trace): %globaltimer ns at its start and end.
 * Written by thread 0 of the block that ran it, into the block's own
 * trace_cap slots; events past trace_cap are counted, not stored. */
typedef struct MoeTraceEvent {
    uint64_t start;
    uint64_t end;
    int16_t kind;  /* MOE_EV_* */
    int16_t src;   /* source / peer rank, or -1 */
    int32_t a;     /* see MOE_EV_*, or -1 */
    int32_t b;
    int32_t e;
} MoeTraceEvent;

#endif /* MOERUN_PARAMS_H */
