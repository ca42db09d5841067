package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "LAUNCHER_TEST_HELPER"

// TestMain lets the test binary play a child: "stubborn" ignores SIGINT and SIGTERM,
// starts a stubborn grandchild in a process group of its own (as mpirun does with
// ranks), prints "pid <grandchild>" and sleeps.
func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "stubborn":
		signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), helperEnv+"=stubborn-child")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			fmt.Println("start:", err)
			os.Exit(1)
		}
		fmt.Printf("pid %d\n", c.Process.Pid)
		time.Sleep(60 * time.Second)
		os.Exit(0)
	case "stubborn-child":
		signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
		time.Sleep(60 * time.Second)
		os.Exit(0)
	}
	os.Exit(2)
}

// syncBuffer is a bytes.Buffer safe for the copying goroutines and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls until out contains "pid N" and returns N.
func waitForPid(t *testing.T, out *syncBuffer) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(out.String(), "\n") {
			if p, ok := strings.CutPrefix(line, "pid "); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
					return n
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no pid line in %q", out.String())
	return 0
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

func shell(script string) Command {
	return Command{Path: "/bin/sh", Args: []string{"sh", "-c", script}}
}

func TestRunExitCodeAndFirstError(t *testing.T) {
	var out, errb syncBuffer
	c := shell(`echo started; echo '{"level":"info","rank":0,"message":"ok"}' >&2
echo '{"level":"error","rank":2,"error":"peer 3 silent","message":"exchange failed"}' >&2
echo 'Error: later' >&2; exit 3`)
	res, err := Run(context.Background(), c, RunConfig{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
	if want := "rank 2: exchange failed: peer 3 silent"; res.FirstError != want {
		t.Errorf("first error %q, want %q", res.FirstError, want)
	}
	for _, want := range []string{"job ended with status 3", "first error: rank 2: exchange failed: peer 3 silent"} {
		if !strings.Contains(res.Summary, want) {
			t.Errorf("summary %q lacks %q", res.Summary, want)
		}
	}
	// The output streamed through unchanged.
	if out.String() != "started\n" || !strings.Contains(errb.String(), `"message":"exchange failed"`) {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
}

func TestRunSuccess(t *testing.T) {
	var out syncBuffer
	res, err := Run(context.Background(), shell("echo hi"), RunConfig{Stdout: &out})
	if err != nil || res.ExitCode != 0 || res.Summary != "" || out.String() != "hi\n" {
		t.Errorf("res %+v err %v out %q", res, err, out.String())
	}
}

func TestRunChildKilledBySignal(t *testing.T) {
	res, err := Run(context.Background(), shell("kill -9 $$"), RunConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 137 || !strings.Contains(res.Summary, "signal 9") || !strings.Contains(res.Summary, "status 137") {
		t.Errorf("exit %d summary %q", res.ExitCode, res.Summary)
	}
}

func TestRunStartError(t *testing.T) {
	res, err := Run(context.Background(), Command{Path: "/nonexistent/mpirun", Args: []string{"mpirun"}}, RunConfig{})
	if err == nil || res.ExitCode != 1 {
		t.Errorf("res %+v err %v", res, err)
	}
}

func stubborn(t *testing.T) Command {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Command{Path: exe, Args: []string{exe}, Env: append(os.Environ(), helperEnv+"=stubborn")}
}

// A signal is forwarded; a child that ignores it is killed after the grace period,
// with the grandchild it left in a process group of its own.
func TestRunSignalThenGrace(t *testing.T) {
	var out, errb syncBuffer
	sigs := make(chan os.Signal, 1)
	type ret struct {
		res Result
		err error
	}
	done := make(chan ret, 1)
	go func() {
		res, err := Run(context.Background(), stubborn(t), RunConfig{Stdout: &out, Stderr: &errb, Signals: sigs, Grace: time.Second})
		done <- ret{res, err}
	}()
	grandchild := waitForPid(t, &out)
	start := time.Now()
	sigs <- syscall.SIGINT
	var r ret
	select {
	case r = <-done:
	case <-time.After(6 * time.Second):
		t.Fatal("Run did not return 6 s after SIGINT with a 1 s grace")
	}
	took := time.Since(start)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if took < time.Second || took > 4*time.Second {
		t.Errorf("took %v with a 1 s grace", took)
	}
	if r.res.Interrupted != syscall.SIGINT || !r.res.Killed || r.res.ExitCode != 130 {
		t.Errorf("result %+v", r.res)
	}
	if !strings.Contains(r.res.Summary, "interrupted by SIGINT") || !strings.Contains(r.res.Summary, "status 130") {
		t.Errorf("summary %q", r.res.Summary)
	}
	if alive(grandchild) {
		syscall.Kill(grandchild, syscall.SIGKILL)
		t.Errorf("grandchild %d (own process group) survived", grandchild)
	}
	if !strings.Contains(errb.String(), "killing it") {
		t.Errorf("stderr %q", errb.String())
	}
}

// A second signal kills at once, without waiting for the grace period.
func TestRunSecondSignalKills(t *testing.T) {
	var out syncBuffer
	sigs := make(chan os.Signal, 2)
	done := make(chan Result, 1)
	go func() {
		res, _ := Run(context.Background(), stubborn(t), RunConfig{Stdout: &out, Signals: sigs, Grace: time.Minute})
		done <- res
	}()
	grandchild := waitForPid(t, &out)
	start := time.Now()
	sigs <- syscall.SIGTERM
	time.Sleep(100 * time.Millisecond)
	sigs <- syscall.SIGTERM
	select {
	case res := <-done:
		if res.ExitCode != 128+int(syscall.SIGTERM) || !res.Killed {
			t.Errorf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second signal did not end the job")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v", took)
	}
	if alive(grandchild) {
		syscall.Kill(grandchild, syscall.SIGKILL)
		t.Errorf("grandchild %d survived", grandchild)
	}
}

// A child that obeys the forwarded signal ends at once, with 128+signal.
func TestRunSignalForwarded(t *testing.T) {
	var out syncBuffer
	sigs := make(chan os.Signal, 1)
	done := make(chan Result, 1)
	go func() {
		res, _ := Run(context.Background(), shell("echo pid $$; exec sleep 30"), RunConfig{Stdout: &out, Signals: sigs, Grace: 10 * time.Second})
		done <- res
	}()
	waitForPid(t, &out)
	start := time.Now()
	sigs <- syscall.SIGINT
	select {
	case res := <-done:
		if res.ExitCode != 130 || res.Killed || res.Interrupted != syscall.SIGINT {
			t.Errorf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the forwarded SIGINT did not end sleep")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v", took)
	}
}

// The end of ctx (--timeout) stops the job within the grace period.
func TestRunContextCancel(t *testing.T) {
	cause := errors.New("--timeout 300ms reached")
	ctx, cancel := context.WithTimeoutCause(context.Background(), 300*time.Millisecond, cause)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, stubborn(t), RunConfig{Grace: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("took %v", took)
	}
	if !res.Canceled || !res.Killed || res.ExitCode != 1 || !strings.Contains(res.Summary, cause.Error()) {
		t.Errorf("result %+v", res)
	}
}
