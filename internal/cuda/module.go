package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"fmt"
	"strconv"
	"unsafe"
)

// FuncAttribute is a CUfunction_attribute.
type FuncAttribute int32

// Function attributes (values from cuda.h, CUDA 13.0).
const (
	FuncMaxThreadsPerBlock            FuncAttribute = 0
	FuncSharedSizeBytes               FuncAttribute = 1 // static shared memory
	FuncConstSizeBytes                FuncAttribute = 2
	FuncLocalSizeBytes                FuncAttribute = 3 // local memory per thread (spills, stack)
	FuncNumRegs                       FuncAttribute = 4
	FuncPTXVersion                    FuncAttribute = 5
	FuncBinaryVersion                 FuncAttribute = 6
	FuncCacheModeCA                   FuncAttribute = 7
	FuncMaxDynamicSharedSizeBytes     FuncAttribute = 8
	FuncPreferredSharedMemoryCarveout FuncAttribute = 9
)

// ModuleLoadData loads a module (cubin, fatbin or PTX text) from memory into
// the current context. The image is copied, with a NUL appended for PTX.
func (d *Driver) ModuleLoadData(image []byte) (Module, error) {
	if len(image) == 0 {
		return 0, &Error{Call: "cuModuleLoadData", Args: "0 bytes", Code: ErrorInvalidImage, Name: ErrorInvalidImage.Error(), Message: "empty image"}
	}
	var m C.uintptr_t
	err := d.check(C.mr_cuModuleLoadData(d.fn[symModuleLoadData], &m, unsafe.Pointer(&image[0]), C.size_t(len(image))),
		symModuleLoadData, bytesArg(uint64(len(image))))
	return Module(m), err
}

// ModuleUnload unloads a module.
func (d *Driver) ModuleUnload(m Module) error {
	d.params.Clear() // function handles may be reused by a later module
	return d.check(C.mr_cuModuleUnload(d.fn[symModuleUnload], C.uintptr_t(m)), symModuleUnload, "")
}

// ModuleGetFunction looks up a kernel by its (extern "C" or mangled) name.
func (d *Driver) ModuleGetFunction(m Module, name string) (Function, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var f C.uintptr_t
	err := d.check(C.mr_cuModuleGetFunction(d.fn[symModuleGetFunction], &f, C.uintptr_t(m), cname),
		symModuleGetFunction, strconv.Quote(name))
	return Function(f), err
}

// ModuleGetGlobal returns the address and size of a __device__ or
// __constant__ variable of the module.
func (d *Driver) ModuleGetGlobal(m Module, name string) (DevicePtr, uint64, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var p C.CUdeviceptr
	var n C.size_t
	err := d.check(C.mr_cuModuleGetGlobal(d.fn[symModuleGetGlobal], &p, &n, C.uintptr_t(m), cname),
		symModuleGetGlobal, strconv.Quote(name))
	return DevicePtr(p), uint64(n), err
}

// FuncSetAttribute sets a function attribute; FuncMaxDynamicSharedSizeBytes
// must be raised this way before a launch that asks for more than 48 KiB of
// dynamic shared memory.
func (d *Driver) FuncSetAttribute(fn Function, attr FuncAttribute, value int) error {
	return d.check(C.mr_cuFuncSetAttribute(d.fn[symFuncSetAttribute], C.uintptr_t(fn), C.int(attr), C.int(value)),
		symFuncSetAttribute, fmt.Sprintf("%s, attribute %d, %d", d.funcName(fn), attr, value))
}

// FuncGetAttribute reads a function attribute (registers, local memory, ...).
func (d *Driver) FuncGetAttribute(fn Function, attr FuncAttribute) (int, error) {
	var v C.int
	err := d.check(C.mr_cuFuncGetAttribute(d.fn[symFuncGetAttribute], &v, C.int(attr), C.uintptr_t(fn)),
		symFuncGetAttribute, fmt.Sprintf("attribute %d, %s", attr, d.funcName(fn)))
	return int(v), err
}

// FuncParamInfo returns the offset and size of the kernel's parameter index
// (cuFuncGetParamInfo, drivers of CUDA 12.4 and later). Past the last
// parameter it fails with ErrorInvalidValue.
func (d *Driver) FuncParamInfo(fn Function, index int) (offset, size uint64, err error) {
	f, err := d.need(symFuncGetParamInfo)
	if err != nil {
		return 0, 0, err
	}
	var off, sz C.size_t
	err = d.check(C.mr_cuFuncGetParamInfo(f, C.uintptr_t(fn), C.size_t(index), &off, &sz),
		symFuncGetParamInfo, fmt.Sprintf("%s, %d", d.funcName(fn), index))
	return uint64(off), uint64(sz), err
}

// FuncName is the kernel's name as the module has it (cuFuncGetName), or a
// hexadecimal handle where the driver cannot say.
func (d *Driver) FuncName(fn Function) string { return d.funcName(fn) }

func (d *Driver) funcName(fn Function) string {
	if f := d.fn[symFuncGetName]; f != nil {
		var name *C.char
		if C.mr_cuFuncGetName(f, &name, C.uintptr_t(fn)) == 0 && name != nil {
			return C.GoString(name)
		}
	}
	return fmt.Sprintf("function %#x", uintptr(fn))
}

// OccupancyMaxActiveBlocksPerMultiprocessor is how many blocks of blockSize
// threads with dynSmem bytes of dynamic shared memory fit on one SM at once.
// A cooperative (persistent) grid may have at most this times the SM count
// blocks.
func (d *Driver) OccupancyMaxActiveBlocksPerMultiprocessor(fn Function, blockSize int, dynSmem uint64) (int, error) {
	var n C.int
	err := d.check(C.mr_cuOccupancyMaxActiveBlocksPerMultiprocessor(d.fn[symOccupancyMaxActiveBlocksPerMultiprocessor], &n, C.uintptr_t(fn), C.int(blockSize), C.size_t(dynSmem)),
		symOccupancyMaxActiveBlocksPerMultiprocessor, fmt.Sprintf("%s, %d threads, %d bytes", d.funcName(fn), blockSize, dynSmem))
	return int(n), err
}
