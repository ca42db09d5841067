// Package launcher starts the ranks of a moerun job through mpirun or srun.
//
// Plan turns what the user asked for (Options) and what this machine offers (Host) into
// the exact command to run (Command); it is pure, so every decision it takes (root,
// oversubscription, containers without ssh or without cross-memory attach, SLURM, the
// environment the ranks need) is unit-tested. Run starts that command, streams its
// output, forwards signals, bounds every wait, and on failure says which rank was lost
// and what the first error was.
package launcher

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Launcher modes.
const (
	ViaAuto   = "auto"
	ViaMPIRun = "mpirun"
	ViaSrun   = "srun"
)

// DefaultRanks is the number of ranks when -n is not given and no GPU is visible.
const DefaultRanks = 4

// SafetyEnv are set in the ranks' environment unless the user set them already:
// NVLink multicast (NVLS) can take GPUs shared with other jobs out of service.
var SafetyEnv = []string{
	"NVSHMEM_DISABLE_NVLS=1",
	"NCCL_NVLS_ENABLE=0",
	"TORCH_SYMM_MEM_DISABLE_MULTICAST=1",
}

// Options is what the user asked for.
type Options struct {
	N       int      // number of ranks; 0: the job's task count under srun, else Host.GPUs, else DefaultRanks
	Via     string   // ViaAuto (or ""), ViaMPIRun or ViaSrun
	MPIArgs []string // raw options for mpirun/srun, placed after ours and before the program
	Self    string   // the rank program (normally this moerun binary)
	Args    []string // the rank program's arguments: the subcommand and its flags
}

// Host is what this machine offers; LocalHost fills it in.
type Host struct {
	LookPath func(file string) (string, error) // exec.LookPath
	Euid     int                               // os.Geteuid()
	Cores    int                               // cores Open MPI counts as slots on this node
	GPUs     int                               // local GPUs (GPUCount)
	Env      []string                          // os.Environ()
	// CMA is whether cross-memory attach (process_vm_readv) is permitted. Open MPI's
	// shared-memory transport (vader) uses it for large messages; containers often
	// forbid it (seccomp, no CAP_SYS_PTRACE, Yama), and every large message then fails.
	CMA bool
}

// Command is the planned launcher command line.
type Command struct {
	Via   string   // ViaMPIRun or ViaSrun
	Path  string   // resolved path of mpirun or srun
	Args  []string // full argv; Args[0] is the name as typed ("mpirun", "srun")
	Env   []string // the launcher's complete environment
	Added []string // NAME=value entries Plan added to Env (shown by String)
	N     int      // ranks; 0 when srun takes the job's task count
}

// String is the command as one shell-quoted line, prefixed by the environment
// variables that Plan added, so that it can be pasted into a shell.
func (c Command) String() string {
	parts := make([]string, 0, len(c.Added)+len(c.Args))
	for _, kv := range c.Added {
		name, value, _ := strings.Cut(kv, "=")
		parts = append(parts, name+"="+Quote(value))
	}
	for _, a := range c.Args {
		parts = append(parts, Quote(a))
	}
	return strings.Join(parts, " ")
}

// NotFoundError is Plan's error when mpirun or srun is not on PATH.
type NotFoundError struct {
	Program string // what was looked for
	Hint    string // how to get it
	Err     error  // LookPath's error
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s not found: looked for %q on PATH; %s", e.Program, e.Program, e.Hint)
}

func (e *NotFoundError) Unwrap() error { return e.Err }

