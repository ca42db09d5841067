// Command mpicheck exercises package bootstrap across real processes. The
// bootstrap tests build it and run it under mpirun:
//
//	mpirun --oversubscribe --allow-run-as-root -np 3 mpicheck collectives
//
// Modes: collectives (every collective, with empty and unequal buffers, and
// the agreement helpers), abort (rank 1 calls Abort(3)), timeout (only rank 0
// enters a barrier, which must time out). Each rank prints "rank R: OK ..."
// when its checks pass; a failed check prints "rank R: FAIL ..." and ends
// the job with exit code 1.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mpicheck collectives|abort|timeout")
		os.Exit(2)
	}
	mode := os.Args[1]
	timeout := 30 * time.Second
	if mode == "timeout" {
		timeout = time.Second
	}
	w, err := bootstrap.Init(bootstrap.Options{Timeout: timeout})
	if err != nil {
		fmt.Println("FAIL init:", err)
		os.Exit(1)
	}
	fail := func(format string, a ...any) {
		fmt.Printf("rank %d: FAIL %s\n", w.Rank, fmt.Sprintf(format, a...))
		w.Abort(1)
	}
	fmt.Printf("rank %d: world size=%d local=%d/%d (%s) host=%s nodes=%d mpi=%t built=%t\n",
		w.Rank, w.Size, w.LocalRank, w.LocalSize, w.LocalRankSource, w.Host, w.Nodes, w.MPI, bootstrap.MPIBuilt())
	switch mode {
	case "collectives":
		if err := collectives(w); err != nil {
			fail("%v", err)
		}
	case "abort":
		if err := w.Comm.Barrier(); err != nil {
			fail("barrier: %v", err)
		}
		if w.Rank == 1 {
			fmt.Printf("rank %d: aborting with code 3\n", w.Rank)
			w.Abort(3)
		}
		// The others wait in a barrier that rank 1 never joins, until
		// MPI_Abort ends them.
		err := w.Comm.Barrier()
		fail("barrier after abort returned: %v", err)
	case "timeout":
		if w.Rank == 0 {
			start := time.Now()
			err := w.Comm.Barrier()
			took := time.Since(start)
			if !errors.Is(err, transport.ErrTimeout) {
				fail("barrier without peers: want an error wrapping transport.ErrTimeout, got %v", err)
			}
			if took < time.Second || took > 10*time.Second {
				fail("barrier timed out after %v, want about 1s", took)
			}
			fmt.Printf("rank %d: timeout error after %v: %v\n", w.Rank, took.Round(time.Millisecond), err)
			start = time.Now()
			if err := w.Comm.Barrier(); err == nil || !strings.Contains(err.Error(), "unusable") || time.Since(start) > 100*time.Millisecond {
				fail("barrier after a timeout: want an immediate 'unusable' error, got %v after %v", err, time.Since(start))
			} else {
				fmt.Printf("rank %d: next collective: %v\n", w.Rank, err)
			}
		}
	default:
		fail("unknown mode %q", mode)
	}
	if err := w.Close(); err != nil {
		fail("close: %v", err)
	}
	if err := w.Close(); err != nil {
		fmt.Printf("rank %d: FAIL second close: %v\n", w.Rank, err)
		os.Exit(1)
	}
	fmt.Printf("rank %d: OK %s\n", w.Rank, mode)
}

