package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/rank"
)

func TestApplyEnvSetsWhatChanged(t *testing.T) {
	for _, k := range []string{"MOERUN_T_NEW", "MOERUN_T_SAME", "MOERUN_T_CHANGED", "MOERUN_T_TWICE", "MOERUN_T_EMPTY"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	os.Setenv("MOERUN_T_SAME", "1")
	os.Setenv("MOERUN_T_CHANGED", "old")
	set := applyEnv([]string{
		"MOERUN_T_NEW=a=b", "MOERUN_T_SAME=1", "MOERUN_T_CHANGED=new",
		"MOERUN_T_TWICE=first", "MOERUN_T_TWICE=second", "MOERUN_T_EMPTY=", "no equals sign", "=value",
	})
	want := []string{"MOERUN_T_NEW", "MOERUN_T_CHANGED", "MOERUN_T_TWICE", "MOERUN_T_EMPTY"}
	if !slices.Equal(set, want) {
		t.Errorf("set %v, want %v", set, want)
	}
	for k, v := range map[string]string{"MOERUN_T_NEW": "a=b", "MOERUN_T_SAME": "1", "MOERUN_T_CHANGED": "new", "MOERUN_T_TWICE": "first"} {
		if got := os.Getenv(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if v, ok := os.LookupEnv("MOERUN_T_EMPTY"); !ok || v != "" {
		t.Errorf("MOERUN_T_EMPTY = %q, %v; want set and empty", v, ok)
	}
}

// What C's setenv sets (a host program after loading the library) reaches
// os.Getenv only through syncEnv.
func TestSyncEnvSeesTheCEnvironment(t *testing.T) {
	const k = "MOERUN_T_FROM_C"
	t.Setenv(k, "")
	os.Unsetenv(k)
	if err := cSetenv(k, "from C"); err != nil {
		t.Fatal(err)
	}
	if v, ok := os.LookupEnv(k); ok {
		t.Fatalf("os.Getenv sees C's setenv without a sync (%q): the test proves nothing", v)
	}
	syncEnv()
	if v := os.Getenv(k); v != "from C" {
		t.Errorf("after syncEnv: %s = %q, want %q", k, v, "from C")
	}
	if err := cSetenv(k, "changed"); err != nil {
		t.Fatal(err)
	}
	syncEnv()
	if v := os.Getenv(k); v != "changed" {
		t.Errorf("after a second syncEnv: %s = %q", k, v)
	}
}

func TestStatusOfErrors(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, statusOK},
		{invalid("x is NULL"), statusEINVAL},
		{fmt.Errorf("rank 0: layer 0: forward: %w", fmt.Errorf("bf16 mode is %w yet", backend.ErrNotSupported)), statusENOTSUP},
		{fmt.Errorf("device pointers are %w by the cpu backend", rank.ErrNotSupported), statusENOTSUP},
		{rank.ErrClosed, statusECLOSED},
		{errors.New("watchdog: rank 1 waited 2s"), statusEFAILED},
		{backend.Refuse(errors.New("a refusal that is not ENOTSUP")), statusEFAILED},
	}
	for _, c := range cases {
		if got := int(statusOf(c.err)); got != c.want {
			t.Errorf("statusOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// fakeCtx is a CUDA driver's current context on one thread.
type fakeCtx struct {
	cur     cuda.Context
	initErr error // CtxGetCurrent's error before cuInit
	sets    []cuda.Context
}

func (f *fakeCtx) CtxGetCurrent() (cuda.Context, error) { return f.cur, f.initErr }
func (f *fakeCtx) CtxSetCurrent(c cuda.Context) error {
	f.sets = append(f.sets, c)
	f.cur = c
	return nil
}

func withDriver(t *testing.T, get func() ctxDriver) {
	t.Helper()
	old := loadedDriver
	loadedDriver = get
	t.Cleanup(func() { loadedDriver = old })
}

func TestKeepCallerContext(t *testing.T) {
	const callers, primary = cuda.Context(0x1111), cuda.Context(0x2222)

	// The caller's context (PyTorch's, another device's) is current again.
	f := &fakeCtx{cur: callers}
	withDriver(t, func() ctxDriver { return f })
	restore := keepCallerContext()
	f.CtxSetCurrent(primary) // the backend's work
	if err := restore(); err != nil || f.cur != callers {
		t.Errorf("restore: %v, current %#x, want %#x", err, f.cur, callers)
	}

	// Nothing changed: nothing is set.
	f = &fakeCtx{cur: primary}
	restore = keepCallerContext()
	if err := restore(); err != nil || len(f.sets) != 0 {
		t.Errorf("unchanged: %v, sets %v", err, f.sets)
	}

	// No driver in the process before the call, one loaded by it (the first
	// GPU open): the caller had no context, and has none afterwards.
	var loaded *fakeCtx
	withDriver(t, func() ctxDriver {
		if loaded == nil {
			return nil
		}
		return loaded
	})
	restore = keepCallerContext()
	loaded = &fakeCtx{cur: primary}
	if err := restore(); err != nil || loaded.cur != 0 {
		t.Errorf("driver loaded by the call: %v, current %#x, want none", err, loaded.cur)
	}

	// A driver loaded but not initialised: no context before.
	f = &fakeCtx{initErr: &cuda.Error{Call: "cuCtxGetCurrent", Code: cuda.ErrorNotInitialized}}
	withDriver(t, func() ctxDriver { return f })
	restore = keepCallerContext()
	f.initErr = nil
	f.CtxSetCurrent(primary)
	if err := restore(); err != nil || f.cur != 0 {
		t.Errorf("driver initialised by the call: %v, current %#x, want none", err, f.cur)
	}
}

func TestCubinBesideLibrary(t *testing.T) {
	dir := t.TempDir()
	none := func(string) string { return "" }
	if p := cubinBesideLibrary(none, false, dir); p != "" {
		t.Errorf("no cubin there: %q", p)
	}
	cubin := filepath.Join(dir, kernels.CubinName)
	if err := os.WriteFile(cubin, []byte("cubin"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := cubinBesideLibrary(none, false, dir); p != cubin {
		t.Errorf("cubin there: %q, want %q", p, cubin)
	}
	if p := cubinBesideLibrary(func(k string) string {
		if k == kernels.EnvCubin {
			return "/x.cubin"
		}
		return ""
	}, false, dir); p != "" {
		t.Errorf("with $%s set: %q (the variable comes first)", kernels.EnvCubin, p)
	}
	if p := cubinBesideLibrary(none, true, dir); p != "" {
		t.Errorf("with an embedded cubin: %q (it comes first)", p)
	}
	if p := cubinBesideLibrary(none, false, ""); p != "" {
		t.Errorf("no library folder: %q", p)
	}

	// In a test the "library" is the test executable.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	if got, want := libraryDir(), filepath.Dir(exe); got != want {
		t.Errorf("libraryDir() = %q, want %q", got, want)
	}

	err = cubinNotFound(errors.New("kernel cubin not found; looked at: ..."), cubin)
	if !strings.Contains(err.Error(), "the library also looked for "+cubin) {
		t.Errorf("cubinNotFound: %v", err)
	}
	if err := cubinNotFound(errors.New("other"), cubin); err.Error() != "other" {
		t.Errorf("cubinNotFound of another error: %v", err)
	}
}

// TestHostProcess builds testdata/host_check.c against the library and runs
// it: environment set after load, moerun_device, a refused device forward.
func TestHostProcess(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc)")
	}
	so, _ := library(t)
	exe := filepath.Join(t.TempDir(), "host_check")
	dir := filepath.Dir(so)
	run(t, 60*time.Second, nil, cc, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-I", ".",
		"testdata/host_check.c", "-L", dir, "-lmoerun", "-Wl,-rpath,"+dir, "-o", exe)
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "MOERUN_BOOTSTRAP_ADDR=") })
	out := run(t, 60*time.Second, env, exe)
	if !strings.Contains(out, "host_check: ok") {
		t.Errorf("output:\n%s", out)
	}
}
