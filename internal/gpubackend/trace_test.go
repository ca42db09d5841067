package gpubackend

import (
	"encoding/json"
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
