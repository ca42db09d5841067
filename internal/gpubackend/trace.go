package gpubackend

// The kernel's trace (Options.Trace): with params.trace set, thread 0 of
// every block stamps each of its tasks with %globaltimer (ns) at its start
// and end into the block's own slots of a device buffer (kernels/common.cuh
// trace_ev; kinds MOE_EV_* in kernels/params.h). The buffer holds the last
// forward; TraceEvents reads it back, times relative to the kernel's start on
// this rank (the earliest block entry). A block with more events than its
// slots (symheap Layout.TraceEvents) keeps the first ones and counts the
// rest (TraceDropped). %globaltimer ticks in 32 ns steps on recent drivers,
// in 1 us steps on some: durations below a microsecond are not resolved.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/kernels"
)

// TraceKind is what a traced task was (MOE_EV_*).
type TraceKind int

// The kinds, as the kernel numbers them.
const (
	TraceSetup        TraceKind = kernels.EvSetup        // kernel entry to phase 1 (params, peer mapping, reset)
	TraceGate         TraceKind = kernels.EvGate         // one gate tile: A token tile, B expert tile, Expert = K split
	TraceTopK         TraceKind = kernels.EvTopK         // a block's softmax + top-k: A tokens
	TraceRoute        TraceKind = kernels.EvRoute        // one expert's route scan: A expert, B kept pairs
	TraceDispatch     TraceKind = kernels.EvDispatch     // a block's dispatch: Src 1 copying other owners' rows, 0 the own rows; A rows
	TraceGEMM0        TraceKind = kernels.EvGEMM0        // GEMM0 task: Src source rank (-1: a pooled tile of several), A row tile, B column tile, Expert
	TraceGEMM1        TraceKind = kernels.EvGEMM1        // GEMM1 task: as GEMM0
	TraceCombine      TraceKind = kernels.EvCombine      // a block's combine: A tokens
	TraceBarrier      TraceKind = kernels.EvBarrier      // grid barrier, arrival to release: A barrier number (1..3)
	TraceWaitDispatch TraceKind = kernels.EvWaitDispatch // OS block waiting for a dispatch signal: Src the source that came
	TraceWaitReturn   TraceKind = kernels.EvWaitReturn   // waiting for every return signal before combine
	TraceDecode       TraceKind = kernels.EvDecode       // OS block decoding a source's counts: Src, A row tiles
	TraceWaitTask     TraceKind = kernels.EvWaitTask     // processor waiting >= 1 us for its next task
)

var traceKindNames = [kernels.EvKinds]string{"setup", "gate", "topk", "route", "dispatch", "gemm0", "gemm1",
	"combine", "barrier", "wait_dispatch", "wait_return", "decode", "wait_task"}

func (k TraceKind) String() string {
	if k >= 0 && int(k) < len(traceKindNames) {
		return traceKindNames[k]
	}
	return "kind" + strconv.Itoa(int(k))
}

// TraceEvent is one traced task of one block.
type TraceEvent struct {
	Rank   int
	Block  int
	Kind   TraceKind
	Start  time.Duration // from the kernel's start on this rank
	End    time.Duration
	Src    int // source / peer rank, -1 where none
	A, B   int // per kind (TraceKind's comments), -1 where none
	Expert int // GEMM: global expert id; gate: K split; else -1
}

// Name is the event's name in summaries and traces: the kind, and for a
// barrier its number ("barrier2").
func (e TraceEvent) Name() string {
	if e.Kind == TraceBarrier {
		return "barrier" + strconv.Itoa(e.A)
	}
	return e.Kind.String()
}

// decodeTrace turns the raw per-block slots (grid blocks of perBlock events)
// and counts into events relative to the earliest start; dropped is the
// number of events counted but not stored.
func decodeTrace(rank, perBlock int, raw []kernels.TraceEvent, counts []uint32) (evs []TraceEvent, dropped int) {
	var t0 uint64
	first := true
	for blk, n := range counts {
		stored := min(int(n), perBlock)
		dropped += int(n) - stored
		for i := 0; i < stored; i++ {
			r := raw[blk*perBlock+i]
			if first || r.Start < t0 {
				t0, first = r.Start, false
			}
		}
	}
	rel := func(t uint64) time.Duration {
		if t < t0 {
			return 0
		}
		return time.Duration(t - t0)
	}
	for blk, n := range counts {
		stored := min(int(n), perBlock)
		for i := 0; i < stored; i++ {
			r := raw[blk*perBlock+i]
			evs = append(evs, TraceEvent{Rank: rank, Block: blk, Kind: TraceKind(r.Kind), Start: rel(r.Start), End: rel(r.End),
				Src: int(r.Src), A: int(r.A), B: int(r.B), Expert: int(r.E)})
		}
	}
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].Start != evs[j].Start {
			return evs[i].Start < evs[j].Start
		}
		return evs[i].Block < evs[j].Block
	})
	return evs, dropped
}

