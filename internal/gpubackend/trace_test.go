package gpubackend

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/kernels"
)

func TestDecodeTraceAndPhases(t *testing.T) {
	const per = 4
	base := uint64(1_000_000)
	ev := func(kind int16, s, e uint64, a int32) kernels.TraceEvent {
		return kernels.TraceEvent{Start: base + s, End: base + e, Kind: kind, Src: -1, A: a, B: -1, E: -1}
	}
	raw := make([]kernels.TraceEvent, 2*per)
	raw[0] = ev(kernels.EvSetup, 10, 100, -1)
	raw[1] = ev(kernels.EvGate, 100, 900, 0)
	raw[2] = ev(kernels.EvBarrier, 900, 1000, 1)
	raw[3] = ev(kernels.EvGEMM0, 1000, 5000, 3)
	raw[4] = ev(kernels.EvSetup, 0, 120, -1) // block 1 starts first: time 0
	raw[5] = ev(kernels.EvBarrier, 130, 1010, 1)
	// block 0 counted 6 events (2 dropped), block 1 stored 2
	evs, dropped := decodeTrace(3, per, raw, []uint32{6, 2})
	if dropped != 2 || len(evs) != 6 {
		t.Fatalf("%d events, %d dropped; want 6, 2", len(evs), dropped)
	}
	if evs[0].Block != 1 || evs[0].Start != 0 || evs[0].Rank != 3 {
		t.Errorf("first event %+v: want block 1 at 0", evs[0])
	}
	ps := Phases(evs)
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "setup gate barrier1 gemm0" {
		t.Errorf("phase order %q", got)
	}
	if ps[2].Count != 2 || ps[2].Blocks != 2 || ps[2].End != 1010*time.Nanosecond || ps[2].Busy != (100+880)*time.Nanosecond {
		t.Errorf("barrier1 %+v", ps[2])
	}
	var sb strings.Builder
	if err := WriteChromeTrace(&sb, -1, evs); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		TraceEvents []struct {
			Name string         `json:"name"`
			Ph   string         `json:"ph"`
			Ts   float64        `json:"ts"`
			Dur  float64        `json:"dur"`
			Pid  int            `json:"pid"`
			Tid  int            `json:"tid"`
			Args map[string]any `json:"args"`
		} `json:"traceEvents"`
	}
	if err := json.Unmarshal([]byte(sb.String()), &doc); err != nil {
		t.Fatalf("%v\n%s", err, sb.String())
	}
	if len(doc.TraceEvents) != 7 || doc.TraceEvents[0].Ph != "M" {
		t.Fatalf("%d entries: %s", len(doc.TraceEvents), sb.String())
	}
	last := doc.TraceEvents[6]
	if last.Name != "gemm0" || last.Ph != "X" || last.Pid != 3 || last.Tid != 0 || last.Ts != 1.0 || last.Dur != 4.0 || last.Args["row_tile"] != 3.0 {
		t.Errorf("gemm0 entry %+v", last)
	}
}

// Task durations by kind and the gaps between a block's consecutive tasks,
// whatever the order of the events.
func TestTaskStatsDurationsAndGaps(t *testing.T) {
	us := time.Microsecond
	evs := []TraceEvent{
		{Block: 1, Kind: TraceGEMM1, Start: 30 * us, End: 50 * us},
		{Block: 0, Kind: TraceGEMM0, Start: 0, End: 10 * us},
		{Block: 0, Kind: TraceGEMM0, Start: 12 * us, End: 22 * us},
		{Block: 1, Kind: TraceGEMM0, Start: 0, End: 26 * us},
		{Block: 0, Kind: TraceCombine, Start: 60 * us, End: 70 * us},
	}
	got := TaskStats(evs)
	want := "gemm0 n=3 p50 10.0 mean 15.3 p90 26.0; gemm1 n=1 p50 20.0 mean 20.0 p90 20.0; gap n=2 p50 4.0 mean 3.0 p90 4.0 (µs, 2 blocks)"
	if got != want {
		t.Errorf("TaskStats:\n got %s\nwant %s", got, want)
	}
	if s := TaskStats(evs[4:]); s != "" {
		t.Errorf("no tasks: %q, want empty", s)
	}
}

// scripts/trace-summary.py --sources reads what WriteChromeTrace writes: the
// dispatch role (args.remote), each source's signal, decode and tasks, and
// the own / other rows' blocks over time. Skips without a Python.
func TestTraceSummaryScriptSources(t *testing.T) {
	py := os.Getenv("MOERUN_PYTHON")
	if py == "" {
		var err error
		if py, err = exec.LookPath("python3"); err != nil {
			t.Skip("no python3 on PATH and MOERUN_PYTHON unset: scripts/trace-summary.py not run")
		}
	}
	us := time.Microsecond
	ev := func(block int, kind TraceKind, s, e, src int) TraceEvent {
		return TraceEvent{Rank: 1, Block: block, Kind: kind, Start: time.Duration(s) * us, End: time.Duration(e) * us,
			Src: src, A: 4, B: 0, Expert: 0}
	}
	evs := []TraceEvent{
		ev(0, TraceDispatch, 0, 50, 1), // copying other owners' rows
		ev(1, TraceDispatch, 0, 20, 0), // the own rows
		ev(2, TraceWaitDispatch, 5, 20, 1),
		ev(2, TraceDecode, 20, 22, 1),
		ev(1, TraceGEMM0, 25, 55, 1),
		ev(2, TraceWaitDispatch, 22, 60, 0),
		ev(2, TraceDecode, 60, 61, 0),
		ev(2, TraceGEMM1, 56, 61, 1),
		ev(0, TraceGEMM0, 62, 92, 0),
		ev(1, TraceGEMM0, 62, 92, 0),
		ev(0, TraceGEMM1, 93, 100, 0), // another source's rows: a remote GEMM1 task
		ev(0, TraceGEMM0, 101, 131, 0),
	}
	path := filepath.Join(t.TempDir(), "trace.rank001.json")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteChromeTrace(f, -1, evs); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "../../scripts/trace-summary.py", "--bins", "10", "--sources", path).CombinedOutput()
	if err != nil {
		t.Fatalf("trace-summary.py: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"dispatch, copying other owners' rows: 1 blocks, 0.0 .. 50.0 (p50 end 50.0)",
		"dispatch, own rows: 1 blocks, 0.0 .. 20.0 (p50 end 20.0)",
		"src 0: signal seen 60.0 decoded 61.0 gemm0 n= 3 62.0 .. 131.0 p50 30.0 gemm1 n= 1 93.0 .. 100.0 p50 7.0",
		"src 1 (own): signal seen 20.0 decoded 22.0 gemm0 n= 1 25.0 .. 55.0 p50 30.0 gemm1 n= 1 56.0 .. 61.0 p50 5.0",
		"blocks in a task of own / other sources' rows (µs: own/other): 25:1/0 35:1/0 45:1/0 55:1/0 65:0/2 75:0/2 85:0/2 95:0/0 105:0/1 115:0/1 125:0/1",
		"tasks by the block's task before (µs): after remote gemm1: gemm0 n=1 p50 30.0 p90 30.0; " +
			"after other: gemm1 n=1 p50 7.0 p90 7.0; after other: gemm0 n=1 p50 30.0 p90 30.0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("trace-summary.py output lacks %q:\n%s", want, got)
		}
	}
}
