package tcpcomm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/transport"
)

// group connects n ranks in this process and runs fn on each.
func group(t *testing.T, n int, timeout time.Duration, fn func(c *Comm) error) []error {
	t.Helper()
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Connect(id, r, n, timeout)
			if err != nil {
				errs[r] = err
				return
			}
			defer c.Close()
			errs[r] = fn(c)
		}()
	}
	wg.Wait()
	return errs
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestCollectivesMatchTheirDefinition(t *testing.T) {
	for _, n := range []int{1, 2, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			noErrors(t, group(t, n, 10*time.Second, func(c *Comm) error {
				me := c.Rank()
				if err := c.Barrier(); err != nil {
					return err
				}
				buf := make([]byte, 5)
				if me == n-1 {
					copy(buf, "hello")
				}
				if err := c.Bcast(n-1, buf); err != nil || string(buf) != "hello" {
					return fmt.Errorf("bcast: %q, %v", buf, err)
				}
				all, err := c.AllGather(bytes.Repeat([]byte{byte(me)}, me))
				if err != nil {
					return err
				}
				for r, b := range all {
					if !bytes.Equal(b, bytes.Repeat([]byte{byte(r)}, r)) {
						return fmt.Errorf("allgather[%d] = %v", r, b)
					}
				}
				vals := []float64{float64(me), -float64(me)}
				if err := c.AllReduceF64(transport.Sum, vals); err != nil {
					return err
				}
				if s := float64(n * (n - 1) / 2); vals[0] != s || vals[1] != -s {
					return fmt.Errorf("sum = %v", vals)
				}
				vals = []float64{float64(me)}
				if err := c.AllReduceF64(transport.Max, vals); err != nil || vals[0] != float64(n-1) {
					return fmt.Errorf("max = %v, %v", vals, err)
				}
				send := make([][]byte, n)
				for d := range send {
					send[d] = []byte(fmt.Sprintf("%d->%d", me, d))
				}
				send[0] = nil // empty slices travel too
				recv, err := c.Alltoallv(send)
				if err != nil {
					return err
				}
				for s, b := range recv {
					want := fmt.Sprintf("%d->%d", s, me)
					if me == 0 {
						want = ""
					}
					if string(b) != want {
						return fmt.Errorf("alltoallv from %d: %q, want %q", s, b, want)
					}
				}
				return nil
			}))
		})
	}
}

func TestMismatchesAreErrorsOnEveryRank(t *testing.T) {
	errs := group(t, 3, 10*time.Second, func(c *Comm) error {
		vals := make([]float64, 1+c.Rank())
		return c.AllReduceF64(transport.Sum, vals)
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "different numbers of values") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	errs = group(t, 3, 10*time.Second, func(c *Comm) error {
		if c.Rank() == 2 {
			return c.Barrier()
		}
		_, err := c.AllGather(nil)
		return err
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 2 called barrier") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestLostRankFailsPeersBeforeTheTimeout(t *testing.T) {
	start := time.Now()
	errs := group(t, 3, 20*time.Second, func(c *Comm) error {
		if c.Rank() == 1 {
			return c.Close() // gone without a word
		}
		return c.Barrier()
	})
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to notice the lost rank", took)
	}
	for _, r := range []int{0, 2} {
		if errs[r] == nil {
			t.Errorf("rank %d: barrier without rank 1 succeeded", r)
		}
	}
}

func TestMissingRankTimesOut(t *testing.T) {
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Connect(id, 0, 2, 300*time.Millisecond)
	if !errors.Is(err, transport.ErrTimeout) || !strings.Contains(err.Error(), "1 of 1 ranks to connect") {
		t.Errorf("got %v", err)
	}
}

func TestConnectRefusesBadIDsAndSizes(t *testing.T) {
	var bad ID
	if _, err := Connect(bad, 1, 2, time.Second); err == nil || !strings.Contains(err.Error(), "not a moerun id") {
		t.Errorf("zero id: %v", err)
	}
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r, size := range []int{2, 3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Connect(id, r, size, 5*time.Second)
			if c != nil {
				c.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 1 says the job has 3 ranks, rank 0 says 2") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	if _, err := Connect(id, 0, 1, time.Second); err == nil || !strings.Contains(err.Error(), "used it already") {
		t.Errorf("reused id: %v", err)
	}
}

func TestAddressFromEnvironment(t *testing.T) {
	l, a, err := addresses("127.0.0.1:0")
	if err != nil || l != "127.0.0.1:0" || a != "127.0.0.1" {
		t.Errorf("host:port: %q %q %v", l, a, err)
	}
	l, a, err = addresses("localhost")
	if err != nil || l != "localhost:0" || a != "localhost" {
		t.Errorf("host: %q %q %v", l, a, err)
	}
	t.Setenv(AddrEnv, "127.0.0.1")
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	if _, addr, err := id.parse(); err != nil || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("advertised %q, %v", addr, err)
	}
	noErrors(t, []error{func() error { c, err := Connect(id, 0, 1, time.Second); c.Close(); return err }()})
}
