package launcher

import (
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// lookIn returns a LookPath that finds only the named programs, in /usr/bin.
func lookIn(names ...string) func(string) (string, error) {
	return func(file string) (string, error) {
		for _, n := range names {
			if n == file {
				return "/usr/bin/" + file, nil
			}
		}
		return "", exec.ErrNotFound
	}
}

const self = "/opt/moerun/moerun"

var bench = []string{"bench", "--backend", "cpu", "--verify"}

// safety is what Plan adds to mpirun's options for the safety variables.
var safetyX = []string{"-x", "NVSHMEM_DISABLE_NVLS", "-x", "NCCL_NVLS_ENABLE", "-x", "TORCH_SYMM_MEM_DISABLE_MULTICAST"}

func cat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestPlan(t *testing.T) {
	root := Host{LookPath: lookIn("mpirun", "ssh"), Euid: 0, Cores: 2, GPUs: 0, CMA: true, Env: []string{"PATH=/usr/bin"}}
	user := root
	user.Euid = 1000
	big := user
	big.Cores = 64
	noCMA := big
	noCMA.CMA = false
	noSSH := big
	noSSH.LookPath = lookIn("mpirun")
	gpus := big
	gpus.GPUs = 8
	slurm := big
	slurm.LookPath = lookIn("mpirun", "srun", "ssh")
	slurm.Env = []string{"PATH=/usr/bin", "SLURM_JOB_ID=42", "SLURM_NTASKS=16"}
	slurmNoSrun := slurm
	slurmNoSrun.LookPath = lookIn("mpirun", "ssh")
	envHost := big
	envHost.Env = []string{"PATH=/usr/bin", "MOERUN_LOG=debug", "CUDA_VISIBLE_DEVICES=0,1", "NVSHMEM_DEBUG=WARN",
		"NCCL_NVLS_ENABLE=1", "HOME=/root", "MOERUN_LOG=info", "OMPI_MCA_btl=self,vader"}

	base := []string{"--bind-to", "none", "--mca", "btl", "^openib"}
	tests := []struct {
		name  string
		o     Options
		h     Host
		via   string
		n     int
		args  []string
		added []string
	}{
		{
			name: "root oversubscribed: the CI machine, 2 cores and 4 ranks",
			o:    Options{N: 4, Self: self, Args: bench}, h: root, via: ViaMPIRun, n: 4,
			args: cat([]string{"mpirun", "-np", "4", "--allow-run-as-root", "--oversubscribe"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "non-root within the cores",
			o:    Options{N: 2, Self: self, Args: bench}, h: user, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "non-root oversubscribed",
			o:    Options{N: 3, Self: self, Args: bench}, h: user, via: ViaMPIRun, n: 3,
			args: cat([]string{"mpirun", "-np", "3", "--oversubscribe"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "no -n, no GPU: 4 ranks",
			o:    Options{Self: self, Args: bench}, h: big, via: ViaMPIRun, n: 4,
			args: cat([]string{"mpirun", "-np", "4"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "no -n: one rank per GPU",
			o:    Options{Self: self, Args: bench}, h: gpus, via: ViaMPIRun, n: 8,
			args: cat([]string{"mpirun", "-np", "8"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "container without cross-memory attach",
			o:    Options{N: 2, Self: self, Args: bench}, h: noCMA, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, []string{"--mca", "btl_vader_single_copy_mechanism", "none"}, safetyX, []string{self}, bench),
		},
		{
			name: "container without ssh or rsh",
			o:    Options{N: 2, Self: self, Args: bench}, h: noSSH, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, []string{"--mca", "plm", "isolated"}, safetyX, []string{self}, bench),
		},
		{
			name: "no ssh, but the user gives hosts",
			o:    Options{N: 2, Self: self, Args: bench, MPIArgs: []string{"--hostfile", "hosts"}}, h: noSSH, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, safetyX, []string{"--hostfile", "hosts", self}, bench),
		},
		{
			name: "environment: MOERUN_*, CUDA_VISIBLE_DEVICES, NVSHMEM_* go with -x; the user's choices stay",
			o:    Options{N: 2, Self: self, Args: bench}, h: envHost, via: ViaMPIRun, n: 2,
			// OMPI_MCA_btl in the environment: no --mca btl (it would override the user's).
			args: cat([]string{"mpirun", "-np", "2", "--bind-to", "none",
				"-x", "NVSHMEM_DISABLE_NVLS", "-x", "NCCL_NVLS_ENABLE", "-x", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
				"-x", "CUDA_VISIBLE_DEVICES", "-x", "MOERUN_LOG", "-x", "NVSHMEM_DEBUG", self}, bench),
			added: []string{"NVSHMEM_DISABLE_NVLS=1", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1"},
		},
		{
			name: "user options replace ours, and come last",
			o:    Options{N: 2, Self: self, Args: bench, MPIArgs: []string{"--bind-to", "socket", "--mca", "btl", "self,tcp", "--oversubscribe"}},
			h:    root, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2", "--allow-run-as-root"}, safetyX,
				[]string{"--bind-to", "socket", "--mca", "btl", "self,tcp", "--oversubscribe", self}, bench),
		},
		{
			name: "inside SLURM with srun: srun, the job's task count",
			o:    Options{Self: self, Args: bench}, h: slurm, via: ViaSrun, n: 0,
			args: cat([]string{"srun", "--kill-on-bad-exit=1", "--quit-on-interrupt", "--cpu-bind=none", "--export=ALL", self}, bench),
		},
		{
			name: "inside SLURM with srun and -n",
			o:    Options{N: 8, Self: self, Args: bench, MPIArgs: []string{"--mpi=pmix"}}, h: slurm, via: ViaSrun, n: 8,
			args: cat([]string{"srun", "--ntasks=8", "--kill-on-bad-exit=1", "--quit-on-interrupt", "--cpu-bind=none", "--export=ALL", "--mpi=pmix", self}, bench),
		},
		{
			name: "inside SLURM, --via mpirun",
			o:    Options{N: 2, Via: ViaMPIRun, Self: self, Args: bench}, h: slurm, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, safetyX, []string{self}, bench),
		},
		{
			name: "inside SLURM without srun: mpirun",
			o:    Options{N: 2, Self: self, Args: bench}, h: slurmNoSrun, via: ViaMPIRun, n: 2,
			args: cat([]string{"mpirun", "-np", "2"}, base, safetyX, []string{self}, bench),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Plan(tc.o, tc.h)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if c.Via != tc.via || c.N != tc.n {
				t.Errorf("via %q n %d, want %q %d", c.Via, c.N, tc.via, tc.n)
			}
			if c.Path != "/usr/bin/"+tc.via {
				t.Errorf("path %q", c.Path)
			}
			if !reflect.DeepEqual(c.Args, tc.args) {
				t.Errorf("args\n got %q\nwant %q", c.Args, tc.args)
			}
			added := tc.added
			if added == nil {
				added = SafetyEnv
			}
			if !reflect.DeepEqual(c.Added, added) {
				t.Errorf("added %q, want %q", c.Added, added)
			}
			// The child's environment has every safety variable, the user's value first.
			env := newEnv(c.Env)
			for _, kv := range SafetyEnv {
				name, value, _ := strings.Cut(kv, "=")
				want := value
				if v, ok := newEnv(tc.h.Env).lookup(name); ok {
					want = v
				}
				if got := env.get(name); got != want {
					t.Errorf("%s=%q in the child, want %q", name, got, want)
				}
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	h := Host{LookPath: lookIn("ssh"), Cores: 8, CMA: true}
	_, err := Plan(Options{N: 2, Self: self, Args: bench}, h)
	var nf *NotFoundError
	if !errors.As(err, &nf) || nf.Program != "mpirun" || !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("missing mpirun: %v", err)
	}
	for _, want := range []string{`"mpirun"`, "PATH", "apt-get install openmpi-bin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	_, err = Plan(Options{N: 2, Via: ViaSrun, Self: self, Args: bench}, h)
	if !errors.As(err, &nf) || nf.Program != "srun" || !strings.Contains(err.Error(), `"srun"`) {
		t.Fatalf("missing srun: %v", err)
	}
	ok := Host{LookPath: lookIn("mpirun", "ssh"), Cores: 8}
	for _, o := range []Options{
		{N: 2, Self: self},                          // no subcommand
		{N: 2, Args: bench},                         // no program
		{N: -1, Self: self, Args: bench},            // bad N
		{N: 2, Via: "pbs", Self: self, Args: bench}, // bad mode
	} {
		if _, err := Plan(o, ok); err == nil {
			t.Errorf("Plan(%+v) succeeded", o)
		}
	}
}

func TestCommandString(t *testing.T) {
	c := Command{
		Args:  []string{"mpirun", "-np", "2", "--mca", "btl", "^openib", self, "bench", "--name", "it's a b", ""},
		Added: []string{"NCCL_NVLS_ENABLE=0", "X=a b"},
	}
	want := `NCCL_NVLS_ENABLE=0 X='a b' mpirun -np 2 --mca btl '^openib' /opt/moerun/moerun bench --name 'it'\''s a b' ''`
	if got := c.String(); got != want {
		t.Errorf("String()\n got %s\nwant %s", got, want)
	}
	// The line reads back as the same words.
	words, err := SplitWords(c.String())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(words[2:], c.Args) {
		t.Errorf("round trip: %q", words)
	}
}

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  --mca btl self,tcp  ", []string{"--mca", "btl", "self,tcp"}},
		{`-x 'A B' "C \"D\"" e\ f`, []string{"-x", "A B", `C "D"`, "e f"}},
		{`--map-by ppr:4:node''x`, []string{"--map-by", "ppr:4:nodex"}},
	} {
		got, err := SplitWords(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitWords(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`'open`, `"open`} {
		if _, err := SplitWords(bad); err == nil {
			t.Errorf("SplitWords(%q) accepted", bad)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	if got := parseCPUList("0-3,8,10-11"); !reflect.DeepEqual(got, []int{0, 1, 2, 3, 8, 10, 11}) {
		t.Errorf("got %v", got)
	}
	if got := parseCPUList("3-1"); got != nil {
		t.Errorf("bad range: %v", got)
	}
	if c := Cores(); c < 1 {
		t.Errorf("Cores() = %d", c)
	}
}
