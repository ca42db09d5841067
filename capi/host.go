package main

// What the library learns from, and leaves to, its host process: the
// environment the host set after loading the library, the library's own
// folder (for the kernel beside it), and the calling thread's CUDA context.

/*
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

// mr_environ_count and mr_environ_at read the C environment as it is now.
static size_t mr_environ_count(void) {
	size_t n = 0;
	if (environ != NULL) {
		while (environ[n] != NULL) {
			n++;
		}
	}
	return n;
}
static const char *mr_environ_at(size_t i) { return environ[i]; }

// mr_setenv is C's setenv, which Go's os.Getenv does not see (tests).
static int mr_setenv(const char *k, const char *v) { return setenv(k, v, 1); }

// mr_self_path copies the path of the object holding this function (the
// shared library; the executable in tests) into buf: 0, else -1.
static int mr_self_path(char *buf, size_t n) {
	Dl_info info;
	if (dladdr((void *)(uintptr_t)&mr_self_path, &info) == 0 || info.dli_fname == NULL || info.dli_fname[0] == 0) {
		return -1;
	}
	snprintf(buf, n, "%s", info.dli_fname);
	return 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/rank"
)

// ---- the environment

// syncEnv brings the Go runtime's copy of the environment up to date with
// the C environment. In a c-shared library the Go runtime copies the
// environment once, when the library is loaded; what the host sets later
// (setenv, Python's os.environ) is invisible to os.Getenv until then. The
// entries that open a runtime read settings from call it first.
func syncEnv() { applyEnv(cEnviron()) }

// cEnviron is the C environment, as "NAME=value" entries.
func cEnviron() []string {
	n := int(C.mr_environ_count())
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		if p := C.mr_environ_at(C.size_t(i)); p != nil {
			out = append(out, C.GoString(p))
		}
	}
	return out
}

// applyEnv sets each NAME=value of kvs whose value os.Getenv does not
// already give; for a name listed twice the first wins, as getenv does. It
// only sets and updates: a name the host removed stays as the Go runtime
// has it. Entries without a name are skipped. It returns the names it set.
func applyEnv(kvs []string) []string {
	var set []string
	seen := map[string]bool{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || seen[k] {
			continue
		}
		seen[k] = true
		if cur, had := os.LookupEnv(k); had && cur == v {
			continue
		}
		if os.Setenv(k, v) == nil {
			set = append(set, k)
		}
	}
	return set
}

// cSetenv calls C's setenv (tests: what a host process does).
func cSetenv(k, v string) error {
	ck, cv := C.CString(k), C.CString(v)
	defer C.free(unsafe.Pointer(ck))
	defer C.free(unsafe.Pointer(cv))
	if C.mr_setenv(ck, cv) != 0 {
		return fmt.Errorf("setenv(%q): failed", k)
	}
	return nil
}

// ---- the kernel beside the library

// libraryDir is the folder of the shared library (dladdr on one of its own
// functions; the executable's in tests), or "".
func libraryDir() string {
	var buf [4096]C.char
	if C.mr_self_path(&buf[0], C.size_t(len(buf))) != 0 {
		return ""
	}
	p := C.GoString(&buf[0])
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	return filepath.Dir(p)
}

// cubinBesideLibrary returns the kernel cubin to pass as rank.Options.Cubin:
// moerun.cubin in libDir when $MOERUN_CUBIN is unset (getenv) and no cubin
// is embedded, and the file is there; else "" (kernels.Locate then takes
// $MOERUN_CUBIN, the embedded image, or the cubin beside the executable).
func cubinBesideLibrary(getenv func(string) string, embedded bool, libDir string) string {
	if getenv(kernels.EnvCubin) != "" || embedded || libDir == "" {
		return ""
	}
	p := filepath.Join(libDir, kernels.CubinName)
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
		return ""
	}
	return p
}

// withLibraryCubin fills o.Cubin (GPU backend only) by cubinBesideLibrary
// and returns the path looked at ("" when it did not look).
func withLibraryCubin(o *rank.Options) string {
	if o.Backend != rank.BackendGPU || o.Cubin != "" {
		return ""
	}
	dir := libraryDir()
	o.Cubin = cubinBesideLibrary(os.Getenv, kernels.Embedded(), dir)
	if o.Cubin != "" || os.Getenv(kernels.EnvCubin) != "" || kernels.Embedded() || dir == "" {
		return ""
	}
	return filepath.Join(dir, kernels.CubinName)
}

// ---- the caller's CUDA context

// ctxDriver is what keepCallerContext needs of the CUDA driver.
type ctxDriver interface {
	CtxGetCurrent() (cuda.Context, error)
	CtxSetCurrent(cuda.Context) error
}

// loadedDriver returns the CUDA driver once the process has loaded it (by
// the GPU backend, or by the host: PyTorch), else nil; it never loads it.
// A variable for tests.
var loadedDriver = func() func() ctxDriver {
	var drv *cuda.Driver
	return func() ctxDriver {
		if drv == nil {
			d, err := cuda.Loaded()
			if err != nil || d == nil {
				return nil
			}
			drv = d
		}
		return drv
	}
}()

// keepCallerContext remembers the calling thread's current CUDA context
// and returns a function that makes it current again (the GPU backend makes
// its device's primary context current for its work), so the caller's
// context (PyTorch's) is as it was. The thread must stay locked between the
// two (call does this). Without a CUDA driver in the process the caller has
// no context; if the call loads the driver and leaves one current, restore
// unbinds it.
func keepCallerContext() (restore func() error) {
	d := loadedDriver()
	saved, known := cuda.Context(0), true
	if d != nil {
		c, err := d.CtxGetCurrent()
		switch {
		case err == nil:
			saved = c
		case errors.Is(err, cuda.ErrorNotInitialized):
			// cuInit not called yet: no context can be current.
		default:
			known = false
		}
	}
	return func() error {
		if !known {
			return nil
		}
		d := loadedDriver()
		if d == nil {
			return nil
		}
		cur, err := d.CtxGetCurrent()
		if err != nil || cur == saved {
			return nil // not initialised: nothing is current
		}
		if err := d.CtxSetCurrent(saved); err != nil {
			return fmt.Errorf("make the caller's CUDA context %#x current again: %w", uintptr(saved), err)
		}
		return nil
	}
}

// cubinNotFound adds to an open's error that the library also looked for
// the kernel at looked (beside itself), when the error is that no cubin was
// found.
func cubinNotFound(err error, looked string) error {
	if looked == "" || !strings.Contains(err.Error(), "kernel cubin not found") {
		return err
	}
	return fmt.Errorf("%w (the library also looked for %s: not there)", err, looked)
}
