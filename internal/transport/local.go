package transport

import (
	"fmt"
	"sync"
	"time"
)

// Local is an in-process group of ranks that talk through shared memory. Each
// rank is used from its own goroutine. It exists so that tests and fuzz
// targets exercise the distributed code paths in one process.
type Local struct {
	size    int
	timeout time.Duration

	mu      sync.Mutex
	cond    *sync.Cond
	gen     uint64 // generation of the current collective round
	arrived int
	slots   [][]byte   // per-rank contribution of the round in progress
	mat     [][][]byte // per-rank send matrix for Alltoallv
	result  [][]byte   // published result of the last completed round
	resMat  [][][]byte
	aborted error
}

// NewLocal makes a group of size ranks; timeout bounds each collective (0
// means DefaultTimeout).
func NewLocal(size int, timeout time.Duration) *Local {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	l := &Local{size: size, timeout: timeout}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// Rank returns the communicator of rank r in the group.
func (l *Local) Rank(r int) Comm { return &localComm{l: l, rank: r} }

// Run calls fn once for every rank of the group, each in its own goroutine
// with that rank's communicator, and returns what each returned, by rank,
// once all have. A panic in fn becomes that rank's error and aborts the
// group, so that its peers leave their collectives instead of waiting out
// the timeout.
func (l *Local) Run(fn func(c Comm) error) []error {
	errs := make([]error, l.size)
	var wg sync.WaitGroup
	for r := range l.size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := l.Rank(r)
			defer func() {
				if p := recover(); p != nil {
					errs[r] = fmt.Errorf("rank %d panicked: %v", r, p)
					c.Abort(1)
				}
			}()
			errs[r] = fn(c)
		}()
	}
	wg.Wait()
	return errs
}

type localComm struct {
	l    *Local
	rank int
}

func (c *localComm) Rank() int { return c.rank }
func (c *localComm) Size() int { return c.l.size }

// round runs one collective: every rank deposits its data, the last one to
// arrive publishes all deposits, and all ranks read them.
func (c *localComm) round(data []byte, row [][]byte) ([][]byte, [][][]byte, error) {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.aborted != nil {
		return nil, nil, l.aborted
	}
	if l.arrived == 0 {
		l.slots = make([][]byte, l.size)
		l.mat = make([][][]byte, l.size)
	}
	l.slots[c.rank] = data
	l.mat[c.rank] = row
	l.arrived++
	myGen := l.gen
	if l.arrived == l.size {
		l.result, l.resMat = l.slots, l.mat
		l.arrived = 0
		l.gen++
		l.cond.Broadcast()
		return l.result, l.resMat, nil
	}
	deadline := time.Now().Add(l.timeout)
	timer := time.AfterFunc(l.timeout, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer timer.Stop()
	for l.gen == myGen && l.aborted == nil {
		if time.Now().After(deadline) {
			err := fmt.Errorf("rank %d: collective waited %v for %d of %d ranks: %w",
				c.rank, l.timeout, l.size-l.arrived, l.size, ErrTimeout)
			l.aborted = err
			l.cond.Broadcast()
			return nil, nil, err
		}
		l.cond.Wait()
	}
	if l.gen == myGen {
		return nil, nil, l.aborted
	}
	return l.result, l.resMat, nil
}

func (c *localComm) Barrier() error { _, _, err := c.round(nil, nil); return err }

func (c *localComm) Bcast(root int, buf []byte) error {
	if root < 0 || root >= c.l.size {
		return fmt.Errorf("bcast: root %d out of range [0, %d)", root, c.l.size)
	}
	all, _, err := c.round(append([]byte(nil), buf...), nil)
	if err != nil {
		return err
	}
	if len(all[root]) != len(buf) {
		return fmt.Errorf("bcast: rank %d has %d bytes, root %d has %d", c.rank, len(buf), root, len(all[root]))
	}
	copy(buf, all[root])
	return nil
}

func (c *localComm) AllGather(local []byte) ([][]byte, error) {
	all, _, err := c.round(append([]byte(nil), local...), nil)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(all))
	for i, b := range all {
		out[i] = append([]byte(nil), b...)
	}
	return out, nil
}

func (c *localComm) AllReduceF64(op Op, vals []float64) error {
	all, _, err := c.round(f64Bytes(vals), nil)
	if err != nil {
		return err
	}
	return reduceInto(op, vals, all)
}

func (c *localComm) Alltoallv(send [][]byte) ([][]byte, error) {
	if len(send) != c.l.size {
		return nil, fmt.Errorf("alltoallv: %d send buffers for %d ranks", len(send), c.l.size)
	}
	row := make([][]byte, len(send))
	for i, b := range send {
		row[i] = append([]byte(nil), b...)
	}
	_, mat, err := c.round(nil, row)
	if err != nil {
		return nil, err
	}
	recv := make([][]byte, c.l.size)
	for s := range recv {
		recv[s] = append([]byte(nil), mat[s][c.rank]...)
	}
	return recv, nil
}

func (c *localComm) Abort(code int) {
	l := c.l
	l.mu.Lock()
	if l.aborted == nil {
		l.aborted = fmt.Errorf("rank %d aborted the group with code %d", c.rank, code)
	}
	l.cond.Broadcast()
	l.mu.Unlock()
}
