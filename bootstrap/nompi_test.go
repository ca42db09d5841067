//go:build !mpi

package bootstrap

import (
	"strings"
	"testing"
)

func TestInitWithoutMPIRefusesAMultiRankLaunch(t *testing.T) {
	t.Setenv("OMPI_COMM_WORLD_SIZE", "4")
	w, err := Init(Options{})
	want := "this moerun binary was built without MPI support but was started as one of 4 ranks (OMPI_COMM_WORLD_SIZE=4): rebuild with 'make' (go build -tags mpi)"
	if err == nil || err.Error() != want {
		t.Fatalf("Init = %v, %v; want error %q", w, err, want)
	}
}

func TestInitWithoutMPIIsOneRank(t *testing.T) {
	for _, v := range []string{"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_ID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"} {
		t.Setenv(v, "")
	}
	w, err := Init(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if MPIBuilt() || w.MPI || w.Rank != 0 || w.Size != 1 || w.LocalRank != 0 || w.LocalSize != 1 || w.Nodes != 1 ||
		w.LocalRankSource != HostnameSource || w.Comm.Size() != 1 || w.Host == "" {
		t.Errorf("Init without MPI: %+v", w)
	}
	if err := w.Comm.Barrier(); err != nil {
		t.Errorf("barrier of one rank: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// A binary without MPI, started by a real mpirun as 2 ranks, must refuse to
// run (every process would otherwise be rank 0 of 1).
func TestNoMPIBinaryUnderMpirunRefusesToRun(t *testing.T) {
	path := needMpirun(t)
	bin := buildCheck(t, "")
	out, code := mpirun(t, path, 2, bin, "collectives")
	if code == 0 || !strings.Contains(out, "built without MPI support but was started as one of 2 ranks (OMPI_COMM_WORLD_SIZE=2)") {
		t.Fatalf("mpirun -np 2 of a binary without MPI: exit %d, output:\n%s", code, out)
	}
}
