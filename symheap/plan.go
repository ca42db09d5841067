// Package symheap plans the memory of moerun's kernel on one rank: every
// buffer and flag of the NVSHMEM symmetric heap (the same layout on every
// rank, so a byte offset names the same object on every peer) and the plain
// device memory the kernel uses on its own GPU. Pure Go: sizes, offsets and
// alignment are computed from the layer's static shape (MaxTokens, not
// Tokens), the world size and the kernel's tile constants, and unit-tested.
//
// The symmetric part is allocated with one nvshmem_malloc of SymTotal (every
// rank the same size), each region at base + Off; the local part with one
// cuMemAlloc of LocalTotal.
//
// Element sizes follow the precision mode (kernels/params.h): tokens, received
// rows, the intermediate and the expert weights are stored in ElemSize bytes
// (4: fp32, tf32; 2: bf16), returned rows in RetElemSize (4, or 2 in bf16);
// out, logits, combine weights, the gate weights and the biases are float32
// in every mode.
package symheap

import (
	"errors"
	"fmt"
	"math"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/kernels"
)

// Align is the alignment of every region (bytes): enough for 16-byte vector
// stores and for 128-byte cache lines, with room to spare.
const Align = 256

// The gate's partial sums (Layout.GatePartRows): room for gatePartSplits
// splits of every token, and GateMaxSplit of up to gatePartSmallTokens.
const (
	gatePartSplits      = 4
	gatePartSmallTokens = 2048
)

// Region is one buffer: its byte offset from its arena's base and its size.
type Region struct {
	Name string
	Off  uint64
	Size uint64
}

// End is the offset one past the region.
func (r Region) End() uint64 { return r.Off + r.Size }

// Layout is the memory of one rank for one static configuration.
type Layout struct {
	World          int
	MaxTokens      int
	Hidden         int
	FFNHidden      int
	Experts        int
	TopK           int
	ExpertsPerRank int
	FFN            config.FFN
	DType          config.DType
	// RowsPerSource is MaxTokens*min(k, E/W): the most rows one source can
	// send to one owner (a token reaches an owner at most min(k, E/W) times).
	RowsPerSource int
	// MaxRowTiles is the capacity of the row-tile tables: twice the row tiles
	// (<= TileM rows of one (source, local expert); TileM is the smallest row
	// tile of any mode) an owner can receive in one forward,
	// 2*W*(ceil(RPS/TileM) + E/W): a pooled small forward keeps its
	// per-source tiles, reordered, after them (kernels/expert.cuh pool_tiles).
	MaxRowTiles int

	// GatePartRows is the capacity of the gate's partial sums (LogitsPart) in
	// rows of E floats: a forward of T tokens whose gate splits K ks ways uses
	// ks*T of them (internal/gpubackend gateSplit keeps within it). Every row
	// four times, and up to gatePartSmallTokens rows GateMaxSplit times: the
	// splits past four serve small forwards only (one wave of gate tiles), so
	// that the buffer does not grow GateMaxSplit-fold with MaxTokens.
	GatePartRows int
	ElemSize     uint64 // bytes of a stored token / weight / intermediate element (4; 2 in bf16)
	RetElemSize  uint64 // bytes of a returned-row element (4; 2 in bf16)

	// Symmetric heap (same offsets on every rank).
	RecvRows    Region // [W][RPS][H] ElemSize, by source
	RecvMeta    Region // [W][RPS] i32, return slot t*k+j per received row
	RecvCounts  Region // [W][E/W] i32, rows per (source, local expert)
	RetRows     Region // [MaxTokens*k][H] RetElemSize, expert outputs, row t*k+j
	SigDispatch Region // [W] u64, by source
	SigReturn   Region // [W] u64, by owner
	Seq         Region // u64, launches completed
	Status      Region // MoeStatus
	SymTotal    uint64

	// Local device memory (one cuMemAlloc).
	X          Region // [MaxTokens][H] ElemSize
	Out        Region // [MaxTokens][H] f32
	Logits     Region // [MaxTokens][E] f32
	LogitsPart Region // [GatePartRows][E] f32: a forward's [split][T][E]
	TopKIdx    Region // [MaxTokens][k] i32
	TopKW      Region // [MaxTokens][k] f32
	RouteList  Region // [E][MaxTokens] i32
	RouteCount Region // [E] i32
	Inter      Region // [W*RPS][I] ElemSize, GEMM0 output
	Sched      Region // MoeSched
	RTDesc     Region // [MaxRowTiles] MoeRowTile
	TileDone   Region // [MaxRowTiles] u32
	G1List     Region // [MaxRowTiles] u32
	GateW      Region // [H][E] f32
	GateT      Region // bf16 only: [ceil(E/32)][96][H] bf16, the gate split in three bf16 pieces (the tensor-core gate)
	W1         Region // ElemSize; relu/gelu W1, swiglu Wg: fp32 [E/W][H][I], tf32/bf16 transposed [E/W][I][H]
	B1         Region // [E/W][I] f32 (relu/gelu only)
	W2         Region // ElemSize; fp32 [E/W][I][H], tf32/bf16 transposed [E/W][H][I]
	B2         Region // [E/W][H] f32 (relu/gelu only)
	Wu         Region // swiglu only; laid out as W1
	LocalTotal uint64
}

