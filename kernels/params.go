// Package kernels holds moerun's persistent MoE kernel: the CUDA sources
// (device code only, built to a cubin by kernels.mk), the cubin itself when
// the binary is built with -tags cubin, and the Go mirror of params.h, the
// one declaration of what crosses from the host to the kernel.
//
// Every struct here mirrors its C twin in params.h field by field (fixed
// width, explicit padding); TestLayoutMatchesParamsH compiles params.h with
// cgo and compares the size and every field offset.
package kernels

import "unsafe"

// Constants shared with params.h (TestConstantsMatchParamsH compares them).
const (
	ABIVersion = 6 // MOE_ABI_VERSION

	Threads  = 256 // MOE_THREADS: threads per block
	TileM    = 64  // MOE_TILE_M: rows (tokens) per fp32 GEMM tile; the smallest row tile of any mode
	TileN    = 64  // MOE_TILE_N: columns per fp32 GEMM tile
	TileK    = 16  // MOE_TILE_K
	TCTileM  = 128 // MOE_TC_TILE_M: rows per tensor-core (tf32, bf16) tile
	TCTileN  = 128 // MOE_TC_TILE_N: B rows (output columns) per tensor-core tile
	TCKBytes = 128 // MOE_TC_K_BYTES: bytes of K per row and pipeline stage
	TCStages = 3   // MOE_TC_STAGES: cp.async pipeline stages
	// PhaseBytes (MOE_PHASE_BYTES) is the dynamic shared memory per block of
	// a tf32/bf16 launch (and of the tile test), the largest: the grid is
	// sized with it. SIMTPhaseBytes (MOE_SIMT_PHASE_BYTES): that of an fp32
	// launch. PhaseAlign (MOE_PHASE_ALIGN): the alignment the kernel gives
	// the tf32/bf16 phase buffer (wgmma's 128-byte swizzle), paid for in
	// PhaseBytes.
	PhaseAlign     = 1024
	PhaseBytes     = TCStages*(TCTileM+TCTileN)*TCKBytes + 1024 + PhaseAlign
	SIMTPhaseBytes = 33792
	MaxWorld       = 64   // MOE_MAX_WORLD
	MaxTopK        = 32   // MOE_MAX_TOPK
	GateMaxSplit   = 16   // MOE_GATE_MAX_SPLIT
	MaxExperts     = 4096 // MOE_MAX_EXPERTS
	ShapeMultiple  = 64   // MOE_SHAPE_MULTIPLE: H and I must be multiples of it

	FFNReLU   = 0 // MOE_FFN_RELU
	FFNGeLU   = 1 // MOE_FFN_GELU
	FFNSwiGLU = 2 // MOE_FFN_SWIGLU

	DTypeFP32 = 0 // MOE_DTYPE_FP32
	DTypeTF32 = 1 // MOE_DTYPE_TF32
	DTypeBF16 = 2 // MOE_DTYPE_BF16

	RouteSoftmax = 0 // MOE_ROUTE_SOFTMAX
	RouteSkew    = 1 // MOE_ROUTE_SKEW

	StatusOK        = 0 // MOE_STATUS_OK
	StatusWatchdog  = 1 // MOE_STATUS_WATCHDOG
	StatusNotP2P    = 2 // MOE_STATUS_NOT_P2P
	StatusBadParams = 3 // MOE_STATUS_BAD_PARAMS

	WaitNone     = 0 // MOE_WAIT_NONE
	WaitDispatch = 1 // MOE_WAIT_DISPATCH
	WaitReturn   = 2 // MOE_WAIT_RETURN
	WaitBarrier  = 3 // MOE_WAIT_BARRIER
	WaitTask     = 4 // MOE_WAIT_TASK
	WaitSlot     = 5 // MOE_WAIT_SLOT

	FlagGateTC      = 1 // MOE_FLAG_GATE_TC: bf16 gate GEMM on tensor cores (three bf16 pieces of the gate weights)
	FlagLocalGather = 2 // MOE_FLAG_LOCAL_GATHER: bf16 GEMM0 reads this rank's own rows from x (no dispatch copy)
	FlagTMA         = 4 // MOE_FLAG_TMA: tf32/bf16 tiles load their stages with TMA from Params.TMap (opt-in: no faster)
	FlagsDefault    = 3 // MOE_FLAGS_DEFAULT

	// Tensor maps in Params.TMap (params.h MOE_TMAP_*): 16 words each.
	TMapWords      = 16                                                      // MOE_TMAP_WORDS
	TMapRecv       = 0                                                       // MOE_TMAP_RECV: received rows [W*rows_per_source][H], box rows TCTileM
	TMapW1         = 1                                                       // MOE_TMAP_W1: W1^T [E/W*I][H], box rows TCTileN (swiglu: TMapSwiGLURows)
	TMapWu         = 2                                                       // MOE_TMAP_WU: Wu^T, as W1
	TMapInter      = 3                                                       // MOE_TMAP_INTER: intermediate [W*rows_per_source][I], box rows TCTileM
	TMapW2         = 4                                                       // MOE_TMAP_W2: W2^T [E/W*H][I], box rows TCTileN
	TMaps          = 5                                                       // MOE_TMAPS
	TMapSwiGLURows = 16                                                      // MOE_TMAP_SWIGLU_ROWS
	TileTMaps      = 3                                                       // MOE_TILE_TMAPS: the tile test's A, B0, B1
	WSThreads      = 384                                                     // MOE_WS_THREADS: threads of a warp-specialised block (GemmBench)
	WSTileN        = 256                                                     // MOE_WS_TILE_N: its tile's output columns
	WSStages       = 4                                                       // MOE_WS_STAGES
	WSSmemBytes    = WSStages*(TCTileM+WSTileN)*TCKBytes + 1024 + PhaseAlign // MOE_WS_SMEM_BYTES
	// WSProducerThreads is the producer warpgroup a MOE_WS build adds to a
	// forward block (kernels/common.cuh MOE_BLOCK_THREADS).
	WSProducerThreads = 128
	// WSMinDim: a MOE_WS build's forward runs its own tiles for bf16
	// relu / gelu forwards that are not pooled and whose H and I are at
	// least this (MOE_WS_MIN_DIM).
	WSMinDim = 128
	// MergeRows: with W >= 2, a tensor-core forward of T tokens pools its
	// sources' rows when T*k <= E*MergeRows (MOE_MERGE_ROWS).
	MergeRows = 128

	GateTCGroup = 32 // MOE_GATE_TC_GROUP: experts per column group of the tensor-core gate
	GateTCRows  = 96 // MOE_GATE_TC_ROWS: rows of gate_t per group (3 pieces x 32)

	EvSetup        = 0  // MOE_EV_SETUP
	EvGate         = 1  // MOE_EV_GATE
	EvTopK         = 2  // MOE_EV_TOPK
	EvRoute        = 3  // MOE_EV_ROUTE
	EvDispatch     = 4  // MOE_EV_DISPATCH
	EvGEMM0        = 5  // MOE_EV_GEMM0
	EvGEMM1        = 6  // MOE_EV_GEMM1
	EvCombine      = 7  // MOE_EV_COMBINE
	EvBarrier      = 8  // MOE_EV_BARRIER
	EvWaitDispatch = 9  // MOE_EV_WAIT_DISPATCH
	EvWaitReturn   = 10 // MOE_EV_WAIT_RETURN
	EvDecode       = 11 // MOE_EV_DECODE
	EvWaitTask     = 12 // MOE_EV_WAIT_TASK
	EvKinds        = 13 // MOE_EV_KINDS
)

