package nvshmem

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// wheelDir finds an NVSHMEM install with include/ and lib/ (the Python
// wheel's nvidia/nvshmem folder or $NVSHMEM_HOME): the project's .venv-cuda
// (scripts/setup.sh) first. Tests that need one skip without it.
func wheelDir(t *testing.T) string {
	t.Helper()
	var cands []string
	if root, err := filepath.Abs("../.."); err == nil {
		m, _ := filepath.Glob(filepath.Join(root, ".venv-cuda/lib/python3*/site-packages/nvidia/nvshmem"))
		cands = append(cands, m...)
	}
	if h := os.Getenv("NVSHMEM_HOME"); h != "" {
		cands = append(cands, h)
	}
	for _, c := range cands {
		if isFile(filepath.Join(c, "lib", LibName)) && isFile(filepath.Join(c, "include", "nvshmemx.h")) {
			return c
		}
	}
	t.Skipf("no NVSHMEM install with headers (looked in %v; run scripts/setup.sh)", cands)
	return ""
}

// unsetEnv unsets name for the test and restores it afterwards.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	old, had := os.LookupEnv(name)
	os.Unsetenv(name)
	t.Cleanup(func() {
		if had {
			os.Setenv(name, old)
		} else {
			os.Unsetenv(name)
		}
	})
}

func TestLoadMissingPathIsClear(t *testing.T) {
	_, err := Load("/nonexistent/" + LibName)
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	for _, want := range []string{"NVSHMEM host library not loaded: /nonexistent/libnvshmem_host.so.3", "No such file", "NVSHMEM_HOME"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLoadRejectsLibraryWithoutNVSHMEMSymbols(t *testing.T) {
	_, err := Load("libc.so.6")
	if err == nil || !strings.Contains(err.Error(), "libc.so.6 is not a usable NVSHMEM 3 host library: missing nvshmemx_hostlib_init_attr") {
		t.Errorf("err = %v", err)
	}
}

func TestLoadRealLibrarySetsSafeDefaults(t *testing.T) {
	dir := wheelDir(t)
	for _, v := range []string{"NVSHMEM_DISABLE_NVLS", "NVSHMEM_REMOTE_TRANSPORT", "NVSHMEM_BOOTSTRAP_UID_PLUGIN"} {
		unsetEnv(t, v)
	}
	path := filepath.Join(dir, "lib", LibName)
	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	plugin := filepath.Join(dir, "lib", UIDPluginName)
	want := []string{"NVSHMEM_DISABLE_NVLS=1", "NVSHMEM_REMOTE_TRANSPORT=none", "NVSHMEM_BOOTSTRAP_UID_PLUGIN=" + plugin}
	if !slices.Equal(l.Defaults(), want) {
		t.Errorf("Defaults() = %v, want %v", l.Defaults(), want)
	}
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v {
			t.Errorf("%s = %q, want %q", k, os.Getenv(k), v)
		}
	}

	maj, min, patch, err := l.Version()
	if err != nil || maj != 3 {
		t.Errorf("Version = %d.%d.%d, %v", maj, min, patch, err)
	}
	if name := l.Name(); !strings.Contains(name, fmt.Sprintf("%d.%d.%d", maj, min, patch)) {
		t.Errorf("Name = %q, Version %d.%d.%d", name, maj, min, patch)
	}
	t.Logf("%s: %s, version %d.%d.%d", path, l.Name(), maj, min, patch)
	if st := l.InitStatus(); st != StatusNotInitialized {
		t.Errorf("InitStatus before init = %d", st)
	}
}

func TestLoadLeavesUserSettingsAlone(t *testing.T) {
	dir := wheelDir(t)
	t.Setenv("NVSHMEM_DISABLE_NVLS", "0")
	t.Setenv("NVSHMEM_REMOTE_TRANSPORT", "ibrc")
	t.Setenv("NVSHMEM_BOOTSTRAP_UID_PLUGIN", "/my/plugin.so")
	l, err := Load(filepath.Join(dir, "lib", LibName))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Defaults()) != 0 {
		t.Errorf("Defaults() = %v, want none", l.Defaults())
	}
	if os.Getenv("NVSHMEM_DISABLE_NVLS") != "0" || os.Getenv("NVSHMEM_REMOTE_TRANSPORT") != "ibrc" ||
		os.Getenv("NVSHMEM_BOOTSTRAP_UID_PLUGIN") != "/my/plugin.so" {
		t.Error("Load overrode a variable the user set")
	}
}

func TestInitRejectsBadArguments(t *testing.T) {
	l := &Lib{} // the checks come before any call into the library
	id := UniqueID{1}
	for _, c := range []struct{ rank, npes int }{{0, 0}, {-1, 2}, {2, 2}} {
		if err := l.InitWithUniqueID(id, c.rank, c.npes); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("rank %d of %d: %v", c.rank, c.npes, err)
		}
	}
	if err := l.InitWithUniqueID(UniqueID{}, 0, 1); err == nil || !strings.Contains(err.Error(), "all zero") {
		t.Errorf("zero id: %v", err)
	}
}

