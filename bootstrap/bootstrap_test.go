package bootstrap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

// envMap turns a map into a getenv function.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// onRanks runs f on n ranks of a transport.Local, one goroutine each, and
// returns what each returned.
func onRanks(t *testing.T, n int, f func(c transport.Comm) error) []error {
	t.Helper()
	return transport.NewLocal(n, 5*time.Second).Run(f)
}

func TestLaunchSizeReadsTheLauncherVariables(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		n    int
		src  string
	}{
		{"nothing", nil, 1, ""},
		{"open mpi", map[string]string{"OMPI_COMM_WORLD_SIZE": "4"}, 4, "OMPI_COMM_WORLD_SIZE"},
		{"hydra", map[string]string{"PMI_SIZE": "8"}, 8, "PMI_SIZE"},
		{"open mpi wins over slurm", map[string]string{"OMPI_COMM_WORLD_SIZE": "2", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "16"}, 2, "OMPI_COMM_WORLD_SIZE"},
		{"srun step", map[string]string{"SLURM_STEP_ID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8"}, 4, "SLURM_STEP_NUM_TASKS"},
		{"srun step, old slurm", map[string]string{"SLURM_STEP_ID": "0", "SLURM_NTASKS": "8"}, 8, "SLURM_NTASKS"},
		{"sbatch script is not a step", map[string]string{"SLURM_NTASKS": "8"}, 1, ""},
		{"batch step id", map[string]string{"SLURM_STEP_ID": "4294967294", "SLURM_NTASKS": "8"}, 1, ""},
		{"garbage skipped", map[string]string{"OMPI_COMM_WORLD_SIZE": "x", "PMI_SIZE": "3"}, 3, "PMI_SIZE"},
		{"zero skipped", map[string]string{"OMPI_COMM_WORLD_SIZE": "0"}, 1, ""},
		{"spaces", map[string]string{"PMI_SIZE": " 2 "}, 2, "PMI_SIZE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, src := launchSize(envMap(tc.env))
			if n != tc.n || src != tc.src {
				t.Errorf("launchSize = %d, %q; want %d, %q", n, src, tc.n, tc.src)
			}
		})
	}
}