// Names of the kernel and of the globals the host reads from the module.
const (
	KernelName        = "moerun_moe"
	TileTestName      = "moerun_tile_test"       // debug entry: one tensor-core tile (TileTest)
	GemmBenchTCName   = "moerun_gemm_bench_tc"   // debug entry: the GEMM phase alone with the forward's tile (GemmBench)
	GemmBenchWSName   = "moerun_gemm_bench_ws"   // debug entry: the GEMM phase alone, warp-specialised tile (GemmBench)
	GemmBenchWideName = "moerun_gemm_bench_wide" // debug entry: the GEMM phase alone, 128 x 256 tile without a producer warpgroup
	ConvertName       = "moerun_tokens_bf16"     // float32 tokens to bf16 on the device (Convert)
	SymABIVersion     = "moerun_abi_version"
	SymParamsSize     = "moerun_params_size"
	SymPhaseBytes     = "moerun_phase_bytes"     // int: the cubin's MOE_PHASE_BYTES (its stage count may differ from TCStages)
	SymBlockThreads   = "moerun_block_threads"   // int: threads of a forward block (Threads, + WSProducerThreads in a MOE_WS build)
	SymNVSHMEMVersion = "moerun_nvshmem_version" // int[3]: major, minor, patch
)

// Params mirrors MoeParams: the kernel's only argument, by value.
type Params struct {
	Tokens            int32  `c:"tokens"`
	MaxTokens         int32  `c:"max_tokens"`
	Hidden            int32  `c:"hidden"`
	FFNHidden         int32  `c:"ffn_hidden"`
	Experts           int32  `c:"experts"`
	TopK              int32  `c:"topk"`
	World             int32  `c:"world"`
	Rank              int32  `c:"rank"`
	ExpertsPerRank    int32  `c:"experts_per_rank"`
	RowsPerSource     int32  `c:"rows_per_source"`
	Capacity          int32  `c:"capacity"`
	FFN               int32  `c:"ffn"`
	DType             int32  `c:"dtype"`
	Route             int32  `c:"route"`
	Renormalize       int32  `c:"renormalize"`
	GateKSplit        int32  `c:"gate_ksplit"`
	DebugWithholdPeer int32  `c:"debug_withhold_peer"`
	MaxRowTiles       int32  `c:"max_row_tiles"`
	TraceCap          int32  `c:"trace_cap"`
	Flags             int32  `c:"flags"`
	WatchdogNs        uint64 `c:"watchdog_ns"`

	HeapBase       uint64 `c:"heap_base"`
	OffRecvRows    uint64 `c:"off_recv_rows"`
	OffRecvMeta    uint64 `c:"off_recv_meta"`
	OffRecvCounts  uint64 `c:"off_recv_counts"`
	OffRetRows     uint64 `c:"off_ret_rows"`
	OffSigDispatch uint64 `c:"off_sig_dispatch"`
	OffSigReturn   uint64 `c:"off_sig_return"`
	OffSeq         uint64 `c:"off_seq"`
	OffStatus      uint64 `c:"off_status"`

	X           uint64                    `c:"x"`
	Out         uint64                    `c:"out"`
	Logits      uint64                    `c:"logits"`
	LogitsPart  uint64                    `c:"logits_part"`
	TopKIdx     uint64                    `c:"topk_idx"`
	TopKW       uint64                    `c:"topk_w"`
	GateW       uint64                    `c:"gate_w"`
	W1          uint64                    `c:"w1"`
	B1          uint64                    `c:"b1"`
	W2          uint64                    `c:"w2"`
	B2          uint64                    `c:"b2"`
	Wu          uint64                    `c:"wu"`
	Inter       uint64                    `c:"inter"`
	RouteList   uint64                    `c:"route_list"`
	RouteCount  uint64                    `c:"route_count"`
	Sched       uint64                    `c:"sched"`
	RTDesc      uint64                    `c:"rt_desc"`
	TileDone    uint64                    `c:"tile_done"`
	G1List      uint64                    `c:"g1_list"`
	GateT       uint64                    `c:"gate_t"`
	Trace       uint64                    `c:"trace"`
	TraceCounts uint64                    `c:"trace_counts"`
	PadTMap     [6]uint64                 `c:"_pad_tmap"`
	TMap        [TMaps * TMapWords]uint64 `c:"tmap"`
}

