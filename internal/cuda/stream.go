package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"fmt"
	"time"
)

// Event creation flags (CU_EVENT_*).
const (
	EventDefault       uint32 = 0x0
	EventBlockingSync  uint32 = 0x1
	EventDisableTiming uint32 = 0x2
)

// StreamCreate creates a stream in the current context. A non-blocking
// stream does not synchronise with the legacy default stream (stream 0).
func (d *Driver) StreamCreate(nonBlocking bool) (Stream, error) {
	var flags C.uint
	if nonBlocking {
		flags = 1 // CU_STREAM_NON_BLOCKING
	}
	var s C.uintptr_t
	err := d.check(C.mr_cuStreamCreate(d.fn[symStreamCreate], &s, flags), symStreamCreate, "")
	return Stream(s), err
}

// StreamDestroy destroys a stream (work already queued still runs).
func (d *Driver) StreamDestroy(s Stream) error {
	return d.check(C.mr_cuStreamDestroy(d.fn[symStreamDestroy], C.uintptr_t(s)), symStreamDestroy, "")
}

// StreamSynchronize waits, without a bound, for all work queued on s.
func (d *Driver) StreamSynchronize(s Stream) error {
	return d.check(C.mr_cuStreamSynchronize(d.fn[symStreamSynchronize], C.uintptr_t(s)), symStreamSynchronize, "")
}

// StreamQuery reports whether all work queued on s is done.
func (d *Driver) StreamQuery(s Stream) (done bool, err error) {
	return d.ready(C.mr_cuStreamQuery(d.fn[symStreamQuery], C.uintptr_t(s)), symStreamQuery)
}

// StreamWaitEvent makes future work on s wait for ev (on the device; the
// host does not block).
func (d *Driver) StreamWaitEvent(s Stream, ev Event) error {
	return d.check(C.mr_cuStreamWaitEvent(d.fn[symStreamWaitEvent], C.uintptr_t(s), C.uintptr_t(ev)), symStreamWaitEvent, "")
}

// StreamWait waits at most timeout for the work on s, polling StreamQuery.
// It returns an error wrapping ErrTimeout if the work is still running at
// the deadline (the work is not cancelled: a CUDA kernel cannot be).
func (d *Driver) StreamWait(s Stream, timeout time.Duration) error {
	return poll(timeout, func() (bool, error) { return d.StreamQuery(s) }, "stream")
}

// EventCreate creates an event with default flags (timing enabled).
func (d *Driver) EventCreate() (Event, error) { return d.EventCreateWithFlags(EventDefault) }

// EventCreateWithFlags creates an event with CU_EVENT_* flags.
func (d *Driver) EventCreateWithFlags(flags uint32) (Event, error) {
	var ev C.uintptr_t
	err := d.check(C.mr_cuEventCreate(d.fn[symEventCreate], &ev, C.uint(flags)), symEventCreate, fmt.Sprintf("flags %#x", flags))
	return Event(ev), err
}

// EventRecord records ev on stream s.
func (d *Driver) EventRecord(ev Event, s Stream) error {
	return d.check(C.mr_cuEventRecord(d.fn[symEventRecord], C.uintptr_t(ev), C.uintptr_t(s)), symEventRecord, "")
}

// EventSynchronize waits, without a bound, for ev.
func (d *Driver) EventSynchronize(ev Event) error {
	return d.check(C.mr_cuEventSynchronize(d.fn[symEventSynchronize], C.uintptr_t(ev)), symEventSynchronize, "")
}

// EventQuery reports whether the work before ev's record is done.
func (d *Driver) EventQuery(ev Event) (done bool, err error) {
	return d.ready(C.mr_cuEventQuery(d.fn[symEventQuery], C.uintptr_t(ev)), symEventQuery)
}

// EventWait waits at most timeout for ev, polling EventQuery (see StreamWait).
func (d *Driver) EventWait(ev Event, timeout time.Duration) error {
	return poll(timeout, func() (bool, error) { return d.EventQuery(ev) }, "event")
}

// EventElapsedTime is the time between two recorded, completed events
// (resolution about half a microsecond).
func (d *Driver) EventElapsedTime(start, end Event) (time.Duration, error) {
	var ms C.float
	err := d.check(C.mr_cuEventElapsedTime(d.fn[symEventElapsedTime], &ms, C.uintptr_t(start), C.uintptr_t(end)), symEventElapsedTime, "")
	return time.Duration(float64(ms) * float64(time.Millisecond)), err
}

// EventDestroy destroys an event.
func (d *Driver) EventDestroy(ev Event) error {
	return d.check(C.mr_cuEventDestroy(d.fn[symEventDestroy], C.uintptr_t(ev)), symEventDestroy, "")
}

// ready maps CUDA_SUCCESS to true, CUDA_ERROR_NOT_READY to false, anything
// else to an error.
func (d *Driver) ready(r C.CUresult, s sym) (bool, error) {
	switch Result(r) {
	case Success:
		return true, nil
	case ErrorNotReady:
		return false, nil
	}
	return false, d.check(r, s, "")
}

// spinFor is how long poll queries without sleeping: a forward of the layer
// takes tens of microseconds to milliseconds, and a sleep's wake-up latency
// (tens of microseconds, more under load) would be added to every one.
const spinFor = 5 * time.Millisecond

// poll calls done until it reports true, fails, or timeout passes: back to
// back for the first spinFor, then sleeping from 20µs up to 1ms.
func poll(timeout time.Duration, done func() (bool, error), what string) error {
	start := time.Now()
	deadline := start.Add(timeout)
	sleep := 20 * time.Microsecond
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("waiting for %s: %w after %v", what, ErrTimeout, timeout)
		}
		if time.Since(start) < spinFor {
			continue
		}
		time.Sleep(sleep)
		if sleep < time.Millisecond {
			sleep *= 2
		}
	}
}
