package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/moerun/moerun/launcher"
)

const launchUsage = `Usage: moerun launch [flags] [--] <command> [command flags]

Starts N ranks of this moerun binary running <command> through mpirun, or through
srun inside a SLURM allocation, and waits for them. One failing rank ends the job;
the exit status is the job's (128+signal when a signal ended it), and a failure ends
with one line naming the lost rank and the first error any rank logged.

Example:
  moerun launch -n 4 -- bench --backend cpu --verify

Flags (one dash or two):
`

const launchExitCodes = `
Exit status: 0 when every rank succeeded, 1 on failure (or the job's own non-zero
status), 2 on a usage error, 128+N when signal N ended the job or interrupted it.
`

// mpiArgs collects --mpi-args values, each split into words as a shell would.
type mpiArgs []string

func (m *mpiArgs) String() string { return strings.Join(*m, " ") }

func (m *mpiArgs) Set(s string) error {
	words, err := launcher.SplitWords(s)
	if err != nil {
		return err
	}
	*m = append(*m, words...)
	return nil
}

func runLaunch(args []string) int {
	stdout, stderr := os.Stdout, os.Stderr
	fs := flag.NewFlagSet("moerun launch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 0, fmt.Sprintf("number of ranks (default: the local GPUs, or %d when there are none; under srun, the job's tasks)", launcher.DefaultRanks))
	via := fs.String("via", launcher.ViaAuto, "launcher: auto (srun inside a SLURM allocation, else mpirun), mpirun or srun")
	dryRun := fs.Bool("dry-run", false, "print the command line and exit without running it")
	var extra mpiArgs
	fs.Var(&extra, "mpi-args", "extra options for mpirun or srun, split as a shell would (repeatable), e.g. --mpi-args \"--mca btl self,tcp\"")
	timeout := fs.Duration("timeout", 0, "stop the job after this long (0: no limit)")
	fs.Usage = func() { fmt.Fprintln(stderr, "Run 'moerun launch -h' for help.") }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, launchUsage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			fmt.Fprint(stdout, launchExitCodes)
			return exitOK
		}
		return exitUsage // flag has printed the error
	}
	rest := fs.Args()
	if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
		fmt.Fprintf(stderr, "moerun launch: missing the command to run on each rank, e.g.: moerun launch -n 4 -- bench --verify\n")
		return exitUsage
	}
	if rest[0] == "launch" {
		fmt.Fprintf(stderr, "moerun launch: the ranks cannot run launch themselves; name the command they run, e.g. bench\n")
		return exitUsage
	}
	switch rest[0] {
	case "bench", "info", "version", "help":
	default:
		// Refused here, once, rather than by every rank after mpirun started.
		fmt.Fprintf(stderr, "moerun launch: unknown command %q for the ranks: want bench, info or version, e.g.: moerun launch -n 4 -- bench --verify\n", rest[0])
		return exitUsage
	}
	if *n < 0 {
		fmt.Fprintf(stderr, "moerun launch: -n %d: the number of ranks must be positive\n", *n)
		return exitUsage
	}
	switch *via {
	case launcher.ViaAuto, launcher.ViaMPIRun, launcher.ViaSrun:
	default:
		fmt.Fprintf(stderr, "moerun launch: --via %q: want auto, mpirun or srun\n", *via)
		return exitUsage
	}
	if *timeout < 0 {
		fmt.Fprintf(stderr, "moerun launch: --timeout %v: must not be negative\n", *timeout)
		return exitUsage
	}

	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "moerun launch: cannot find this program's path: %v\n", err)
		return exitFailure
	}
	cmd, err := launcher.Plan(launcher.Options{
		N: *n, Via: *via, MPIArgs: extra, Self: self, Args: rest,
	}, launcher.LocalHost())
	if err != nil {
		fmt.Fprintf(stderr, "moerun launch: %v\n", err)
		return exitFailure
	}
	if *dryRun {
		fmt.Fprintln(stdout, cmd.String())
		return exitOK
	}
	fmt.Fprintf(stderr, "moerun launch: %s\n", cmd.String())

	ctx := context.Background()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, *timeout, fmt.Errorf("--timeout %v reached", *timeout))
		defer cancel()
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	start := time.Now()
	res, err := launcher.Run(ctx, cmd, launcher.RunConfig{Stdout: stdout, Stderr: stderr, Signals: sigs})
	if err != nil {
		fmt.Fprintf(stderr, "moerun launch: cannot start %s: %v\n", cmd.Path, err)
		return exitFailure
	}
	if res.Summary != "" {
		fmt.Fprintf(stderr, "%s (after %v)\n", res.Summary, time.Since(start).Round(time.Millisecond))
	}
	return res.ExitCode
}
