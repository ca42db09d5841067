package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/checkpoint"
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
	var ck *ckptLayer
	if o.Weights != "" {
		var err error
		if o, err = ShapeFromWeights(o); err == nil {
			ck, err = loadWeights(o, me, w)
		}
		// Every rank learns whether every rank could read its part.
		failed := make([]float64, w)
		if err != nil {
			failed[me] = 1
		}
		if rerr := c.AllReduceF64(transport.Sum, failed); rerr != nil {
			fmt.Fprintf(errOut(env), "moerun bench: rank %d: %v\n", me, rerr)
			return 1
		}
		for r, f := range failed {
			if f == 0 {
				continue
			}
			if r == me {
				fmt.Fprintf(errOut(env), "moerun bench: rank %d: --weights %s: %v\n", me, o.Weights, err)
			}
			if ck != nil {
				ck.model.Close()
			}
			return 2
		}
		defer ck.model.Close()
	}
	cfgs := o.Configs(DefaultDType(name))
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
	if _, ok := b.(backend.Layers); ck != nil && !ok {
		// Every rank runs the same backend: all refuse alike.
		if me == 0 {
			fmt.Fprintf(errOut(env), "moerun bench: --weights: the %s backend does not take caller weights yet (it generates them from the seed); use --backend cpu\n", b.Name())
		}
		return 2
	}
	rep := Report{Version: env.Version, Backend: b.Name(), World: w, Card: b.Card()}
	if me == 0 {
		if ck != nil {
			fmt.Fprintf(env.Stdout, "# weights %s  layer %d  model_type %s  renormalize %t (%s)\n",
				o.Weights, o.Layer, ck.model.Type, ck.cfg.Renormalize, ck.model.RenormalizeFrom)
		}
		printHeader(env.Stdout, rep, o)
	}
	failed := 0
	refs := refWeights{ck: ck}
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
	// The tokens are made after Prepare, which refuses a config that cannot
	// fit before this rank spends time and host memory on them.
	var x []float32
	forward := func() (backend.Timing, error) { return b.Forward(cfg, x) }
	if refs.ck != nil {
		// Weights from the checkpoint: the backend holds them as layer 0.
		lb := b.(backend.Layers)
		if err := lb.PrepareLayer(0, cfg, refs.ck.weights); err != nil {
			return row, fmt.Errorf("prepare with the checkpoint's weights: %w", err)
		}
		forward = func() (backend.Timing, error) { return lb.ForwardLayer(0, cfg, x) }
	} else if err := b.Prepare(cfg); err != nil {
		return row, fmt.Errorf("prepare: %w", err)
	}
	x = datagen.Tokens(cfg, me, cfg.Tokens)
	// The first forward's output, kept to check that every later forward of
	// the same inputs gives the same bits.
	if _, err := forward(); err != nil {
		return row, fmt.Errorf("first forward: %w", err)
	}
	first, err := b.Result()
	if err != nil {
		return row, fmt.Errorf("read first result: %w", err)
	}
	firstOut := append([]float32(nil), first.Out...)
	for range o.Warmup {
		if _, err := forward(); err != nil {
			return row, fmt.Errorf("warm-up forward: %w", err)
		}
	}

	// Back-to-back: no barrier between forwards. Run before the timed
	// forwards so that the last forward (traced, verified) is a timed one,
	// whose ranks started together.
	if err := c.Barrier(); err != nil {
		return row, fmt.Errorf("barrier before back-to-back run: %w", err)
	}
	start := time.Now()
	for it := range o.Iters {
		if _, err := forward(); err != nil {
			return row, fmt.Errorf("back-to-back forward %d: %w", it, err)
		}
	}
	b2b := []float64{float64(time.Since(start)) / float64(time.Microsecond) / float64(o.Iters)}

	// Timed forwards. The latency of one is the slowest rank's
	// device-measured time. A backend with host work before its launch
	// stages it before the barrier (generated weights only: a checkpoint
	// layer runs by id).
	lat := make([]float64, o.Iters)
	var last backend.Timing
	var barrierExit time.Time // of the last timed forward (--trace compares ranks)
	var spans, gaps []float64 // per forward on this rank, µs (logged at debug level)
	stager, staged := b.(backend.Stager)
	staged = staged && refs.ck == nil
	queuer, queued := b.(backend.Queuer)
	queued = queued && staged && o.Queue
	if queued {
		// Queued back to back on the device after one barrier: the first
		// kernel absorbs the ranks' launch skew and is not counted; each later
		// one starts as the previous one ends.
		if err := stager.Stage(cfg, x); err != nil {
			return row, fmt.Errorf("stage the timed forwards: %w", err)
		}
		if err := c.Barrier(); err != nil {
			return row, fmt.Errorf("barrier before the timed forwards: %w", err)
		}
		barrierExit = time.Now()
		times, t, err := queuer.ForwardQueued(cfg, o.Iters+1)
		if err != nil {
			return row, fmt.Errorf("timed forwards: %w", err)
		}
		for it := range o.Iters {
			lat[it] = float64(times[it+1]) / float64(time.Microsecond)
		}
		last = t
	} else {
		// Each forward starts after a host barrier.
		for it := range o.Iters {
			if staged {
				if err := stager.Stage(cfg, x); err != nil {
					return row, fmt.Errorf("stage forward %d: %w", it, err)
				}
			}
			if err := c.Barrier(); err != nil {
				return row, fmt.Errorf("barrier before forward %d: %w", it, err)
			}
			barrierExit = time.Now()
			var t backend.Timing
			var err error
			if staged {
				t, err = stager.ForwardStaged(cfg)
			} else {
				t, err = forward()
			}
			if err != nil {
				return row, fmt.Errorf("forward %d: %w", it, err)
			}
			lat[it] = float64(t.Elapsed) / float64(time.Microsecond)
			if t.Span > 0 {
				spans = append(spans, float64(t.Span)/float64(time.Microsecond))
				gaps = append(gaps, float64(t.Elapsed-t.Span)/float64(time.Microsecond))
			}
			last = t
		}
		if len(spans) > 0 {
			// Where a forward's time went on this rank: the kernel itself (a
			// rank that started early waits in it for the late ones) or
			// before its start (launch to start on the GPU).
			log.Debug().Float64("span_us_p50", percentile(spans, 0.5)).Float64("span_us_max", percentile(spans, 1)).
				Float64("start_gap_us_p50", percentile(gaps, 0.5)).Float64("start_gap_us_max", percentile(gaps, 1)).
				Msg("timed forwards on this rank: kernel span and launch-to-start gap")
		}
	}
	if err := c.AllReduceF64(transport.Max, lat); err != nil {
		return row, fmt.Errorf("reduce latencies: %w", err)
	}
	row.LatencyP50, row.LatencyP99 = percentile(lat, 0.50), percentile(lat, 0.99)

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
	if tr, ok := b.(backend.Tracer); ok && o.Trace != "" {
		if err := writeTrace(o.Trace, index, multi, me, tr); err != nil {
			return row, fmt.Errorf("trace: %w", err)
		}
		log.Info().Str("phases", tr.PhaseSummary()).Msg("trace of the last forward")
		if w > 1 {
			sk, err := startSkews(c, tr, barrierExit)
			if err != nil {
				return row, fmt.Errorf("trace: %w", err)
			}
			log.Info().Float64("barrier_exit_us", sk[0]).Float64("launch_return_us", sk[1]).
				Msg("the last timed forward on this rank against rank 0 (host clock): barrier exit, return from the last launch call")
		}
	}
	if o.Dump != "" {
		if err := dumpRank(o.Dump, index, multi, cfg, me, w, x, res); err != nil {
			return row, fmt.Errorf("dump: %w", err)
		}
	}
	if !o.Verify {
		return row, nil
	}
	ref, err := refs.get(cfg, res.TopKIdx)
	if err != nil {
		return row, fmt.Errorf("reference weights: %w", err)
	}
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
// that verification does not regenerate them for every config. With
// --weights they come from the checkpoint instead.
type refWeights struct {
	key     config.Layer
	gate    []float32
	experts reference.ExpertSource
	ck      *ckptLayer
}

