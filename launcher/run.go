package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// DefaultGrace is how long Run waits, after forwarding a signal or a cancellation to
// the launcher, before it kills every process of the job.
const DefaultGrace = 5 * time.Second

// RunConfig tells Run where output goes and which signals to forward.
type RunConfig struct {
	Stdout, Stderr io.Writer        // the job's output, streamed live; nil discards it
	Signals        <-chan os.Signal // signals to forward (SIGINT, SIGTERM; SIGHUP is sent as SIGTERM)
	Grace          time.Duration    // before the hard kill; 0 means DefaultGrace
}

// Result is how a job ended.
type Result struct {
	ExitCode    int       // the launcher's exit status; 128+signal when a signal ended it or interrupted us
	Summary     string    // one line for the user when the job failed, "" on success
	Lost        *Lost     // the rank whose end ended the job, when mpirun or srun named it
	FirstError  string    // the first error line any rank logged
	Interrupted os.Signal // the first signal forwarded, if any
	Canceled    bool      // ctx ended before the job did
	Killed      bool      // the job outlived the grace period and was killed
}

// Run starts c, streams its output to rc.Stdout and rc.Stderr (reading it on the way
// for the summary), and waits for it. A signal from rc.Signals is forwarded to the
// launcher, which passes it on to the ranks; when ctx ends, the launcher gets SIGTERM.
// If the job is still alive rc.Grace later (or at a second signal), every process of
// it is killed. Every wait is bounded. The error is non-nil only when c cannot start.
func Run(ctx context.Context, c Command, rc RunConfig) (Result, error) {
	stdout, stderr := rc.Stdout, rc.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	grace := rc.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	if len(c.Args) == 0 {
		return Result{ExitCode: 1}, errors.New("empty command")
	}
	path := c.Path
	if path == "" {
		path = c.Args[0]
	}

	w := &watcher{}
	outW, errW := w.stream(), w.stream()
	cmd := exec.Command(path, c.Args[1:]...)
	cmd.Args[0] = c.Args[0]
	cmd.Env = c.Env
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Stdin = nil // /dev/null: the launcher is not in the terminal's foreground group
	cmd.Stdout = io.MultiWriter(stdout, outW)
	cmd.Stderr = io.MultiWriter(stderr, errW)
	cmd.SysProcAttr = sysProcAttr()
	// Ranks that outlive the launcher may hold its output open: stop copying then.
	cmd.WaitDelay = time.Second

	if err := cmd.Start(); err != nil {
		return Result{ExitCode: 1, Summary: "moerun launch: " + err.Error()}, err
	}
	pid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var res Result
	var kill <-chan time.Time // the hard-kill deadline, once armed
	var stuck <-chan time.Time
	ctxDone := ctx.Done()
	signals := rc.Signals
	arm := func() {
		if kill == nil {
			kill = time.After(grace)
		}
	}
	hardKill := func() {
		if !res.Killed {
			res.Killed = true
			killJob(pid)
			stuck = time.After(cmd.WaitDelay + 2*time.Second)
		}
	}
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-done:
			break wait
		case sig := <-signals:
			if res.Interrupted != nil {
				fmt.Fprintf(stderr, "moerun launch: %s again: killing the job\n", sigName(sig))
				hardKill()
				continue
			}
			res.Interrupted = sig
			fwd := sig
			if sig == syscall.SIGHUP {
				fwd = syscall.SIGTERM
			}
			fmt.Fprintf(stderr, "moerun launch: %s: stopping the job (again to kill it at once)\n", sigName(sig))
			_ = cmd.Process.Signal(fwd)
			arm()
		case <-ctxDone:
			ctxDone = nil
			res.Canceled = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			arm()
		case <-kill:
			kill = nil
			fmt.Fprintf(stderr, "moerun launch: the job is still running %v after it was told to stop: killing it\n", grace)
			hardKill()
		case <-stuck:
			// SIGKILL cannot be ignored; only an unkillable (D state) process gets here.
			outW.flush()
			errW.flush()
			res.ExitCode = 1
			res.Summary = fmt.Sprintf("moerun launch: %s (pid %d) did not exit after SIGKILL; giving up on it", c.Args[0], pid)
			return res, nil
		}
	}
	// Sweep what is left of the job: ranks orphaned by a launcher that died or was killed.
	if n := sweepJob(pid, 2*time.Second); n > 0 {
		fmt.Fprintf(stderr, "moerun launch: killed %d process(es) left over from the job\n", n)
	}
	outW.flush()
	errW.flush()

	code := 0
	childSig := 0
	if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && st.Signaled() {
		childSig = int(st.Signal())
		code = 128 + childSig
	} else {
		code = cmd.ProcessState.ExitCode()
	}
	if waitErr != nil && !errors.Is(waitErr, exec.ErrWaitDelay) {
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) && code == 0 {
			code = 1
		}
	}
	switch {
	case res.Interrupted != nil:
		if s, ok := res.Interrupted.(syscall.Signal); ok {
			code = 128 + int(s)
		} else if code == 0 {
			code = 1
		}
	case res.Canceled:
		code = 1
	}
	res.ExitCode = code
	res.FirstError, res.Lost, _ = w.snapshot()
	if code != 0 {
		var cause error
		if res.Canceled {
			cause = context.Cause(ctx)
		}
		res.Summary = summarize(c, res, childSig, cause, w)
	}
	return res, nil
}

// summarize is the one line that says how a failed job ended.
func summarize(c Command, res Result, childSig int, cause error, w *watcher) string {
	firstError, lost, launcherMsg := w.snapshot()
	s := "moerun launch: "
	switch {
	case res.Interrupted != nil:
		s += fmt.Sprintf("interrupted by %s; ", sigName(res.Interrupted))
	case res.Canceled:
		s += fmt.Sprintf("stopped: %v; ", cause)
	}
	if res.Killed {
		s += "killed the job after the grace period; "
	}
	if lost != nil {
		s += fmt.Sprintf("rank %d ", lost.Rank)
		if lost.Node != "" {
			s += "on " + lost.Node + " "
		}
		s += lost.How + "; "
	} else if childSig != 0 && !res.Killed {
		s += fmt.Sprintf("%s ended on signal %d (%v); ", c.Args[0], childSig, syscall.Signal(childSig))
	} else if res.Interrupted == nil && !res.Canceled && res.ExitCode > 128 && res.ExitCode < 160 {
		s += fmt.Sprintf("a rank ended on signal %d (%v) (%s did not say which); ",
			res.ExitCode-128, syscall.Signal(res.ExitCode-128), c.Args[0])
	}
	s += fmt.Sprintf("job ended with status %d", res.ExitCode)
	if firstError != "" {
		s += "; first error: " + firstError
	} else if launcherMsg != "" && lost == nil {
		s += "; " + c.Args[0] + " said: " + launcherMsg
	}
	return s
}

// sigName is SIGINT for syscall.SIGINT, and so on for the usual signals.
func sigName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGKILL:
		return "SIGKILL"
	}
	return s.String()
}
