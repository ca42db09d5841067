package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/logging"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

func parseLevel(s string) (zerolog.Level, error) { return logging.ParseLevel(s) }

// Env is what the command gives the benchmark: the rank's communicator and
// logger, and the hooks that need packages the benchmark does not import.
type Env struct {
	Comm transport.Comm
	Log  zerolog.Logger
	// Open opens a backend by name ("cpu" or "gpu").
	Open func(name string) (backend.Backend, error)
	// GPUVisible says whether a GPU backend is possible here (auto choice).
	GPUVisible bool
	// Agree checks that every rank runs the same static config and binary.
	Agree func(config.Static) error
	// Abort ends every rank with a non-zero code, for errors that leave
	// peers waiting; nil in single-process use.
	Abort   func(code int)
	Stdout  io.Writer // the table (rank 0)
	Stderr  io.Writer // messages for the user
	Version string
}

// Row is one config's figures, as printed and as written to JSON.
type Row struct {
	Config        config.Layer `json:"config"`
	LatencyP50    float64      `json:"latency_us_p50"`
	LatencyP99    float64      `json:"latency_us_p99"`
	BackToBack    float64      `json:"latency_us_b2b"`
	TokensPerS    float64      `json:"tokens_per_s"`
	TFLOPs        float64      `json:"tflops"`
	BytesPut      int64        `json:"bytes_put"`
	PutGBps       float64      `json:"put_gb_per_s"`
	SMUtil        *float64     `json:"sm_util"`
	RelErr        *float64     `json:"rel_err"`
	Wrong         *int64       `json:"wrong"`
	RouteMismatch *int64       `json:"route_mismatch"`
	Verified      *bool        `json:"verified"`
	failures      []string
}

// Report is the JSON document of section 4b.
type Report struct {
	Version string `json:"version"`
	Backend string `json:"backend"`
	World   int    `json:"world"`
	Card    string `json:"card"`
	Results []Row  `json:"results"`
}

// errVerify marks a run whose only problem is a failed verification.
var errVerify = errors.New("verification failed")

