//go:build !mpi

package bootstrap

import (
	"fmt"
	"os"

	"github.com/moerun/moerun/internal/transport"
)

// MPIBuilt reports whether this binary was built with MPI support (-tags mpi).
func MPIBuilt() bool { return false }

// Init starts this process as the only rank of a job: this binary has no MPI.
// Started by mpirun or srun as one of several ranks, it returns an error
// instead of letting every process run as rank 0 of 1.
func Init(opts Options) (*World, error) {
	if n, src := LaunchSize(); n > 1 {
		return nil, fmt.Errorf("this moerun binary was built without MPI support but was started as one of %d ranks (%s=%d): rebuild with 'make' (go build -tags mpi)", n, src, n)
	}
	return initLocal(opts, os.Getenv, hostname())
}

// initLocal makes the one-rank world over a transport.Local.
func initLocal(opts Options, getenv func(string) string, host string) (*World, error) {
	c := transport.NewLocal(1, opts.timeout()).Rank(0)
	w := &World{Comm: c, Rank: 0, Size: 1}
	if err := locate(w, c, getenv, host); err != nil {
		return nil, err
	}
	w.close = func() error { return nil }
	w.abort = func(code int) { os.Exit(code) }
	return w, nil
}
