package gpubackend

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// A collective that does not return within its bound ends the process (here
// a fake exit) with status 1 and a message naming the call and the option.
func TestBoundCollectiveFires(t *testing.T) {
	var out bytes.Buffer
	codes := make(chan int, 1)
	returned := make(chan struct{})
	go func() {
		// fn stands for an NVSHMEM call that waits for a rank that never comes:
		// it returns only once the bound has fired.
		boundCollective(10*time.Millisecond, "--timeout", 1, "init", &out, func(code int) { codes <- code }, func() {
			select {
			case <-returned:
			case <-time.After(10 * time.Second):
			}
		})
	}()
	select {
	case code := <-codes:
		close(returned)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
	case <-time.After(5 * time.Second):
		close(returned)
		t.Fatal("the bound did not fire within 5 s of a 10 ms bound")
	}
	if want := "gpu backend: rank 1: NVSHMEM init did not finish within --timeout 10ms: a rank died or is stuck"; !strings.Contains(out.String(), want) {
		t.Errorf("message %q lacks %q", out.String(), want)
	}
}

// A collective that returns in time runs once and leaves no timer behind.
func TestBoundCollectiveReturnsInTime(t *testing.T) {
	var out bytes.Buffer
	codes := make(chan int, 1)
	calls := 0
	boundCollective(30*time.Millisecond, "--timeout", 0, "finalize", &out, func(code int) { codes <- code }, func() { calls++ })
	if calls != 1 {
		t.Fatalf("fn ran %d times, want 1", calls)
	}
	time.Sleep(100 * time.Millisecond) // past the bound: a timer left armed would fire now
	select {
	case code := <-codes:
		t.Errorf("a call that returned in time exited with code %d", code)
	default:
	}
	if out.Len() != 0 {
		t.Errorf("a call that returned in time wrote %q", out.String())
	}
}