func TestLocalRankFromEnvironmentOrHostnames(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hosts     []string
		env       func(r int) map[string]string
		rank      []int
		size      []int
		source    string
		nodes     int
		errSubstr string
	}{
		{
			name:   "hostnames, one node",
			hosts:  []string{"a", "a", "a"},
			rank:   []int{0, 1, 2},
			size:   []int{3, 3, 3},
			source: HostnameSource,
			nodes:  1,
		},
		{
			name:   "hostnames, two nodes interleaved",
			hosts:  []string{"a", "b", "a", "b", "b"},
			rank:   []int{0, 0, 1, 1, 2},
			size:   []int{2, 3, 2, 3, 3},
			source: HostnameSource,
			nodes:  2,
		},
		{
			name:  "open mpi",
			hosts: []string{"a", "a"},
			env: func(r int) map[string]string {
				return map[string]string{"OMPI_COMM_WORLD_LOCAL_RANK": fmt.Sprint(1 - r), "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_LOCALID": "7"}
			},
			rank:   []int{1, 0},
			size:   []int{2, 2},
			source: "OMPI_COMM_WORLD_LOCAL_RANK",
			nodes:  1,
		},
		{
			name:  "hydra",
			hosts: []string{"a", "a"},
			env: func(r int) map[string]string {
				return map[string]string{"MPI_LOCALRANKID": fmt.Sprint(r), "MPI_LOCALNRANKS": "2"}
			},
			rank:   []int{0, 1},
			size:   []int{2, 2},
			source: "MPI_LOCALRANKID",
			nodes:  1,
		},
		{
			name:  "slurm rank, size from hostnames",
			hosts: []string{"a", "a", "b"},
			env: func(r int) map[string]string {
				return map[string]string{"SLURM_LOCALID": fmt.Sprint([]int{0, 1, 0}[r])}
			},
			rank:   []int{0, 1, 0},
			size:   []int{2, 2, 1},
			source: "SLURM_LOCALID",
			nodes:  2,
		},
		{
			name:      "unparsable",
			hosts:     []string{"a", "a"},
			env:       func(r int) map[string]string { return map[string]string{"OMPI_COMM_WORLD_LOCAL_RANK": "one"} },
			errSubstr: `OMPI_COMM_WORLD_LOCAL_RANK="one" is not a non-negative integer`,
		},
		{
			name:      "rank beyond size",
			hosts:     []string{"a", "a"},
			env:       func(r int) map[string]string { return map[string]string{"SLURM_LOCALID": "5"} },
			errSubstr: "local rank 5 (from SLURM_LOCALID) is not below the local size 2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.hosts)
			worlds := make([]*World, n)
			errs := onRanks(t, n, func(c transport.Comm) error {
				env := map[string]string{}
				if tc.env != nil {
					env = tc.env(c.Rank())
				}
				w := &World{Rank: c.Rank(), Size: n}
				worlds[c.Rank()] = w
				return locate(w, c, envMap(env), tc.hosts[c.Rank()])
			})
			for r, err := range errs {
				if tc.errSubstr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
						t.Errorf("rank %d: error %v, want one containing %q", r, err, tc.errSubstr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
				w := worlds[r]
				if w.LocalRank != tc.rank[r] || w.LocalSize != tc.size[r] || w.LocalRankSource != tc.source || w.Nodes != tc.nodes || w.Host != tc.hosts[r] {
					t.Errorf("rank %d: local %d/%d from %s, %d nodes, host %s; want %d/%d from %s, %d nodes, host %s",
						r, w.LocalRank, w.LocalSize, w.LocalRankSource, w.Nodes, w.Host, tc.rank[r], tc.size[r], tc.source, tc.nodes, tc.hosts[r])
				}
			}
		})
	}
}

func TestChooseDevicePicksTheLocalRanksGPU(t *testing.T) {
	for _, tc := range []struct {
		localRank, visible int
		cvd                string
		want               int
		errSubstr          string
	}{
		{0, 1, "", 0, ""},
		{3, 1, "5", 0, ""}, // one GPU per rank (srun --gpus-per-task): that one
		{0, 4, "", 0, ""},
		{3, 4, "", 3, ""},
		{2, 8, "0,1,2,3,4,5,6,7", 2, ""},
		{4, 4, "", 0, "local rank 4 has no GPU of its own: this rank sees 4 GPUs (CUDA_VISIBLE_DEVICES is not set)"},
		{2, 2, "0,1", 0, "local rank 2 has no GPU of its own: this rank sees 2 GPUs (CUDA_VISIBLE_DEVICES=0,1)"},
		{0, 0, "", 0, "local rank 0 sees no GPU"},
		{-1, 4, "", 0, "local rank -1 is negative"},
	} {
		t.Run(fmt.Sprintf("rank%d_of_%d", tc.localRank, tc.visible), func(t *testing.T) {
			got, err := chooseDevice(tc.localRank, tc.visible, tc.cvd)
			if tc.errSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
					t.Fatalf("chooseDevice(%d, %d) = %d, %v; want an error containing %q", tc.localRank, tc.visible, got, err, tc.errSubstr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("chooseDevice(%d, %d) = %d, %v; want %d", tc.localRank, tc.visible, got, err, tc.want)
			}
		})
	}
	t.Run("reads CUDA_VISIBLE_DEVICES", func(t *testing.T) {
		t.Setenv("CUDA_VISIBLE_DEVICES", "2,3")
		if _, err := ChooseDevice(5, 2); err == nil || !strings.Contains(err.Error(), "CUDA_VISIBLE_DEVICES=2,3") {
			t.Fatalf("ChooseDevice(5, 2): %v; want an error naming CUDA_VISIBLE_DEVICES=2,3", err)
		}
	})
}

