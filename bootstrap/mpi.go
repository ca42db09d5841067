//go:build mpi

package bootstrap

/*
#cgo pkg-config: ompi
#include <mpi.h>
#include <stdint.h>
#include <stddef.h>

// Zero-length buffers are passed as this, never as NULL.
static char moe_dummy[16];
static void *moe_nz(void *p) { return p ? p : (void *)moe_dummy; }

static int moe_init_funneled(int *provided) {
	return MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, provided);
}
static int moe_finalized(int *flag) { return MPI_Finalized(flag); }
static int moe_errors_return(void) {
	return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static int moe_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }
static int moe_is_thread_main(int *flag) { return MPI_Is_thread_main(flag); }

static char moe_errbuf[MPI_MAX_ERROR_STRING + 1];
static const char *moe_error_string(int code) {
	int n = 0;
	if (MPI_Error_string(code, moe_errbuf, &n) != MPI_SUCCESS) n = 0;
	moe_errbuf[n < 0 ? 0 : (n > MPI_MAX_ERROR_STRING ? MPI_MAX_ERROR_STRING : n)] = 0;
	return moe_errbuf;
}

static int moe_test(MPI_Request *req, int *flag) {
	return MPI_Test(req, flag, MPI_STATUS_IGNORE);
}

static int moe_ibarrier(MPI_Request *req) { return MPI_Ibarrier(MPI_COMM_WORLD, req); }

static int moe_ibcast(void *buf, int n, int root, MPI_Request *req) {
	return MPI_Ibcast(moe_nz(buf), n, MPI_BYTE, root, MPI_COMM_WORLD, req);
}

static int moe_iallgather_i64(int64_t *mine, int64_t *all, MPI_Request *req) {
	return MPI_Iallgather(mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, MPI_COMM_WORLD, req);
}

static int moe_iallgatherv(void *send, int n, void *recv, int *counts, int *displs, MPI_Request *req) {
	return MPI_Iallgatherv(moe_nz(send), n, MPI_BYTE, moe_nz(recv), counts, displs, MPI_BYTE,
		MPI_COMM_WORLD, req);
}

// op: 0 sum, 1 max, 2 min (transport.Op).
static int moe_iallreduce_f64(double *vals, int n, int op, MPI_Request *req) {
	MPI_Op o = op == 1 ? MPI_MAX : (op == 2 ? MPI_MIN : MPI_SUM);
	return MPI_Iallreduce(MPI_IN_PLACE, moe_nz(vals), n, MPI_DOUBLE, o, MPI_COMM_WORLD, req);
}

static int moe_iallreduce_max_i64(int64_t *vals, int n, MPI_Request *req) {
	return MPI_Iallreduce(MPI_IN_PLACE, vals, n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD, req);
}

static int moe_ialltoall_int(int *send, int *recv, MPI_Request *req) {
	return MPI_Ialltoall(send, 1, MPI_INT, recv, 1, MPI_INT, MPI_COMM_WORLD, req);
}

static int moe_ialltoallv(void *send, int *scounts, int *sdispls,
		void *recv, int *rcounts, int *rdispls, MPI_Request *req) {
	return MPI_Ialltoallv(moe_nz(send), scounts, sdispls, MPI_BYTE,
		moe_nz(recv), rcounts, rdispls, MPI_BYTE, MPI_COMM_WORLD, req);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/emer/empi/mpi"

	"github.com/moerun/moerun/internal/transport"
)

// MPIBuilt reports whether this binary was built with MPI support (-tags mpi).
func MPIBuilt() bool { return true }

// Init initialises MPI (MPI_Init_thread with MPI_THREAD_FUNNELED, unless the
// embedding program did already) and finds this rank's place in the job.
// MPI_Init_thread is bounded by opts.Timeout: past it, the process ends
// with exit code 1 and a message on stderr (startupGuard).
// It locks the calling goroutine to its OS thread: every later MPI call must
// come from that goroutine. If Init fails after MPI started, exit with a
// non-zero code (the launcher then ends the job) or call AbortJob.
func Init(opts Options) (*World, error) {
	runtime.LockOSThread()
	var fin C.int
	C.moe_finalized(&fin)
	if fin != 0 {
		return nil, errors.New("bootstrap: MPI was already finalized in this process; it cannot be started again")
	}
	owns := false
	if !mpi.IsOn() {
		var provided C.int
		stop := startupGuard(opts.timeout(), opts.TimeoutName, os.Stderr, os.Exit)
		rc := C.moe_init_funneled(&provided)
		stop()
		if rc != C.MPI_SUCCESS {
			return nil, fmt.Errorf("bootstrap: MPI_Init_thread: %s", mpiErrString(rc))
		}
		owns = true
	}
	// Errors come back as codes and become Go errors, instead of MPI's
	// default of ending the job from inside the library.
	if rc := C.moe_errors_return(); rc != C.MPI_SUCCESS {
		return nil, fmt.Errorf("bootstrap: MPI_Comm_set_errhandler: %s", mpiErrString(rc))
	}
	c := &mpiComm{rank: mpi.WorldRank(), size: mpi.WorldSize(), timeout: opts.timeout()}
	if n, src := LaunchSize(); n > 1 && c.size == 1 {
		return nil, fmt.Errorf("bootstrap: MPI says this process is rank 0 of 1, but it was started as one of %d ranks (%s=%d): "+
			"the launcher belongs to a different MPI than the one this binary was built with (Open MPI); use Open MPI's mpirun, or srun --mpi=pmix",
			n, src, n)
	}
	w := &World{Comm: c, Rank: c.rank, Size: c.size, MPI: true}
	if err := locate(w, c, os.Getenv, hostname()); err != nil {
		return nil, err
	}
	w.close = func() error { return c.finalize(owns) }
	w.abort = func(code int) { abortMPI(code) }
	return w, nil
}

// AbortJob ends the whole job with exit code code (1 if code is 0): MPI_Abort
// when MPI is running, else os.Exit. For fatal paths that have no World.
func AbortJob(code int) {
	if code == 0 {
		code = 1
	}
	if mpi.IsOn() {
		var fin C.int
		C.moe_finalized(&fin)
		if fin == 0 {
			abortMPI(code)
		}
	}
	os.Exit(code)
}

func abortMPI(code int) {
	C.moe_abort(C.int(code))
	// MPI_Abort does not return; if it ever does, still end this process.
	os.Exit(code)
}

func mpiErrString(rc C.int) string {
	return fmt.Sprintf("%s (MPI error %d)", C.GoString(C.moe_error_string(rc)), int(rc))
}

// mpiComm is transport.Comm over MPI_COMM_WORLD, with bounded waits.
type mpiComm struct {
	rank, size int
	timeout    time.Duration
	// broken is set by a collective that timed out or failed inside MPI;
	// every later collective returns it.
	broken    error
	finalized bool
}

// leaked keeps the buffers of collectives that never finished pinned and
// alive: MPI may still write into them.
var leaked []*runtime.Pinner

// Polling: MPI_Test in a tight loop for spinFor (the usual case, where peers
// are close behind), then sleeps that double from minSleep to maxSleep.
const (
	spinFor  = 2 * time.Millisecond
	minSleep = 20 * time.Microsecond
	maxSleep = time.Millisecond
	// maxCount is the largest element count an MPI call takes (a C int).
	maxCount = math.MaxInt32
)

func (c *mpiComm) Rank() int { return c.rank }
func (c *mpiComm) Size() int { return c.size }

// ready says whether op may call MPI now.
func (c *mpiComm) ready(op string) error {
	if c.finalized {
		return fmt.Errorf("rank %d: MPI %s after Close", c.rank, op)
	}
	if c.broken != nil {
		return fmt.Errorf("MPI %s not started: the communicator is unusable after an earlier failure; end the job with Abort: %w", op, c.broken)
	}
	var main C.int
	if rc := C.moe_is_thread_main(&main); rc != C.MPI_SUCCESS || main == 0 {
		return fmt.Errorf("rank %d: MPI %s called from an OS thread other than the one that initialised MPI: call MPI only from the goroutine that called bootstrap.Init", c.rank, op)
	}
	return nil
}

// call is one non-blocking collective in flight.
type call struct {
	c        *mpiComm
	op       string
	start    time.Time
	deadline time.Time
	pin      *runtime.Pinner
	kept     bool // buffers stay pinned: MPI may still use them
}

func (c *mpiComm) begin(op string) (*call, error) {
	if err := c.ready(op); err != nil {
		return nil, err
	}
	now := time.Now()
	return &call{c: c, op: op, start: now, deadline: now.Add(c.timeout), pin: new(runtime.Pinner)}, nil
}

// ptr pins a non-empty slice's array for the call and returns its address,
// or nil for an empty slice.
func ptr[T any](k *call, s []T) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	k.pin.Pin(&s[0])
	return unsafe.Pointer(&s[0])
}

// fail marks the communicator unusable and keeps the call's buffers pinned
// for good, since MPI may still use them.
func (k *call) fail(err error) error {
	k.c.broken = err
	if !k.kept {
		k.kept = true
		leaked = append(leaked, k.pin)
	}
	return err
}

// started checks the return code of the call that started step.
func (k *call) started(step string, rc C.int) error {
	if rc != C.MPI_SUCCESS {
		return k.fail(fmt.Errorf("rank %d: MPI %s (%s): %s", k.c.rank, k.op, step, mpiErrString(rc)))
	}
	return nil
}

// wait polls req until it completes or the call's deadline passes.
func (k *call) wait(step string, req *C.MPI_Request) error {
	sleep := time.Duration(0)
	for {
		var done C.int
		if rc := C.moe_test(req, &done); rc != C.MPI_SUCCESS {
			return k.fail(fmt.Errorf("rank %d: MPI %s (%s): %s", k.c.rank, k.op, step, mpiErrString(rc)))
		}
		if done != 0 {
			return nil
		}
		now := time.Now()
		if now.After(k.deadline) {
			return k.fail(fmt.Errorf("rank %d: MPI %s (%s) waited %v for the other ranks of %d and gave up "+
				"(a rank has died, is stuck, or called a different collective): %w",
				k.c.rank, k.op, step, now.Sub(k.start).Round(time.Millisecond), k.c.size, transport.ErrTimeout))
		}
		if now.Sub(k.start) < spinFor {
			continue
		}
		sleep = min(max(2*sleep, minSleep), maxSleep)
		time.Sleep(sleep)
	}
}

// run starts one step with start and waits for it.
func (k *call) run(step string, start func(req *C.MPI_Request) C.int) error {
	var req C.MPI_Request
	if err := k.started(step, start(&req)); err != nil {
		return err
	}
	return k.wait(step, &req)
}

// end releases the call's buffers after success or a local error.
func (k *call) end() {
	if !k.kept {
		k.pin.Unpin()
	}
}

func (c *mpiComm) Barrier() error {
	k, err := c.begin("barrier")
	if err != nil {
		return err
	}
	defer k.end()
	return k.run("ibarrier", func(req *C.MPI_Request) C.int { return C.moe_ibarrier(req) })
}

func (c *mpiComm) Bcast(root int, buf []byte) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("rank %d: bcast: root %d out of range [0, %d)", c.rank, root, c.size)
	}
	k, err := c.begin("bcast")
	if err != nil {
		return err
	}
	defer k.end()
	// The root's length first, so that a rank whose buffer has another
	// length reports it instead of truncating or corrupting; -1: too large.
	hdr := []int64{int64(len(buf))}
	if len(buf) > maxCount {
		hdr[0] = -1
	}
	if err := k.run("length", func(req *C.MPI_Request) C.int {
		return C.moe_ibcast(ptr(k, hdr), 8, C.int(root), req)
	}); err != nil {
		return err
	}
	n := hdr[0]
	switch {
	case n < 0:
		return fmt.Errorf("rank %d: bcast: root %d's buffer is larger than %d bytes", c.rank, root, maxCount)
	case n != int64(len(buf)):
		// Take part with a buffer of the root's size, so that every rank
		// stays in step, then report the mismatch.
		tmp := make([]byte, n)
		if err := k.run("data", func(req *C.MPI_Request) C.int {
			return C.moe_ibcast(ptr(k, tmp), C.int(n), C.int(root), req)
		}); err != nil {
			return err
		}
		return fmt.Errorf("rank %d: bcast: this rank has %d bytes, root %d has %d", c.rank, len(buf), root, n)
	}
	return k.run("data", func(req *C.MPI_Request) C.int {
		return C.moe_ibcast(ptr(k, buf), C.int(len(buf)), C.int(root), req)
	})
}

func (c *mpiComm) AllGather(local []byte) ([][]byte, error) {
	k, err := c.begin("allgather")
	if err != nil {
		return nil, err
	}
	defer k.end()
	mine := []int64{int64(len(local))}
	if len(local) > maxCount {
		mine[0] = -1
	}
	lens := make([]int64, c.size)
	if err := k.run("lengths", func(req *C.MPI_Request) C.int {
		return C.moe_iallgather_i64((*C.int64_t)(ptr(k, mine)), (*C.int64_t)(ptr(k, lens)), req)
	}); err != nil {
		return nil, err
	}
	counts := make([]C.int, c.size)
	displs := make([]C.int, c.size)
	var total int64
	for r, n := range lens {
		if n < 0 {
			return nil, fmt.Errorf("rank %d: allgather: rank %d's slice is larger than %d bytes", c.rank, r, maxCount)
		}
		if total+n > maxCount {
			return nil, fmt.Errorf("rank %d: allgather: %d bytes or more in all, more than one call takes (%d)", c.rank, total+n, maxCount)
		}
		counts[r], displs[r] = C.int(n), C.int(total)
		total += n
	}
	out := make([][]byte, c.size)
	if total == 0 { // every rank knows it: all skip the data step
		return out, nil
	}
	recv := make([]byte, total)
	if err := k.run("data", func(req *C.MPI_Request) C.int {
		return C.moe_iallgatherv(ptr(k, local), C.int(len(local)), ptr(k, recv),
			(*C.int)(ptr(k, counts)), (*C.int)(ptr(k, displs)), req)
	}); err != nil {
		return nil, err
	}
	for r := range out {
		d, n := int(displs[r]), int(counts[r])
		out[r] = recv[d : d+n : d+n]
	}
	return out, nil
}

func (c *mpiComm) AllReduceF64(op transport.Op, vals []float64) error {
	if op != transport.Sum && op != transport.Max && op != transport.Min {
		return fmt.Errorf("rank %d: allreduce: unknown operation %d", c.rank, op)
	}
	k, err := c.begin("allreduce")
	if err != nil {
		return err
	}
	defer k.end()
	// Every rank must reduce the same number of values: max(n) and
	// max(-n) tell every rank whether they all agree.
	n := int64(len(vals))
	if len(vals) > maxCount {
		n = math.MaxInt64 / 2
	}
	lens := []int64{n, -n}
	if err := k.run("lengths", func(req *C.MPI_Request) C.int {
		return C.moe_iallreduce_max_i64((*C.int64_t)(ptr(k, lens)), 2, req)
	}); err != nil {
		return err
	}
	if hi, lo := lens[0], -lens[1]; hi != lo {
		return fmt.Errorf("rank %d: allreduce: ranks give different numbers of values (from %d to %d; this rank %d)", c.rank, lo, hi, len(vals))
	}
	if len(vals) > maxCount {
		return fmt.Errorf("rank %d: allreduce: %d values, more than one call takes (%d)", c.rank, len(vals), maxCount)
	}
	if len(vals) == 0 {
		return nil
	}
	return k.run("data", func(req *C.MPI_Request) C.int {
		return C.moe_iallreduce_f64((*C.double)(ptr(k, vals)), C.int(len(vals)), C.int(op), req)
	})
}

func (c *mpiComm) Alltoallv(send [][]byte) ([][]byte, error) {
	if len(send) != c.size {
		return nil, fmt.Errorf("rank %d: alltoallv: %d send buffers for %d ranks", c.rank, len(send), c.size)
	}
	k, err := c.begin("alltoallv")
	if err != nil {
		return nil, err
	}
	defer k.end()
	scounts := make([]C.int, c.size)
	sdispls := make([]C.int, c.size)
	var stotal int64
	for _, b := range send {
		stotal += int64(len(b))
	}
	tooBig := stotal > maxCount
	for d, b := range send {
		if tooBig {
			scounts[d] = -1 // tells every receiver, so that all skip the data step
			continue
		}
		scounts[d] = C.int(len(b))
	}
	rcounts := make([]C.int, c.size)
	if err := k.run("counts", func(req *C.MPI_Request) C.int {
		return C.moe_ialltoall_int((*C.int)(ptr(k, scounts)), (*C.int)(ptr(k, rcounts)), req)
	}); err != nil {
		return nil, err
	}
	if tooBig {
		return nil, fmt.Errorf("rank %d: alltoallv: %d bytes to send, more than one call takes (%d)", c.rank, stotal, maxCount)
	}
	rdispls := make([]C.int, c.size)
	var rtotal int64
	for s, n := range rcounts {
		if n < 0 {
			return nil, fmt.Errorf("rank %d: alltoallv: rank %d sends more than one call takes (%d bytes)", c.rank, s, maxCount)
		}
		rdispls[s] = C.int(rtotal)
		rtotal += int64(n)
	}
	if rtotal > maxCount {
		// The other ranks go on to the data step and will time out; this
		// rank cannot take part. Mark the communicator unusable.
		err := fmt.Errorf("rank %d: alltoallv: %d bytes to receive, more than one call takes (%d)", c.rank, rtotal, maxCount)
		c.broken = err
		return nil, err
	}
	sbuf := make([]byte, stotal)
	var off int64
	for d, b := range send {
		sdispls[d] = C.int(off)
		off += int64(copy(sbuf[off:], b))
	}
	rbuf := make([]byte, rtotal)
	if err := k.run("data", func(req *C.MPI_Request) C.int {
		return C.moe_ialltoallv(ptr(k, sbuf), (*C.int)(ptr(k, scounts)), (*C.int)(ptr(k, sdispls)),
			ptr(k, rbuf), (*C.int)(ptr(k, rcounts)), (*C.int)(ptr(k, rdispls)), req)
	}); err != nil {
		return nil, err
	}
	recv := make([][]byte, c.size)
	for s := range recv {
		d, n := int(rdispls[s]), int(rcounts[s])
		recv[s] = rbuf[d : d+n : d+n]
	}
	return recv, nil
}

// Abort ends the whole job with exit code code (1 if 0) through MPI_Abort.
func (c *mpiComm) Abort(code int) {
	if code == 0 {
		code = 1
	}
	abortMPI(code)
}

func (c *mpiComm) finalize(owns bool) error {
	var main C.int
	if rc := C.moe_is_thread_main(&main); rc != C.MPI_SUCCESS || main == 0 {
		return fmt.Errorf("rank %d: bootstrap: Close called from an OS thread other than the one that initialised MPI: call it from the goroutine that called Init", c.rank)
	}
	c.finalized = true
	if !owns {
		return nil
	}
	mpi.Finalize()
	return nil
}
