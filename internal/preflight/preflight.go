// Package preflight holds checks that `moerun bench` runs before any rank
// does real work. Each refuses, in one line that names the bad value and the
// limit, something that would otherwise fail late (after a long run, as an
// unwritable --json does), unclearly (the Go runtime's out-of-memory crash),
// or not at all (a flag-list product too large to expand).
package preflight

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

// MaxConfigs bounds the configs one job runs: the cartesian product of the
// flag lists is expanded in memory before anything runs.
const MaxConfigs = 10000

// ConfigCount is the number of configs the flag lists of o expand to (the
// product of their lengths), saturated at math.MaxInt32.
func ConfigCount(o bench.Options) int {
	n := 1
	for _, l := range []int{max(len(o.DType), 1), len(o.FFN), len(o.Hidden), len(o.FFNHidden),
		len(o.Experts), len(o.TopK), len(o.CapacityFactor), len(o.Tokens)} {
		if l > 0 && n > math.MaxInt32/l {
			return math.MaxInt32
		}
		n *= l
	}
	return n
}

// CheckConfigCount refuses flag lists whose product exceeds MaxConfigs.
func CheckConfigCount(o bench.Options) error {
	if n := ConfigCount(o); n > MaxConfigs {
		return fmt.Errorf("the flag lists make %d configs (tokens %d × hidden %d × ffn-hidden %d × experts %d × topk %d × ffn %d × dtype %d × capacity-factor %d): at most %d run in one job",
			n, len(o.Tokens), len(o.Hidden), len(o.FFNHidden), len(o.Experts), len(o.TopK), len(o.FFN), max(len(o.DType), 1), len(o.CapacityFactor), MaxConfigs)
	}
	return nil
}

// CheckOutputs checks, on this rank, that the files the run will write can
// be written: --json (written by rank 0 only, after the run) and this rank's
// folder under --dump. It leaves no file behind that was not there, except
// the --dump folder itself, which the run would make anyway.
func CheckOutputs(jsonPath, dumpDir string, rank int) error {
	var errs []error
	if jsonPath != "" && rank == 0 {
		_, statErr := os.Stat(jsonPath)
		f, err := os.OpenFile(jsonPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			errs = append(errs, fmt.Errorf("--json %s: cannot write it: %w", jsonPath, unwrapPath(err)))
		} else {
			f.Close()
			if errors.Is(statErr, os.ErrNotExist) {
				os.Remove(jsonPath)
			}
		}
	}
	if dumpDir != "" {
		if err := os.MkdirAll(dumpDir, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("--dump %s: cannot make the folder: %w", dumpDir, unwrapPath(err)))
		} else if f, err := os.CreateTemp(dumpDir, ".moerun-check-*"); err != nil {
			errs = append(errs, fmt.Errorf("--dump %s: cannot write in the folder: %w", dumpDir, unwrapPath(err)))
		} else {
			f.Close()
			os.Remove(f.Name())
		}
	}
	return errors.Join(errs...)
}

// unwrapPath drops the *PathError's repetition of the path the message
// already names ("open /x/y: permission denied" -> "permission denied").
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// CPUBytes is a lower bound of the host memory one rank of the CPU backend
// needs for config c on world ranks: its experts' weights and the gate
// (float32), its tokens, the output and the float64 expert outputs of its
// routed rows; with verify, the reference's expert cache (bench keeps up to
// 2 GiB of regenerated experts).
func CPUBytes(c config.Layer, world int, verify bool) uint64 {
	h, in, e, t, k := uint64(c.Hidden), uint64(c.FFNHidden), uint64(c.Experts), uint64(c.MaxTokens), uint64(c.TopK)
	perExpert := 4 * (2*h*in + h + in)
	if c.FFN == config.FFNSwiGLU {
		perExpert = 4 * 3 * h * in
	}
	owned := e / uint64(max(world, 1))
	b := owned*perExpert + 4*h*e + 4*t*h*2 + 8*t*k*h
	if verify {
		b += min(e*perExpert, 2<<30)
	}
	return b
}

// CheckHostMemory refuses when the largest valid config's CPUBytes, for each
// of the localSize ranks on this host, exceeds the available memory avail
// (what MemAvailable says, named by from).
func CheckHostMemory(cfgs []config.Layer, world, localSize int, verify bool, avail uint64, from string) error {
	var worst config.Layer
	var need uint64
	for _, c := range cfgs {
		if c.Validate(world) != nil {
			continue // bench refuses it with its own message
		}
		if b := CPUBytes(c, world, verify); b > need {
			need, worst = b, c
		}
	}
	total := need * uint64(max(localSize, 1))
	if need == 0 || total <= avail {
		return nil
	}
	ranks := "the 1 rank"
	if localSize > 1 {
		ranks = fmt.Sprintf("the %d ranks", localSize)
	}
	return fmt.Errorf("config %v needs at least %s of host memory per rank for the CPU backend, %s for %s on this host; %s is available (%s): use fewer or smaller experts, a smaller --hidden/--ffn-hidden, or more hosts",
		worst, GiB(need), GiB(total), ranks, GiB(avail), from)
}

// GiB formats a byte count.
func GiB(b uint64) string {
	if b >= 1<<30 {
		return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + " GiB"
	}
	return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + " MiB"
}