// Check says whether the GPU kernel can run cfg on world ranks at all, with
// every reason at once; Plan calls it.
func Check(cfg config.Layer, world int) error {
	if err := cfg.Validate(world); err != nil {
		return err
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if world > kernels.MaxWorld {
		bad("world %d: the GPU kernel supports at most %d ranks", world, kernels.MaxWorld)
	}
	if cfg.Hidden%kernels.ShapeMultiple != 0 {
		bad("hidden %d: the GPU backend needs a multiple of %d", cfg.Hidden, kernels.ShapeMultiple)
	}
	if cfg.FFNHidden%kernels.ShapeMultiple != 0 {
		bad("ffn-hidden %d: the GPU backend needs a multiple of %d", cfg.FFNHidden, kernels.ShapeMultiple)
	}
	if cfg.TopK > kernels.MaxTopK {
		bad("topk %d: the GPU kernel supports at most %d", cfg.TopK, kernels.MaxTopK)
	}
	if cfg.Experts > kernels.MaxExperts {
		bad("experts %d: the GPU kernel supports at most %d", cfg.Experts, kernels.MaxExperts)
	}
	// Row indices (t*k+j, source*RPS+row) are int32 in the kernel.
	if rows := int64(world) * int64(cfg.MaxTokens) * int64(min(cfg.TopK, max(1, cfg.Experts/max(world, 1)))); rows > math.MaxInt32 {
		bad("max-tokens %d: %d receive rows per rank overflow the kernel's 32-bit row indices", cfg.MaxTokens, rows)
	}
	return errors.Join(errs...)
}

// Plan lays out the memory of cfg (its static part; Tokens is ignored) on
// world ranks. Every rank computes the same layout.
func Plan(cfg config.Layer, world int) (Layout, error) {
	if err := Check(cfg, world); err != nil {
		return Layout{}, err
	}
	el := cfg.Experts / world
	p := Layout{
		World: world, MaxTokens: cfg.MaxTokens, Hidden: cfg.Hidden, FFNHidden: cfg.FFNHidden,
		Experts: cfg.Experts, TopK: cfg.TopK, ExpertsPerRank: el, FFN: cfg.FFN, DType: cfg.DType,
		ElemSize: ElemSize(cfg.DType), RetElemSize: ElemSize(cfg.DType),
	}
	p.RowsPerSource = cfg.MaxTokens * min(cfg.TopK, el)
	p.MaxRowTiles = 2 * world * (ceilDiv(p.RowsPerSource, kernels.TileM) + el)
	p.GatePartRows = max(gatePartSplits*cfg.MaxTokens, kernels.GateMaxSplit*min(cfg.MaxTokens, gatePartSmallTokens))

	w, t, h, i, e, k := u(world), u(cfg.MaxTokens), u(cfg.Hidden), u(cfg.FFNHidden), u(cfg.Experts), u(cfg.TopK)
	rps, lel, es := u(p.RowsPerSource), u(el), p.ElemSize

	var sym arena
	p.RecvRows = sym.add("recv_rows", w*rps*h*es)
	p.RecvMeta = sym.add("recv_meta", w*rps*4)
	p.RecvCounts = sym.add("recv_counts", w*lel*4)
	p.RetRows = sym.add("ret_rows", t*k*h*p.RetElemSize)
	p.SigDispatch = sym.add("sig_dispatch", w*8)
	p.SigReturn = sym.add("sig_return", w*8)
	p.Seq = sym.add("seq", 8)
	p.Status = sym.add("status", uint64(kernels.StatusSize))
	p.SymTotal = sym.total()

	var loc arena
	p.X = loc.add("x", t*h*es)
	p.Out = loc.add("out", t*h*4)
	p.Logits = loc.add("logits", t*e*4)
	p.LogitsPart = loc.add("logits_part", u(p.GatePartRows)*e*4)
	p.TopKIdx = loc.add("topk_idx", t*k*4)
	p.TopKW = loc.add("topk_w", t*k*4)
	p.RouteList = loc.add("route_list", e*t*4)
	p.RouteCount = loc.add("route_count", e*4)
	p.Inter = loc.add("inter", w*rps*i*es)
	p.Sched = loc.add("sched", uint64(kernels.SchedSize))
	p.RTDesc = loc.add("rt_desc", u(p.MaxRowTiles)*uint64(kernels.RowTileSize))
	p.TileDone = loc.add("tile_done", u(p.MaxRowTiles)*4)
	p.G1List = loc.add("g1_list", u(p.MaxRowTiles)*4)
	p.GateW = loc.add("gate_w", h*e*4)
	if cfg.DType == config.BF16 {
		groups := u(ceilDiv(cfg.Experts, kernels.GateTCGroup))
		p.GateT = loc.add("gate_t", groups*kernels.GateTCRows*h*2)
	}
	p.W1 = loc.add("w1", lel*h*i*es)
	p.W2 = loc.add("w2", lel*i*h*es)
	if cfg.FFN == config.FFNSwiGLU {
		p.Wu = loc.add("wu", lel*h*i*es)
	} else {
		p.B1 = loc.add("b1", lel*i*4)
		p.B2 = loc.add("b2", lel*h*4)
	}
	p.LocalTotal = loc.total()
	return p, nil
}

// ElemSize is the bytes of a stored token / weight element of dtype d.
func ElemSize(d config.DType) uint64 {
	if d == config.BF16 {
		return 2
	}
	return 4
}

// SymRegions lists the symmetric regions in address order.
func (p Layout) SymRegions() []Region {
	return []Region{p.RecvRows, p.RecvMeta, p.RecvCounts, p.RetRows, p.SigDispatch, p.SigReturn, p.Seq, p.Status}
}

// LocalRegions lists the local regions that exist (size > 0 or planned), in address order.
func (p Layout) LocalRegions() []Region {
	all := []Region{p.X, p.Out, p.Logits, p.LogitsPart, p.TopKIdx, p.TopKW, p.RouteList, p.RouteCount,
		p.Inter, p.Sched, p.RTDesc, p.TileDone, p.G1List, p.GateW, p.GateT, p.W1, p.W2, p.Wu, p.B1, p.B2}
	out := all[:0:0]
	for _, r := range all {
		if r.Name != "" {
			out = append(out, r)
		}
	}
	return out
}

// Addr is base + r.Off, or 0 for a region that is not planned (Name empty).
func Addr(base uint64, r Region) uint64 {
	if r.Name == "" {
		return 0
	}
	return base + r.Off
}

// String is a one-line summary for logs.
func (p Layout) String() string {
	return fmt.Sprintf("symmetric %s (recv %s, return %s), local %s (intermediate %s, weights %s)",
		Bytes(p.SymTotal), Bytes(p.RecvRows.Size), Bytes(p.RetRows.Size), Bytes(p.LocalTotal),
		Bytes(p.Inter.Size), Bytes(p.GateW.Size+p.GateT.Size+p.W1.Size+p.W2.Size+p.Wu.Size+p.B1.Size+p.B2.Size))
}

// Bytes formats a byte count with a binary unit.
func Bytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

type arena struct{ next uint64 }

func (a *arena) add(name string, size uint64) Region {
	r := Region{Name: name, Off: a.next, Size: size}
	a.next = alignUp(a.next+size, Align)
	return r
}

func (a *arena) total() uint64 { return max(a.next, Align) }

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func u(n int) uint64 { return uint64(n) }

// TraceEvents is the capacity of the kernel's trace buffer for a forward of
// this layout on a grid of grid blocks, per block: twice a block's fair share
// of the most tasks a forward can have (gate tiles, route scans, GEMM tasks of
// every row tile the plan allows) plus room for the per-block events
// (setup, top-k, dispatch, barriers, waits, combine), at least 256 and at
// most 8192. A forward with more events on a block stores the first
// perBlock and counts the rest (TraceBytes).
func (p Layout) TraceEvents(grid int) (perBlock int) {
	grid = max(grid, 1)
	e, h, t := p.Experts, p.Hidden, p.MaxTokens
	gate := ceilDiv(t, kernels.TileM) * ceilDiv(e, kernels.TileN) * kernels.GateMaxSplit
	cols := ceilDiv(p.FFNHidden, kernels.TileN) + ceilDiv(h, kernels.TileN) // the narrowest (fp32) column tiles
	tasks := gate + e + p.MaxRowTiles/2*cols                                // half the capacity: the row tiles themselves
	perBlock = 2*ceilDiv(tasks, grid) + 64
	return min(max(perBlock, 256), 8192)
}

// TraceBytes is the device memory of the trace buffer: grid*perBlock events
// of kernels.TraceEventSize bytes, then grid u32 counts (aligned).
func TraceBytes(grid, perBlock int) (events, total uint64) {
	events = alignUp(u(grid)*u(perBlock)*uint64(kernels.TraceEventSize), Align)
	return events, events + alignUp(u(grid)*4, Align)
}
