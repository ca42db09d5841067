// Package bench is `moerun bench`: it expands the flag lists into configs,
// runs each on every rank, times it, verifies it against the float64
// reference, and reports one nccl-tests style row and one JSON object per
// config.
package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/moerun/moerun/internal/config"
)

// Options are the parsed flags of `moerun bench` (DESIGN.md section 4a).
type Options struct {
	Backend        string // "cpu", "gpu" or "" (auto)
	Tokens         []int
	MaxTokens      int // 0: the largest of Tokens
	Hidden         []int
	FFNHidden      []int
	Experts        []int
	TopK           []int
	FFN            []config.FFN
	DType          []config.DType // empty: the fastest the backend has
	CapacityFactor []float64
	NoRenorm       bool
	Route          config.Route
	Seed           uint64
	Iters, Warmup  int
	// Queue times the forwards queued back to back on the device after one
	// barrier (a backend that can queue them), instead of each alone after a
	// host barrier (DESIGN.md section 4): the figure then leaves out the
	// ranks' launch skew.
	Queue    bool
	Verify   bool
	JSON     string
	Dump     string
	Trace    string
	Graph    bool // replay each forward as a captured CUDA graph (GPU backend)
	Cubin    string
	Watchdog time.Duration
	Timeout  time.Duration // bound on host-side collective waits
	LogLevel string
	// DebugWithholdSignal makes the rank with this index withhold one
	// signal in the kernel, to test the watchdog (-1: off).
	DebugWithholdSignal int
	// Weights is a Hugging Face checkpoint folder whose MoE layer Layer
	// replaces the generated weights; its config.json gives the shape.
	Weights string
	Layer   int
}

type intList struct{ v *[]int }

func (l intList) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, x := range *l.v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func (l intList) Set(s string) error {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not an integer", f)
		}
		out = append(out, n)
	}
	*l.v = out
	return nil
}

type floatList struct{ v *[]float64 }

func (l floatList) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, x := range *l.v {
		s[i] = strconv.FormatFloat(x, 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

func (l floatList) Set(s string) error {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		x, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", f)
		}
		out = append(out, x)
	}
	*l.v = out
	return nil
}

// flagHint ends the flag package's errors, which the usage text no longer
// follows.
const flagHint = " (moerun bench -h lists the flags)"

// durationFlag parses a duration and, unlike flag.Duration, says what it
// wants when the value is not one.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a duration: give a number with a unit, such as 10s or 500ms", s)
	}
	*f.d = v
	return nil
}

// seedFlag parses the seed, naming its range on error.
type seedFlag struct{ v *uint64 }

func (f seedFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strconv.FormatUint(*f.v, 10)
}

func (f seedFlag) Set(s string) error {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a seed: give a whole number from 0 to 18446744073709551615", s)
	}
	*f.v = v
	return nil
}

// enumList parses comma lists of one of the config enums.
type enumList[T ~string] struct {
	v     *[]T
	parse func(string) (T, error)
}

func (l enumList[T]) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, x := range *l.v {
		s[i] = string(x)
	}
	return strings.Join(s, ",")
}

func (l enumList[T]) Set(s string) error {
	var out []T
	for _, f := range strings.Split(s, ",") {
		x, err := l.parse(f)
		if err != nil {
			return err
		}
		out = append(out, x)
	}
	*l.v = out
	return nil
}

// Usage is the help text's first lines.
const Usage = `Usage: moerun bench [flags]

Runs the MoE layer on this rank and its peers, times it and optionally
verifies it. Start it on every rank: moerun launch -n N -- bench ...,
mpirun -np N moerun bench ..., or srun moerun bench ....
Flags marked * take comma lists; their cartesian product runs in one job.

Example:
  moerun launch -n 4 -- bench --backend cpu --tokens 0,1,37,64 --hidden 64 \
      --ffn-hidden 128 --experts 8 --topk 2 --verify --json out.json

Flags:
`

