// Package cparams compiles kernels/params.h with the C compiler (cgo) and
// reports its struct sizes, field offsets and constants, so that a test can
// prove the Go mirror in package kernels matches the C declaration that the
// CUDA kernel is built from. It is used by tests only.
package cparams

/*
#include <stddef.h>
#include "../../params.h"

typedef struct { const char* name; size_t value; } moe_entry;

#define MOE_SIZE(S) { #S, sizeof(S) }
#define MOE_FIELD(S, f) { #S "." #f, offsetof(S, f) }
#define MOE_CONST(c) { #c, (size_t)(c) }

static const moe_entry moe_sizes[] = {
    MOE_SIZE(MoeParams),
    MOE_SIZE(MoeStatus),
    MOE_SIZE(MoeRowTile),
    MOE_SIZE(MoeSched),
    MOE_SIZE(MoeTileTest),
    MOE_SIZE(MoeConvert),
    MOE_SIZE(MoeGemmBench),
    MOE_SIZE(MoeTraceEvent),
};
static const moe_entry moe_fields[] = {
    MOE_FIELD(MoeParams, tokens),
    MOE_FIELD(MoeParams, max_tokens),
    MOE_FIELD(MoeParams, hidden),
    MOE_FIELD(MoeParams, ffn_hidden),
    MOE_FIELD(MoeParams, experts),
    MOE_FIELD(MoeParams, topk),
    MOE_FIELD(MoeParams, world),
    MOE_FIELD(MoeParams, rank),
    MOE_FIELD(MoeParams, experts_per_rank),
    MOE_FIELD(MoeParams, rows_per_source),
    MOE_FIELD(MoeParams, capacity),
    MOE_FIELD(MoeParams, ffn),
    MOE_FIELD(MoeParams, dtype),
    MOE_FIELD(MoeParams, route),
    MOE_FIELD(MoeParams, renormalize),
    MOE_FIELD(MoeParams, gate_ksplit),
    MOE_FIELD(MoeParams, debug_withhold_peer),
    MOE_FIELD(MoeParams, max_row_tiles),
    MOE_FIELD(MoeParams, trace_cap),
    MOE_FIELD(MoeParams, flags),
    MOE_FIELD(MoeParams, watchdog_ns),
    MOE_FIELD(MoeParams, heap_base),
    MOE_FIELD(MoeParams, off_recv_rows),
    MOE_FIELD(MoeParams, off_recv_meta),
    MOE_FIELD(MoeParams, off_recv_counts),
    MOE_FIELD(MoeParams, off_ret_rows),
    MOE_FIELD(MoeParams, off_sig_dispatch),
    MOE_FIELD(MoeParams, off_sig_return),
    MOE_FIELD(MoeParams, off_seq),
    MOE_FIELD(MoeParams, off_status),
    MOE_FIELD(MoeParams, x),
    MOE_FIELD(MoeParams, out),
    MOE_FIELD(MoeParams, logits),
    MOE_FIELD(MoeParams, logits_part),
    MOE_FIELD(MoeParams, topk_idx),
    MOE_FIELD(MoeParams, topk_w),
    MOE_FIELD(MoeParams, gate_w),
    MOE_FIELD(MoeParams, w1),
    MOE_FIELD(MoeParams, b1),
    MOE_FIELD(MoeParams, w2),
    MOE_FIELD(MoeParams, b2),
    MOE_FIELD(MoeParams, wu),
    MOE_FIELD(MoeParams, inter),
    MOE_FIELD(MoeParams, route_list),
    MOE_FIELD(MoeParams, route_count),
    MOE_FIELD(MoeParams, sched),
    MOE_FIELD(MoeParams, rt_desc),
    MOE_FIELD(MoeParams, tile_done),
    MOE_FIELD(MoeParams, g1_list),
    MOE_FIELD(MoeParams, gate_t),
    MOE_FIELD(MoeParams, trace),
    MOE_FIELD(MoeParams, trace_counts),
    MOE_FIELD(MoeParams, _pad_tmap),
    MOE_FIELD(MoeParams, tmap),
    MOE_FIELD(MoeStatus, code),
    MOE_FIELD(MoeStatus, abort),
    MOE_FIELD(MoeStatus, rank),
    MOE_FIELD(MoeStatus, kind),
    MOE_FIELD(MoeStatus, peer),
    MOE_FIELD(MoeStatus, block),
    MOE_FIELD(MoeStatus, seq),
    MOE_FIELD(MoeStatus, elapsed_ns),
    MOE_FIELD(MoeStatus, target),
    MOE_FIELD(MoeStatus, observed),
    MOE_FIELD(MoeStatus, bytes_put),
    MOE_FIELD(MoeStatus, busy_ns),
    MOE_FIELD(MoeStatus, t_start),
    MOE_FIELD(MoeStatus, t_end),
    MOE_FIELD(MoeStatus, tasks),
    MOE_FIELD(MoeStatus, _pad1),
    MOE_FIELD(MoeRowTile, src),
    MOE_FIELD(MoeRowTile, le),
    MOE_FIELD(MoeRowTile, row0),
    MOE_FIELD(MoeRowTile, nrows),
    MOE_FIELD(MoeSched, barrier),
    MOE_FIELD(MoeSched, g0_next),
    MOE_FIELD(MoeSched, g1_head),
    MOE_FIELD(MoeSched, g1_tail),
    MOE_FIELD(MoeSched, arr_n),
    MOE_FIELD(MoeSched, arr_src),
    MOE_FIELD(MoeSched, arr_task0),
    MOE_FIELD(MoeSched, arr_tile0),
    MOE_FIELD(MoeSched, ret_done),
    MOE_FIELD(MoeSched, ret_target),
    MOE_FIELD(MoeSched, disp_local),
    MOE_FIELD(MoeSched, disp_remote),
    MOE_FIELD(MoeSched, disp_owner),
    MOE_FIELD(MoeConvert, src),
    MOE_FIELD(MoeConvert, dst),
    MOE_FIELD(MoeConvert, n),
    MOE_FIELD(MoeTileTest, dtype),
    MOE_FIELD(MoeTileTest, nb),
    MOE_FIELD(MoeTileTest, mrows),
    MOE_FIELD(MoeTileTest, ncols),
    MOE_FIELD(MoeTileTest, k),
    MOE_FIELD(MoeTileTest, tma),
    MOE_FIELD(MoeTileTest, a),
    MOE_FIELD(MoeTileTest, b0),
    MOE_FIELD(MoeTileTest, b1),
    MOE_FIELD(MoeTileTest, out),
    MOE_FIELD(MoeTileTest, status),
    MOE_FIELD(MoeTileTest, _pad_tmap),
    MOE_FIELD(MoeTileTest, tmap),
    MOE_FIELD(MoeGemmBench, experts),
    MOE_FIELD(MoeGemmBench, rows),
    MOE_FIELD(MoeGemmBench, n),
    MOE_FIELD(MoeGemmBench, k),
    MOE_FIELD(MoeGemmBench, relu),
    MOE_FIELD(MoeGemmBench, sources),
    MOE_FIELD(MoeGemmBench, c),
    MOE_FIELD(MoeGemmBench, status),
    MOE_FIELD(MoeGemmBench, _pad_tmap),
    MOE_FIELD(MoeGemmBench, tmap),
    MOE_FIELD(MoeTraceEvent, start),
    MOE_FIELD(MoeTraceEvent, end),
    MOE_FIELD(MoeTraceEvent, kind),
    MOE_FIELD(MoeTraceEvent, src),
    MOE_FIELD(MoeTraceEvent, a),
    MOE_FIELD(MoeTraceEvent, b),
    MOE_FIELD(MoeTraceEvent, e),
};
static const moe_entry moe_consts[] = {
    MOE_CONST(MOE_ABI_VERSION),
    MOE_CONST(MOE_THREADS),
    MOE_CONST(MOE_TILE_M),
    MOE_CONST(MOE_TILE_N),
    MOE_CONST(MOE_TILE_K),
    MOE_CONST(MOE_TC_TILE_M),
    MOE_CONST(MOE_TC_TILE_N),
    MOE_CONST(MOE_TC_K_BYTES),
    MOE_CONST(MOE_TC_STAGES),
    MOE_CONST(MOE_PHASE_ALIGN),
    MOE_CONST(MOE_PHASE_BYTES),
    MOE_CONST(MOE_SIMT_PHASE_BYTES),
    MOE_CONST(MOE_MAX_WORLD),
    MOE_CONST(MOE_MAX_TOPK),
    MOE_CONST(MOE_GATE_MAX_SPLIT),
    MOE_CONST(MOE_MAX_EXPERTS),
    MOE_CONST(MOE_SHAPE_MULTIPLE),
    MOE_CONST(MOE_FFN_RELU),
    MOE_CONST(MOE_FFN_GELU),
    MOE_CONST(MOE_FFN_SWIGLU),
    MOE_CONST(MOE_DTYPE_FP32),
    MOE_CONST(MOE_DTYPE_TF32),
    MOE_CONST(MOE_DTYPE_BF16),
    MOE_CONST(MOE_ROUTE_SOFTMAX),
    MOE_CONST(MOE_ROUTE_SKEW),
    MOE_CONST(MOE_STATUS_OK),
    MOE_CONST(MOE_STATUS_WATCHDOG),
    MOE_CONST(MOE_STATUS_NOT_P2P),
    MOE_CONST(MOE_STATUS_BAD_PARAMS),
    MOE_CONST(MOE_WAIT_NONE),
    MOE_CONST(MOE_WAIT_DISPATCH),
    MOE_CONST(MOE_WAIT_RETURN),
    MOE_CONST(MOE_WAIT_BARRIER),
    MOE_CONST(MOE_WAIT_TASK),
    MOE_CONST(MOE_WAIT_SLOT),
    MOE_CONST(MOE_FLAG_GATE_TC),
    MOE_CONST(MOE_FLAG_LOCAL_GATHER),
    MOE_CONST(MOE_FLAG_TMA),
    MOE_CONST(MOE_FLAGS_DEFAULT),
    MOE_CONST(MOE_TMAP_WORDS),
    MOE_CONST(MOE_TMAP_RECV),
    MOE_CONST(MOE_TMAP_INTER),
    MOE_CONST(MOE_TMAP_W1),
    MOE_CONST(MOE_TMAP_WU),
    MOE_CONST(MOE_TMAP_W2),
    MOE_CONST(MOE_TMAPS),
    MOE_CONST(MOE_TMAP_SWIGLU_ROWS),
    MOE_CONST(MOE_TILE_TMAPS),
    MOE_CONST(MOE_WS_THREADS),
    MOE_CONST(MOE_WS_TILE_N),
    MOE_CONST(MOE_WS_STAGES),
    MOE_CONST(MOE_WS_MIN_DIM),
    MOE_CONST(MOE_MERGE_ROWS),
    MOE_CONST(MOE_WS_SMEM_BYTES),
    MOE_CONST(MOE_GATE_TC_GROUP),
    MOE_CONST(MOE_GATE_TC_ROWS),
    MOE_CONST(MOE_EV_SETUP),
    MOE_CONST(MOE_EV_GATE),
    MOE_CONST(MOE_EV_TOPK),
    MOE_CONST(MOE_EV_ROUTE),
    MOE_CONST(MOE_EV_DISPATCH),
    MOE_CONST(MOE_EV_GEMM0),
    MOE_CONST(MOE_EV_GEMM1),
    MOE_CONST(MOE_EV_COMBINE),
    MOE_CONST(MOE_EV_BARRIER),
    MOE_CONST(MOE_EV_WAIT_DISPATCH),
    MOE_CONST(MOE_EV_WAIT_RETURN),
    MOE_CONST(MOE_EV_DECODE),
    MOE_CONST(MOE_EV_WAIT_TASK),
    MOE_CONST(MOE_EV_KINDS),
};
static const moe_entry* moe_sizes_at(int i) { return &moe_sizes[i]; }
static const moe_entry* moe_fields_at(int i) { return &moe_fields[i]; }
static const moe_entry* moe_consts_at(int i) { return &moe_consts[i]; }
static int moe_nsizes(void) { return (int)(sizeof(moe_sizes) / sizeof(moe_sizes[0])); }
static int moe_nfields(void) { return (int)(sizeof(moe_fields) / sizeof(moe_fields[0])); }
static int moe_nconsts(void) { return (int)(sizeof(moe_consts) / sizeof(moe_consts[0])); }
*/
import "C"

// Available is true: this build compiled params.h.
const Available = true

func table(n int, at func(int) *C.moe_entry) map[string]uint64 {
	m := make(map[string]uint64, n)
	for i := 0; i < n; i++ {
		e := at(i)
		m[C.GoString(e.name)] = uint64(e.value)
	}
	return m
}

// Sizes maps a struct's name (MoeParams, ...) to its sizeof.
func Sizes() map[string]uint64 {
	return table(int(C.moe_nsizes()), func(i int) *C.moe_entry { return C.moe_sizes_at(C.int(i)) })
}

// Offsets maps "Struct.field" to offsetof(Struct, field), for every field
// listed in params.h (the list is generated from params.h; the test checks
// that it still names every field).
func Offsets() map[string]uint64 {
	return table(int(C.moe_nfields()), func(i int) *C.moe_entry { return C.moe_fields_at(C.int(i)) })
}

// Consts maps each MOE_* constant of params.h to its value.
func Consts() map[string]uint64 {
	return table(int(C.moe_nconsts()), func(i int) *C.moe_entry { return C.moe_consts_at(C.int(i)) })
}
