package main

import (
	"fmt"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/gpubackend"
	"github.com/moerun/moerun/symheap"
)

// openGPU opens the persistent-kernel backend on this rank's GPU, with the
// symmetric heap sized for the largest of the configs to run.
func openGPU(world *bootstrap.World, o bench.Options, log zerolog.Logger) (backend.Backend, error) {
	if world.Nodes > 1 {
		// Every peer must be reachable by NVLink loads and stores; NVSHMEM's
		// remote transports are not wired in yet.
		return nil, fmt.Errorf("the ranks run on %d nodes: the GPU backend runs on one node until the remote-transport path exists (the CPU backend runs across nodes)", world.Nodes)
	}
	var heap uint64
	for _, c := range o.Configs(config.FP32) {
		if lay, err := symheap.Plan(c, world.Size); err == nil {
			heap = max(heap, lay.SymTotal)
		}
	}
	b, err := gpubackend.Open(world.Comm, world.LocalRank, gpubackend.Options{
		Cubin:             o.Cubin,
		Watchdog:          o.Watchdog,
		DebugWithholdPeer: o.DebugWithholdSignal,
		HeapBytes:         heap,
		Log:               log,
	})
	if err != nil {
		return nil, err
	}
	log.Debug().Uint64("heap_bytes", heap).Msg("symmetric heap sized for the largest config")
	return b, nil
}

// gpuVisible says whether CUDA sees a GPU here (it honours
// CUDA_VISIBLE_DEVICES, which NVML does not).
func gpuVisible() bool {
	d, err := cuda.Load()
	if err != nil {
		return false
	}
	n, err := d.DeviceCount()
	return err == nil && n > 0
}
