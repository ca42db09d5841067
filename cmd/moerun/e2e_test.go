//go:build mpi

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/jsonschema"
)

// These tests run the real binary as several processes under mpirun: the
// multi-process path that users run, on the CPU backend.

var moerunBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "moerun-e2e")
	if err != nil {
		panic(err)
	}
	moerunBin = filepath.Join(dir, "moerun")
	build := exec.Command("go", "build", "-tags", "mpi", "-o", moerunBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("build moerun for the end-to-end tests: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needMPIRun(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mpirun"); err != nil {
		t.Skip("mpirun not found: install openmpi-bin to run the multi-process tests")
	}
}

// runCmd runs the binary with a bound and returns its combined output, exit code
// and duration.
func runCmd(t *testing.T, limit time.Duration, name string, args ...string) (string, int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "OMPI_MCA_rmaps_base_oversubscribe=1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %v:\n%s", name, args, limit, out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out), code, took
}

// checkJSON validates a bench JSON file against the schema and returns it.
func checkJSON(t *testing.T, path string, wantResults int) map[string]any {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	schema, err := os.ReadFile("../../schemas/bench.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := jsonschema.Validate(schema, doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var rep map[string]any
	if err := json.Unmarshal(doc, &rep); err != nil {
		t.Fatal(err)
	}
	results := rep["results"].([]any)
	if len(results) != wantResults {
		t.Fatalf("%d results, want %d", len(results), wantResults)
	}
	for i, r := range results {
		row := r.(map[string]any)
		if row["wrong"] != float64(0) || row["verified"] != true || row["route_mismatch"] != float64(0) {
			t.Errorf("result %d: wrong=%v verified=%v route_mismatch=%v", i, row["wrong"], row["verified"], row["route_mismatch"])
		}
	}
	return rep
}

var small = []string{"--backend", "cpu", "--tokens", "64", "--hidden", "64", "--ffn-hidden", "128",
	"--experts", "8", "--topk", "2", "--verify", "--iters", "3", "--warmup", "1"}

func TestLaunchFourRanksVerified(t *testing.T) {
	needMPIRun(t)
	for _, tc := range []struct {
		name    string
		extra   []string
		results int
	}{
		{"relu", nil, 1},
		{"swiglu", []string{"--ffn", "swiglu"}, 1},
		{"E4k1", []string{"--experts", "4", "--topk", "1"}, 1},
		{"capacity1", []string{"--capacity-factor", "1"}, 1},
		{"tokens_list", []string{"--tokens", "0,1,37,64"}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := filepath.Join(t.TempDir(), "out.json")
			args := append([]string{"launch", "-n", "4", "--", "bench"}, small...)
			args = append(append(args, tc.extra...), "--json", js)
			out, code, _ := runCmd(t, 120*time.Second, moerunBin, args...)
			if code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			rep := checkJSON(t, js, tc.results)
			if rep["world"] != float64(4) || rep["backend"] != "cpu" {
				t.Errorf("world %v backend %v", rep["world"], rep["backend"])
			}
		})
	}
}

func TestMpirunWithoutLauncher(t *testing.T) {
	needMPIRun(t)
	js := filepath.Join(t.TempDir(), "out.json")
	args := []string{"-np", "2", "--oversubscribe", "--bind-to", "none"}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-run-as-root")
	}
	args = append(append(append(args, moerunBin, "bench"), small...), "--json", js)
	out, code, _ := runCmd(t, 120*time.Second, "mpirun", args...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if rep := checkJSON(t, js, 1); rep["world"] != float64(2) {
		t.Errorf("world %v, want 2", rep["world"])
	}
}

func TestLaunchRefusesExpertsNotDivisibleByRanks(t *testing.T) {
	needMPIRun(t)
	args := append([]string{"launch", "-n", "3", "--", "bench"}, small...)
	out, code, took := runCmd(t, 60*time.Second, moerunBin, args...)
	if code == 0 {
		t.Fatalf("exit 0 with 8 experts on 3 ranks:\n%s", out)
	}
	if took > 10*time.Second {
		t.Errorf("took %v to refuse", took)
	}
	if !strings.Contains(out, "experts 8: must be a multiple of the number of ranks 3") {
		t.Errorf("the message does not name the mismatch:\n%s", out)
	}
}

func TestLaunchDryRunPrintsMpirunCommand(t *testing.T) {
	needMPIRun(t)
	out, code, _ := runCmd(t, 30*time.Second, moerunBin, "launch", "-n", "2", "--dry-run", "--", "bench")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if !strings.Contains(out, "mpirun") || !strings.Contains(out, "-np 2") || !strings.Contains(out, moerunBin+" bench") {
		t.Errorf("dry run printed:\n%s", out)
	}
}

func TestVersionAndUsage(t *testing.T) {
	out, code, _ := runCmd(t, 10*time.Second, moerunBin, "version")
	if code != 0 || !strings.HasPrefix(out, "moerun ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	out, code, _ = runCmd(t, 10*time.Second, moerunBin, "frobnicate")
	if code != 2 || !strings.Contains(out, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, out)
	}
	out, code, _ = runCmd(t, 10*time.Second, moerunBin, "bench", "--experts", "x")
	if code != 2 || !strings.Contains(out, `"x" is not an integer`) {
		t.Errorf("bad flag: exit %d, %q", code, out)
	}
}