// get returns the reference weights for c; ids are the experts the forward
// to check routed to (a checkpoint's are read on demand).
func (r *refWeights) get(c config.Layer, ids []int32) (*refWeights, error) {
	if r.ck != nil {
		src, err := r.ck.source(ids)
		if err != nil {
			return nil, err
		}
		r.gate, r.experts = r.ck.weights.Gate, src
		if c.DType == config.BF16 { // the values a bf16 layer stores
			// The reference's check calls the source from several
			// goroutines at once (reference.Check): the cache is locked.
			var mu sync.Mutex
			rounded := map[int]*datagen.Expert{}
			r.experts = func(e int) *datagen.Expert {
				mu.Lock()
				defer mu.Unlock()
				if ex, ok := rounded[e]; ok {
					return ex
				}
				ex := src(e).StoredAs(c.DType)
				rounded[e] = ex
				return ex
			}
		}
		return r, nil
	}
	k := c
	k.Tokens, k.CapacityFactor, k.Renormalize, k.Route = 0, 0, false, ""
	if r.gate == nil || r.key != k {
		r.key, r.gate, r.experts = k, datagen.Gate(c), reference.CachedExperts(c, 2<<30)
	}
	return r, nil
}

// ShapeFromWeights sets o's shape lists (hidden, ffn-hidden, experts, topk,
// ffn, renormalisation) from the checkpoint layer of --weights and --layer,
// and the dtype to the checkpoint's unless --dtype says otherwise: bf16 for
// a checkpoint stored in bf16, fp32 otherwise (fp32 and tf32 run any
// checkpoint; bf16 needs a bf16 one). It reads config.json and the
// safetensors headers only.
func ShapeFromWeights(o Options) (Options, error) {
	m, err := checkpoint.Open(o.Weights)
	if err != nil {
		return o, err
	}
	defer m.Close()
	c, err := m.Config(o.Layer)
	if err != nil {
		return o, err
	}
	o.Hidden, o.FFNHidden, o.Experts, o.TopK = []int{c.Hidden}, []int{c.FFNHidden}, []int{c.Experts}, []int{c.TopK}
	o.FFN, o.NoRenorm = []config.FFN{c.FFN}, !c.Renormalize
	if len(o.DType) == 0 {
		o.DType = []config.DType{c.DType}
	}
	for _, d := range o.DType {
		if d == config.BF16 && c.DType != config.BF16 {
			return o, fmt.Errorf("--dtype bf16: layer %d is not stored in bf16 (its values would need rounding); run it in fp32 or tf32", o.Layer)
		}
	}
	return o, nil
}

