package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/jsonschema"
	"github.com/moerun/moerun/internal/transport"
)

// runWorld runs the benchmark on w in-process ranks and returns the exit
// codes and rank 0's table.
func runWorld(t *testing.T, w int, args []string, wrap func(backend.Backend, transport.Comm) backend.Backend) ([]int, string) {
	t.Helper()
	o, err := ParseFlags(args, io.Discard)
	if err != nil {
		t.Fatalf("flags %v: %v", args, err)
	}
	codes := make([]int, w)
	outs := make([]bytes.Buffer, w)
	transport.NewLocal(w, 0).Run(func(comm transport.Comm) error {
		r := comm.Rank()
		env := Env{Comm: comm, Log: zerolog.Nop(), Stdout: &outs[r], Stderr: &outs[r], Version: "test",
			Open: func(string) (backend.Backend, error) {
				var b backend.Backend = cpubackend.New(comm)
				if wrap != nil {
					b = wrap(b, comm)
				}
				return b, nil
			}}
		codes[r] = Run(env, o)
		return nil
	})
	return codes, outs[0].String()
}

func TestBenchVerifiesAndWritesSchemaValidJSON(t *testing.T) {
	dir := t.TempDir()
	js := filepath.Join(dir, "out.json")
	codes, table := runWorld(t, 4, []string{"--backend", "cpu", "--tokens", "0,1,37", "--hidden", "16",
		"--ffn-hidden", "32", "--experts", "8", "--topk", "2", "--ffn", "relu,swiglu", "--capacity-factor", "0,1",
		"--iters", "2", "--warmup", "1", "--verify", "--json", js}, nil)
	for r, c := range codes {
		if c != 0 {
			t.Fatalf("rank %d exited %d:\n%s", r, c, table)
		}
	}
	doc, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile("../../schemas/bench.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := jsonschema.Validate(schema, doc); err != nil {
		t.Fatalf("bench JSON does not match the schema: %v\n%s", err, doc)
	}
	var rep Report
	if err := json.Unmarshal(doc, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 12 || rep.World != 4 || rep.Backend != "cpu" {
		t.Fatalf("report: %d results, world %d, backend %s", len(rep.Results), rep.World, rep.Backend)
	}
	for _, r := range rep.Results {
		if r.Verified == nil || !*r.Verified || *r.Wrong != 0 {
			t.Errorf("config %v not verified: %+v", r.Config, r)
		}
	}
	if !strings.Contains(table, "12 configs, 12 verified, 0 failed: OK") {
		t.Errorf("summary line missing:\n%s", table)
	}
}

// corrupt is a backend whose output is off on one rank.
type corrupt struct {
	backend.Backend
	rank int
	comm transport.Comm
}

func (c corrupt) Result() (*backend.Result, error) {
	r, err := c.Backend.Result()
	if err == nil && c.comm.Rank() == c.rank && len(r.Out) > 3 {
		r.Out[3] += 1
	}
	return r, err
}

func TestBenchExitsOneWhenVerificationFails(t *testing.T) {
	codes, table := runWorld(t, 2, []string{"--backend", "cpu", "--tokens", "8", "--hidden", "16",
		"--ffn-hidden", "16", "--experts", "4", "--iters", "1", "--warmup", "0", "--verify"},
		func(b backend.Backend, comm transport.Comm) backend.Backend {
			return corrupt{Backend: b, rank: 1, comm: comm}
		})
	for r, c := range codes {
		if c != 1 {
			t.Errorf("rank %d exited %d, want 1 (verification failed on rank 1)", r, c)
		}
	}
	if !strings.Contains(table, "FAIL") {
		t.Errorf("table does not show the failure:\n%s", table)
	}
}

func TestBenchRefusesExpertsNotDivisibleByRanks(t *testing.T) {
	codes, table := runWorld(t, 3, []string{"--backend", "cpu", "--tokens", "8", "--hidden", "16",
		"--ffn-hidden", "16", "--experts", "8"}, nil)
	for r, c := range codes {
		if c != 2 {
			t.Errorf("rank %d exited %d, want 2", r, c)
		}
	}
	if !strings.Contains(table, "experts 8: must be a multiple of the number of ranks 3") {
		t.Errorf("message does not name the mismatch:\n%s", table)
	}
}

func TestParseFlagsNamesBadValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tokens", "1,x"}, `"x" is not an integer`},
		{[]string{"--ffn", "tanh"}, `ffn "tanh"`},
		{[]string{"--dtype", "fp8"}, `dtype "fp8"`},
		{[]string{"--route", "random"}, `route "random"`},
		{[]string{"--backend", "tpu"}, `backend "tpu"`},
		{[]string{"--iters", "0"}, `iters 0`},
		{[]string{"--log-level", "loud"}, `log-level "loud"`},
		{[]string{"stray"}, `unexpected argument "stray"`},
	} {
		_, err := ParseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestConfigsAreTheCartesianProduct(t *testing.T) {
	o, err := ParseFlags([]string{"--tokens", "1,2,3", "--experts", "4,8", "--ffn", "relu,gelu"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfgs := o.Configs(config.FP32)
	if len(cfgs) != 12 {
		t.Fatalf("%d configs, want 12", len(cfgs))
	}
	seen := map[string]bool{}
	for _, c := range cfgs {
		if c.MaxTokens != 3 {
			t.Errorf("max tokens %d, want the largest --tokens 3", c.MaxTokens)
		}
		seen[fmt.Sprint(c.Tokens, c.Experts, c.FFN)] = true
	}
	if len(seen) != 12 {
		t.Errorf("configs repeat: %d distinct", len(seen))
	}
	if _, err := ParseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// queuedCPU is the CPU backend with staging and queued forwards whose device
// times are made up: the first forward of a queue 1 s (a late peer), forward
// i of rank r (100 + 10 i + r) µs.
type queuedCPU struct {
	backend.Backend
	rank   int
	x      []float32
	queues *atomic.Int32
}

func (q *queuedCPU) Stage(cfg config.Layer, x []float32) error {
	q.x = x
	return nil
}

func (q *queuedCPU) ForwardStaged(cfg config.Layer) (backend.Timing, error) {
	return q.Forward(cfg, q.x)
}

func (q *queuedCPU) ForwardQueued(cfg config.Layer, n int) ([]time.Duration, backend.Timing, error) {
	q.queues.Add(1)
	times := make([]time.Duration, n)
	var last backend.Timing
	for i := range n {
		t, err := q.Forward(cfg, q.x)
		if err != nil {
			return nil, t, err
		}
		last = t
		times[i] = time.Duration(100+10*i+q.rank) * time.Microsecond
	}
	times[0] = time.Second
	return times, last, nil
}

func TestBenchTimesQueuedForwardsWithoutTheFirst(t *testing.T) {
	for _, queue := range []bool{true, false} {
		var queues atomic.Int32
		dir := t.TempDir()
		js := filepath.Join(dir, "out.json")
		args := []string{"--backend", "cpu", "--tokens", "8", "--hidden", "16", "--ffn-hidden", "16",
			"--experts", "4", "--iters", "4", "--warmup", "0", "--verify", "--json", js}
		if queue {
			args = append(args, "--queue")
		}
		codes, table := runWorld(t, 2, args, func(b backend.Backend, comm transport.Comm) backend.Backend {
			return &queuedCPU{Backend: b, rank: comm.Rank(), queues: &queues}
		})
		for r, c := range codes {
			if c != 0 {
				t.Fatalf("queue %v: rank %d exited %d:\n%s", queue, r, c, table)
			}
		}
		doc, err := os.ReadFile(js)
		if err != nil {
			t.Fatal(err)
		}
		var rep Report
		if err := json.Unmarshal(doc, &rep); err != nil {
			t.Fatal(err)
		}
		if len(rep.Results) != 1 || rep.Results[0].Verified == nil || !*rep.Results[0].Verified {
			t.Fatalf("queue %v: want one verified result: %s", queue, doc)
		}
		p50, p99 := rep.Results[0].LatencyP50, rep.Results[0].LatencyP99
		if !queue {
			// Timed one by one (the default): the CPU forward's own (host)
			// time, no queue.
			if queues.Load() != 0 || p99 >= 1e6 {
				t.Errorf("without --queue: %d queues, p99 %v µs; want none and not the made-up 1 s", queues.Load(), p99)
			}
			continue
		}
		// Forwards 1..4 of the queue, the slower rank's (rank 1): 111, 121,
		// 131, 141 µs; p50 is the 2nd of 4, p99 the 4th.
		if queues.Load() != 2 || p50 != 121 || p99 != 141 {
			t.Errorf("queued: %d queues (want one per rank), p50 %v p99 %v µs (want 121, 141)", queues.Load(), p50, p99)
		}
	}
}

// clockTracer is a Tracer whose last launch returned at a given time.
type clockTracer struct{ at time.Time }

func (clockTracer) WriteTrace(io.Writer) error { return nil }
func (clockTracer) PhaseSummary() string       { return "" }
func (t clockTracer) LaunchedAt() time.Time    { return t.at }

func TestStartSkewsAgainstRankZero(t *testing.T) {
	base := time.Unix(1_800_000_000, 0)
	for _, rank0Clock := range []bool{true, false} {
		got := make([][2]float64, 2)
		errs := transport.NewLocal(2, 0).Run(func(c transport.Comm) error {
			r := c.Rank()
			exit := base.Add(time.Duration(r) * 5500 * time.Nanosecond)
			tr := clockTracer{at: base.Add(-3 * time.Microsecond)}
			if r == 0 {
				tr = clockTracer{}
				if rank0Clock {
					tr.at = base
				}
			}
			var err error
			got[r], err = startSkews(c, tr, exit)
			return err
		})
		for r, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: %v", r, err)
			}
		}
		if got[0][0] != 0 || got[1][0] != 5.5 {
			t.Errorf("barrier exits %v, %v µs against rank 0: want 0 and 5.5", got[0][0], got[1][0])
		}
		if rank0Clock && (got[0][1] != 0 || got[1][1] != -3) {
			t.Errorf("launch returns %v, %v µs against rank 0: want 0 and -3", got[0][1], got[1][1])
		}
		if !rank0Clock && (!math.IsNaN(got[0][1]) || !math.IsNaN(got[1][1])) {
			t.Errorf("launch returns %v, %v: want NaN without rank 0's clock", got[0][1], got[1][1])
		}
	}
}
