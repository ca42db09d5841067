package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/checkpoint"
	"github.com/moerun/moerun/internal/checkpoint/cktest"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/rank"
)

// driveLocal runs the driver on n in-process ranks and returns rank 0's output.
func driveLocal(t *testing.T, n int, args ...string) string {
	t.Helper()
	o, err := parse(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	outs := make([]bytes.Buffer, n)
	errs := transport.NewLocal(n, 0).Run(func(comm transport.Comm) error {
		return drive(o, func(shape rank.Config) (*rank.Runtime, error) {
			return rank.Open(comm, shape, rank.Options{Backend: o.backend, KeepWeights: true})
		}, comm, &outs[comm.Rank()])
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	return outs[0].String()
}

func TestDriverStackInProcess(t *testing.T) {
	out := driveLocal(t, 4)
	if !strings.Contains(out, "10 steps × 4 layers verified") || strings.Count(out, ": verified") != 10 {
		t.Errorf("output:\n%s", out)
	}
	out = driveLocal(t, 2, "-generated", "-ffn", "relu", "-layers", "2", "-steps", "3")
	if !strings.Contains(out, "3 steps × 2 layers verified") {
		t.Errorf("generated weights:\n%s", out)
	}
}

func TestDriverRunsCheckpointLayers(t *testing.T) {
	dir := t.TempDir()
	_, err := cktest.Write(dir, cktest.Spec{Naming: checkpoint.Qwen, Hidden: 32, FFNHidden: 48, Experts: 8, TopK: 2, Layers: 5, DType: "BF16", Shards: 2, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	out := driveLocal(t, 4, "-weights", dir, "-first-layer", "1", "-steps", "3")
	if !strings.Contains(out, "3 steps × 4 layers verified") || !strings.Contains(out, "swiglu bf16") {
		t.Errorf("output:\n%s", out)
	}
}

func TestTokensChangeBetweenStepsAndRanks(t *testing.T) {
	seen := map[int]bool{}
	for step := range 10 {
		for r := range 4 {
			n := tokensFor(step, r, 48)
			if n < 0 || n > 48 {
				t.Fatalf("step %d rank %d: %d tokens", step, r, n)
			}
			seen[n] = true
		}
	}
	if !seen[0] || len(seen) < 10 {
		t.Errorf("token counts %v: want variety, 0 included", fmt.Sprint(seen))
	}
}
