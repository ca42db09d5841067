//go:build !linux

package launcher

import (
	"syscall"
	"time"
)

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func killJob(pid int) int {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	return 0
}

func cmaPermitted() bool { return false }

func sweepJob(pid int, _ time.Duration) int { return killJob(pid) }
