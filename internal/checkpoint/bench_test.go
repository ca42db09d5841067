package checkpoint_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/checkpoint"
	"github.com/moerun/moerun/internal/checkpoint/cktest"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/transport"
)

// benchWorld runs `moerun bench args` on w in-process ranks with the CPU
// backend (wrapped by wrap when given) and returns the exit codes and the
// ranks' output.
func benchWorld(t *testing.T, w int, args []string, wrap func(*cpubackend.Backend) backend.Backend) ([]int, string) {
	t.Helper()
	o, err := bench.ParseFlags(args, io.Discard)
	if err != nil {
		t.Fatalf("flags %v: %v", args, err)
	}
	codes := make([]int, w)
	outs := make([]bytes.Buffer, w)
	transport.NewLocal(w, 0).Run(func(comm transport.Comm) error {
		r := comm.Rank()
		env := bench.Env{Comm: comm, Log: zerolog.Nop(), Stdout: &outs[r], Stderr: &outs[r], Version: "test",
			Open: func(string) (backend.Backend, error) {
				b := cpubackend.New(comm)
				if wrap != nil {
					return wrap(b), nil
				}
				return b, nil
			}}
		codes[r] = bench.Run(env, o)
		return nil
	})
	var all strings.Builder
	for r := range outs {
		all.WriteString(outs[r].String())
	}
	return codes, all.String()
}

func TestBenchRunsACheckpointLayerVerified(t *testing.T) {
	for _, tc := range []struct {
		name  string
		s     cktest.Spec
		dtype string // "" the checkpoint's
		want  config.DType
	}{
		{"mixtral bf16 sharded", spec(checkpoint.Mixtral, "BF16", 2), "", config.BF16},
		{"qwen f32", spec(checkpoint.Qwen, "F32", 1), "", config.FP32},
		{"qwen bf16 run in fp32", spec(checkpoint.Qwen, "BF16", 1), "fp32", config.FP32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := cktest.Write(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			js := filepath.Join(t.TempDir(), "out.json")
			args := []string{"--backend", "cpu", "--weights", dir, "--layer", "2", "--tokens", "0,7,33",
				"--capacity-factor", "0,1", "--verify", "--iters", "2", "--warmup", "0", "--json", js}
			if tc.dtype != "" {
				args = append(args, "--dtype", tc.dtype)
			}
			codes, out := benchWorld(t, 4, args, nil)
			for r, c := range codes {
				if c != 0 {
					t.Fatalf("rank %d exit %d:\n%s", r, c, out)
				}
			}
			if !strings.Contains(out, "# weights "+dir+"  layer 2") {
				t.Errorf("the header does not name the weights:\n%s", out)
			}
			b, err := os.ReadFile(js)
			if err != nil {
				t.Fatal(err)
			}
			var rep bench.Report
			if err := json.Unmarshal(b, &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Results) != 6 {
				t.Fatalf("%d results, want 6", len(rep.Results))
			}
			for _, row := range rep.Results {
				c := row.Config
				if c.Hidden != 16 || c.FFNHidden != 24 || c.Experts != 8 || c.TopK != 2 || c.FFN != config.FFNSwiGLU || c.DType != tc.want || !c.Renormalize {
					t.Errorf("config from the checkpoint: %v", c)
				}
				if row.Verified == nil || !*row.Verified || *row.Wrong != 0 {
					t.Errorf("%v: not verified", c)
				}
			}
		})
	}
}

// seedWeights ignores the caller's weights and runs generated ones: a
// backend that does not use the checkpoint must fail verification.
type seedWeights struct{ *cpubackend.Backend }

func (s seedWeights) PrepareLayer(id int, cfg config.Layer, _ *backend.Weights) error {
	return s.Backend.PrepareLayer(id, cfg, nil)
}

func TestBenchVerificationUsesTheCheckpointWeights(t *testing.T) {
	dir := t.TempDir()
	if _, err := cktest.Write(dir, spec(checkpoint.Qwen, "F32", 1)); err != nil {
		t.Fatal(err)
	}
	args := []string{"--backend", "cpu", "--weights", dir, "--layer", "0", "--tokens", "16", "--verify", "--iters", "1", "--warmup", "0"}
	codes, out := benchWorld(t, 2, args, func(b *cpubackend.Backend) backend.Backend { return seedWeights{b} })
	for r, c := range codes {
		if c != 1 {
			t.Errorf("rank %d exit %d, want 1 (verification failure):\n%s", r, c, out)
		}
	}
	if !strings.Contains(out, "FAIL") {
		t.Errorf("no FAIL row:\n%s", out)
	}
}

func TestBenchWeightsErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := cktest.Write(dir, spec(checkpoint.Qwen, "F32", 1)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--weights", dir, "--hidden", "64"}, "--hidden: with --weights the checkpoint's config.json gives it"},
		{[]string{"--weights", dir, "--no-renorm"}, "--no-renorm: with --weights"},
		{[]string{"--layer", "3"}, "--layer needs --weights"},
		{[]string{"--weights", dir, "--dump", "d"}, "--dump with --weights is not supported yet"},
	} {
		if _, err := bench.ParseFlags(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--backend", "cpu", "--weights", dir, "--layer", "7", "--tokens", "4"}, "layer 7: the checkpoint has layers 0..2"},
		{[]string{"--backend", "cpu", "--weights", dir, "--dtype", "bf16", "--tokens", "4"}, "--dtype bf16: layer 0 is not stored in bf16"},
		{[]string{"--backend", "cpu", "--weights", filepath.Join(dir, "nope"), "--tokens", "4"}, "no such file"},
	} {
		codes, out := benchWorld(t, 2, tc.args, nil)
		if codes[0] != 2 || codes[1] != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %v, output:\n%s\nwant exit 2 and %q", tc.args, codes, out, tc.want)
		}
	}
	// A backend that holds no caller weights (the GPU backend for now).
	codes, out := benchWorld(t, 2, []string{"--backend", "cpu", "--weights", dir, "--tokens", "4"},
		func(b *cpubackend.Backend) backend.Backend { return struct{ backend.Backend }{b} })
	if codes[0] != 2 || !strings.Contains(out, "does not take caller weights yet") {
		t.Errorf("single-layer backend: exit %v:\n%s", codes, out)
	}
}
