//go:build unix

package gpubackend

import (
	"os"
	"syscall"
)

// stopSelf stops this process (SIGSTOP) as a hung rank would stop; the
// launcher's teardown ends it (SIGKILL reaches a stopped process).
func stopSelf() error { return syscall.Kill(os.Getpid(), syscall.SIGSTOP) }
