package gpubackend

import (
	"fmt"
	"runtime"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/symheap"
)

// poisonNaN is the 32-bit pattern the output is filled with before a
// forward (a quiet NaN): an element the kernel does not write cannot pass
// verification.
const poisonNaN = 0x7fc00000

// ForwardQueued implements backend.Queuer: n forwards of the tokens staged
// for cfg, queued on the kernel's stream back to back, each kernel between
// its own pair of events and the output poisoned before each (the first by
// Stage). The host does not wait between them: every rank's kernel N + 1
// starts as its kernel N ends, so after the first the ranks start together
// (their kernels end within microseconds of each other: each waits for the
// others' returns) and a kernel's time is the layer's, not the host's launch
// skew. The kernels' sequence numbers and signals order one forward after
// the previous on every rank, as for device forwards on a caller's stream.
// Returns each kernel's device time and the last one's Timing.
func (b *Backend) ForwardQueued(cfg config.Layer, n int) ([]time.Duration, backend.Timing, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var tm backend.Timing
	if n < 1 {
		return nil, tm, fmt.Errorf("queued forwards: n = %d, want at least 1", n)
	}
	if err := b.usable(); err != nil {
		return nil, tm, err
	}
	arg, exec, err := b.takeStaged(cfg)
	if err != nil {
		return nil, tm, err
	}
	d := b.drv
	for len(b.evQueue) < 2*n {
		ev, err := d.EventCreate()
		if err != nil {
			return nil, tm, fmt.Errorf("queued forwards: %w", err)
		}
		b.evQueue = append(b.evQueue, ev)
	}
	out := cuda.DevicePtr(symheap.Addr(uint64(b.local), b.layout.Out))
	vals := uint64(cfg.Tokens) * uint64(cfg.Hidden)
	for i := range n {
		if i > 0 && vals > 0 {
			if err := d.MemsetD32Async(out, poisonNaN, vals, b.stream); err != nil {
				b.broken = fmt.Errorf("poison the output before queued forward %d: %w", i, err)
				return nil, tm, b.broken
			}
		}
		if err := d.EventRecord(b.evQueue[2*i], b.stream); err != nil {
			b.broken = fmt.Errorf("queued forward %d: %w", i, err)
			return nil, tm, b.broken
		}
		if err := b.launchStaged(cfg, arg, exec); err != nil {
			return nil, tm, err
		}
		if err := d.EventRecord(b.evQueue[2*i+1], b.stream); err != nil {
			b.broken = fmt.Errorf("queued forward %d: %w", i, err)
			return nil, tm, b.broken
		}
	}
	if err := b.waitKernels(b.evQueue[2*n-1], n); err != nil {
		return nil, tm, err
	}
	if err := b.finishTiming(&tm); err != nil {
		return nil, tm, err
	}
	times := make([]time.Duration, n)
	for i := range n {
		if times[i], err = d.EventElapsedTime(b.evQueue[2*i], b.evQueue[2*i+1]); err != nil {
			return nil, tm, fmt.Errorf("time of queued forward %d: %w", i, err)
		}
	}
	tm.Elapsed = times[n-1]
	b.last, b.haveLast = cfg, true
	return times, tm, nil
}