// ParseFlags parses bench's flags. Errors name the bad flag and value.
func ParseFlags(args []string, stderr io.Writer) (Options, error) {
	d := config.Default()
	o := Options{
		Tokens: []int{d.Tokens}, Hidden: []int{d.Hidden}, FFNHidden: []int{d.FFNHidden},
		Experts: []int{d.Experts}, TopK: []int{d.TopK}, FFN: []config.FFN{d.FFN},
		CapacityFactor: []float64{0}, Route: config.RouteSoftmax, Seed: 1,
		Iters: 20, Warmup: 5, Watchdog: 10 * time.Second, Timeout: 60 * time.Second,
		LogLevel: "info", DebugWithholdSignal: -1,
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	// The flag package prints the usage on every error; a bad value gets
	// one line naming it (the caller prints the error) and -h the usage.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	route := string(o.Route)
	fs.StringVar(&o.Backend, "backend", "", "cpu or gpu (default: gpu if a GPU is visible, else cpu)")
	fs.Var(intList{&o.Tokens}, "tokens", "* tokens per rank T (default 8192)")
	fs.IntVar(&o.MaxTokens, "max-tokens", 0, "largest T a call may use; sizes buffers (default: largest --tokens)")
	fs.Var(intList{&o.Hidden}, "hidden", "* hidden size H (default 2048)")
	fs.Var(intList{&o.FFNHidden}, "ffn-hidden", "* expert FFN width I (default 2048)")
	fs.Var(intList{&o.Experts}, "experts", "* number of experts E, a multiple of the rank count (default 32)")
	fs.Var(intList{&o.TopK}, "topk", "* experts per token k (default 2)")
	fs.Var(enumList[config.FFN]{&o.FFN, config.ParseFFN}, "ffn", "* relu, gelu or swiglu (default relu)")
	fs.Var(enumList[config.DType]{&o.DType, config.ParseDType}, "dtype", "* fp32, tf32 or bf16 (default: the fastest the backend has)")
	fs.Var(floatList{&o.CapacityFactor}, "capacity-factor", "* capacity factor; 0 is dropless (default 0)")
	fs.BoolVar(&o.NoRenorm, "no-renorm", false, "do not renormalise the top-k weights to sum 1")
	fs.StringVar(&route, "route", route, "softmax, or skew: every token picks experts 0..k-1 (for tests)")
	fs.Var(seedFlag{&o.Seed}, "seed", "seed of the generated weights and tokens")
	fs.IntVar(&o.Iters, "iters", o.Iters, "timed forwards per config")
	fs.IntVar(&o.Warmup, "warmup", o.Warmup, "untimed forwards per config before timing")
	fs.BoolVar(&o.Queue, "queue", false,
		"time the forwards queued back to back on the GPU after one barrier (the first one not counted) instead of each after its own host barrier: leaves out the ranks' launch skew")
	fs.BoolVar(&o.Verify, "verify", false, "check every rank's output against the float64 reference; exit 1 on failure")
	fs.StringVar(&o.JSON, "json", "", "write results as JSON to this file (rank 0)")
	fs.StringVar(&o.Dump, "dump", "", "write each rank's inputs, weights, routing and output as .npy files under this folder")
	fs.StringVar(&o.Trace, "trace", "", "write each rank's Chrome/Perfetto trace of the kernel's tasks in the last forward of each config to FILE with .rankRRR (and .cfgNNN) before the extension (GPU backend)")
	fs.BoolVar(&o.Graph, "graph", false, "replay each forward from a captured CUDA graph (GPU backend)")
	fs.StringVar(&o.Cubin, "cubin", "", "kernel image to load instead of the embedded one (also MOERUN_CUBIN)")
	fs.Var(durationFlag{&o.Watchdog}, "watchdog", "bound on every wait inside the kernel; a tripped runtime refuses further forwards")
	fs.Var(durationFlag{&o.Timeout}, "timeout", "bound on every host-side wait for other ranks: MPI start-up, collectives, and NVSHMEM's init, heap calls and finalize (which include seconds of their own work: keep it above 3s)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.IntVar(&o.DebugWithholdSignal, "debug-withhold-signal", -1, "debug: this rank withholds its dispatch signal to the next rank, to test the watchdog")
	fs.StringVar(&o.Weights, "weights", "", "Hugging Face checkpoint folder (config.json + safetensors): run its MoE layer --layer instead of generated weights; the shape comes from it, the tokens from --seed")
	fs.IntVar(&o.Layer, "layer", 0, "with --weights: the index N of the decoder layer model.layers.N to run")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprint(stderr, Usage)
			fs.PrintDefaults()
			return o, err
		}
		return o, fmt.Errorf("%w%s", err, flagHint)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	}
	var errs []error
	r, err := config.ParseRoute(route)
	if err != nil {
		errs = append(errs, err)
	}
	o.Route = r
	switch o.Backend {
	case "", "cpu", "gpu":
	default:
		errs = append(errs, fmt.Errorf("backend %q: must be cpu or gpu", o.Backend))
	}
	if o.Iters < 1 {
		errs = append(errs, fmt.Errorf("iters %d: must be at least 1", o.Iters))
	}
	if o.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warmup %d: must not be negative", o.Warmup))
	}
	if o.Watchdog <= 0 {
		errs = append(errs, fmt.Errorf("watchdog %v: must be positive", o.Watchdog))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %v: must be positive", o.Timeout))
	}
	if _, err := parseLevel(o.LogLevel); err != nil {
		errs = append(errs, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.Weights != "" {
		// The checkpoint fixes the layer's shape and weights.
		for _, name := range []string{"hidden", "ffn-hidden", "experts", "topk", "ffn", "no-renorm"} {
			if set[name] {
				errs = append(errs, fmt.Errorf("--%s: with --weights the checkpoint's config.json gives it", name))
			}
		}
		if o.Dump != "" {
			errs = append(errs, errors.New("--dump with --weights is not supported yet (the dump writes generated weights)"))
		}
		if o.Layer < 0 {
			errs = append(errs, fmt.Errorf("layer %d: must not be negative", o.Layer))
		}
	} else if set["layer"] {
		errs = append(errs, errors.New("--layer needs --weights"))
	}
	return o, errors.Join(errs...)
}

// DefaultDType is the precision used when --dtype is not given: the fastest
// the backend has (bf16 tensor cores on GPUs; the CPU backend computes in
// float64 whatever the mode, so fp32 data there).
func DefaultDType(backendName string) config.DType {
	if backendName == "gpu" {
		return config.BF16
	}
	return config.FP32
}

// Configs expands the lists into their cartesian product, in a fixed order
// (tokens vary fastest), with MaxTokens and the dtype filled in.
func (o Options) Configs(defaultDType config.DType) []config.Layer {
	maxT := o.MaxTokens
	if maxT == 0 {
		for _, t := range o.Tokens {
			maxT = max(maxT, t)
		}
	}
	dtypes := o.DType
	if len(dtypes) == 0 {
		dtypes = []config.DType{defaultDType}
	}
	var out []config.Layer
	for _, dt := range dtypes {
		for _, ffn := range o.FFN {
			for _, h := range o.Hidden {
				for _, i := range o.FFNHidden {
					for _, e := range o.Experts {
						for _, k := range o.TopK {
							for _, cf := range o.CapacityFactor {
								for _, t := range o.Tokens {
									out = append(out, config.Layer{
										Tokens: t, MaxTokens: maxT, Hidden: h, FFNHidden: i,
										Experts: e, TopK: k, FFN: ffn, DType: dt,
										CapacityFactor: cf, Renormalize: !o.NoRenorm,
										Route: o.Route, Seed: o.Seed,
									})
								}
							}
						}
					}
				}
			}
		}
	}
	return out
}
