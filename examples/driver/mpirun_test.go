//go:build mpi

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/launcher"
)

// TestDriverUnderMpirun builds the driver with MPI and starts 4 ranks of it
// with the command line that `moerun launch -n 4` would use.
func TestDriverUnderMpirun(t *testing.T) {
	if _, err := exec.LookPath("mpirun"); err != nil {
		t.Skip("mpirun not found: install openmpi-bin to run the multi-process tests")
	}
	bin := filepath.Join(t.TempDir(), "driver")
	build := exec.Command("go", "build", "-tags", "mpi", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd, err := launcher.Plan(launcher.Options{N: 4, Via: launcher.ViaMPIRun, Self: bin,
		Args: []string{"-backend", "cpu", "-layers", "4", "-steps", "10"}}, launcher.LocalHost())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env = cmd.Env
	out, err := c.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish:\n%s", cmd, out)
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	s := string(out)
	if !strings.Contains(s, "driver: 4 ranks, backend cpu, 4 layers") || !strings.Contains(s, "10 steps × 4 layers verified") {
		t.Errorf("output:\n%s", s)
	}
	if strings.Count(s, ": verified") != 10 {
		t.Errorf("want 10 verified steps:\n%s", s)
	}
	if os.Getenv("MOERUN_TEST_VERBOSE") != "" {
		t.Log(s)
	}
}
