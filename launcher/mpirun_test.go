package launcher

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests run the real mpirun with the options Plan picks for this machine.

func needMPIRun(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: not starting mpirun")
	}
	if _, err := exec.LookPath("mpirun"); err != nil {
		t.Skip("mpirun not on PATH (apt-get install openmpi-bin): skipping the mpirun tests")
	}
}

func planLocal(t *testing.T, n int, self string, args ...string) Command {
	t.Helper()
	c, err := Plan(Options{N: n, Via: ViaMPIRun, Self: self, Args: args}, LocalHost())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", c)
	return c
}

func runBounded(t *testing.T, c Command, limit time.Duration, rc RunConfig) (Result, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, c, rc)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if res.Canceled {
		t.Fatalf("the job was still running after %v: %+v", limit, res)
	}
	return res, took
}

func TestMPIRunRanks(t *testing.T) {
	needMPIRun(t)
	var out, errb syncBuffer
	c := planLocal(t, 4, "/bin/sh", "-c", `echo "rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE nvls=$NVSHMEM_DISABLE_NVLS nccl=$NCCL_NVLS_ENABLE symm=$TORCH_SYMM_MEM_DISABLE_MULTICAST"`)
	res, _ := runBounded(t, c, 20*time.Second, RunConfig{Stdout: &out, Stderr: &errb})
	if res.ExitCode != 0 || res.Summary != "" {
		t.Fatalf("result %+v\nstderr %s", res, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(out.String(), "\r", "")), "\n")
	sort.Strings(lines)
	var want []string
	for r := 0; r < 4; r++ {
		want = append(want, "rank "+strconv.Itoa(r)+" of 4 nvls=1 nccl=0 symm=1")
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("ranks said\n%s\nwant\n%s\nstderr %s", strings.Join(lines, "\n"), strings.Join(want, "\n"), errb.String())
	}
}

// The options Plan adds in containers without ssh/rsh and without cross-memory attach
// are accepted by this mpirun, and the ranks still run.
func TestMPIRunContainerOptions(t *testing.T) {
	needMPIRun(t)
	t.Logf("cross-memory attach permitted here: %v; cores: %d", cmaPermitted(), Cores())
	h := LocalHost()
	h.CMA = false
	look := h.LookPath
	h.LookPath = func(file string) (string, error) {
		if file == "ssh" || file == "rsh" {
			return "", exec.ErrNotFound
		}
		return look(file)
	}
	c, err := Plan(Options{N: 3, Via: ViaMPIRun, Self: "/bin/sh", Args: []string{"-c", "echo rank $OMPI_COMM_WORLD_RANK"}}, h)
	if err != nil {
		t.Fatal(err)
	}
	s := c.String()
	t.Log(s)
	for _, want := range []string{"--mca btl_vader_single_copy_mechanism none", "--mca plm isolated"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in %s", want, s)
		}
	}
	var out, errb syncBuffer
	res, _ := runBounded(t, c, 20*time.Second, RunConfig{Stdout: &out, Stderr: &errb})
	if res.ExitCode != 0 || strings.Count(out.String(), "rank ") != 3 {
		t.Errorf("result %+v\nstdout %q\nstderr %q", res, out.String(), errb.String())
	}
}

// Rank 1 kills itself: the whole job ends at once with status 137. Ranks that are not
// MPI programs get no "mpirun noticed that process rank 1" message, so the summary
// can only say that a rank died of signal 9.
func TestMPIRunShellRankKilled(t *testing.T) {
	needMPIRun(t)
	c := planLocal(t, 4, "/bin/sh", "-c", `[ "$OMPI_COMM_WORLD_RANK" = 1 ] && kill -9 $$; sleep 30`)
	res, took := runBounded(t, c, 20*time.Second, RunConfig{})
	t.Logf("%v: %s", took, res.Summary)
	if took > 10*time.Second {
		t.Errorf("the job took %v to end after rank 1 died", took)
	}
	if res.ExitCode != 137 || !strings.Contains(res.Summary, "signal 9") || !strings.Contains(res.Summary, "status 137") {
		t.Errorf("result %+v", res)
	}
}