// Status mirrors MoeStatus, the block the kernel reports through.
type Status struct {
	Code      uint32 `c:"code"`
	Abort     uint32 `c:"abort"`
	Rank      int32  `c:"rank"`
	Kind      int32  `c:"kind"`
	Peer      int32  `c:"peer"`
	Block     int32  `c:"block"`
	Seq       uint64 `c:"seq"`
	ElapsedNs uint64 `c:"elapsed_ns"`
	Target    uint64 `c:"target"`
	Observed  uint64 `c:"observed"`
	BytesPut  uint64 `c:"bytes_put"`
	BusyNs    uint64 `c:"busy_ns"`
	TStart    uint64 `c:"t_start"`
	TEnd      uint64 `c:"t_end"`
	Tasks     uint64 `c:"tasks"`
	Pad1      uint64 `c:"_pad1"`
}

// RowTile mirrors MoeRowTile.
type RowTile struct {
	Src   int32 `c:"src"`
	LE    int32 `c:"le"`
	Row0  int32 `c:"row0"`
	NRows int32 `c:"nrows"`
}

// Sched mirrors MoeSched (the kernel's scheduler state).
type Sched struct {
	Barrier    uint64              `c:"barrier"`
	G0Next     uint32              `c:"g0_next"`
	G1Head     uint32              `c:"g1_head"`
	G1Tail     uint32              `c:"g1_tail"`
	ArrN       uint32              `c:"arr_n"`
	ArrSrc     [MaxWorld]int32     `c:"arr_src"`
	ArrTask0   [MaxWorld + 1]int32 `c:"arr_task0"`
	ArrTile0   [MaxWorld + 1]int32 `c:"arr_tile0"`
	RetDone    [MaxWorld]int32     `c:"ret_done"`
	RetTarget  [MaxWorld]int32     `c:"ret_target"`
	DispLocal  uint32              `c:"disp_local"`
	DispRemote uint32              `c:"disp_remote"`
	DispOwner  [MaxWorld]uint32    `c:"disp_owner"`
}

