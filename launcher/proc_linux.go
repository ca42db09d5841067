//go:build linux

package launcher

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// sysProcAttr starts the launcher in a session of its own: a terminal's Ctrl-C then
// reaches moerun launch alone, which forwards it; and every process of the job (Open
// MPI puts each rank in a process group of its own, but all stay in the session) can
// be found and killed at the end. The launcher is sent SIGTERM if moerun launch dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
}

// killJob sends SIGKILL to the launcher's process group and to every process left in
// its session (the ranks, which outlive a killed mpirun). It returns how many
// processes other than the launcher it signalled.
func killJob(pid int) int {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	n := 0
	for _, p := range sessionMembers(pid) {
		if p != pid && syscall.Kill(p, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// sweepJob kills what is left of the job (see killJob) and waits, at most timeout,
// until none of it is alive. It returns how many processes it signalled.
func sweepJob(pid int, timeout time.Duration) int {
	n := killJob(pid)
	if n == 0 {
		return 0
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		left := 0
		for _, p := range sessionMembers(pid) {
			if p != pid {
				left++
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// sessionMembers lists live (non-zombie) processes whose session id is sid.
func sessionMembers(sid int) []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var out []int
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp session ...; comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 4 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if sess, err := strconv.Atoi(f[3]); err == nil && sess == sid {
			out = append(out, pid)
		}
	}
	return out
}

// cmaPermitted reports whether cross-memory attach works here: a seccomp filter or a
// strict Yama policy makes process_vm_readv fail, and Open MPI's vader with it.
func cmaPermitted() bool {
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err == nil {
		// 2: only CAP_SYS_PTRACE may attach; 3: nobody may (vader handles 1 itself).
		if s := strings.TrimSpace(string(b)); s == "3" || (s == "2" && os.Geteuid() != 0) {
			return false
		}
	}
	if sysProcessVMReadv == 0 {
		return true // unknown on this architecture: assume the default works
	}
	src := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	var dst [8]byte
	type iovec struct {
		base unsafe.Pointer
		len  uintptr
	}
	local := iovec{unsafe.Pointer(&dst[0]), uintptr(len(dst))}
	remote := iovec{unsafe.Pointer(&src[0]), uintptr(len(src))}
	n, _, errno := syscall.Syscall6(sysProcessVMReadv, uintptr(os.Getpid()),
		uintptr(unsafe.Pointer(&local)), 1, uintptr(unsafe.Pointer(&remote)), 1, 0)
	return errno == 0 && n == uintptr(len(src)) && dst == src
}
