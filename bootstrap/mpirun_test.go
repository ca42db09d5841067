package bootstrap

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mpirunFlags are what Open MPI's mpirun needs here: more ranks than cores
// (--oversubscribe) and, in containers where tests run as root,
// --allow-run-as-root. MOERUN_TEST_MPIRUN_FLAGS adds more (for example
// "--mca btl self,vader" or "--mca btl_vader_single_copy_mechanism none"
// where a container forbids cross-memory attach).
func mpirunFlags() []string {
	flags := []string{"--oversubscribe", "--allow-run-as-root"}
	return append(flags, strings.Fields(os.Getenv("MOERUN_TEST_MPIRUN_FLAGS"))...)
}

// needMpirun skips the test unless Open MPI's mpirun is on PATH.
func needMpirun(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: not starting mpirun")
	}
	path, err := exec.LookPath("mpirun")
	if err != nil {
		t.Skip("mpirun is not on PATH: skipping the multi-process test (install Open MPI to run it)")
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Open MPI") {
		t.Skipf("mpirun is not Open MPI's (%q, %v): skipping the multi-process test", strings.TrimSpace(string(out)), err)
	}
	return path
}

// buildCheck builds the mpicheck program with the given build tags.
func buildCheck(t *testing.T, tags string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to build the mpicheck program")
	}
	bin := filepath.Join(t.TempDir(), "mpicheck")
	args := []string{"build", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command(gobin, append(args, "./internal/mpicheck")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// mpirun runs bin under mpirun with np ranks and returns its output and exit
// code; it fails the test if mpirun does not end within a minute.
func mpirun(t *testing.T, mpirunPath string, np int, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full := append(mpirunFlags(), "-np", strconv.Itoa(np), bin)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, mpirunPath, full...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("mpirun %s: still running after a minute\n%s", strings.Join(full, " "), out)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mpirun %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	t.Logf("mpirun %s: exit %d\n%s", strings.Join(full, " "), code, out)
	return string(out), code
}

// execOutput runs bin with a one-minute limit and returns its output.
func execOutput(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}