// ckptLayer is the checkpoint layer of --weights on this rank.
type ckptLayer struct {
	model   *checkpoint.Model
	layer   int
	cfg     config.Layer
	weights *backend.Weights        // the gate and this rank's experts
	experts map[int]*datagen.Expert // every expert read so far
}

// loadWeights opens the checkpoint and reads the gate and the experts this
// rank owns, and nothing else.
func loadWeights(o Options, me, w int) (*ckptLayer, error) {
	m, err := checkpoint.Open(o.Weights)
	if err != nil {
		return nil, err
	}
	c, err := m.Config(o.Layer)
	if err == nil {
		var wt *backend.Weights
		if wt, err = m.Load(o.Layer, me, w); err == nil {
			ck := &ckptLayer{model: m, layer: o.Layer, cfg: c, weights: wt, experts: map[int]*datagen.Expert{}}
			for e, ex := range wt.Experts {
				ck.experts[e] = ex
			}
			return ck, nil
		}
	}
	m.Close()
	return nil, err
}

// source reads the experts among ids that this rank has not read yet (the
// other ranks' experts that its tokens were routed to) and returns the
// experts it holds; verification of a large layer thus holds up to every
// expert of the layer on each rank.
func (ck *ckptLayer) source(ids []int32) (reference.ExpertSource, error) {
	var need []int
	for _, e := range ids {
		if int(e) >= 0 && int(e) < ck.cfg.Experts && ck.experts[int(e)] == nil {
			need = append(need, int(e))
		}
	}
	if len(need) > 0 {
		got, err := ck.model.LoadExperts(ck.layer, need)
		if err != nil {
			return nil, err
		}
		for e, ex := range got {
			ck.experts[e] = ex
		}
	}
	experts := ck.experts
	return func(e int) *datagen.Expert { return experts[e] }, nil
}

// writeTrace writes this rank's timeline of the config's last forward to
// FILE, or FILE with ".cfgNNN" and ".rankRRR" before its extension when there
// are several configs or ranks.
func writeTrace(path string, index int, multi bool, rank int, tr backend.Tracer) error {
	ext := filepath.Ext(path)
	base := strings.TrimSuffix(path, ext)
	if multi {
		base += fmt.Sprintf(".cfg%03d", index)
	}
	base += fmt.Sprintf(".rank%03d", rank)
	f, err := os.Create(base + ext)
	if err != nil {
		return err
	}
	if err := tr.WriteTrace(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// launchClock is implemented by backends that note when their last launch
// call returned (gpubackend.Backend.LaunchedAt).
type launchClock interface {
	LaunchedAt() time.Time
}

// startSkews says how much later (µs; negative: earlier) than rank 0 this
// rank left the host barrier before the last timed forward, and returned
// from its last launch call (collective; host clocks, which the ranks of
// one host share: the GPUs' own clocks were measured to differ by hundreds
// of µs, so the kernels' starts are not compared). NaN where a clock is
// missing; every rank takes part in the broadcast either way.
func startSkews(c transport.Comm, tr backend.Tracer, barrierExit time.Time) ([2]float64, error) {
	var clocks [2]uint64 // 0: missing
	if !barrierExit.IsZero() {
		clocks[0] = uint64(barrierExit.UnixNano())
	}
	if lc, ok := tr.(launchClock); ok && !lc.LaunchedAt().IsZero() {
		clocks[1] = uint64(lc.LaunchedAt().UnixNano())
	}
	buf := make([]byte, 8*len(clocks)) // rank 0's clocks
	for i, v := range clocks {
		binary.LittleEndian.PutUint64(buf[8*i:], v)
	}
	var out [2]float64
	if err := c.Bcast(0, buf); err != nil {
		return out, fmt.Errorf("broadcast rank 0's clocks: %w", err)
	}
	for i, v := range clocks {
		r0 := binary.LittleEndian.Uint64(buf[8*i:])
		out[i] = math.NaN()
		if v != 0 && r0 != 0 {
			out[i] = float64(int64(v-r0)) / 1e3
		}
	}
	return out, nil
}
