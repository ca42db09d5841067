package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moerun/moerun/internal/config"
)

// Collection is the merged file that `moerun-plot collect` and
// scripts/sweep.sh write: every job's report as its tool wrote it, with two
// keys added, "tool" (moerun or baseline) and "file" (where it came from).
type Collection struct {
	Sweep map[string]any    `json:"sweep,omitempty"`
	Runs  []json.RawMessage `json:"runs"`
}

// Run is the part of one job's report that the plots read: moerun bench's
// JSON (DESIGN.md section 4b) or scripts/baseline/moe_baseline.py's, which
// uses the same keys.
type Run struct {
	Tool    string   `json:"tool"`
	File    string   `json:"file"`
	Version string   `json:"version"`
	Backend string   `json:"backend"`
	World   int      `json:"world"`
	Card    string   `json:"card"`
	Results []Result `json:"results"`
}

// Result is one config's figures.
type Result struct {
	Config     config.Layer `json:"config"`
	LatencyP50 float64      `json:"latency_us_p50"`
	LatencyP99 float64      `json:"latency_us_p99"`
	Verified   *bool        `json:"verified"`
}

// Tools, as the plots name them.
const (
	ToolMoerun   = "moerun"
	ToolBaseline = "baseline"
)

// toolOf tells which program wrote a report: the baseline says backend
// "pytorch"; moerun says cpu or gpu.
func toolOf(backend string) string {
	if backend == "pytorch" {
		return ToolBaseline
	}
	return ToolMoerun
}

// errNotReport marks a JSON file that is neither a report nor a collection
// (skipped when it was found in a folder, an error when named).
var errNotReport = errors.New("neither a bench report (no \"results\") nor a collection (no \"runs\")")

// LoadRaw reads reports and collections from files and folders (a folder:
// its *.json files, in name order, skipping those that are neither) and
// returns every run as raw JSON with "tool" and "file" set.
func LoadRaw(paths []string) ([]json.RawMessage, error) {
	var out []json.RawMessage
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			runs, err := loadFile(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			out = append(out, runs...)
			continue
		}
		names, err := filepath.Glob(filepath.Join(p, "*.json"))
		if err != nil {
			return nil, err
		}
		sort.Strings(names)
		for _, n := range names {
			runs, err := loadFile(n)
			if errors.Is(err, errNotReport) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", n, err)
			}
			out = append(out, runs...)
		}
	}
	return out, nil
}

func loadFile(path string) ([]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if r, ok := top["runs"]; ok {
		var runs []json.RawMessage
		if err := json.Unmarshal(r, &runs); err != nil {
			return nil, fmt.Errorf("\"runs\" is not an array: %w", err)
		}
		var out []json.RawMessage
		for i, run := range runs {
			tagged, err := tag(run, "")
			if err != nil {
				return nil, fmt.Errorf("run %d: %w", i, err)
			}
			out = append(out, tagged)
		}
		return out, nil
	}
	if _, ok := top["results"]; !ok {
		return nil, errNotReport
	}
	tagged, err := tag(b, filepath.Base(path))
	if err != nil {
		return nil, err
	}
	return []json.RawMessage{tagged}, nil
}

// tag sets "tool" (unless present) and "file" (when file is not empty) on
// one report, keeping every other key as it was.
func tag(report json.RawMessage, file string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(report, &m); err != nil {
		return nil, fmt.Errorf("report is not a JSON object: %w", err)
	}
	if _, ok := m["results"]; !ok {
		return nil, errNotReport
	}
	if _, ok := m["tool"]; !ok {
		var backend string
		if b, ok := m["backend"]; ok {
			if err := json.Unmarshal(b, &backend); err != nil {
				return nil, fmt.Errorf("\"backend\": %w", err)
			}
		}
		m["tool"], _ = json.Marshal(toolOf(backend))
	}
	if file != "" {
		m["file"], _ = json.Marshal(file)
	}
	// Check that the figures the plots read parse.
	var r Run
	if err := json.Unmarshal(mustMarshal(m), &r); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return mustMarshal(m), nil
}

func mustMarshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of RawMessage reach here
	}
	return b
}

// Collect merges the reports and collections at paths into one collection.
func Collect(paths []string, now time.Time) (Collection, error) {
	runs, err := LoadRaw(paths)
	if err != nil {
		return Collection{}, err
	}
	if len(runs) == 0 {
		return Collection{}, fmt.Errorf("no reports in %s", strings.Join(paths, ", "))
	}
	return Collection{
		Sweep: map[string]any{"collected": now.UTC().Format(time.RFC3339), "sources": paths},
		Runs:  runs,
	}, nil
}

// WriteCollection writes c as indented JSON.
func WriteCollection(path string, c Collection) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", " ")
	if err := enc.Encode(c); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// ParseRuns decodes raw runs.
func ParseRuns(raw []json.RawMessage) ([]Run, error) {
	out := make([]Run, 0, len(raw))
	for i, r := range raw {
		var run Run
		if err := json.Unmarshal(r, &run); err != nil {
			return nil, fmt.Errorf("run %d: %w", i, err)
		}
		if run.Tool == "" {
			run.Tool = toolOf(run.Backend)
		}
		out = append(out, run)
	}
	return out, nil
}

// Record is one measured point: a config run by a tool on W GPUs.
type Record struct {
	Tool  string
	World int
	Card  string
	Cfg   config.Layer
	P50   float64
	P99   float64
}

// recordKey identifies a point regardless of the buffer size and seed.
type recordKey struct {
	tool  string
	world int
	cfg   config.Layer
}

// Records flattens runs into points; a point measured twice keeps the
// later run's figures (a re-run replaces an earlier one). Points without a
// positive latency are dropped.
func Records(runs []Run) []Record {
	idx := map[recordKey]int{}
	var out []Record
	for _, run := range runs {
		for _, r := range run.Results {
			if !(r.LatencyP50 > 0) {
				continue
			}
			k := recordKey{run.Tool, run.World, r.Config}
			k.cfg.MaxTokens, k.cfg.Seed = 0, 0
			rec := Record{Tool: run.Tool, World: run.World, Card: run.Card, Cfg: r.Config, P50: r.LatencyP50, P99: r.LatencyP99}
			if i, ok := idx[k]; ok {
				out[i] = rec
				continue
			}
			idx[k] = len(out)
			out = append(out, rec)
		}
	}
	return out
}

// Cards lists the distinct cards of the records, in order of appearance.
func Cards(recs []Record) []string {
	var out []string
	for _, r := range recs {
		if r.Card != "" && !slices.Contains(out, r.Card) {
			out = append(out, r.Card)
		}
	}
	return out
}