// TileTest mirrors MoeTileTest, the argument of the debug entry
// moerun_tile_test (one tensor-core tile against a host reference).
type TileTest struct {
	DType   int32                         `c:"dtype"`
	NB      int32                         `c:"nb"`
	MRows   int32                         `c:"mrows"`
	NCols   int32                         `c:"ncols"`
	K       int32                         `c:"k"`
	TMA     int32                         `c:"tma"` // 1: TMA loads through TMap; 0: cp.async
	A       uint64                        `c:"a"`
	B0      uint64                        `c:"b0"`
	B1      uint64                        `c:"b1"`
	Out     uint64                        `c:"out"`
	Status  uint64                        `c:"status"`
	PadTMap [8]uint64                     `c:"_pad_tmap"`
	TMap    [TileTMaps * TMapWords]uint64 `c:"tmap"`
}

// GemmBench mirrors MoeGemmBench, the argument of the GEMM-phase benchmark
// entries moerun_gemm_bench_tc and moerun_gemm_bench_ws.
type GemmBench struct {
	Experts int32                 `c:"experts"`
	Rows    int32                 `c:"rows"` // per expert
	N       int32                 `c:"n"`
	K       int32                 `c:"k"`
	ReLU    int32                 `c:"relu"`
	Sources int32                 `c:"sources"` // task order: <= 1 expert-major, S >= 2 the forward's arrival order of S sources
	C       uint64                `c:"c"`
	Status  uint64                `c:"status"`
	PadTMap [11]uint64            `c:"_pad_tmap"`
	TMap    [2 * TMapWords]uint64 `c:"tmap"` // A, then B
}

// Bytes is g exactly as the GEMM-phase entries read their argument.
func (g *GemmBench) Bytes() []byte {
	b := make([]byte, GemmBenchSize)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(g)), GemmBenchSize))
	return b
}

// Convert mirrors MoeConvert, the argument of moerun_tokens_bf16.
type Convert struct {
	Src uint64 `c:"src"`
	Dst uint64 `c:"dst"`
	N   int64  `c:"n"`
}

// Bytes is c exactly as moerun_tokens_bf16 reads its argument.
func (c *Convert) Bytes() []byte {
	b := make([]byte, ConvertSize)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(c)), ConvertSize))
	return b
}

// TraceEvent mirrors MoeTraceEvent: one traced task of one block.
type TraceEvent struct {
	Start uint64 `c:"start"`
	End   uint64 `c:"end"`
	Kind  int16  `c:"kind"`
	Src   int16  `c:"src"`
	A     int32  `c:"a"`
	B     int32  `c:"b"`
	E     int32  `c:"e"`
}

// TraceEventsFromBytes decodes n events read back from the device.
func TraceEventsFromBytes(b []byte) []TraceEvent {
	n := len(b) / int(TraceEventSize)
	out := make([]TraceEvent, n)
	if n > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), n*int(TraceEventSize)), b)
	}
	return out
}

// Bytes is t exactly as the debug entry reads its argument.
func (t *TileTest) Bytes() []byte {
	b := make([]byte, TileTestSize)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(t)), TileTestSize))
	return b
}

// Sizes of the mirrored structs in bytes.
const (
	ParamsSize     = unsafe.Sizeof(Params{})
	StatusSize     = unsafe.Sizeof(Status{})
	RowTileSize    = unsafe.Sizeof(RowTile{})
	SchedSize      = unsafe.Sizeof(Sched{})
	TileTestSize   = unsafe.Sizeof(TileTest{})
	ConvertSize    = unsafe.Sizeof(Convert{})
	GemmBenchSize  = unsafe.Sizeof(GemmBench{})
	TraceEventSize = unsafe.Sizeof(TraceEvent{})
)

// Bytes is p exactly as the kernel reads its argument (little-endian, the
// layout params.h fixes), for cuda.Driver.LaunchCooperative.
func (p *Params) Bytes() []byte {
	b := make([]byte, ParamsSize)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(p)), ParamsSize))
	return b
}

// StatusFromBytes decodes a status block read back from the device.
func StatusFromBytes(b []byte) Status {
	var s Status
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&s)), StatusSize), b)
	return s
}

// WaitName says in words what a MoeStatus.kind waited for.
func WaitName(kind int32) string {
	switch kind {
	case WaitDispatch:
		return "the dispatch signal"
	case WaitReturn:
		return "the return signal"
	case WaitBarrier:
		return "an in-kernel grid barrier"
	case WaitTask:
		return "work (no task became available)"
	case WaitSlot:
		return "a GEMM1 queue slot"
	}
	return "nothing"
}
