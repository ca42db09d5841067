// Package transport defines the small set of collective operations that the
// host side of moerun needs between ranks, so that the same code runs over MPI
// (package bootstrap) and over goroutines in one process (Local, for tests and
// fuzzing).
package transport

import (
	"errors"
	"time"
)

// Op is a reduction operation.
type Op int

// Reductions.
const (
	Sum Op = iota
	Max
	Min
)

// ErrTimeout is wrapped by errors from waits that ran past their bound.
var ErrTimeout = errors.New("timed out")

// Comm is a communicator over a fixed group of ranks. Every collective must
// be called by every rank in the same order. Implementations bound every wait
// (see Timeout) and return an error wrapping ErrTimeout instead of hanging.
type Comm interface {
	Rank() int
	Size() int
	// Barrier returns once every rank has entered it.
	Barrier() error
	// Bcast copies root's buf into every rank's buf (same length everywhere).
	Bcast(root int, buf []byte) error
	// AllGather returns every rank's local slice, indexed by rank. Slices may
	// differ in length between ranks.
	AllGather(local []byte) ([][]byte, error)
	// AllReduceF64 reduces vals element-wise across ranks, in place.
	AllReduceF64(op Op, vals []float64) error
	// Alltoallv sends send[d] to rank d and returns recv[s], what rank s sent
	// to this rank. len(send) must equal Size(); empty slices are allowed.
	Alltoallv(send [][]byte) ([][]byte, error)
	// Abort ends the whole job with a non-zero exit code; it does not return
	// when the job is a real multi-process one.
	Abort(code int)
}

// DefaultTimeout bounds every host-side collective wait unless a caller sets
// another. Long enough for a large configuration's weight generation on a
// slow rank, short enough that a lost peer is reported within a minute.
const DefaultTimeout = 60 * time.Second