// AvailableMemory is the memory this process may still use: MemAvailable of
// /proc/meminfo, or the room left under a cgroup v2 limit when that is
// smaller. ok is false when neither can be read (then nothing is checked).
func AvailableMemory() (avail uint64, from string, ok bool) {
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "MemAvailable:" {
				if kb, err := strconv.ParseUint(f[1], 10, 64); err == nil {
					avail, from, ok = kb*1024, "MemAvailable in /proc/meminfo", true
				}
			}
		}
	}
	if limit, used, path, cok := cgroupRoom(); cok && limit > used && (!ok || limit-used < avail) {
		avail, from, ok = limit-used, "the memory limit of cgroup "+path, true
	}
	return avail, from, ok
}

// cgroupRoom reads this process's cgroup v2 memory.max and memory.current.
func cgroupRoom() (limit, used uint64, path string, ok bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, 0, "", false
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		rest, found := strings.CutPrefix(line, "0::")
		if !found {
			continue
		}
		dir := filepath.Join("/sys/fs/cgroup", rest)
		maxB, err1 := os.ReadFile(filepath.Join(dir, "memory.max"))
		curB, err2 := os.ReadFile(filepath.Join(dir, "memory.current"))
		if err1 != nil || err2 != nil {
			return 0, 0, "", false
		}
		l, err1 := strconv.ParseUint(strings.TrimSpace(string(maxB)), 10, 64) // "max": no limit
		u, err2 := strconv.ParseUint(strings.TrimSpace(string(curB)), 10, 64)
		if err1 != nil || err2 != nil {
			return 0, 0, "", false
		}
		return l, u, rest, true
	}
	return 0, 0, "", false
}

// Agree all-gathers every rank's local pre-flight result and returns the
// same answer on every rank: nil, or the first rank's error prefixed with
// its rank (and how many more ranks failed). Every rank must call it.
func Agree(c transport.Comm, local error) error {
	msg := ""
	if local != nil {
		msg = local.Error()
		if msg == "" {
			msg = "pre-flight check failed"
		}
	}
	all, err := c.AllGather([]byte(msg))
	if err != nil {
		return fmt.Errorf("pre-flight checks: %w", err)
	}
	var first error
	failed := 0
	for r, b := range all {
		if len(b) == 0 {
			continue
		}
		failed++
		if first == nil {
			first = fmt.Errorf("rank %d: %s", r, b)
		}
	}
	if failed > 1 {
		return fmt.Errorf("%w (and %d more ranks)", first, failed-1)
	}
	return first
}

// run is what every rank of a job must be given alike beyond the layer's
// shape (which bootstrap.CheckAgreement compares per config): the options
// that decide how many collectives each rank calls, and in what order. The
// tokens may differ between ranks, but not their number.
type run struct {
	Backend      string
	Iters        int
	Warmup       int
	Verify       bool
	Dump         bool
	Route        config.Route
	NoRenorm     bool
	Lists        [8]int // the lengths of the comma lists, as listNames
	CapacityList string
}

// listNames are the comma-list flags whose lengths run.Lists holds.
var listNames = [8]string{"dtype", "ffn", "hidden", "ffn-hidden", "experts", "topk", "capacity-factor", "tokens"}

func runOf(o bench.Options, backend string) run {
	cf := make([]string, len(o.CapacityFactor))
	for i, v := range o.CapacityFactor {
		cf[i] = strconv.FormatFloat(v, 'g', -1, 64)
	}
	return run{
		Backend: backend, Iters: o.Iters, Warmup: o.Warmup, Verify: o.Verify, Dump: o.Dump != "",
		Route: o.Route, NoRenorm: o.NoRenorm, CapacityList: strings.Join(cf, ","),
		Lists: [8]int{len(o.DType), len(o.FFN), len(o.Hidden), len(o.FFNHidden), len(o.Experts), len(o.TopK),
			len(o.CapacityFactor), len(o.Tokens)},
	}
}

// CheckSameRun all-gathers every rank's run options (backend is the one this
// rank will open) and returns, on every rank alike, nil or an error naming
// the first rank that differs from rank 0 and how. Ranks that disagree here
// would call different collectives and fail much later, after --timeout or
// with an MPI error that does not say why.
func CheckSameRun(c transport.Comm, o bench.Options, backend string) error {
	got, err := bootstrap.GatherJSON(c, "check the run options", runOf(o, backend))
	if err != nil {
		return err
	}
	for r := 1; r < len(got); r++ {
		var m bootstrap.Mismatch
		a, z := got[r], got[0]
		m.Field("backend", a.Backend, z.Backend)
		m.Field("iters", a.Iters, z.Iters)
		m.Field("warmup", a.Warmup, z.Warmup)
		m.Field("verify", a.Verify, z.Verify)
		m.Field("dump", a.Dump, z.Dump)
		m.Field("route", a.Route, z.Route)
		m.Field("no-renorm", a.NoRenorm, z.NoRenorm)
		m.Field("capacity-factor", a.CapacityList, z.CapacityList)
		for i, name := range listNames {
			if a.Lists[i] != z.Lists[i] {
				m.Mine = append(m.Mine, fmt.Sprintf("%d --%s values", a.Lists[i], name))
				m.Rank0 = append(m.Rank0, fmt.Sprintf("%d", z.Lists[i]))
			}
		}
		if err := m.Err(r, "flags (only the --tokens values may differ)"); err != nil {
			return err
		}
	}
	return nil
}
