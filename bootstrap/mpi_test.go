//go:build mpi

package bootstrap

import (
	"fmt"
	"strings"
	"testing"
)

const ranks = 3

func TestMPIBuilt(t *testing.T) {
	if !MPIBuilt() {
		t.Fatal("MPIBuilt() = false in a -tags mpi build")
	}
}

// checkAllOK wants every rank's "OK mode" line and no FAIL line.
func checkAllOK(t *testing.T, out string, code int, mode string) {
	t.Helper()
	if code != 0 || strings.Contains(out, "FAIL") {
		t.Fatalf("mpicheck %s: exit %d, output:\n%s", mode, code, out)
	}
	for r := 0; r < ranks; r++ {
		if want := fmt.Sprintf("rank %d: OK %s", r, mode); !strings.Contains(out, want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
		if want := fmt.Sprintf("rank %d: world size=%d local=%d/%d (OMPI_COMM_WORLD_LOCAL_RANK)", r, ranks, r, ranks); !strings.Contains(out, want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
	}
}

// One build of mpicheck, three runs under mpirun: every collective across
// real processes, MPI_Abort's exit code, and a bounded wait.
func TestMPIAcrossProcesses(t *testing.T) {
	path := needMpirun(t)
	bin := buildCheck(t, "mpi")

	t.Run("collectives", func(t *testing.T) {
		out, code := mpirun(t, path, ranks, bin, "collectives")
		checkAllOK(t, out, code, "collectives")
	})

	t.Run("abort ends the job with its code", func(t *testing.T) {
		out, code := mpirun(t, path, ranks, bin, "abort")
		if code == 0 {
			t.Fatalf("mpirun exited 0 after a rank called Abort(3):\n%s", out)
		}
		if code != 3 {
			t.Logf("mpirun exited %d after Abort(3) (non-zero, as required)", code)
		}
		if strings.Contains(out, "FAIL") {
			t.Fatalf("a rank's barrier returned instead of being ended by MPI_Abort:\n%s", out)
		}
	})

	t.Run("a collective without its peers times out", func(t *testing.T) {
		out, code := mpirun(t, path, ranks, bin, "timeout")
		checkAllOK(t, out, code, "timeout")
		if !strings.Contains(out, "rank 0: timeout error after") || !strings.Contains(out, "timed out") {
			t.Errorf("rank 0 did not report the timeout:\n%s", out)
		}
	})
}

// Run as a single process without mpirun (an MPI singleton), the MPI build
// still works as one rank.
func TestMPISingleton(t *testing.T) {
	needMpirun(t) // Open MPI's singleton start needs its runtime installed
	bin := buildCheck(t, "mpi")
	out, err := execOutput(bin, "collectives")
	if err != nil || !strings.Contains(out, "rank 0: OK collectives") || !strings.Contains(out, "mpi=true") {
		t.Fatalf("mpicheck collectives as one process: %v\n%s", err, out)
	}
}