func TestErrorNamesStatus(t *testing.T) {
	e := &Error{Call: "nvshmemx_hostlib_init_attr", Args: "NVSHMEMX_INIT_WITH_UNIQUEID, PE 1 of 4", Status: 7}
	want := "nvshmemx_hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, PE 1 of 4): NVSHMEMX_ERROR_INTERNAL (7); "
	if !strings.HasPrefix(e.Error(), want) {
		t.Errorf("Error() = %q", e.Error())
	}
	if got := (&Error{Call: "f", Status: -3}).Error(); !strings.HasPrefix(got, "f(): status -3;") {
		t.Errorf("Error() = %q", got)
	}
}

// TestBoundSymbolsAreExported checks with nm that every symbol the package
// binds is a defined dynamic symbol of the library (Load checks the same at
// run time with dlsym).
func TestBoundSymbolsAreExported(t *testing.T) {
	dir := wheelDir(t)
	nm, err := exec.LookPath("nm")
	if err != nil {
		t.Skip("nm not found")
	}
	out, err := exec.Command(nm, "-D", "--defined-only", filepath.Join(dir, "lib", LibName)).Output()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && (f[1] == "T" || f[1] == "W") {
			name, _, _ := strings.Cut(f[2], "@")
			exported[name] = true
		}
	}
	for _, s := range symbols {
		if !exported[s] {
			t.Errorf("%s is not a defined function of %s", s, LibName)
		}
	}
}

// TestMirrorMatchesNVSHMEMHeaders compiles nvshmemdl.h with g++ after the
// real nvshmemx.h: the pfn_ types must be the types of the real functions,
// and the sizes and offsets of the mirrored structs, the init flag and the
// constants must equal NVSHMEM's, both in the C++ program (static_assert)
// and as cgo compiled the mirror for the Go side (mirrorLayout).
func TestMirrorMatchesNVSHMEMHeaders(t *testing.T) {
	dir := wheelDir(t)
	gxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skip("g++ not found")
	}
	cudaInc := ""
	if root, err := filepath.Abs("../.."); err == nil {
		m, _ := filepath.Glob(filepath.Join(root, ".venv-cuda/lib/python3*/site-packages/nvidia/cu13/include"))
		if len(m) > 0 {
			cudaInc = m[0]
		}
	}
	if h := os.Getenv("CUDA_HOME"); cudaInc == "" && h != "" {
		cudaInc = filepath.Join(h, "include")
	}
	if cudaInc == "" || !isFile(filepath.Join(cudaInc, "cuda_runtime.h")) {
		t.Skip("no CUDA headers for the NVSHMEM headers (run scripts/setup.sh)")
	}

	var src strings.Builder
	src.WriteString(`#include <nvshmemx.h>
#include <cstddef>
#include <cstdio>
#include <type_traits>
#define MOERUN_HAVE_NVSHMEM_H 1
#include "nvshmemdl.h"
`)
	for _, s := range symbols {
		fmt.Fprintf(&src, "static_assert(std::is_same<decltype(&%s), pfn_%s>::value, \"prototype of %s\");\n", s, s, s)
	}
	type pair struct{ key, real, mirror string }
	var pairs []pair
	for _, p := range []struct{ typ, mirror string }{
		{"nvshmemx_uniqueid_t", "mr_nvshmemx_uniqueid_t"},
		{"nvshmemx_uniqueid_args_t", "mr_nvshmemx_uniqueid_args_t"},
		{"nvshmemx_init_args_t", "mr_nvshmemx_init_args_t"},
		{"nvshmemx_init_attr_t", "mr_nvshmemx_init_attr_t"},
	} {
		pairs = append(pairs, pair{"sizeof(" + p.typ + ")", "sizeof(" + p.typ + ")", "sizeof(" + p.mirror + ")"})
	}
	for _, f := range []struct{ typ, mirror, field string }{
		{"nvshmemx_uniqueid_t", "mr_nvshmemx_uniqueid_t", "internal"},
		{"nvshmemx_uniqueid_args_t", "mr_nvshmemx_uniqueid_args_t", "id"},
		{"nvshmemx_uniqueid_args_t", "mr_nvshmemx_uniqueid_args_t", "myrank"},
		{"nvshmemx_uniqueid_args_t", "mr_nvshmemx_uniqueid_args_t", "nranks"},
		{"nvshmemx_init_args_t", "mr_nvshmemx_init_args_t", "uid_args"},
		{"nvshmemx_init_args_t", "mr_nvshmemx_init_args_t", "content"},
		{"nvshmemx_init_attr_t", "mr_nvshmemx_init_attr_t", "mpi_comm"},
		{"nvshmemx_init_attr_t", "mr_nvshmemx_init_attr_t", "args"},
	} {
		pairs = append(pairs, pair{
			"offsetof(" + f.typ + "," + f.field + ")",
			"offsetof(" + f.typ + ", " + f.field + ")",
			"offsetof(" + f.mirror + ", " + f.field + ")",
		})
	}
	pairs = append(pairs,
		pair{"NVSHMEMX_INIT_WITH_UNIQUEID", "(int)NVSHMEMX_INIT_WITH_UNIQUEID", "MR_NVSHMEMX_INIT_WITH_UNIQUEID"},
		pair{"NVSHMEM_MAX_NAME_LEN", "NVSHMEM_MAX_NAME_LEN", "MR_NVSHMEM_MAX_NAME_LEN"},
		pair{"NVSHMEM_STATUS_IS_INITIALIZED", "(int)NVSHMEM_STATUS_IS_INITIALIZED", ""},
		pair{"NVSHMEM_STATUS_FULL_MPG", "(int)NVSHMEM_STATUS_FULL_MPG", ""},
		pair{"NVSHMEMX_ERROR_INTERNAL", "(int)NVSHMEMX_ERROR_INTERNAL", ""},
	)
	for _, p := range pairs {
		if p.mirror != "" {
			fmt.Fprintf(&src, "static_assert((size_t)(%s) == (size_t)(%s), \"%s\");\n", p.real, p.mirror, p.key)
		}
	}
	src.WriteString("int main() {\n")
	for _, p := range pairs {
		fmt.Fprintf(&src, "\tprintf(\"%s %%lld\\n\", (long long)(%s));\n", p.key, p.real)
	}
	src.WriteString("\treturn 0;\n}\n")

	tmp := t.TempDir()
	cpp := filepath.Join(tmp, "layout.cpp")
	if err := os.WriteFile(cpp, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(tmp, "layout")
	pkgDir, _ := filepath.Abs(".")
	inc := filepath.Join(dir, "include")
	cmd := exec.Command(gxx, "-std=c++17", "-I", inc, "-I", cudaInc, "-I", filepath.Join(cudaInc, "cccl"),
		"-I", pkgDir, cpp, "-o", exe, "-ldl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nvshmemdl.h does not match the NVSHMEM headers in %s:\n%s", inc, out)
	}
	out, err := exec.Command(exe).Output()
	if err != nil {
		t.Fatal(err)
	}
	mirror := mirrorLayout()
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		key, val, _ := strings.Cut(line, " ")
		real, _ := strconv.Atoi(val)
		got, ok := mirror[key]
		if !ok {
			t.Errorf("mirrorLayout has no %s", key)
			continue
		}
		seen++
		if got != real {
			t.Errorf("%s: NVSHMEM %d, Go's mirror %d", key, real, got)
		}
		t.Logf("%-45s %d", key, real)
	}
	if seen != len(mirror) {
		t.Errorf("compared %d of the %d mirror entries", seen, len(mirror))
	}
}

