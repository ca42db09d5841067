package bootstrap

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moerun/moerun/internal/transport"
)

// Options configure Init.
type Options struct {
	// Timeout bounds every collective wait, and MPI's start-up (see
	// startupGuard); 0 means transport.DefaultTimeout.
	Timeout time.Duration
	// TimeoutName is what the caller's users call Timeout (a flag such as
	// "--timeout"), for the start-up timeout's message; "" means
	// "Options.Timeout".
	TimeoutName string
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return transport.DefaultTimeout
	}
	return o.Timeout
}

// startupGuard arms the bound on MPI's start-up: MPI_Init_thread waits for
// every rank of the job with no bound of its own, so a rank that dies or
// stops while starting would leave the others in it forever, and a call
// into MPI cannot be abandoned and retried. If stop is not called within d,
// the guard writes why to w and calls exit(1): the process ends (under
// mpirun, the job). stop reports whether it disarmed the guard in time.
func startupGuard(d time.Duration, name string, w io.Writer, exit func(int)) (stop func() bool) {
	if name == "" {
		name = "Options.Timeout"
	}
	return exitUnlessDone(d, fmt.Sprintf("bootstrap: start-up (MPI_Init) did not finish within %s %v: a rank died or is stuck while starting; giving up\n", name, d), w, exit)
}

// BoundCall runs fn, a call into a library that waits for every rank of the
// job with no bound of its own and cannot be abandoned (MPI's start-up,
// NVSHMEM's init and collectives), and ends the process if fn has not
// returned within d: it writes msg to w and calls exit(1) (under mpirun, the
// job ends). A call that returns exactly at d may lose the race to the
// timer, never the reverse.
func BoundCall(d time.Duration, msg string, w io.Writer, exit func(int), fn func()) {
	done := exitUnlessDone(d, msg, w, exit)
	fn()
	done()
}

// exitUnlessDone writes msg to w and calls exit(1) after d unless done is
// called first; done reports whether it came in time. The timer and done
// exclude each other, so a done that returned true is never followed by the
// exit.
func exitUnlessDone(d time.Duration, msg string, w io.Writer, exit func(int)) (done func() bool) {
	var mu sync.Mutex
	finished := false
	t := time.AfterFunc(d, func() {
		mu.Lock()
		defer mu.Unlock()
		if finished {
			return
		}
		finished = true
		fmt.Fprint(w, msg)
		exit(1)
	})
	return func() bool {
		mu.Lock()
		defer mu.Unlock()
		if finished {
			return false
		}
		finished = true
		t.Stop()
		return true
	}
}

// World is this process's place in the job.
type World struct {
	// Comm spans every rank of the job: MPI_COMM_WORLD, or a one-rank
	// transport.Local when MPI is not in use.
	Comm transport.Comm
	// Rank and Size are the world rank and the number of ranks.
	Rank, Size int
	// LocalRank and LocalSize are the rank among the ranks on this host and
	// their number. LocalRank picks the GPU (ChooseDevice).
	LocalRank, LocalSize int
	// LocalRankSource names what gave LocalRank: one of the environment
	// variables OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID, or
	// "hostname" when it was counted from the ranks' host names.
	LocalRankSource string
	// Host is this host's name; Nodes the number of distinct hosts in the job.
	Host  string
	Nodes int
	// MPI is true when MPI was initialised.
	MPI bool

	close func() error
	abort func(code int)
}

// Close ends MPI (MPI_Finalize) once; later calls do nothing. Every rank must
// call it; it returns once all ranks have.
func (w *World) Close() error {
	if w == nil || w.close == nil {
		return nil
	}
	if err := w.close(); err != nil {
		return err
	}
	w.close = nil
	return nil
}

// Abort ends the whole job with exit code code (MPI_Abort on
// MPI_COMM_WORLD); it does not return. A code of 0 becomes 1: an abort is
// never a success. Without MPI the process exits with that code.
func (w *World) Abort(code int) {
	if code == 0 {
		code = 1
	}
	if w != nil && w.abort != nil {
		w.abort(code)
	}
	os.Exit(code)
}

// LaunchSize returns the world size that the environment says this process
// was launched with, and the variable that said it: OMPI_COMM_WORLD_SIZE
// (Open MPI's mpirun), PMI_SIZE (MPICH and Intel MPI's hydra, Slurm's PMI-2),
// SLURM_STEP_NUM_TASKS or SLURM_NTASKS (srun, only inside a job step). It
// returns 1, "" when none is set. PMIx launchers set no size variable; Open
// MPI's mpirun sets OMPI_COMM_WORLD_SIZE alongside its PMIx variables.
func LaunchSize() (n int, source string) { return launchSize(os.Getenv) }