func TestCheckAgreementNamesTheFirstRankThatDiffers(t *testing.T) {
	base := config.Default().Static()
	for _, tc := range []struct {
		name      string
		n         int
		change    func(r int, st *config.Static, ver *string)
		errSubstr string
	}{
		{"all agree", 4, nil, ""},
		{"one rank", 1, nil, ""},
		{"hidden", 4, func(r int, st *config.Static, _ *string) {
			if r == 2 {
				st.Hidden = 1024
			}
		}, "rank 2 runs hidden=1024, rank 0 runs hidden=2048"},
		{"version before config", 3, func(r int, st *config.Static, ver *string) {
			if r >= 1 {
				*ver = "v2"
				st.Experts = 64
			}
		}, "rank 1 runs version v2, rank 0 runs v1"},
		{"first of several", 4, func(r int, st *config.Static, _ *string) {
			if r == 3 {
				st.Seed = 9
			}
			if r == 1 {
				st.DType = config.BF16
				st.TopK = 4
			}
		}, "rank 1 runs topk=4 dtype=bf16, rank 0 runs topk=2 dtype=fp32"},
		{"count of others", 4, func(r int, st *config.Static, _ *string) {
			if r > 0 {
				st.MaxTokens = 16
			}
		}, "(and 2 more ranks differ from rank 0)"},
		{"ffn and ffn-hidden", 2, func(r int, st *config.Static, _ *string) {
			if r == 1 {
				st.FFN, st.FFNHidden = config.FFNSwiGLU, 512
			}
		}, "rank 1 runs ffn-hidden=512 ffn=swiglu, rank 0 runs ffn-hidden=2048 ffn=relu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := onRanks(t, tc.n, func(c transport.Comm) error {
				st, ver := base, "v1"
				if tc.change != nil {
					tc.change(c.Rank(), &st, &ver)
				}
				return CheckAgreement(c, st, ver)
			})
			for r, err := range errs {
				if tc.errSubstr == "" {
					if err != nil {
						t.Errorf("rank %d: %v", r, err)
					}
					continue
				}
				// Every rank must see the same error.
				if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
					t.Errorf("rank %d: error %v, want one containing %q", r, err, tc.errSubstr)
				}
			}
		})
	}
}

func TestBroadcastIDReachesEveryRankOrFailsEverywhere(t *testing.T) {
	var want [IDSize]byte
	for i := range want {
		want[i] = byte(3*i + 1)
	}
	long := strings.Repeat("x", 1000)
	for _, tc := range []struct {
		name      string
		mk        func() ([IDSize]byte, error)
		errSubstr string
	}{
		{"ok", func() ([IDSize]byte, error) { return want, nil }, ""},
		{"maker fails", func() ([IDSize]byte, error) { return want, errors.New("nvshmemx_get_uniqueid: error 7") }, "nvshmemx_get_uniqueid: error 7"},
		{"no maker", nil, "no id maker given"},
		{"maker panics", func() ([IDSize]byte, error) { panic("boom") }, "panic: boom"},
		{"long message", func() ([IDSize]byte, error) { return want, errors.New(long) }, "xxx..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 4
			ids := make([][IDSize]byte, n)
			errs := onRanks(t, n, func(c transport.Comm) error {
				mk := tc.mk
				if c.Rank() != 0 {
					mk = func() ([IDSize]byte, error) {
						panic("make called on a rank other than 0")
					}
				}
				var err error
				ids[c.Rank()], err = BroadcastID(c, mk)
				return err
			})
			for r, err := range errs {
				if tc.errSubstr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
						t.Errorf("rank %d: error %v, want one containing %q", r, err, tc.errSubstr)
					}
					if r > 0 && err != nil && !strings.Contains(err.Error(), "rank 0 failed to make the id") {
						t.Errorf("rank %d: error %v does not say that rank 0 failed", r, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
				if ids[r] != want {
					t.Errorf("rank %d got id %x, want %x", r, ids[r][:8], want[:8])
				}
			}
		})
	}
}