// TestGetUniqueIDLoadsTheUIDPlugin makes a unique id, which needs no GPU but
// does need the bootstrap plugin that Load points NVSHMEM at. The plugin
// listens on a socket for the PEs to come; it is kept on loopback here.
func TestGetUniqueIDLoadsTheUIDPlugin(t *testing.T) {
	dir := wheelDir(t)
	unsetEnv(t, "NVSHMEM_BOOTSTRAP_UID_PLUGIN")
	t.Setenv("NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME", "lo")
	l, err := Load(filepath.Join(dir, "lib", LibName))
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.GetUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	// The id starts with its version, (1 << 16) + 128, little-endian.
	if id[0] != 0x80 || id[1] != 0 || id[2] != 1 || id[3] != 0 {
		t.Errorf("id version bytes % x", id[:4])
	}
	if slices.Equal(id[4:], make([]byte, 124)) {
		t.Error("id is empty past its version")
	}
}

func TestMissingUIDPluginIsAnErrorNotACrash(t *testing.T) {
	dir := wheelDir(t)
	t.Setenv("NVSHMEM_BOOTSTRAP_UID_PLUGIN", "/nonexistent/plugin.so")
	l, err := Load(filepath.Join(dir, "lib", LibName))
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.GetUniqueID()
	if err == nil || !strings.Contains(err.Error(), "NVSHMEM_BOOTSTRAP_UID_PLUGIN=/nonexistent/plugin.so cannot be loaded") {
		t.Errorf("GetUniqueID: %v", err)
	}
	err = l.InitWithUniqueID(UniqueID{1}, 0, 1)
	if err == nil || !strings.Contains(err.Error(), "cannot be loaded") {
		t.Errorf("InitWithUniqueID: %v", err)
	}
}

// GetUniqueID fits bootstrap.BroadcastID's id maker, func() ([128]byte, error).
var _ func(*Lib) ([128]byte, error) = (*Lib).GetUniqueID
