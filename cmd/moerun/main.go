// Command moerun runs a distributed Mixture-of-Experts layer as one persistent
// kernel per GPU (or on CPUs over MPI), and launches, benchmarks and checks it.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/moerun/moerun/internal/version"
)

func init() {
	// CUDA contexts are per thread and MPI is initialised for one thread:
	// keep the main goroutine on the main OS thread for the whole run.
	runtime.LockOSThread()
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `moerun: a distributed Mixture-of-Experts layer in one persistent kernel per GPU

Usage:
  moerun <command> [flags]

Commands:
  bench     run and time the MoE layer on this rank (start it with launch, mpirun or srun)
  launch    start N ranks through mpirun or srun:  moerun launch -n 4 -- bench --verify
  info      show GPUs, NVLink and peer-to-peer reachability
  version   print the version

Run 'moerun <command> -h' for a command's flags.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "launch":
		return runLaunch(args[1:])
	case "info":
		return runInfo(args[1:])
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version.String())
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "moerun: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}
