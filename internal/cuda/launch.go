package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// LaunchCooperative launches fn with cuLaunchCooperativeKernel: every block
// of the grid is resident at once (size the grid with
// OccupancyMaxActiveBlocksPerMultiprocessor and the SM count, or the launch
// fails with ErrorCooperativeLaunchTooLarge).
//
// The kernel takes one argument, a struct passed by value; arg is its bytes
// exactly as the CUDA side lays it out (nil for a kernel without
// parameters). Where the driver can tell (CUDA 12.4+), the launch is refused
// when the kernel's parameter is not len(arg) bytes or it has more than one.
func (d *Driver) LaunchCooperative(fn Function, grid, block [3]uint32, sharedMem uint32, stream Stream, arg []byte) error {
	return d.launch(true, fn, grid, block, sharedMem, stream, arg)
}

// LaunchKernel launches fn with cuLaunchKernel; arguments as for
// LaunchCooperative.
func (d *Driver) LaunchKernel(fn Function, grid, block [3]uint32, sharedMem uint32, stream Stream, arg []byte) error {
	return d.launch(false, fn, grid, block, sharedMem, stream, arg)
}

func (d *Driver) launch(coop bool, fn Function, grid, block [3]uint32, smem uint32, stream Stream, arg []byte) error {
	s := symLaunchKernel
	if coop {
		s = symLaunchCooperativeKernel
	}
	p, err := d.kernelArg(s, fn, arg)
	if err != nil {
		return err
	}
	c := C.int(0)
	if coop {
		c = 1
	}
	r := C.mr_launch(d.fn[s], c, C.uintptr_t(fn),
		C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]),
		C.uint(smem), C.uintptr_t(stream), p, C.size_t(len(arg)))
	if r == 0 {
		return nil
	}
	return d.check(r, s, fmt.Sprintf("%s, grid %v, block %v, %d bytes shared, %d-byte argument",
		d.funcName(fn), grid, block, smem, len(arg)))
}

// Clusters: no kernel of moerun launches in clusters today. The paired-tile
// experiment of commit f2c8f34 did (docs/benchmarks.md, sixth session); the
// two calls below stay, tested, for the cluster designs that
// docs/performance.md names as the way to fewer bytes per FLOP.

// LaunchCooperativeCluster launches fn cooperatively, as LaunchCooperative
// does (every block resident at once), in thread-block clusters of
// clusterX x 1 x 1 blocks, with cuLaunchKernelEx. grid[0] must be a multiple
// of clusterX, and the clusters must fit at once as well as the blocks: size
// the grid with OccupancyMaxActiveClusters too. Arguments otherwise as for
// LaunchCooperative; it can be captured into a graph like it.
func (d *Driver) LaunchCooperativeCluster(fn Function, grid, block [3]uint32, clusterX uint32, sharedMem uint32, stream Stream, arg []byte) error {
	s := symLaunchKernelEx
	f, err := d.need(s)
	if err != nil {
		return err
	}
	p, err := d.kernelArg(s, fn, arg)
	if err != nil {
		return err
	}
	r := C.mr_launch_ex(f, 1, C.uint(clusterX), C.uintptr_t(fn),
		C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]),
		C.uint(sharedMem), C.uintptr_t(stream), p, C.size_t(len(arg)))
	if r == 0 {
		return nil
	}
	return d.check(r, s, fmt.Sprintf("%s, cooperative, grid %v, block %v, cluster [%d 1 1], %d bytes shared, %d-byte argument",
		d.funcName(fn), grid, block, clusterX, sharedMem, len(arg)))
}

// OccupancyMaxActiveClusters is how many clusters of clusterX x 1 x 1
// blocks of a launch of fn over grid (block threads, sharedMem bytes of
// dynamic shared memory each) fit on the current context's device at once
// (cuOccupancyMaxActiveClusters). A cooperative cluster launch may have at
// most this many clusters; it can be fewer than the blocks that fit per SM
// times the SM count allow, since a cluster's blocks share one GPC.
func (d *Driver) OccupancyMaxActiveClusters(fn Function, grid, block [3]uint32, clusterX uint32, sharedMem uint32) (int, error) {
	s := symOccupancyMaxActiveClusters
	f, err := d.need(s)
	if err != nil {
		return 0, err
	}
	var n C.int
	r := C.mr_cuOccupancyMaxActiveClusters(f, &n, C.uintptr_t(fn), C.uint(clusterX),
		C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]), C.uint(sharedMem))
	err = d.check(r, s, fmt.Sprintf("%s, grid %v, block %v, cluster [%d 1 1], %d bytes shared",
		d.funcName(fn), grid, block, clusterX, sharedMem))
	return int(n), err
}

// What cudadl.h declares for cuLaunchKernelEx, compared with cuda.h by
// TestPrototypesMatchCudaH.
const (
	launchAttrCooperative      = C.MR_LAUNCH_ATTRIBUTE_COOPERATIVE
	launchAttrClusterDimension = C.MR_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
	launchAttributeSize        = C.sizeof_CUlaunchAttribute
	launchAttributeValueSize   = C.sizeof_CUlaunchAttributeValue
	launchConfigSize           = C.sizeof_CUlaunchConfig
)

// kernelArg checks arg against fn's parameter (checkParams) for a launch
// through API s and returns what the C wrappers take: its first byte, or nil
// for a kernel without parameters.
func (d *Driver) kernelArg(s sym, fn Function, arg []byte) (unsafe.Pointer, error) {
	if err := d.checkParams(fn, len(arg)); err != nil {
		return nil, fmt.Errorf("%s(%s): %w", symbols[s].api, d.funcName(fn), err)
	}
	if len(arg) == 0 {
		return nil, nil
	}
	return unsafe.Pointer(&arg[0]), nil
}

// paramLayout is what cuFuncGetParamInfo says about a kernel's parameters.
type paramLayout struct {
	known bool   // the driver could tell
	count int    // 0, 1, or 2 meaning "two or more"
	size0 uint64 // size of parameter 0
}

func (d *Driver) paramsOf(fn Function) paramLayout {
	if v, ok := d.params.Load(fn); ok {
		return v.(paramLayout)
	}
	var pl paramLayout
	_, size0, err := d.FuncParamInfo(fn, 0)
	switch {
	case err == nil:
		pl = paramLayout{known: true, count: 1, size0: size0}
		if _, _, err := d.FuncParamInfo(fn, 1); err == nil {
			pl.count = 2
		} else if !errors.Is(err, ErrorInvalidValue) {
			pl = paramLayout{}
		}
	case errors.Is(err, ErrorInvalidValue):
		pl = paramLayout{known: true}
	}
	d.params.Store(fn, pl)
	return pl
}

func (d *Driver) checkParams(fn Function, argLen int) error {
	pl := d.paramsOf(fn)
	switch {
	case !pl.known:
		return nil
	case pl.count == 0 && argLen > 0:
		return fmt.Errorf("kernel takes no parameters, argument is %d bytes", argLen)
	case pl.count > 1:
		return errors.New("kernel takes several parameters; pass one struct by value")
	case pl.count == 1 && uint64(argLen) != pl.size0:
		return fmt.Errorf("kernel parameter is %d bytes, argument is %d bytes (the Go and CUDA parameter structs disagree)",
			pl.size0, argLen)
	}
	return nil
}