// TraceEvents returns the last forward's trace (Options.Trace), sorted by
// start. An error without Options.Trace or before a forward.
func (b *Backend) TraceEvents() ([]TraceEvent, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if b.closed {
		return nil, errors.New("gpu backend is closed")
	}
	if !b.opt.Trace || b.traceBuf == 0 {
		return nil, errors.New("trace: the backend was opened without Options.Trace")
	}
	if !b.haveLast {
		return nil, errors.New("trace: no forward has completed")
	}
	if b.traceCached {
		return b.traceEvs, nil
	}
	if err := b.drv.CtxSetCurrent(b.ctx); err != nil {
		return nil, err
	}
	grid, per := b.info.Grid, b.tracePer // the buffer's blocks: the larger grid (a MOE_WS launch's other blocks count none)
	counts := make([]uint32, grid)
	if err := b.drv.MemcpyDtoH(counts, cuda.DevicePtr(uint64(b.traceBuf)+b.traceEvBytes)); err != nil {
		return nil, fmt.Errorf("read the trace counts: %w", err)
	}
	raw := make([]byte, grid*per*int(kernels.TraceEventSize))
	if err := b.drv.MemcpyDtoH(raw, b.traceBuf); err != nil {
		return nil, fmt.Errorf("read the trace: %w", err)
	}
	evs, dropped := decodeTrace(b.rank, per, kernels.TraceEventsFromBytes(raw), counts)
	b.traceEvs, b.traceDropped, b.traceCached = evs, dropped, true
	return evs, nil
}

// TraceDropped is how many events of the last forward did not fit the
// trace buffer (counted, not stored); valid after TraceEvents.
func (b *Backend) TraceDropped() int { return b.traceDropped }

// PhaseStat summarises one phase (an event name) of a trace.
type PhaseStat struct {
	Name   string
	Count  int           // events
	Blocks int           // distinct blocks
	First  time.Duration // earliest start
	End    time.Duration // latest end, over blocks: when the phase was over
	Busy   time.Duration // sum of durations over blocks
}

// Phases summarises events by name, in the kernel's order (kind, then barrier number).
func Phases(events []TraceEvent) []PhaseStat {
	type key struct {
		kind TraceKind
		a    int
	}
	idx := map[key]int{}
	blocks := map[key]map[int]bool{}
	var out []PhaseStat
	var keys []key
	for _, e := range events {
		k := key{e.Kind, -1}
		if e.Kind == TraceBarrier {
			k.a = e.A
		}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, PhaseStat{Name: e.Name(), First: e.Start})
			keys = append(keys, k)
			blocks[k] = map[int]bool{}
		}
		s := &out[i]
		s.Count++
		s.First = min(s.First, e.Start)
		s.End = max(s.End, e.End)
		s.Busy += e.End - e.Start
		blocks[k][e.Rank<<20|e.Block] = true
	}
	for i, k := range keys {
		out[i].Blocks = len(blocks[k])
	}
	order := func(k key) int {
		// pipeline order: setup, gate, b1, topk, b2, route, b3, dispatch, decode/waits, gemms, combine
		switch k.kind {
		case TraceSetup:
			return 0
		case TraceGate:
			return 10
		case TraceTopK:
			return 20
		case TraceRoute:
			return 30
		case TraceDispatch:
			return 40
		case TraceBarrier:
			return 10*k.a + 5
		case TraceWaitDispatch:
			return 50
		case TraceDecode:
			return 51
		case TraceGEMM0:
			return 60
		case TraceGEMM1:
			return 61
		case TraceWaitTask:
			return 62
		case TraceWaitReturn:
			return 70
		case TraceCombine:
			return 71
		}
		return 100 + int(k.kind)
	}
	perm := make([]int, len(out))
	for i := range perm {
		perm[i] = i
	}
	sort.SliceStable(perm, func(a, b int) bool { return order(keys[perm[a]]) < order(keys[perm[b]]) })
	sorted := make([]PhaseStat, len(out))
	for i, p := range perm {
		sorted[i] = out[p]
	}
	return sorted
}

// PhaseTimes is, for the last forward (Options.Trace), the time from the
// kernel's start to the end of each phase, the latest over blocks, by name
// (setup, gate, barrier1, topk, barrier2, route, barrier3, dispatch,
// wait_dispatch, decode, gemm0, gemm1, wait_task, wait_return, combine) plus "total" (the last event's end). nil when there is no trace.
func (b *Backend) PhaseTimes() map[string]time.Duration {
	evs, err := b.TraceEvents()
	if err != nil || len(evs) == 0 {
		return nil
	}
	m := map[string]time.Duration{}
	var total time.Duration
	for _, p := range Phases(evs) {
		m[p.Name] = p.End
		total = max(total, p.End)
	}
	m["total"] = total
	return m
}