func launchSize(getenv func(string) string) (int, string) {
	vars := []string{"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}
	// SLURM_NTASKS is set for the whole allocation too (in an sbatch script,
	// where this process is not one of several tasks): trust the Slurm
	// variables only inside a job step, that is when srun started us.
	if id := getenv("SLURM_STEP_ID"); id != "" && id != slurmBatchStep {
		vars = append(vars, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
	}
	for _, v := range vars {
		s := strings.TrimSpace(getenv(v))
		if s == "" {
			continue
		}
		if n, err := strconv.Atoi(s); err == nil && n >= 1 {
			return n, v
		}
	}
	return 1, ""
}

// slurmBatchStep is SLURM_BATCH_SCRIPT, the step id of a batch script.
const slurmBatchStep = "4294967294"

// Variables that give a process's node-local rank and node-local size, in the
// order they are trusted.
var (
	localRankVars = []string{"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}
	localSizeVars = []string{"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}
)

// HostnameSource is World.LocalRankSource when the local rank was counted
// from host names.
const HostnameSource = "hostname"

// envInt returns the first of vars that is set, parsed; an unparsable value
// is an error naming the variable.
func envInt(getenv func(string) string, vars []string) (n int, source string, err error) {
	for _, v := range vars {
		s := strings.TrimSpace(getenv(v))
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, v, fmt.Errorf("%s=%q is not a non-negative integer", v, s)
		}
		return n, v, nil
	}
	return 0, "", nil
}

// hostLayout is what the ranks' host names say about the job.
type hostLayout struct {
	LocalRank, LocalSize, Nodes int
}

// countHosts finds rank's place among ranks with the same host name: its
// local rank is the number of lower ranks on the same host.
func countHosts(hosts []string, rank int) hostLayout {
	var l hostLayout
	distinct := map[string]bool{}
	for r, h := range hosts {
		distinct[h] = true
		if h == hosts[rank] {
			if r < rank {
				l.LocalRank++
			}
			l.LocalSize++
		}
	}
	l.Nodes = len(distinct)
	return l
}

// locate fills in w's local rank and size, host and node count. It all-gathers
// the host names over c (every rank, always, so that the collective sequence
// is the same on every rank), and prefers the launcher's variables for the
// local rank and size.
func locate(w *World, c transport.Comm, getenv func(string) string, host string) error {
	w.Host = host
	all, err := c.AllGather([]byte(host))
	if err != nil {
		return fmt.Errorf("bootstrap: gather host names: %w", err)
	}
	hosts := make([]string, len(all))
	for i, b := range all {
		hosts[i] = string(b)
	}
	l := countHosts(hosts, c.Rank())
	w.Nodes = l.Nodes
	w.LocalRank, w.LocalSize, w.LocalRankSource = l.LocalRank, l.LocalSize, HostnameSource

	lr, src, err := envInt(getenv, localRankVars)
	if err != nil {
		return fmt.Errorf("bootstrap: local rank: %w", err)
	}
	if src != "" {
		w.LocalRank, w.LocalRankSource = lr, src
	}
	ls, lsrc, err := envInt(getenv, localSizeVars)
	if err != nil {
		return fmt.Errorf("bootstrap: local size: %w", err)
	}
	if lsrc != "" {
		w.LocalSize = ls
	}
	if w.LocalSize < 1 || w.LocalRank >= w.LocalSize {
		return fmt.Errorf("bootstrap: rank %d: local rank %d (from %s) is not below the local size %d (%s)",
			c.Rank(), w.LocalRank, w.LocalRankSource, w.LocalSize, orDefault(lsrc, "ranks with host name "+strconv.Quote(host)))
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// hostname is os.Hostname with a fallback that still tells hosts apart as
// well as it can.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown-host"
	}
	return h
}

// ChooseDevice picks the GPU, an index among the visible devices, for the
// rank with local rank localRank. With one visible GPU (Slurm
// --gpus-per-task, a per-rank CUDA_VISIBLE_DEVICES) it is that one;
// otherwise it is the local rank's, and a local rank with no GPU of its own is
// an error.
func ChooseDevice(localRank, visible int) (int, error) {
	return chooseDevice(localRank, visible, os.Getenv("CUDA_VISIBLE_DEVICES"))
}

func chooseDevice(localRank, visible int, cvd string) (int, error) {
	cvdNote := "CUDA_VISIBLE_DEVICES is not set"
	if cvd != "" {
		cvdNote = "CUDA_VISIBLE_DEVICES=" + cvd
	}
	switch {
	case localRank < 0:
		return 0, fmt.Errorf("choose GPU: local rank %d is negative", localRank)
	case visible < 1:
		return 0, fmt.Errorf("choose GPU: local rank %d sees no GPU (%s)", localRank, cvdNote)
	case visible == 1:
		return 0, nil
	case localRank < visible:
		return localRank, nil
	}
	return 0, fmt.Errorf("choose GPU: local rank %d has no GPU of its own: this rank sees %d GPUs (%s); start at most %d ranks per node, or give each rank one GPU",
		localRank, visible, cvdNote, visible)
}

// NVLS (NVLink SHARP / multicast) variables that DisableNVLS sets, with the
// values that turn it off.
var nvlsOff = [][2]string{
	{"NVSHMEM_DISABLE_NVLS", "1"},
	{"NCCL_NVLS_ENABLE", "0"},
	{"TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"},
}

// DisableNVLS turns NVLink multicast off for NVSHMEM, NCCL and PyTorch's
// symmetric memory, in this process's environment (seen by C libraries
// loaded later too), except where the user set a variable already. This is a
// safety rule: NVLink multicast can take shared GPUs out of service for a
// day. Call it before NVSHMEM or NCCL is initialised.
func DisableNVLS() {
	for _, kv := range nvlsOff {
		if _, set := os.LookupEnv(kv[0]); !set {
			os.Setenv(kv[0], kv[1])
		}
	}
}
