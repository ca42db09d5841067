package gpubackend

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/transport"
)

// boundCollective runs fn, a call into NVSHMEM that waits for every rank (its
// init, the symmetric heap's allocation and free, a barrier, finalize), and
// ends the process if fn has not returned within d (bootstrap.BoundCall, the
// bound MPI's start-up runs under too). NVSHMEM's host calls have no bound of
// their own and cannot be abandoned and retried, so a rank that dies or stops
// between the last bounded MPI exchange and such a call would leave the
// others in it forever: past d this writes which call on which rank timed
// out, and why, to w and calls exit(1) (under mpirun, the job ends). name is
// the caller's option that sets d, for the message.
func boundCollective(d time.Duration, name string, rank int, what string, w io.Writer, exit func(int), fn func()) {
	msg := fmt.Sprintf("gpu backend: rank %d: NVSHMEM %s did not finish within %s %v: a rank died or is stuck; giving up\n", rank, what, name, d)
	bootstrap.BoundCall(d, msg, w, exit, fn)
}

// collective is boundCollective with the backend's timeout, stderr and os.Exit.
func (b *Backend) collective(what string, fn func()) {
	d, name := b.opt.Timeout, b.opt.TimeoutName
	if d <= 0 {
		d = transport.DefaultTimeout
	}
	if name == "" {
		name = "Options.Timeout"
	}
	boundCollective(d, name, b.rank, what, os.Stderr, os.Exit, fn)
}