// mpiProgram builds a small MPI program with mpicc: after MPI_Init, rank 1 does what
// argv[1] says ("kill": SIGKILL itself; "error": log an error line and exit 3); the
// other ranks wait in a barrier, then sleep 30 s.
func mpiProgram(t *testing.T) string {
	t.Helper()
	mpicc, err := exec.LookPath("mpicc")
	if err != nil {
		t.Skip("mpicc not on PATH (apt-get install libopenmpi-dev): skipping the MPI program tests")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "rank.c")
	prog := `#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
	int r;
	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &r);
	if (r == 1 && argc > 1 && strcmp(argv[1], "kill") == 0) kill(getpid(), SIGKILL);
	if (r == 1 && argc > 1 && strcmp(argv[1], "error") == 0) {
		fprintf(stderr, "{\"level\":\"error\",\"rank\":%d,\"message\":\"weights missing\"}\n", r);
		exit(3);
	}
	MPI_Barrier(MPI_COMM_WORLD);
	sleep(30);
	MPI_Finalize();
	return 0;
}
`
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "rank")
	if out, err := exec.Command(mpicc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("mpicc failed: %v\n%s", err, out)
	}
	return bin
}

func TestMPIRunMPIRankKilled(t *testing.T) {
	needMPIRun(t)
	bin := mpiProgram(t)
	c := planLocal(t, 4, bin, "kill")
	res, took := runBounded(t, c, 20*time.Second, RunConfig{})
	t.Logf("%v: %s", took, res.Summary)
	if took > 10*time.Second {
		t.Errorf("the job took %v to end after rank 1 died", took)
	}
	if res.ExitCode != 137 || res.Lost == nil || res.Lost.Rank != 1 || res.Lost.Signal != 9 {
		t.Errorf("result %+v lost %+v", res, res.Lost)
	}
	if !strings.Contains(res.Summary, "rank 1 on ") || !strings.Contains(res.Summary, "exited on signal 9 (Killed); job ended with status 137") {
		t.Errorf("summary %q", res.Summary)
	}
}

func TestMPIRunMPIRankError(t *testing.T) {
	needMPIRun(t)
	bin := mpiProgram(t)
	c := planLocal(t, 4, bin, "error")
	res, took := runBounded(t, c, 20*time.Second, RunConfig{})
	t.Logf("%v: %s", took, res.Summary)
	want := "moerun launch: rank 1 exited with status 3; job ended with status 3; first error: rank 1: weights missing"
	if res.ExitCode != 3 || res.Summary != want {
		t.Errorf("exit %d summary\n got %q\nwant %q", res.ExitCode, res.Summary, want)
	}
}

// Ctrl-C reaches ranks that ignore SIGINT and SIGTERM through mpirun, which kills
// them; nothing of the job is left when Run returns.
func TestMPIRunInterrupt(t *testing.T) {
	needMPIRun(t)
	var out syncBuffer
	c := planLocal(t, 4, "/bin/sh", "-c", `trap "" INT TERM; echo "pid $$"; exec sleep 30`)
	sigs := make(chan os.Signal, 1)
	done := make(chan Result, 1)
	go func() {
		res, _ := Run(context.Background(), c, RunConfig{Stdout: &out, Signals: sigs, Grace: 5 * time.Second})
		done <- res
	}()
	// Wait for the four ranks to be up.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "pid ") < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var pids []int
	for _, f := range strings.Split(strings.ReplaceAll(out.String(), "\r", ""), "\n") {
		if p, ok := strings.CutPrefix(f, "pid "); ok {
			n, _ := strconv.Atoi(p)
			pids = append(pids, n)
		}
	}
	if len(pids) != 4 {
		t.Fatalf("ranks said %q", out.String())
	}
	start := time.Now()
	sigs <- syscall.SIGINT
	var res Result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the job outlived SIGINT by 10 s")
	}
	t.Logf("%v: %s", time.Since(start), res.Summary)
	if res.ExitCode != 130 || res.Interrupted != syscall.SIGINT {
		t.Errorf("result %+v", res)
	}
	for _, p := range pids {
		if alive(p) {
			syscall.Kill(p, syscall.SIGKILL)
			t.Errorf("rank pid %d survived", p)
		}
	}
}