// WriteChromeTrace writes events as Chrome / Perfetto trace JSON
// ({"traceEvents":[...]}, complete events "ph":"X", times in microseconds,
// pid = rank, tid = block, args = the event's ids). rank >= 0 is the pid of
// every event; rank < 0 keeps each event's own Rank (a merged list of
// several ranks' events).
func WriteChromeTrace(w io.Writer, rank int, events []TraceEvent) error {
	bw := bufio.NewWriter(w)
	us := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 3, 64) }
	bw.WriteString(`{"displayTimeUnit":"ns","traceEvents":[`)
	pids := map[int]bool{}
	n := 0
	sep := func() {
		if n > 0 {
			bw.WriteString(",\n")
		} else {
			bw.WriteString("\n")
		}
		n++
	}
	for _, e := range events {
		pid := rank
		if pid < 0 {
			pid = e.Rank
		}
		if !pids[pid] {
			pids[pid] = true
			sep()
			fmt.Fprintf(bw, `{"name":"process_name","ph":"M","pid":%d,"tid":0,"args":{"name":"rank %d"}}`, pid, pid)
		}
		sep()
		fmt.Fprintf(bw, `{"name":%q,"cat":%q,"ph":"X","ts":%s,"dur":%s,"pid":%d,"tid":%d,"args":{`,
			e.Name(), e.Kind.String(), us(e.Start), us(e.End-e.Start), pid, e.Block)
		first := true
		arg := func(k string, v int) {
			if v < 0 {
				return
			}
			if !first {
				bw.WriteString(",")
			}
			first = false
			fmt.Fprintf(bw, `%q:%d`, k, v)
		}
		switch e.Kind {
		case TraceGEMM0, TraceGEMM1:
			arg("src", e.Src)
			arg("row_tile", e.A)
			arg("col_tile", e.B)
			arg("expert", e.Expert)
		case TraceGate:
			arg("token_tile", e.A)
			arg("expert_tile", e.B)
			arg("k_split", e.Expert)
		case TraceRoute:
			arg("expert", e.A)
			arg("kept", e.B)
		case TraceTopK, TraceCombine:
			arg("tokens", e.A)
		case TraceDispatch:
			arg("remote", e.Src) // 1: the block copied other owners' rows
			arg("rows", e.A)
		case TraceWaitDispatch, TraceDecode:
			arg("src", e.Src)
			arg("row_tiles", e.A)
		}
		bw.WriteString("}}")
	}
	bw.WriteString("\n]}\n")
	return bw.Flush()
}

// TaskStats summarises the expert tasks of a trace in one line: for GEMM0
// and GEMM1 the count and the median, mean and 90th percentile of a task's
// duration, and the gap between a block's task and its next one (the
// epilogue's tail is inside the task; the gap is the wait for and handing
// out of the next task). Times in microseconds. "" when there are no tasks.
func TaskStats(events []TraceEvent) string {
	type blockKey struct{ rank, block int }
	durs := map[TraceKind][]float64{}
	byBlock := map[blockKey][]TraceEvent{}
	for _, e := range events {
		if e.Kind != TraceGEMM0 && e.Kind != TraceGEMM1 {
			continue
		}
		durs[e.Kind] = append(durs[e.Kind], float64(e.End-e.Start)/1e3)
		k := blockKey{e.Rank, e.Block}
		byBlock[k] = append(byBlock[k], e)
	}
	if len(byBlock) == 0 {
		return ""
	}
	var gaps []float64
	for _, evs := range byBlock {
		sort.Slice(evs, func(i, j int) bool { return evs[i].Start < evs[j].Start })
		for i := 1; i < len(evs); i++ {
			gaps = append(gaps, float64(evs[i].Start-evs[i-1].End)/1e3)
		}
	}
	stat := func(v []float64) string {
		if len(v) == 0 {
			return "n=0"
		}
		sort.Float64s(v)
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		q := func(f float64) float64 { return v[min(len(v)-1, int(f*float64(len(v))))] }
		return fmt.Sprintf("n=%d p50 %.1f mean %.1f p90 %.1f", len(v), q(0.5), sum/float64(len(v)), q(0.9))
	}
	return fmt.Sprintf("gemm0 %s; gemm1 %s; gap %s (µs, %d blocks)", stat(durs[TraceGEMM0]), stat(durs[TraceGEMM1]), stat(gaps), len(byBlock))
}