// Plan decides how to start o.N ranks of o.Self on host h. It runs nothing.
func Plan(o Options, h Host) (Command, error) {
	if o.Self == "" {
		return Command{}, errors.New("no rank program given")
	}
	if len(o.Args) == 0 {
		return Command{}, errors.New("no subcommand given (for example: moerun launch -n 4 -- bench --verify)")
	}
	if o.N < 0 {
		return Command{}, fmt.Errorf("-n %d: the number of ranks must be positive", o.N)
	}
	look := h.LookPath
	if look == nil {
		look = func(string) (string, error) { return "", errors.New("no LookPath") }
	}
	env := newEnv(h.Env)
	inSlurm := env.get("SLURM_JOB_ID") != ""

	via := o.Via
	switch via {
	case "", ViaAuto:
		via = ViaMPIRun
		if inSlurm {
			if _, err := look("srun"); err == nil {
				via = ViaSrun
			}
		}
	case ViaMPIRun, ViaSrun:
	default:
		return Command{}, fmt.Errorf("--via %q: want auto, mpirun or srun", o.Via)
	}

	path, err := look(via)
	if err != nil {
		if via == ViaSrun {
			return Command{}, &NotFoundError{Program: via, Err: err, Hint: "srun comes with SLURM's client " +
				"tools (e.g. apt-get install slurm-client) and runs inside an allocation; or use --via mpirun"}
		}
		return Command{}, &NotFoundError{Program: via, Err: err, Hint: "install Open MPI (e.g. apt-get install " +
			"openmpi-bin, or dnf install openmpi and module load mpi), or use --via srun inside a SLURM allocation"}
	}

	// The ranks' environment: the safety settings unless the user chose otherwise.
	var added []string
	for _, kv := range SafetyEnv {
		name, _, _ := strings.Cut(kv, "=")
		if _, ok := env.lookup(name); !ok {
			env.set(kv)
			added = append(added, kv)
		}
	}

	n := o.N
	if n == 0 && !(via == ViaSrun && inSlurm && env.get("SLURM_NTASKS") != "") {
		n = h.GPUs
		if n <= 0 {
			n = DefaultRanks
		}
	}

	var args []string
	switch via {
	case ViaSrun:
		args = []string{"srun"}
		if n > 0 {
			args = append(args, "--ntasks="+strconv.Itoa(n))
		}
		args = append(args, "--kill-on-bad-exit=1") // one failing rank ends the step
		// Ctrl-C ends the step at once (srun only reports status on a single SIGINT).
		args = append(args, "--quit-on-interrupt")
		if !hasOpt(o.MPIArgs, "--cpu-bind", "--cpu_bind") {
			args = append(args, "--cpu-bind=none") // ranks drive GPUs: no core binding
		}
		if !hasOpt(o.MPIArgs, "--export") {
			// sbatch --export=NONE would otherwise keep the safety settings from the ranks.
			args = append(args, "--export=ALL")
		}
	default:
		args = []string{"mpirun", "-np", strconv.Itoa(n)}
		if h.Euid == 0 && !hasOpt(o.MPIArgs, "--allow-run-as-root") {
			args = append(args, "--allow-run-as-root") // Open MPI refuses root otherwise
		}
		if n > h.Cores && !hasOpt(o.MPIArgs, "--oversubscribe", "-oversubscribe") {
			args = append(args, "--oversubscribe") // Open MPI gives one slot per core
		}
		if !hasOpt(o.MPIArgs, "--bind-to", "-bind-to") {
			args = append(args, "--bind-to", "none") // ranks drive GPUs: no core binding
		}
		mca := func(key, value string) {
			if !hasMCA(o.MPIArgs, key) {
				if _, ok := env.lookup("OMPI_MCA_" + key); !ok {
					args = append(args, "--mca", key, value)
				}
			}
		}
		// The openib BTL is superseded by UCX and only warns on InfiniBand hosts.
		mca("btl", "^openib")
		if !h.CMA {
			// Without cross-memory attach, vader fails every large message
			// ("Read -1, expected N, errno = 1"): copy through shared memory instead.
			mca("btl_vader_single_copy_mechanism", "none")
		}
		if !inSlurm && !hasOpt(o.MPIArgs, "--host", "-host", "-H", "--hostfile", "-hostfile", "--machinefile", "-machinefile") {
			_, sshErr := look("ssh")
			_, rshErr := look("rsh")
			if sshErr != nil && rshErr != nil {
				// mpirun refuses to start, even on one node, when it finds no ssh or
				// rsh (minimal containers): the isolated launcher starts local ranks only.
				mca("plm", "isolated")
			}
		}
		for _, name := range exported(env) {
			args = append(args, "-x", name)
		}
	}
	args = append(args, o.MPIArgs...)
	args = append(args, o.Self)
	args = append(args, o.Args...)
	return Command{Via: via, Path: path, Args: args, Env: env.list(), Added: added, N: n}, nil
}

// exported are the variables mpirun passes to the ranks with -x (local ranks inherit
// mpirun's environment anyway; -x carries them to other nodes).
func exported(env *envList) []string {
	var safety, rest []string
	seen := map[string]bool{}
	for _, kv := range SafetyEnv {
		name, _, _ := strings.Cut(kv, "=")
		if _, ok := env.lookup(name); ok {
			safety = append(safety, name)
		}
	}
	for _, kv := range env.kvs {
		name, _, _ := strings.Cut(kv, "=")
		if name == "" || isSafety(name) || seen[name] {
			continue
		}
		if strings.HasPrefix(name, "MOERUN_") || strings.HasPrefix(name, "NVSHMEM_") || name == "CUDA_VISIBLE_DEVICES" {
			rest = append(rest, name)
			seen[name] = true
		}
	}
	sort.Strings(rest)
	return append(safety, rest...)
}

func isSafety(name string) bool {
	for _, kv := range SafetyEnv {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// hasOpt reports whether args contain one of the options, as "--opt", "--opt=value".
func hasOpt(args []string, names ...string) bool {
	for _, a := range args {
		for _, n := range names {
			if a == n || strings.HasPrefix(a, n+"=") {
				return true
			}
		}
	}
	return false
}

// hasMCA reports whether args set the MCA parameter key.
func hasMCA(args []string, key string) bool {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--mca", "-mca", "--gmca", "-gmca":
			if args[i+1] == key {
				return true
			}
		}
	}
	return false
}

// envList is an environment in os.Environ form; later duplicates win, as in exec.
type envList struct{ kvs []string }

func newEnv(kvs []string) *envList { return &envList{kvs: append([]string(nil), kvs...)} }

func (e *envList) lookup(name string) (string, bool) {
	for i := len(e.kvs) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(e.kvs[i], "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

func (e *envList) get(name string) string { v, _ := e.lookup(name); return v }

func (e *envList) set(kv string) { e.kvs = append(e.kvs, kv) }

func (e *envList) list() []string { return append([]string(nil), e.kvs...) }
