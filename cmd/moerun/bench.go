package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/logging"
	"github.com/moerun/moerun/internal/preflight"
	"github.com/moerun/moerun/internal/version"
)

func runBench(args []string, stdout, stderr io.Writer) int {
	o, err := bench.ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		return exitUsage
	}
	if err := preflight.CheckConfigCount(o); err != nil {
		fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		return exitUsage
	}
	level, _ := logging.ParseLevel(o.LogLevel) // validated by ParseFlags

	// Safety first: never let NVSHMEM (or NCCL in an embedding process) use
	// NVLink multicast unless the user asked for it explicitly.
	bootstrap.DisableNVLS()
	// bootstrap.Init bounds MPI's start-up by the same --timeout.
	world, err := bootstrap.Init(bootstrap.Options{Timeout: o.Timeout, TimeoutName: "--timeout"})
	if err != nil {
		fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		return exitFailure
	}
	defer world.Close()
	log := logging.New(os.Stderr, level, world.Rank, world.LocalRank, world.Host)
	log.Debug().Int("world", world.Size).Str("local_rank_from", world.LocalRankSource).Bool("mpi", world.MPI).Msg("rank up")

	if o.Weights != "" {
		// The checkpoint gives the shape, which sizes the GPU backend's heap;
		// Run reads it again and reports a failure on every rank alike.
		if wo, err := bench.ShapeFromWeights(o); err == nil {
			o = wo
		}
	}
	// Pre-flight checks that need the world (every rank learns every rank's
	// answer, so all refuse alike before any work).
	gpu := gpuVisible()
	name := o.Backend
	if name == "" {
		name = map[bool]string{false: "cpu", true: "gpu"}[gpu]
	}
	err = preflight.CheckSameRun(world.Comm, o, name)
	if err == nil {
		err = preflight.Agree(world.Comm, localPreflight(o, world, gpu))
	}
	if err != nil {
		if world.Rank == 0 {
			fmt.Fprintf(stderr, "moerun bench: %v\n", err)
		}
		return exitUsage
	}
	env := bench.Env{
		Comm:       world.Comm,
		Log:        log,
		GPUVisible: gpu,
		Agree: func(st config.Static) error {
			return bootstrap.CheckAgreement(world.Comm, st, version.String())
		},
		Abort:   world.Abort,
		Stdout:  stdout,
		Stderr:  stderr,
		Version: version.Version + " " + version.Commit(),
	}
	env.Open = func(name string) (backend.Backend, error) {
		switch name {
		case "cpu":
			return cpubackend.New(world.Comm), nil
		case "gpu":
			return openGPU(world, o, log)
		}
		return nil, fmt.Errorf("unknown backend %q", name)
	}
	return bench.Run(env, o)
}

// localPreflight runs this rank's pre-flight checks: the files the run will
// write, and the host memory the CPU backend needs.
func localPreflight(o bench.Options, world *bootstrap.World, gpu bool) error {
	errs := []error{preflight.CheckOutputs(o.JSON, o.Dump, world.Rank)}
	if o.Backend == "cpu" || (o.Backend == "" && !gpu) {
		if avail, from, ok := preflight.AvailableMemory(); ok {
			errs = append(errs, preflight.CheckHostMemory(o.Configs(config.FP32), world.Size, world.LocalSize, o.Verify, avail, from))
		}
	}
	return errors.Join(errs...)
}
