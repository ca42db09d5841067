//go:build mpi

package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/launcher"
)

func needMPI(t *testing.T) {
	t.Helper()
	for _, p := range []string{"mpirun", "mpicc"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not found: install openmpi-bin and libopenmpi-dev to run the C ABI tests", p)
		}
	}
}

// launch runs prog with args on n ranks with the command line of
// `moerun launch -n n` and returns the output.
func launch(t *testing.T, n int, prog string, args ...string) string {
	t.Helper()
	cmd, err := launcher.Plan(launcher.Options{N: n, Via: launcher.ViaMPIRun, Self: prog, Args: args}, launcher.LocalHost())
	if err != nil {
		t.Fatal(err)
	}
	return run(t, 90*time.Second, cmd.Env, cmd.Path, cmd.Args[1:]...)
}

// TestCExampleUnderMpirun builds examples/c/moe_example.c with mpicc
// against the library and runs it on 4 ranks. The example calls MPI_Init
// itself; the library must use that MPI and leave it to the program.
func TestCExampleUnderMpirun(t *testing.T) {
	needMPI(t)
	so, _ := library(t)
	exe := filepath.Join(t.TempDir(), "moe_example")
	dir := filepath.Dir(so)
	run(t, 60*time.Second, nil, "mpicc", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", ".",
		"../examples/c/moe_example.c", "-L", dir, "-lmoerun", "-Wl,-rpath,"+dir, "-lm", "-o", exe)
	out := launch(t, 4, exe, "--steps", "3")
	if !strings.Contains(out, "moe_example: 4 ranks, 2 layers x 3 steps") || !strings.Contains(out, "verified") {
		t.Errorf("output:\n%s", out)
	}
}

// TestPythonExampleUnderMpirun runs the ctypes example on 4 ranks: the
// library initialises MPI (Python does not) and finalizes it.
func TestPythonExampleUnderMpirun(t *testing.T) {
	needMPI(t)
	py := python(t)
	so, _ := library(t)
	out := launch(t, 4, py, "../examples/python/moe_ctypes.py", "--lib", so)
	if !strings.Contains(out, "moe_ctypes: 4 ranks (MPI)") || !strings.Contains(out, "verified") {
		t.Errorf("output:\n%s", out)
	}
}
