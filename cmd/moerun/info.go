package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/gpuinfo"
)

const infoUsage = `Usage: moerun info [flags]

Shows this node's NVIDIA driver, its GPUs (NVML's numbering, which ignores
CUDA_VISIBLE_DEVICES; match GPUs by UUID), which pairs can reach each other
peer-to-peer, and how many NVLinks join each pair. Also says whether this
binary was built with MPI support.

Example:
  moerun info
  moerun info -json > topo.json

Flags:
`

const infoExitCodes = `
Exit status: 0 ok, 1 when the GPUs cannot be read (no NVIDIA driver, NVML
error), 2 on a usage error.
`

func runInfo(args []string) int { return info(args, os.Stdout, os.Stderr) }

func info(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("moerun info", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the topology as JSON instead of text")
	fs.Usage = func() {} // -h prints the full help below; errors a hint
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, infoUsage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			fmt.Fprint(stdout, infoExitCodes)
			return exitOK
		}
		fmt.Fprintln(stderr, "Run 'moerun info -h' for help.") // flag has printed the error
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "moerun info: unexpected argument %q\nRun 'moerun info -h' for help.\n", fs.Arg(0))
		return exitUsage
	}

	topo, err := gpuinfo.Probe()
	if errors.Is(err, gpuinfo.ErrNoDriver) {
		detail := strings.TrimPrefix(err.Error(), gpuinfo.ErrNoDriver.Error()+": ")
		fmt.Fprintf(stderr, "moerun info: no NVIDIA driver found (%s); the CPU backend still works\n", detail)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "moerun info: %v\n", err)
		return exitFailure
	}

	if *asJSON {
		out := struct {
			MPI bool `json:"mpi"`
			*gpuinfo.Info
		}{bootstrap.MPIBuilt(), topo}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "moerun info: %v\n", err)
			return exitFailure
		}
		return exitOK
	}
	topo.Write(stdout)
	if bootstrap.MPIBuilt() {
		fmt.Fprintln(stdout, "\nMPI: built with Open MPI support (start ranks with moerun launch, mpirun or srun)")
	} else {
		fmt.Fprintln(stdout, "\nMPI: not built in (one rank only; rebuild with 'make' to run several)")
	}
	return exitOK
}
