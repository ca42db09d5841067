package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The shared library is built once per test run, with this run's build tags
// (buildTags, from capi_tags_*_test.go).
var lib struct {
	once      sync.Once
	dir       string
	so, hdr   string
	err       error
	buildTime time.Duration
}

func TestMain(m *testing.M) {
	code := m.Run()
	if lib.dir != "" {
		os.RemoveAll(lib.dir)
	}
	os.Exit(code)
}

// library builds libmoerun.so (go build -buildmode=c-shared) and returns its
// path and the header cgo generated for it.
func library(t *testing.T) (so, generated string) {
	t.Helper()
	lib.once.Do(func() {
		lib.dir, lib.err = os.MkdirTemp("", "moerun-capi")
		if lib.err != nil {
			return
		}
		lib.so = filepath.Join(lib.dir, "libmoerun.so")
		lib.hdr = filepath.Join(lib.dir, "libmoerun.h")
		args := append([]string{"build", "-buildmode=c-shared"}, buildTags...)
		args = append(args, "-o", lib.so, ".")
		start := time.Now()
		out, err := exec.Command("go", args...).CombinedOutput()
		lib.buildTime = time.Since(start)
		if err != nil {
			lib.err = &buildError{err, string(out)}
		}
	})
	if lib.err != nil {
		t.Fatalf("build the shared library: %v", lib.err)
	}
	return lib.so, lib.hdr
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// prototypes reads the function declarations of a C header as name →
// normalised signature: const, parameter names, comments and spacing
// dropped (cgo writes no const and its own parameter names).
func prototypes(t *testing.T, text string) map[string]string {
	t.Helper()
	text = regexp.MustCompile(`(?s)/\*.*?\*/`).ReplaceAllString(text, " ")
	text = regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(text, " ")
	text = strings.NewReplacer(`extern "C"`, " ", "{", ";", "}", ";").Replace(text)
	decl := regexp.MustCompile(`^(?:extern\s+)?([\w\s\*]+?)\b(moerun_\w+)\s*\(([^()]*)\)$`)
	out := map[string]string{}
	for _, stmt := range strings.Split(text, ";") {
		stmt = strings.Join(strings.Fields(stmt), " ")
		m := decl.FindStringSubmatch(stmt)
		if m == nil {
			continue
		}
		var params []string
		for _, p := range strings.Split(m[3], ",") {
			params = append(params, normType(p, true))
		}
		out[m[2]] = normType(m[1], false) + "(" + strings.Join(params, ",") + ")"
	}
	return out
}

// normType normalises a C type ("const float *gate" → "float*"), dropping a
// trailing parameter name when named.
func normType(s string, named bool) string {
	s = strings.ReplaceAll(s, "*", " * ")
	var words []string
	for _, w := range strings.Fields(s) {
		if w != "const" {
			words = append(words, w)
		}
	}
	if named && len(words) > 1 && words[len(words)-1] != "*" {
		words = words[:len(words)-1]
	}
	return strings.Join(words, "")
}

// TestHeaderMatchesLibrary compares moerun.h's declarations with what the
// library exports (the header cgo generates from the //export functions).
func TestHeaderMatchesLibrary(t *testing.T) {
	_, generated := library(t)
	gb, err := os.ReadFile(generated)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := os.ReadFile("moerun.h")
	if err != nil {
		t.Fatal(err)
	}
	got, want := prototypes(t, string(gb)), prototypes(t, string(hb))
	if len(want) < 15 {
		t.Fatalf("read only %d declarations from moerun.h: %v", len(want), want)
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		switch g, w := got[n], want[n]; {
		case g == "":
			t.Errorf("%s is declared in moerun.h but the library does not export it", n)
		case w == "":
			t.Errorf("%s is exported but moerun.h does not declare it", n)
		case g != w:
			t.Errorf("%s: moerun.h declares %s, the library exports %s", n, w, g)
		}
	}
}

// TestHeaderCompilesAsCAndCPlusPlus compiles moerun.h alone in C11 (its
// static asserts on struct sizes included) and C++.
func TestHeaderCompilesAsCAndCPlusPlus(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "h.c")
	if err := os.WriteFile(src, []byte("#include \"moerun.h\"\nint main(void) { return moerun_abi_version() != MOERUN_ABI_VERSION; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(".")
	for _, cc := range [][]string{{"cc", "-std=c11"}, {"c++", "-x", "c++", "-std=c++11"}} {
		if _, err := exec.LookPath(cc[0]); err != nil {
			t.Logf("%s not found: skipped", cc[0])
			continue
		}
		args := append(cc[1:], "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", abs, "-c", "-o", filepath.Join(dir, "h.o"), src)
		if out, err := exec.Command(cc[0], args...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(cc, " "), err, out)
		}
	}
}

// python returns a Python interpreter with numpy ($MOERUN_PYTHON, else
// python3), or skips.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("MOERUN_PYTHON"), "python3"} {
		if p == "" {
			continue
		}
		if err := exec.Command(p, "-c", "import numpy").Run(); err == nil {
			return p
		}
	}
	t.Skip("no Python with numpy: set MOERUN_PYTHON to one (python3 -m venv v && v/bin/pip install numpy)")
	return ""
}

// run runs a command with a bound and returns its combined output.
func run(t *testing.T, limit time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %v:\n%s", name, args, limit, out)
	}
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestPythonExampleWithUniqueID runs the Python example as 2 processes that
// meet through a unique id (the torchrun path: no MPI).
func TestPythonExampleWithUniqueID(t *testing.T) {
	py := python(t)
	so, _ := library(t)
	out := run(t, 60*time.Second, nil, py, "../examples/python/moe_ctypes.py", "--lib", so, "--spawn", "2")
	if !strings.Contains(out, "moe_ctypes: 2 ranks (unique id over TCP)") || !strings.Contains(out, "verified") {
		t.Errorf("output:\n%s", out)
	}
}

func TestPrototypesNormalise(t *testing.T) {
	h := prototypes(t, "/* c */\nmoerun_status moerun_forward(moerun_layer layer, int32_t tokens,\n    const float *x, float *out);\nconst char *moerun_last_error(void);")
	g := prototypes(t, "#ifdef __cplusplus\nextern \"C\" {\n#endif\nextern moerun_status moerun_forward(moerun_layer h, int32_t tokens, float* x, float* out);\nextern char* moerun_last_error(void);\n}")
	if len(h) != 2 || h["moerun_forward"] != g["moerun_forward"] || h["moerun_last_error"] != g["moerun_last_error"] {
		t.Errorf("header %v\ngenerated %v", h, g)
	}
	bad := prototypes(t, "extern moerun_status moerun_forward(moerun_layer h, int64_t tokens, float* x, float* out);")
	if bad["moerun_forward"] == h["moerun_forward"] {
		t.Errorf("int64_t tokens matched int32_t tokens")
	}
}