// Run runs the benchmark on this rank and returns the exit code: 0 ok,
// 1 failure (including a failed verification), 2 a config that cannot run.
func Run(env Env, o Options) int {
	c := env.Comm
	w, me := c.Size(), c.Rank()
	name := o.Backend
	if name == "" {
		name = "cpu"
		if env.GPUVisible {
			name = "gpu"
		}
	}
	cfgs := o.Configs(config.FP32)
	var bad []error
	for _, cfg := range cfgs {
		if err := cfg.Validate(w); err != nil {
			bad = append(bad, fmt.Errorf("config %v: %w", cfg, err))
		}
	}
	if len(bad) > 0 {
		// Every rank sees the same flags and the same world: all refuse alike.
		if me == 0 {
			fmt.Fprintf(errOut(env), "moerun bench: %v\n", errors.Join(bad...))
		}
		return 2
	}
	if env.Agree != nil {
		for _, cfg := range cfgs {
			if err := env.Agree(cfg.Static()); err != nil {
				env.Log.Error().Err(err).Msg("ranks disagree")
				if me == 0 {
					fmt.Fprintf(errOut(env), "moerun bench: %v\n", err)
				}
				return 2
			}
		}
	}

	fatal := func(err error) int {
		env.Log.Error().Err(err).Msg("bench failed")
		fmt.Fprintf(errOut(env), "moerun bench: rank %d: %v\n", me, err)
		if env.Abort != nil && w > 1 {
			env.Abort(1) // peers may be waiting for this rank: end them all now
		}
		return 1
	}

	b, err := env.Open(name)
	if err != nil {
		return fatal(fmt.Errorf("open %s backend: %w", name, err))
	}
	defer b.Close()
	rep := Report{Version: env.Version, Backend: b.Name(), World: w, Card: b.Card()}
	if me == 0 {
		printHeader(env.Stdout, rep, o)
	}
	failed := 0
	var refs refWeights
	for i, cfg := range cfgs {
		row, err := runOne(env, b, &refs, cfg, o, i, len(cfgs) > 1)
		if err != nil && !errors.Is(err, errVerify) {
			return fatal(fmt.Errorf("config %v: %w", cfg, err))
		}
		if row.Verified != nil && !*row.Verified {
			failed++
		}
		rep.Results = append(rep.Results, row)
		if me == 0 {
			printRow(env.Stdout, w, row)
		}
	}
	if me == 0 {
		printSummary(env.Stdout, rep, failed)
		if o.JSON != "" {
			if err := writeJSON(o.JSON, rep); err != nil {
				return fatal(err)
			}
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}

func errOut(env Env) io.Writer {
	if env.Stderr == nil {
		return io.Discard
	}
	return env.Stderr
}

// runOne runs one config on this rank and returns the row (identical on
// every rank: all figures are reduced across ranks).
func runOne(env Env, b backend.Backend, refs *refWeights, cfg config.Layer, o Options, index int, multi bool) (Row, error) {
	c := env.Comm
	w, me := c.Size(), c.Rank()
	row := Row{Config: cfg}
	log := env.Log.With().Int("config", index).Logger()
	if err := b.Prepare(cfg); err != nil {
		return row, fmt.Errorf("prepare: %w", err)
	}
	x := datagen.Tokens(cfg, me, cfg.Tokens)
	// The first forward's output, kept to check that every later forward of
	// the same inputs gives the same bits.
	if _, err := b.Forward(cfg, x); err != nil {
		return row, fmt.Errorf("first forward: %w", err)
	}
	first, err := b.Result()
	if err != nil {
		return row, fmt.Errorf("read first result: %w", err)
	}
	firstOut := append([]float32(nil), first.Out...)
	for range o.Warmup {
		if _, err := b.Forward(cfg, x); err != nil {
			return row, fmt.Errorf("warm-up forward: %w", err)
		}
	}

	// Timed forwards: each starts after a host barrier; its latency is the
	// slowest rank's device-measured time.
	lat := make([]float64, o.Iters)
	var last backend.Timing
	for it := range o.Iters {
		if err := c.Barrier(); err != nil {
			return row, fmt.Errorf("barrier before forward %d: %w", it, err)
		}
		t, err := b.Forward(cfg, x)
		if err != nil {
			return row, fmt.Errorf("forward %d: %w", it, err)
		}
		lat[it] = float64(t.Elapsed) / float64(time.Microsecond)
		last = t
	}
	if err := c.AllReduceF64(transport.Max, lat); err != nil {
		return row, fmt.Errorf("reduce latencies: %w", err)
	}
	row.LatencyP50, row.LatencyP99 = percentile(lat, 0.50), percentile(lat, 0.99)

	// Back-to-back: no barrier between forwards.
	if err := c.Barrier(); err != nil {
		return row, fmt.Errorf("barrier before back-to-back run: %w", err)
	}
	start := time.Now()
	for it := range o.Iters {
		if _, err := b.Forward(cfg, x); err != nil {
			return row, fmt.Errorf("back-to-back forward %d: %w", it, err)
		}
	}
	b2b := []float64{float64(time.Since(start)) / float64(time.Microsecond) / float64(o.Iters)}

	// Figures summed or maxed over ranks: [tokens, flops, bytes put, sm util].
	sums := []float64{float64(cfg.Tokens), flops(cfg)}
	maxes := []float64{b2b[0], float64(last.BytesPut), last.SMUtil}
	if err := c.AllReduceF64(transport.Sum, sums); err != nil {
		return row, fmt.Errorf("reduce figures: %w", err)
	}
	if err := c.AllReduceF64(transport.Max, maxes); err != nil {
		return row, fmt.Errorf("reduce figures: %w", err)
	}
	row.BackToBack = maxes[0]
	if row.LatencyP50 > 0 {
		sec := row.LatencyP50 * 1e-6
		row.TokensPerS = sums[0] / sec
		row.TFLOPs = sums[1] / float64(w) / sec / 1e12
		row.PutGBps = maxes[1] / sec / 1e9
	}
	row.BytesPut = int64(maxes[1])
	if maxes[2] >= 0 {
		u := maxes[2]
		row.SMUtil = &u
	}

	res, err := b.Result()
	if err != nil {
		return row, fmt.Errorf("read result: %w", err)
	}
	if o.Dump != "" {
		if err := dumpRank(o.Dump, index, multi, cfg, me, w, x, res); err != nil {
			return row, fmt.Errorf("dump: %w", err)
		}
	}
	if !o.Verify {
		return row, nil
	}
	ref := refs.get(cfg)
	check := reference.Check(reference.CheckInput{
		Cfg: cfg, X: x, Gate: ref.gate,
		Expert:     ref.experts,
		Out:        res.Out,
		TopKIdx:    res.TopKIdx,
		MaxChecked: reference.SampleBudget(cfg, 4e9),
	})
	if n := bitwiseDiffs(firstOut, res.Out); n > 0 {
		check.Failures = append(check.Failures, fmt.Sprintf(
			"repeatability: the last of %d forwards differs from the first in %d of %d elements", 1+o.Warmup+2*o.Iters, n, len(res.Out)))
	}
	for _, f := range check.Failures {
		log.Error().Str("check", f).Msg("verification failed")
	}
	ok := 0.0
	if !check.OK() {
		ok = 1
	}
	v := []float64{float64(check.Wrong), float64(check.RouteMismatch), ok}
	vmax := []float64{check.RelErr}
	if err := c.AllReduceF64(transport.Sum, v); err != nil {
		return row, fmt.Errorf("reduce verification: %w", err)
	}
	if err := c.AllReduceF64(transport.Max, vmax); err != nil {
		return row, fmt.Errorf("reduce verification: %w", err)
	}
	relErr, wrong, mismatch := vmax[0], int64(v[0]), int64(v[1])
	verified := v[2] == 0
	row.RelErr, row.Wrong, row.RouteMismatch, row.Verified = &relErr, &wrong, &mismatch, &verified
	log.Debug().Int("checked", check.Checked).Float64("rel_err", check.RelErr).Int("wrong", check.Wrong).Msg("verified")
	if !verified {
		row.failures = check.Failures
		return row, errVerify
	}
	return row, nil
}

// flops is this rank's arithmetic for one forward: the two (three for
// swiglu) expert GEMMs over its T·k routed rows, plus the gate.
func flops(c config.Layer) float64 {
	mats := 2.0
	if c.FFN == config.FFNSwiGLU {
		mats = 3
	}
	t, h, i := float64(c.Tokens), float64(c.Hidden), float64(c.FFNHidden)
	return t*float64(c.TopK)*2*mats*h*i + 2*t*h*float64(c.Experts)
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	idx := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(idx, len(s)-1))]
}

// bitwiseDiffs counts the elements whose bits differ (NaN payloads included).
func bitwiseDiffs(a, b []float32) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
		}
	}
	return n
}

// refWeights keeps the reference's gate and expert cache while consecutive
// configs share weights (configs differ fastest in tokens and capacity), so
// that verification does not regenerate them for every config.
type refWeights struct {
	key     config.Layer
	gate    []float32
	experts reference.ExpertSource
}

func (r *refWeights) get(c config.Layer) *refWeights {
	k := c
	k.Tokens, k.CapacityFactor, k.Renormalize, k.Route = 0, 0, false, ""
	if r.gate == nil || r.key != k {
		r.key, r.gate, r.experts = k, datagen.Gate(c), reference.CachedExperts(c, 2<<30)
	}
	return r
}
