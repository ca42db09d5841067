package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/bench"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/gpubackend"
	"github.com/moerun/moerun/internal/gpuinfo"
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
	for _, c := range o.Configs(bench.DefaultDType("gpu")) {
		if lay, err := symheap.Plan(c, world.Size); err == nil {
			heap = max(heap, lay.SymTotal)
		}
	}
	b, err := gpubackend.Open(world.Comm, world.LocalRank, gpubackend.Options{
		Cubin:             o.Cubin,
		Watchdog:          o.Watchdog,
		DebugWithholdPeer: o.DebugWithholdSignal,
		HeapBytes:         heap,
		Graph:             o.Graph,
		Trace:             o.Trace != "",
		Timeout:           o.Timeout,
		TimeoutName:       "--timeout",
		Log:               log,
	})
	if err != nil {
		return nil, err
	}
	// Two ranks on one GPU would share its SMs and deadlock the cooperative
	// kernels; NVML knows GPUs by UUID (it ignores CUDA_VISIBLE_DEVICES).
	if err := bootstrap.CheckUniqueGPU(world.Comm, world.Host, b.UUID()); err != nil {
		b.Close()
		return nil, err
	}
	if info, err := gpuinfo.Probe(); err == nil {
		if g, err := info.ByUUID(b.UUID()); err == nil {
			log.Debug().Int("nvml_index", g.Index).Str("pci", g.PCIBusID).Str("uuid", g.UUID).Msg("GPU matched in NVML by UUID")
		}
	}
	if o.Trace != "" {
		return tracedGPU{b, world.Rank}, nil
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

// tracedGPU gives the bench the kernel's timeline (--trace).
type tracedGPU struct {
	*gpubackend.Backend
	rank int
}

// WriteTrace implements backend.Tracer.
func (t tracedGPU) WriteTrace(w io.Writer) error {
	evs, err := t.TraceEvents()
	if err != nil {
		return err
	}
	return gpubackend.WriteChromeTrace(w, t.rank, evs)
}

// PhaseSummary implements backend.Tracer: phase ends in kernel order.
func (t tracedGPU) PhaseSummary() string {
	evs, err := t.TraceEvents()
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for i, p := range gpubackend.Phases(evs) {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s %.0f", p.Name, float64(p.End)/float64(time.Microsecond))
	}
	if n := t.TraceDropped(); n > 0 {
		fmt.Fprintf(&b, " (%d events dropped)", n)
	}
	b.WriteString(" (µs from kernel start)")
	if ts := gpubackend.TaskStats(evs); ts != "" {
		b.WriteString("; tasks: " + ts)
	}
	return b.String()
}
