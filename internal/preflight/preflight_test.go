package preflight

import (
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

func TestConfigCount(t *testing.T) {
	o, err := bench.ParseFlags([]string{"--tokens", "1,2,3", "--hidden", "8,16", "--ffn", "relu,swiglu"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if n := ConfigCount(o); n != 12 || n != len(o.Configs(config.FP32)) {
		t.Fatalf("ConfigCount %d, Configs %d, want 12", n, len(o.Configs(config.FP32)))
	}
	if err := CheckConfigCount(o); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("1,", 999) + "1" // 1000 values
	o, err = bench.ParseFlags([]string{"--tokens", long, "--hidden", long, "--ffn-hidden", long, "--experts", long}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if n := ConfigCount(o); n != math.MaxInt32 {
		t.Fatalf("ConfigCount of 1000^4 configs = %d, want it saturated at %d", n, math.MaxInt32)
	}
	err = CheckConfigCount(o)
	if err == nil || !strings.Contains(err.Error(), "2147483647 configs") || !strings.Contains(err.Error(), "at most 10000") {
		t.Fatalf("got %v, want the count and the limit named", err)
	}
}

func TestCheckOutputs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, json, dump string
		rank             int
		want             string // "" for no error
	}{
		{"nothing", "", "", 0, ""},
		{"new json", filepath.Join(dir, "out.json"), "", 0, ""},
		{"existing json", file, "", 0, ""},
		{"json in a missing folder", filepath.Join(dir, "no/such/out.json"), "", 0, "--json " + filepath.Join(dir, "no/such/out.json") + ": cannot write it: no such file or directory"},
		{"json is a folder", dir, "", 0, "--json " + dir + ": cannot write it: is a directory"},
		{"json on another rank", filepath.Join(dir, "no/such/out.json"), "", 1, ""},
		{"dump", "", filepath.Join(dir, "dump"), 3, ""},
		{"dump under a file", "", filepath.Join(file, "dump"), 2, "--dump " + filepath.Join(file, "dump") + ": cannot make the folder: not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckOutputs(tc.json, tc.dump, tc.rank)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "out.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the check left out.json behind (%v)", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("the check changed an existing file: %q", b)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "dump", ".moerun-check-*"))
	if len(left) > 0 {
		t.Errorf("the check left %v behind", left)
	}
}

func TestCheckHostMemory(t *testing.T) {
	c := config.Default() // E 32, H = I = 2048: 16 MiB per expert
	c.MaxTokens, c.Tokens = 64, 64
	perRank := CPUBytes(c, 4, false)
	if experts := uint64(8 * 4 * (2*2048*2048 + 2048 + 2048)); perRank < experts {
		t.Fatalf("CPUBytes %d is below the owned experts' %d bytes", perRank, experts)
	}
	if CPUBytes(c, 4, true) <= perRank {
		t.Fatalf("verification adds nothing")
	}
	if err := CheckHostMemory([]config.Layer{c}, 4, 4, false, 4*perRank, "test"); err != nil {
		t.Fatalf("fits exactly, refused: %v", err)
	}
	err := CheckHostMemory([]config.Layer{c}, 4, 4, false, 4*perRank-1, "MemAvailable")
	if err == nil || !strings.Contains(err.Error(), "per rank") || !strings.Contains(err.Error(), "is available (MemAvailable)") {
		t.Fatalf("got %v, want a refusal naming the need and what is available", err)
	}
	bad := c
	bad.Hidden = 0
	if err := CheckHostMemory([]config.Layer{bad}, 4, 4, false, 0, "test"); err != nil {
		t.Fatalf("an invalid config is bench's to refuse, got %v", err)
	}
	if avail, from, ok := AvailableMemory(); ok && (avail == 0 || from == "") {
		t.Fatalf("AvailableMemory: %d from %q", avail, from)
	}
}

func TestAgree(t *testing.T) {
	for _, tc := range []struct {
		fail []int
		want string
	}{
		{nil, ""},
		{[]int{2}, "rank 2: boom 2"},
		{[]int{1, 3}, "rank 1: boom 1 (and 1 more ranks)"},
	} {
		got := transport.NewLocal(4, 0).Run(func(c transport.Comm) error {
			r := c.Rank()
			var local error
			for _, f := range tc.fail {
				if f == r {
					local = errors.New("boom " + string(rune('0'+r)))
				}
			}
			return Agree(c, local)
		})
		for r, err := range got {
			if (err == nil) != (tc.want == "") || (err != nil && err.Error() != tc.want) {
				t.Errorf("fail %v: rank %d got %v, want %q", tc.fail, r, err, tc.want)
			}
		}
	}
}

func TestCheckSameRun(t *testing.T) {
	base := []string{"--backend", "cpu", "--tokens", "64", "--iters", "2"}
	for _, tc := range []struct {
		rank1   []string // extra flags of rank 1
		backend string   // rank 1's backend
		want    string
	}{
		{nil, "cpu", ""},
		{[]string{"--tokens", "32"}, "cpu", ""}, // token counts may differ
		{[]string{"--verify"}, "cpu", "rank 1 runs verify=true, rank 0 runs verify=false"},
		{[]string{"--iters", "5", "--warmup", "0"}, "cpu", "rank 1 runs iters=5 warmup=0, rank 0 runs iters=2 warmup=5"},
		{[]string{"--tokens", "64,32"}, "cpu", "rank 1 runs 2 --tokens values, rank 0 runs 1"},
		{nil, "gpu", "rank 1 runs backend=gpu, rank 0 runs backend=cpu"},
		{[]string{"--capacity-factor", "1"}, "cpu", "rank 1 runs capacity-factor=1, rank 0 runs capacity-factor=0"},
	} {
		errs := transport.NewLocal(2, 0).Run(func(c transport.Comm) error {
			args, backend := base, "cpu"
			if c.Rank() == 1 {
				args, backend = append(append([]string(nil), base...), tc.rank1...), tc.backend
			}
			o, err := bench.ParseFlags(args, io.Discard)
			if err != nil {
				return err
			}
			return CheckSameRun(c, o, backend)
		})
		for r, err := range errs {
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)) {
				t.Errorf("rank 1 %v %s: rank %d got %v, want %q", tc.rank1, tc.backend, r, err, tc.want)
			}
		}
	}
}
