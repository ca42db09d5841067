// Package cuda is moerun's binding of the CUDA driver API: it opens libcuda.so.1
// at run time (dlopen) and calls a fixed set of driver functions through
// hand-declared prototypes, so it builds where CUDA is not installed.
//
// CUDA contexts are current per OS thread. A program that uses this package
// must keep its CUDA calls on one thread: call runtime.LockOSThread in an init
// function of package main (or before the first call in the goroutine that owns
// the GPU), retain the device's primary context and make it current with
// CtxSetCurrent. The primary context is the one the CUDA runtime (and so
// NVSHMEM) uses, so both see the same allocations, modules and streams.
//
// Every driver error comes back as an *Error that names the call and carries the
// driver's own name and text for the code; errors.Is(err, ErrorOutOfMemory) and
// the like test for particular codes.
package cuda

/*
#cgo LDFLAGS: -ldl
#include "cudadl.h"
*/
import "C"

import (
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// DevicePtr is a device address (CUdeviceptr).
type DevicePtr uint64

// Device is a CUDA device handle (CUdevice), as returned by DeviceGet.
type Device int32

// Opaque driver handles. The zero Stream is the legacy default stream.
type (
	Context   uintptr // CUcontext
	Module    uintptr // CUmodule
	Function  uintptr // CUfunction
	Stream    uintptr // CUstream
	Event     uintptr // CUevent
	Graph     uintptr // CUgraph
	GraphExec uintptr // CUgraphExec
)

// Library names Load tries, in order.
var libNames = []string{"libcuda.so.1", "libcuda.so"}

// sym indexes Driver.fn.
type sym int

const (
	symGetErrorName sym = iota
	symGetErrorString
	symInit
	symDriverGetVersion
	symDeviceGetCount
	symDeviceGet
	symDeviceGetName
	symDeviceGetUuid
	symDeviceTotalMem
	symDeviceGetAttribute
	symDeviceGetPCIBusId
	symDeviceCanAccessPeer
	symDevicePrimaryCtxRetain
	symDevicePrimaryCtxRelease
	symCtxSetCurrent
	symCtxGetCurrent
	symCtxGetDevice
	symCtxSynchronize
	symMemAlloc
	symMemFree
	symMemGetInfo
	symMemsetD32
	symMemsetD32Async
	symMemcpyHtoD
	symMemcpyDtoH
	symMemcpyDtoD
	symMemcpyHtoDAsync
	symMemcpyDtoHAsync
	symMemcpyDtoDAsync
	symStreamCreate
	symStreamDestroy
	symStreamSynchronize
	symStreamQuery
	symStreamWaitEvent
	symEventCreate
	symEventRecord
	symEventSynchronize
	symEventQuery
	symEventElapsedTime
	symEventDestroy
	symModuleLoadData
	symModuleUnload
	symModuleGetFunction
	symModuleGetGlobal
	symFuncSetAttribute
	symFuncGetAttribute
	symFuncGetParamInfo
	symFuncGetName
	symOccupancyMaxActiveBlocksPerMultiprocessor
	symLaunchKernel
	symLaunchCooperativeKernel
	symLaunchKernelEx
	symOccupancyMaxActiveClusters
	symTensorMapEncodeTiled
	symStreamBeginCapture
	symStreamEndCapture
	symGraphInstantiate
	symGraphLaunch
	symGraphDestroy
	symGraphExecDestroy
	numSyms
)

// symbolSpec says how one driver function is found.
type symbolSpec struct {
	// api is the name the CUDA documentation and cuda.h use; errors use it.
	api string
	// names are the exported symbols to try, in order. names[0] is what
	// cuda.h's #define maps api to (checked by TestPrototypesMatchCudaH) and
	// has a pfn_<names[0]> typedef in cudadl.h; later names are fallbacks with
	// the same prototype, for older drivers.
	names []string
	// optional functions may be missing (older drivers); calls that need one
	// then fail with a clear error, and Load still succeeds.
	optional bool
}

func req(api string, names ...string) symbolSpec {
	if len(names) == 0 {
		names = []string{api}
	}
	return symbolSpec{api: api, names: names}
}

func opt(api string, names ...string) symbolSpec {
	s := req(api, names...)
	s.optional = true
	return s
}

// symbols binds each sym to its exported name(s). The _v2 names are what
// CUDA 13.0's cuda.h #defines the API names to; a program built against
// cuda.h calls exactly these.
var symbols = [numSyms]symbolSpec{
	symGetErrorName:            req("cuGetErrorName"),
	symGetErrorString:          req("cuGetErrorString"),
	symInit:                    req("cuInit"),
	symDriverGetVersion:        req("cuDriverGetVersion"),
	symDeviceGetCount:          req("cuDeviceGetCount"),
	symDeviceGet:               req("cuDeviceGet"),
	symDeviceGetName:           req("cuDeviceGetName"),
	symDeviceGetUuid:           req("cuDeviceGetUuid", "cuDeviceGetUuid_v2"),
	symDeviceTotalMem:          req("cuDeviceTotalMem", "cuDeviceTotalMem_v2"),
	symDeviceGetAttribute:      req("cuDeviceGetAttribute"),
	symDeviceGetPCIBusId:       req("cuDeviceGetPCIBusId"),
	symDeviceCanAccessPeer:     req("cuDeviceCanAccessPeer"),
	symDevicePrimaryCtxRetain:  req("cuDevicePrimaryCtxRetain"),
	symDevicePrimaryCtxRelease: req("cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2"),
	symCtxSetCurrent:           req("cuCtxSetCurrent"),
	symCtxGetCurrent:           req("cuCtxGetCurrent"),
	symCtxGetDevice:            req("cuCtxGetDevice"),
	symCtxSynchronize:          req("cuCtxSynchronize"),
	symMemAlloc:                req("cuMemAlloc", "cuMemAlloc_v2"),
	symMemFree:                 req("cuMemFree", "cuMemFree_v2"),
	symMemGetInfo:              req("cuMemGetInfo", "cuMemGetInfo_v2"),
	symMemsetD32:               req("cuMemsetD32", "cuMemsetD32_v2"),
	symMemsetD32Async:          req("cuMemsetD32Async"),
	symMemcpyHtoD:              req("cuMemcpyHtoD", "cuMemcpyHtoD_v2"),
	symMemcpyDtoH:              req("cuMemcpyDtoH", "cuMemcpyDtoH_v2"),
	symMemcpyDtoD:              req("cuMemcpyDtoD", "cuMemcpyDtoD_v2"),
	symMemcpyHtoDAsync:         req("cuMemcpyHtoDAsync", "cuMemcpyHtoDAsync_v2"),
	symMemcpyDtoHAsync:         req("cuMemcpyDtoHAsync", "cuMemcpyDtoHAsync_v2"),
	symMemcpyDtoDAsync:         req("cuMemcpyDtoDAsync", "cuMemcpyDtoDAsync_v2"),
	symStreamCreate:            req("cuStreamCreate"),
	symStreamDestroy:           req("cuStreamDestroy", "cuStreamDestroy_v2"),
	symStreamSynchronize:       req("cuStreamSynchronize"),
	symStreamQuery:             req("cuStreamQuery"),
	symStreamWaitEvent:         req("cuStreamWaitEvent"),
	symEventCreate:             req("cuEventCreate"),
	symEventRecord:             req("cuEventRecord"),
	symEventSynchronize:        req("cuEventSynchronize"),
	symEventQuery:              req("cuEventQuery"),
	// cuda.h 13.0 maps the name to cuEventElapsedTime_v2; drivers older than
	// that symbol have only cuEventElapsedTime, with the same prototype.
	symEventElapsedTime:  req("cuEventElapsedTime", "cuEventElapsedTime_v2", "cuEventElapsedTime"),
	symEventDestroy:      req("cuEventDestroy", "cuEventDestroy_v2"),
	symModuleLoadData:    req("cuModuleLoadData"),
	symModuleUnload:      req("cuModuleUnload"),
	symModuleGetFunction: req("cuModuleGetFunction"),
	symModuleGetGlobal:   req("cuModuleGetGlobal", "cuModuleGetGlobal_v2"),
	symFuncSetAttribute:  req("cuFuncSetAttribute"),
	symFuncGetAttribute:  req("cuFuncGetAttribute"),
	// Newer drivers only (CUDA 12.4 and 12.3); used for the launch argument
	// check and for messages, skipped where missing.
	symFuncGetParamInfo: opt("cuFuncGetParamInfo"),
	symFuncGetName:      opt("cuFuncGetName"),
	symOccupancyMaxActiveBlocksPerMultiprocessor: req("cuOccupancyMaxActiveBlocksPerMultiprocessor"),
	symLaunchKernel:            req("cuLaunchKernel"),
	symLaunchCooperativeKernel: req("cuLaunchCooperativeKernel"),
	// CUDA 11.8 and newer; no launch of moerun uses them today (launch.go,
	// "Clusters"), so a driver without them only fails those two calls.
	symLaunchKernelEx:             opt("cuLaunchKernelEx"),
	symOccupancyMaxActiveClusters: opt("cuOccupancyMaxActiveClusters"),
	// CUDA 12.0 and newer; only the kernel's opt-in TMA loads need it (a
	// forward that asks for them without it fails with a clear error).
	symTensorMapEncodeTiled: opt("cuTensorMapEncodeTiled"),
	symStreamBeginCapture:   req("cuStreamBeginCapture", "cuStreamBeginCapture_v2"),
	symStreamEndCapture:     req("cuStreamEndCapture"),
	symGraphInstantiate:     req("cuGraphInstantiate", "cuGraphInstantiateWithFlags"),
	symGraphLaunch:          req("cuGraphLaunch"),
	symGraphDestroy:         req("cuGraphDestroy"),
	symGraphExecDestroy:     req("cuGraphExecDestroy"),
}

// Driver is an opened CUDA driver library. Its methods are safe for concurrent
// use as far as the driver itself is, but remember that the current context
// belongs to the calling OS thread.
type Driver struct {
	path   string
	handle unsafe.Pointer
	fn     [numSyms]unsafe.Pointer
	bound  [numSyms]string // the exported name each fn came from

	params sync.Map // Function -> paramLayout, see launch.go
}

// Load opens the CUDA driver (libcuda.so.1, else libcuda.so, through the
// dynamic linker's usual search) and initialises it with cuInit(0).
func Load() (*Driver, error) {
	var errs []string
	for _, name := range libNames {
		d, err := open(name)
		if err == nil {
			return d.init()
		}
		if _, ok := err.(*dlopenError); !ok {
			return nil, err // the library is there but unusable
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("CUDA driver not found: %s", strings.Join(errs, "; "))
}

// Loaded returns the CUDA driver when the process has loaded it already (a
// framework such as PyTorch, or an earlier Load), without loading it, and
// nil with no error when it has not. It does not call cuInit: before the
// process has called it, CtxGetCurrent fails with ErrorNotInitialized (and
// no context can be current).
func Loaded() (*Driver, error) { return loaded(libNames) }

func loaded(names []string) (*Driver, error) {
	for _, name := range names {
		cname := C.CString(name)
		h := C.mr_dlopen_loaded(cname)
		C.free(unsafe.Pointer(cname))
		if h != nil {
			return bind(h, name)
		}
	}
	return nil, nil
}

// LoadFrom opens the CUDA driver library at path (a file name or a name for
// the dynamic linker) and initialises it with cuInit(0).
func LoadFrom(path string) (*Driver, error) {
	d, err := open(path)
	if err != nil {
		if _, ok := err.(*dlopenError); ok {
			return nil, fmt.Errorf("CUDA driver not found: %w", err)
		}
		return nil, err
	}
	return d.init()
}

// Path is the name the driver library was opened by.
func (d *Driver) Path() string { return d.path }

// Symbols lists "api=exported" for every function bound, in a fixed order;
// useful in verbose logs.
func (d *Driver) Symbols() []string {
	out := make([]string, 0, numSyms)
	for i, s := range symbols {
		name := d.bound[i]
		if name == "" {
			name = "(missing)"
		}
		out = append(out, s.api+"="+name)
	}
	return out
}

type dlopenError struct{ path, msg string }

func (e *dlopenError) Error() string { return e.path + ": " + e.msg }

func dlopen(path string) (unsafe.Pointer, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [1024]C.char
	h := C.mr_dlopen(cpath, &buf[0], C.size_t(len(buf)))
	if h == nil {
		return nil, &dlopenError{path: path, msg: C.GoString(&buf[0])}
	}
	return h, nil
}

func dlsym(h unsafe.Pointer, name string) unsafe.Pointer {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return C.dlsym(h, cname)
}

// open dlopens path and resolves every symbol. The library stays open for
// the life of the process (there is no Close: unloading a CUDA driver under
// live contexts is never safe).
func open(path string) (*Driver, error) {
	h, err := dlopen(path)
	if err != nil {
		return nil, err
	}
	return bind(h, path)
}

// bind resolves every symbol of the opened library h; it closes h when one
// that is required is missing.
func bind(h unsafe.Pointer, path string) (*Driver, error) {
	d := &Driver{path: path, handle: h}
	var missing []string
	for i, s := range symbols {
		for _, name := range s.names {
			if p := dlsym(h, name); p != nil {
				d.fn[i], d.bound[i] = p, name
				break
			}
		}
		if d.fn[i] == nil && !s.optional {
			missing = append(missing, strings.Join(s.names, "/"))
		}
	}
	if len(missing) > 0 {
		C.dlclose(h)
		return nil, fmt.Errorf("%s is not a usable CUDA driver (too old?): missing %s",
			path, strings.Join(missing, ", "))
	}
	return d, nil
}

// init calls cuInit(0) and returns d, or the error (with CUDA_ERROR_NO_DEVICE
// where the driver is installed but sees no GPU).
func (d *Driver) init() (*Driver, error) {
	if err := d.check(C.mr_cuInit(d.fn[symInit], 0), symInit, "0"); err != nil {
		return nil, err
	}
	return d, nil
}

// DriverVersion is the CUDA version the driver supports, as 1000*major +
// 10*minor (13000 for CUDA 13.0).
func (d *Driver) DriverVersion() (int, error) {
	var v C.int
	err := d.check(C.mr_cuDriverGetVersion(d.fn[symDriverGetVersion], &v), symDriverGetVersion, "")
	return int(v), err
}

// need returns the function pointer of an optional symbol, or an error saying
// that the driver lacks it.
func (d *Driver) need(s sym) (unsafe.Pointer, error) {
	if p := d.fn[s]; p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("%s: not in %s (driver too old)", symbols[s].api, d.path)
}
