package gpubackend

import (
	"errors"
	"fmt"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/kernels"
)

// The MOE_WS build's forward (`make kernels-ws`; kernels/expert.cuh, "the
// GEMM tasks at one block per SM") runs the bf16 relu / gelu forwards that
// are not pooled 4-10 % faster than the default build, and everything else
// slower (docs/benchmarks.md, eighth session). A binary built with `make`
// embeds both cubins; the backend loads the second as a module of its own
// beside the first and launches it for exactly the forwards its tiles take
// (wsFor). kernels.EnvWSCubin names another WS cubin or turns it off.

// wsKernel is the loaded MOE_WS forward.
type wsKernel struct {
	image     []byte // until loaded
	mod       cuda.Module
	loaded    bool
	shmem     bool // registered with NVSHMEM
	fn        cuda.Function
	info      KernelInfo
	sched     cuda.DevicePtr // its own MoeSched: the grid barrier's arrival counter runs on over the launches of one grid
	haveSched bool
}

// locateWS finds the WS cubin that runs beside the main one (from: where
// that came from, ci: its facts) and checks it: a MOE_WS build with the
// main cubin's ABI and NVSHMEM. None found is not an error.
func (b *Backend) locateWS(from string, ci kernels.CubinInfo) error {
	img, wsFrom, err := kernels.LocateWS(from)
	if err != nil || img == nil {
		return err
	}
	wi, err := kernels.ReadCubinInfo(img)
	if err == nil {
		err = wi.Check()
	}
	if err != nil {
		return fmt.Errorf("%s (MOE_WS cubin): %w", wsFrom, err)
	}
	switch {
	case ci.BlockThreads != kernels.Threads:
		return fmt.Errorf("%s (MOE_WS cubin) pairs with the default build, but the main cubin %s is a MOE_WS build too (%d threads a block): set %s=off", wsFrom, from, ci.BlockThreads, kernels.EnvWSCubin)
	case wi.BlockThreads != kernels.Threads+kernels.WSProducerThreads:
		return fmt.Errorf("%s (%s): not a MOE_WS build (%d threads a block, want %d): build it with `make kernels-ws`", wsFrom, kernels.EnvWSCubin, wi.BlockThreads, kernels.Threads+kernels.WSProducerThreads)
	case wi.ABIVersion != ci.ABIVersion || wi.NVSHMEM != ci.NVSHMEM:
		return fmt.Errorf("%s (MOE_WS cubin): ABI %d, NVSHMEM %s; the main cubin %s: ABI %d, NVSHMEM %s: rebuild both with `make`", wsFrom, wi.ABIVersion, wi.NVSHMEMVersion(), from, ci.ABIVersion, ci.NVSHMEMVersion())
	}
	b.ws = &wsKernel{image: img}
	b.ws.info.CubinFrom, b.ws.info.NVSHMEM = wsFrom, wi.NVSHMEMVersion()
	b.ws.info.Threads, b.ws.info.DynamicSmem = wi.BlockThreads, wi.PhaseBytes
	return nil
}

// loadWS loads the WS cubin located by locateWS (if any) as a module of its
// own, registers it with NVSHMEM, sizes its grid and gives it its scheduler
// block. Runs after the default kernel's load (b.info.SMs is known).
func (b *Backend) loadWS() error {
	w := b.ws
	if w == nil {
		return nil
	}
	d := b.drv
	mod, err := d.ModuleLoadData(w.image)
	if err != nil {
		return fmt.Errorf("load the MOE_WS kernel (%s): %w", w.info.CubinFrom, err)
	}
	w.mod, w.loaded, w.image = mod, true, nil
	if err := b.shm.CumoduleInit(mod); err != nil {
		return fmt.Errorf("register the MOE_WS kernel with NVSHMEM: %w", err)
	}
	w.shmem = true
	if w.fn, err = d.ModuleGetFunction(mod, kernels.KernelName); err != nil {
		return err
	}
	phase := w.info.DynamicSmem
	if optin, err := d.Attribute(b.dev, cuda.AttrMaxSharedMemoryPerBlockOptin); err != nil {
		return err
	} else if optin < phase {
		return fmt.Errorf("GPU %d (%s) allows %d bytes of shared memory per block; the MOE_WS kernel needs %d", b.ordinal, b.card, optin, phase)
	}
	if err := d.FuncSetAttribute(w.fn, cuda.FuncMaxDynamicSharedSizeBytes, phase); err != nil {
		return fmt.Errorf("MOE_WS kernel: allow %d bytes of dynamic shared memory: %w", phase, err)
	}
	info := &w.info
	info.SMs = b.info.SMs
	if err := b.sizeKernel(w.fn, info); err != nil {
		return err
	}
	if info.Grid < 2 || info.Grid > b.info.Grid {
		// The trace buffer and its counts are sized by the default grid.
		return fmt.Errorf("MOE_WS kernel occupancy: %d blocks per SM x %d SMs = %d: want 2 to %d (the default kernel's grid)", info.BlocksPerSM, info.SMs, info.Grid, b.info.Grid)
	}
	if w.sched, err = d.MemAlloc(uint64(kernels.SchedSize)); err != nil {
		return fmt.Errorf("MOE_WS kernel's scheduler block: %w", err)
	}
	w.haveSched = true
	if err := d.MemsetD32(w.sched, 0, uint64(kernels.SchedSize)/4); err != nil {
		return err
	}
	return nil
}

// closeWS releases what loadWS took (Close, after the stream is gone).
func (b *Backend) closeWS() error {
	w := b.ws
	if w == nil {
		return nil
	}
	var errs []error
	if w.haveSched {
		errs = append(errs, b.drv.MemFree(w.sched))
		w.haveSched = false
	}
	if w.shmem {
		errs = append(errs, b.shm.CumoduleFinalize(w.mod))
		w.shmem = false
	}
	if w.loaded {
		errs = append(errs, b.drv.ModuleUnload(w.mod))
		w.loaded = false
	}
	return errors.Join(errs...)
}

// wsInfo describes the MOE_WS kernel (zero without one).
func (b *Backend) wsInfo() KernelInfo {
	if b.ws == nil {
		return KernelInfo{}
	}
	return b.ws.info
}

// KernelWS describes the MOE_WS kernel loaded beside the default one, and
// whether there is one.
func (b *Backend) KernelWS() (KernelInfo, bool) { return b.wsInfo(), b.ws != nil && b.ws.loaded }

// wsFor says whether the forward of cfg runs the MOE_WS kernel: exactly the
// forwards its tiles take (kernels/expert.cuh ws_tiles: bf16, relu or gelu,
// not pooled, H and I at least kernels.WSMinDim); it would run the others
// with the default tiles at one block per SM, slower than the default kernel.
func (b *Backend) wsFor(cfg config.Layer) bool {
	if b.ws == nil || !b.ws.loaded || cfg.DType != config.BF16 || cfg.FFN == config.FFNSwiGLU {
		return false
	}
	if b.layout.Hidden < kernels.WSMinDim || cfg.FFNHidden < kernels.WSMinDim {
		return false
	}
	return !pooledForward(cfg.Tokens, b.layout.TopK, b.layout.Experts, b.world)
}

// pooledForward mirrors kernels/common.cuh pool_sources for the tensor-core
// modes: with several ranks, a forward of few rows per source and expert
// pools its sources' rows into shared row tiles.
func pooledForward(tokens, topk, experts, world int) bool {
	return kernels.MergeRows > 0 && world > 1 && tokens*topk <= experts*kernels.MergeRows
}