func TestBroadcastIDTimesOutWhenRankZeroIsMissing(t *testing.T) {
	l := transport.NewLocal(2, 100*time.Millisecond)
	_, err := BroadcastID(l.Rank(1), nil)
	if !errors.Is(err, transport.ErrTimeout) {
		t.Fatalf("error %v, want one wrapping transport.ErrTimeout", err)
	}
}

func TestCheckUniqueGPUFindsSharedGPUs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hosts     []string
		uuids     []string
		errSubstr string
	}{
		{"distinct", []string{"a", "a", "b", "b"}, []string{"GPU-0", "GPU-1", "GPU-0", "GPU-1"}, ""},
		{"shared", []string{"a", "a", "a"}, []string{"GPU-0", "GPU-1", "GPU-0"}, "ranks 0 and 2 would both use GPU GPU-0 on host a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := onRanks(t, len(tc.hosts), func(c transport.Comm) error {
				return CheckUniqueGPU(c, tc.hosts[c.Rank()], tc.uuids[c.Rank()])
			})
			for r, err := range errs {
				if tc.errSubstr == "" && err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
				if tc.errSubstr != "" && (err == nil || !strings.Contains(err.Error(), tc.errSubstr)) {
					t.Errorf("rank %d: error %v, want one containing %q", r, err, tc.errSubstr)
				}
			}
		})
	}
}

func TestDisableNVLSKeepsWhatTheUserSet(t *testing.T) {
	for _, kv := range nvlsOff {
		t.Setenv(kv[0], "") // restored after the test
		os.Unsetenv(kv[0])
	}
	t.Setenv("NCCL_NVLS_ENABLE", "1")
	DisableNVLS()
	for k, want := range map[string]string{
		"NVSHMEM_DISABLE_NVLS":             "1",
		"NCCL_NVLS_ENABLE":                 "1", // the user's choice stays
		"TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
	} {
		if got := os.Getenv(k); got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
}

func TestCountHosts(t *testing.T) {
	l := countHosts([]string{"x"}, 0)
	if l != (hostLayout{LocalRank: 0, LocalSize: 1, Nodes: 1}) {
		t.Fatalf("countHosts of one rank = %+v", l)
	}
}

// The start-up bound fires once, with the caller's name for the timeout and
// exit code 1, unless it is stopped in time.
func TestStartupGuard(t *testing.T) {
	var out bytes.Buffer
	codes := make(chan int, 2)
	startupGuard(10*time.Millisecond, "--timeout", &out, func(code int) { codes <- code })
	select {
	case code := <-codes:
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the guard did not fire within 5 s of a 10 ms bound")
	}
	if want := "bootstrap: start-up (MPI_Init) did not finish within --timeout 10ms: a rank died or is stuck while starting"; !strings.Contains(out.String(), want) {
		t.Errorf("message %q lacks %q", out.String(), want)
	}

	var quiet bytes.Buffer
	stop := startupGuard(50*time.Millisecond, "", &quiet, func(code int) { codes <- code })
	if !stop() {
		t.Fatal("stop() = false right after arming a 50 ms guard")
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case code := <-codes:
		t.Errorf("a stopped guard exited with code %d", code)
	default:
	}
	if quiet.Len() != 0 {
		t.Errorf("a stopped guard wrote %q", quiet.String())
	}
}

func TestStartupGuardDefaultName(t *testing.T) {
	var out bytes.Buffer
	done := make(chan struct{})
	startupGuard(time.Millisecond, "", &out, func(int) { close(done) })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the guard did not fire")
	}
	if !strings.Contains(out.String(), "within Options.Timeout 1ms") {
		t.Errorf("message %q does not name Options.Timeout", out.String())
	}
}
