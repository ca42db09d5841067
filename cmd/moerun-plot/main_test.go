package main

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// report writes a bench-style report with one result per (T, E, p50).
func report(t *testing.T, dir, name, backend string, world int, dtype string, pts [][3]float64, extra string) string {
	t.Helper()
	var rs []string
	for _, p := range pts {
		rs = append(rs, `{"config": {"tokens": `+itoa(p[0])+`, "max_tokens": 16384, "hidden": 2048, "ffn_hidden": 2048,
			"experts": `+itoa(p[1])+`, "topk": 2, "ffn": "relu", "dtype": "`+dtype+`", "capacity_factor": 0,
			"renormalize": true, "route": "softmax", "seed": 1},
			"latency_us_p50": `+ftoa(p[2])+`, "latency_us_p99": `+ftoa(p[2]*1.1)+`, "verified": null`+extra+`}`)
	}
	body := `{"version": "v", "backend": "` + backend + `", "world": ` + itoa(float64(world)) +
		`, "card": "NVIDIA H200", "results": [` + strings.Join(rs, ",") + `]}`
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func itoa(v float64) string { return strings.TrimSuffix(ftoa(v), ".0") }
func ftoa(v float64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCollectMergesReportsAndCollections(t *testing.T) {
	dir := t.TempDir()
	m := report(t, dir, "moerun_w2.json", "gpu", 2, "bf16", [][3]float64{{128, 32, 50}, {8192, 32, 400}}, "")
	b := report(t, dir, "baseline_w2.json", "pytorch", 2, "bf16", [][3]float64{{128, 32, 1600}}, `, "host_syncs": 1`)
	// A collection as scripts/sweep.sh writes it.
	sweep := filepath.Join(dir, "sweep.json")
	os.WriteFile(sweep, []byte(`{"sweep": {"card": "x"}, "runs": [
		{"tool": "moerun", "file": "moerun_w4.json", "version": "v", "backend": "gpu", "world": 4, "card": "c",
		 "results": [{"config": {"tokens": 128, "experts": 32, "hidden": 2048, "ffn_hidden": 2048, "topk": 2,
		 "ffn": "relu", "dtype": "bf16"}, "latency_us_p50": 60, "latency_us_p99": 70}]}]}`), 0o644)

	c, err := Collect([]string{m, b, sweep}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Runs) != 3 {
		t.Fatalf("%d runs, want 3", len(c.Runs))
	}
	out := filepath.Join(dir, "merged.out")
	if err := WriteCollection(out, c); err != nil {
		t.Fatal(err)
	}
	// The merged file reads back as the same runs, tools told apart by
	// backend, files named, and keys the plots do not use kept.
	raw, err := LoadRaw([]string{out})
	if err != nil {
		t.Fatal(err)
	}
	runs, err := ParseRuns(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		tool, file string
		world      int
	}{{"moerun", "moerun_w2.json", 2}, {"baseline", "baseline_w2.json", 2}, {"moerun", "moerun_w4.json", 4}}
	for i, w := range want {
		if runs[i].Tool != w.tool || runs[i].File != w.file || runs[i].World != w.world {
			t.Errorf("run %d: tool %q file %q world %d, want %+v", i, runs[i].Tool, runs[i].File, runs[i].World, w)
		}
	}
	if !bytes.Contains(raw[1], []byte(`"host_syncs":1`)) {
		t.Errorf("the baseline's extra key was lost: %s", raw[1])
	}
	if got := len(Records(runs)); got != 4 {
		t.Errorf("%d records, want 4", got)
	}
}

func TestLoadRawFolderSkipsOtherJSONAndNamedFilesMustBeReports(t *testing.T) {
	dir := t.TempDir()
	report(t, dir, "a.json", "gpu", 1, "bf16", [][3]float64{{128, 8, 40}}, "")
	os.WriteFile(filepath.Join(dir, "compare.json"), []byte(`{"card": "x", "rows": []}`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(`not json`), 0o644)
	raw, err := LoadRaw([]string{dir})
	if err != nil || len(raw) != 1 {
		t.Fatalf("folder: %d runs, err %v; want 1 run", len(raw), err)
	}
	if _, err := LoadRaw([]string{filepath.Join(dir, "compare.json")}); err == nil || !strings.Contains(err.Error(), "compare.json") {
		t.Errorf("a named non-report must be an error naming it, got %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"results": [`), 0o644)
	if _, err := LoadRaw([]string{dir}); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("a broken JSON file must be an error naming it, got %v", err)
	}
	if _, err := LoadRaw([]string{filepath.Join(dir, "missing.json")}); err == nil {
		t.Error("a missing file must be an error")
	}
	if _, err := Collect([]string{t.TempDir()}, time.Now()); err == nil {
		t.Error("collecting nothing must be an error")
	}
}

func TestRecordsLaterRunReplacesEarlierAndSkipsUnmeasured(t *testing.T) {
	dir := t.TempDir()
	a := report(t, dir, "a.json", "gpu", 2, "bf16", [][3]float64{{128, 32, 100}, {1024, 32, 0}}, "")
	b := report(t, dir, "b.json", "gpu", 2, "bf16", [][3]float64{{128, 32, 80}}, "")
	raw, err := LoadRaw([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	runs, _ := ParseRuns(raw)
	recs := Records(runs)
	if len(recs) != 1 || recs[0].P50 != 80 {
		t.Fatalf("records %+v, want one point with p50 80", recs)
	}
}

func sweepRecords(t *testing.T) []Record {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for _, w := range []int{1, 2, 4} {
		var m, b [][3]float64
		for _, tk := range []float64{128, 1024, 8192} {
			for _, e := range []float64{8, 32} {
				m = append(m, [3]float64{tk, e, 40 + tk/100*float64(w)})
				b = append(b, [3]float64{tk, e, 1600 + tk/10})
			}
		}
		paths = append(paths,
			report(t, dir, "m"+itoa(float64(w))+".json", "gpu", w, "bf16", m, ""),
			report(t, dir, "b"+itoa(float64(w))+".json", "pytorch", w, "bf16", b, ""),
			report(t, dir, "t"+itoa(float64(w))+".json", "gpu", w, "tf32", m[:1], ""))
	}
	raw, err := LoadRaw(paths)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := ParseRuns(raw)
	if err != nil {
		t.Fatal(err)
	}
	return Records(runs)
}

func TestDefaultsPreferThePapersShape(t *testing.T) {
	s := Defaults(Selection{}, sweepRecords(t))
	want := Selection{DType: "bf16", FFN: "relu", Hidden: 2048, FFNHidden: 2048, TopK: 2, Experts: 32, Tokens: 8192}
	if s != want {
		t.Errorf("defaults %+v, want %+v", s, want)
	}
	s = Defaults(Selection{DType: "tf32", Experts: 8}, sweepRecords(t))
	if s.DType != "tf32" || s.Experts != 8 || s.Tokens != 128 {
		t.Errorf("given values must stay and the rest follow the data: %+v", s)
	}
}

func TestChartsHaveOneLinePerToolAndKey(t *testing.T) {
	recs := sweepRecords(t)
	s := Defaults(Selection{}, recs)
	vt := LatencyVsTokens(recs, s)
	if len(vt.Series) != 6 { // 3 W × 2 tools
		t.Fatalf("latency vs T: %d lines, want 6", len(vt.Series))
	}
	first := vt.Series[0]
	if first.Name != "moerun W=1" || first.Dashed || len(first.Points) != 3 || first.Points[0].X != 128 {
		t.Errorf("first line %+v", first)
	}
	if vt.Series[1].Name != "PyTorch W=1" || !vt.Series[1].Dashed || vt.Series[1].Color != first.Color {
		t.Errorf("the baseline's line for W=1 must follow moerun's, dashed, same colour: %+v", vt.Series[1])
	}
	if got := vt.XTicks; len(got) != 3 || got[2] != 8192 {
		t.Errorf("x ticks %v, want the swept T", got)
	}
	ve := LatencyVsExperts(recs, s)
	if len(ve.Series) != 6 || len(ve.Series[0].Points) != 2 {
		t.Errorf("latency vs E: %d lines", len(ve.Series))
	}
	ws := WeakScaling(recs, s)
	if len(ws.Series) != 6 || ws.Series[0].Name != "moerun T=128" || len(ws.Series[0].Points) != 3 {
		t.Errorf("weak scaling: %d lines, first %+v", len(ws.Series), ws.Series[0])
	}
}

func TestEfficiencyIsLatencyAtTwoOverLatencyAtW(t *testing.T) {
	recs := sweepRecords(t)
	s := Defaults(Selection{}, recs)
	ef := Efficiency(recs, s)
	var m8192 *[]float64
	for _, se := range ef.Series {
		if se.Name == "moerun T=8192" {
			ys := []float64{}
			for _, p := range se.Points {
				ys = append(ys, p.Y)
			}
			m8192 = &ys
		}
	}
	if m8192 == nil {
		t.Fatalf("no moerun T=8192 line in %+v", ef.Series)
	}
	// p50 = 40 + 81.92·W: W=1 122, W=2 203.84, W=4 367.68.
	l := func(w float64) float64 { return 40 + 8192.0/100*w }
	want := []float64{l(2) / l(1), 1, l(2) / l(4)}
	for i, y := range *m8192 {
		if math.Abs(y-want[i]) > 1e-12 {
			t.Errorf("efficiency %v, want %v", *m8192, want)
			break
		}
	}
	// Without a W = 2 point there is no line.
	var no2 []Record
	for _, r := range recs {
		if r.World != 2 {
			no2 = append(no2, r)
		}
	}
	if n := len(Efficiency(no2, s).Series); n != 0 {
		t.Errorf("%d efficiency lines without W = 2 points", n)
	}
}

func TestDrawWritesFourPNGs(t *testing.T) {
	dir := t.TempDir()
	report(t, dir, "m.json", "gpu", 2, "bf16", [][3]float64{{128, 32, 50}, {8192, 32, 400}}, "")
	report(t, dir, "b.json", "pytorch", 2, "bf16", [][3]float64{{128, 32, 1600}, {8192, 32, 2300}}, "")
	out := filepath.Join(dir, "plots")
	var so, se bytes.Buffer
	if code := run([]string{"draw", "-o", out, "-width", "640", "-height", "400", dir}, &so, &se); code != 0 {
		t.Fatalf("draw: exit %d: %s", code, se.String())
	}
	for _, name := range []string{"latency_vs_tokens.png", "latency_vs_experts.png", "weak_scaling.png", "overlap_efficiency.png"} {
		f, err := os.Open(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil || cfg.Width != 640 || cfg.Height != 400 {
			t.Errorf("%s: %+v, %v", name, cfg, err)
		}
	}
	if !strings.Contains(so.String(), "latency_vs_tokens.png: 2 lines, 4 points") {
		t.Errorf("summary: %s", so.String())
	}
}

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	m := report(t, dir, "m.json", "gpu", 1, "bf16", [][3]float64{{128, 8, 40}}, "")
	var so, se bytes.Buffer
	merged := filepath.Join(dir, "all.json")
	if code := run([]string{"collect", "-o", merged, m}, &so, &se); code != 0 {
		t.Fatalf("collect: exit %d: %s", code, se.String())
	}
	if code := run([]string{"draw", "-o", filepath.Join(dir, "p"), merged}, &so, &se); code != 0 {
		t.Fatalf("draw from a collection: exit %d: %s", code, se.String())
	}
	for _, args := range [][]string{nil, {"frobnicate"}, {"collect"}, {"draw"}, {"draw", "-nope", m}} {
		se.Reset()
		if code := run(args, &so, &se); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
	if code := run([]string{"draw", filepath.Join(dir, "missing.json")}, &so, &se); code != 1 {
		t.Errorf("missing input: exit %d, want 1", code)
	}
}