func collectives(w *bootstrap.World) error {
	c := w.Comm
	r, n := c.Rank(), c.Size()
	if err := c.Barrier(); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}

	// Bcast from every root, and an empty one.
	for root := 0; root < n; root++ {
		buf := make([]byte, 5)
		if r == root {
			copy(buf, fmt.Sprintf("from%d", root))
		}
		if err := c.Bcast(root, buf); err != nil {
			return fmt.Errorf("bcast from %d: %w", root, err)
		}
		if string(buf) != fmt.Sprintf("from%d", root) {
			return fmt.Errorf("bcast from %d: got %q", root, buf)
		}
	}
	if err := c.Bcast(0, nil); err != nil {
		return fmt.Errorf("empty bcast: %w", err)
	}
	// A length mismatch is an error on the rank that differs, not a hang.
	if n >= 2 {
		buf := make([]byte, 4)
		if r == n-1 {
			buf = make([]byte, 6)
		}
		err := c.Bcast(0, buf)
		if (r == n-1) != (err != nil) {
			return fmt.Errorf("bcast with rank %d's buffer longer: rank %d got error %v", n-1, r, err)
		}
	}

	// AllGather: rank r gives r bytes of value r (rank 0 nothing), then
	// every rank gives nothing.
	mine := bytes.Repeat([]byte{byte(r)}, r)
	all, err := c.AllGather(mine)
	if err != nil {
		return fmt.Errorf("allgather: %w", err)
	}
	if len(all) != n {
		return fmt.Errorf("allgather: %d slices for %d ranks", len(all), n)
	}
	for s, b := range all {
		if !bytes.Equal(b, bytes.Repeat([]byte{byte(s)}, s)) {
			return fmt.Errorf("allgather: from rank %d got %v", s, b)
		}
	}
	all, err = c.AllGather(nil)
	if err != nil {
		return fmt.Errorf("empty allgather: %w", err)
	}
	for s, b := range all {
		if len(b) != 0 {
			return fmt.Errorf("empty allgather: rank %d's slice has %d bytes", s, len(b))
		}
	}

	// AllReduceF64.
	want := map[transport.Op][]float64{
		transport.Sum: {float64(n * (n - 1) / 2), float64(n)},
		transport.Max: {float64(n - 1), 1},
		transport.Min: {0, 1},
	}
	for _, op := range []transport.Op{transport.Sum, transport.Max, transport.Min} {
		vals := []float64{float64(r), 1}
		if err := c.AllReduceF64(op, vals); err != nil {
			return fmt.Errorf("allreduce %d: %w", op, err)
		}
		if vals[0] != want[op][0] || vals[1] != want[op][1] {
			return fmt.Errorf("allreduce %d: got %v, want %v", op, vals, want[op])
		}
	}
	if err := c.AllReduceF64(transport.Sum, nil); err != nil {
		return fmt.Errorf("empty allreduce: %w", err)
	}
	if n >= 2 {
		vals := make([]float64, 2+r%2) // ranks disagree on the length
		if err := c.AllReduceF64(transport.Sum, vals); err == nil {
			return errors.New("allreduce with different lengths: no error")
		}
	}

	// Alltoallv: rank s sends (s+d)%3 bytes of value 10*s+d to rank d, so
	// some buffers are empty; then everything empty.
	send := make([][]byte, n)
	for d := range send {
		send[d] = bytes.Repeat([]byte{byte(10*r + d)}, (r+d)%3)
	}
	recv, err := c.Alltoallv(send)
	if err != nil {
		return fmt.Errorf("alltoallv: %w", err)
	}
	for s, b := range recv {
		if w := bytes.Repeat([]byte{byte(10*s + r)}, (s+r)%3); !bytes.Equal(b, w) {
			return fmt.Errorf("alltoallv: from rank %d got %v, want %v", s, b, w)
		}
	}
	recv, err = c.Alltoallv(make([][]byte, n))
	if err != nil {
		return fmt.Errorf("empty alltoallv: %w", err)
	}
	for s, b := range recv {
		if len(b) != 0 {
			return fmt.Errorf("empty alltoallv: %d bytes from rank %d", len(b), s)
		}
	}

	// BroadcastID, working and failing on rank 0.
	id, err := bootstrap.BroadcastID(c, func() ([128]byte, error) {
		var id [128]byte
		copy(id[:], "unique-id")
		id[127] = 42
		return id, nil
	})
	if err != nil || string(id[:9]) != "unique-id" || id[127] != 42 {
		return fmt.Errorf("broadcast id: %q, %v", id[:9], err)
	}
	_, err = bootstrap.BroadcastID(c, func() ([128]byte, error) {
		return [128]byte{}, errors.New("no NVSHMEM here")
	})
	if err == nil || !strings.Contains(err.Error(), "no NVSHMEM here") {
		return fmt.Errorf("broadcast id with a failing maker: want rank 0's error on every rank, got %v", err)
	}

	// CheckAgreement.
	st := config.Default().Static()
	if err := bootstrap.CheckAgreement(c, st, "v1"); err != nil {
		return fmt.Errorf("agreement: %w", err)
	}
	if n >= 2 {
		if r == n-1 {
			st.Hidden = 1024
		}
		err = bootstrap.CheckAgreement(c, st, "v1")
		if want := fmt.Sprintf("rank %d runs hidden=1024, rank 0 runs hidden=2048", n-1); err == nil || !strings.Contains(err.Error(), want) {
			return fmt.Errorf("disagreement: want an error with %q on every rank, got %v", want, err)
		}
	}
	return c.Barrier()
}
