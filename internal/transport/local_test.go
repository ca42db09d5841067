package transport

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLocalCollectives(t *testing.T) {
	const n = 3
	l := NewLocal(n, time.Minute)
	for r, err := range l.Run(func(c Comm) error {
		me := c.Rank()
		if err := c.Barrier(); err != nil {
			return err
		}
		buf := []byte{byte(me), 0}
		if err := c.Bcast(1, buf); err != nil || buf[0] != 1 {
			return fmt.Errorf("bcast: %v %v", buf, err)
		}
		all, err := c.AllGather(make([]byte, me)) // lengths 0, 1, 2
		if err != nil || len(all) != n || len(all[2]) != 2 || len(all[0]) != 0 {
			return fmt.Errorf("allgather: %v %v", all, err)
		}
		v := []float64{float64(me), -float64(me)}
		if err := c.AllReduceF64(Sum, v); err != nil || v[0] != 3 || v[1] != -3 {
			return fmt.Errorf("sum: %v %v", v, err)
		}
		v = []float64{float64(me)}
		if err := c.AllReduceF64(Max, v); err != nil || v[0] != 2 {
			return fmt.Errorf("max: %v %v", v, err)
		}
		send := make([][]byte, n)
		for d := range send {
			send[d] = []byte(fmt.Sprintf("%d>%d", me, d))
		}
		send[0] = nil // an empty buffer to rank 0
		recv, err := c.Alltoallv(send)
		if err != nil {
			return err
		}
		for s, b := range recv {
			want := fmt.Sprintf("%d>%d", s, me)
			if me == 0 {
				want = ""
			}
			if string(b) != want {
				return fmt.Errorf("alltoallv from %d: %q, want %q", s, b, want)
			}
		}
		return nil
	}) {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestLocalTimesOutWhenARankIsMissing(t *testing.T) {
	l := NewLocal(2, 200*time.Millisecond)
	start := time.Now()
	err := l.Rank(0).Barrier() // rank 1 never comes
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	if err := l.Rank(1).Barrier(); err == nil {
		t.Error("the group kept working after a timeout")
	}
}

func TestLocalAbortReleasesWaiters(t *testing.T) {
	l := NewLocal(2, time.Minute)
	done := make(chan error)
	go func() { done <- l.Rank(0).Barrier() }()
	time.Sleep(20 * time.Millisecond)
	l.Rank(1).Abort(3)
	select {
	case err := <-done:
		if err == nil {
			t.Error("barrier succeeded after abort")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("abort did not release the waiting rank")
	}
}

// Run gives every rank its own communicator and goroutine, returns the
// errors by rank, and turns a panic into that rank's error while releasing
// the peers blocked in a collective.
func TestLocalRunReturnsErrorsByRankAndSurvivesAPanic(t *testing.T) {
	l := NewLocal(3, time.Minute)
	errs := l.Run(func(c Comm) error {
		if err := c.Barrier(); err != nil {
			return err
		}
		if c.Rank() == 1 {
			return fmt.Errorf("rank %d of %d", c.Rank(), c.Size())
		}
		return nil
	})
	if errs[0] != nil || errs[2] != nil || errs[1] == nil || errs[1].Error() != "rank 1 of 3" {
		t.Errorf("errors by rank: %v", errs)
	}
	start := time.Now()
	errs = NewLocal(2, time.Minute).Run(func(c Comm) error {
		if c.Rank() == 0 {
			panic("boom")
		}
		return c.Barrier() // released by rank 0's abort
	})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "panicked: boom") || errs[1] == nil {
		t.Errorf("after a panic: %v", errs)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the peer waited %v for the panicked rank", d)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	f := []float64{1.5, -0, 3e300}
	g, err := BytesF64(F64Bytes(f))
	if err != nil || g[0] != 1.5 || g[2] != 3e300 {
		t.Errorf("float64: %v %v", g, err)
	}
	i := []int64{-1, 1 << 40}
	j, err := BytesI64(I64Bytes(i))
	if err != nil || j[0] != -1 || j[1] != 1<<40 {
		t.Errorf("int64: %v %v", j, err)
	}
	if _, err := BytesF64(make([]byte, 7)); err == nil {
		t.Error("7 bytes decoded as float64s")
	}
}
