package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"unsafe"
)

// MemAlloc allocates bytes of device memory in the current context.
func (d *Driver) MemAlloc(bytes uint64) (DevicePtr, error) {
	var p C.CUdeviceptr
	err := d.check(C.mr_cuMemAlloc(d.fn[symMemAlloc], &p, C.size_t(bytes)), symMemAlloc, bytesArg(bytes))
	return DevicePtr(p), err
}

// MemFree frees memory from MemAlloc.
func (d *Driver) MemFree(p DevicePtr) error {
	return d.check(C.mr_cuMemFree(d.fn[symMemFree], C.CUdeviceptr(p)), symMemFree, ptrArg(p))
}

// MemGetInfo returns the free and total memory of the current context's device.
func (d *Driver) MemGetInfo() (free, total uint64, err error) {
	var f, t C.size_t
	err = d.check(C.mr_cuMemGetInfo(d.fn[symMemGetInfo], &f, &t), symMemGetInfo, "")
	return uint64(f), uint64(t), err
}

// MemsetD32 sets count 32-bit words at p to value.
func (d *Driver) MemsetD32(p DevicePtr, value uint32, count uint64) error {
	return d.check(C.mr_cuMemsetD32(d.fn[symMemsetD32], C.CUdeviceptr(p), C.uint(value), C.size_t(count)),
		symMemsetD32, fmt.Sprintf("%#x, %#x, %d words", uint64(p), value, count))
}

// MemsetD32Async is MemsetD32 ordered on stream.
func (d *Driver) MemsetD32Async(p DevicePtr, value uint32, count uint64, stream Stream) error {
	return d.check(C.mr_cuMemsetD32Async(d.fn[symMemsetD32Async], C.CUdeviceptr(p), C.uint(value), C.size_t(count), C.uintptr_t(stream)),
		symMemsetD32Async, fmt.Sprintf("%#x, %#x, %d words", uint64(p), value, count))
}

// MemcpyHtoD copies the host slice src to device memory at dst. src is a
// []byte or any slice whose elements hold no Go pointers (numbers, arrays
// and structs of numbers); an empty slice copies nothing.
func (d *Driver) MemcpyHtoD(dst DevicePtr, src any) error {
	p, n, err := hostBuffer(src)
	if err != nil || n == 0 {
		return wrapHost(symMemcpyHtoD, err)
	}
	err = d.check(C.mr_cuMemcpyHtoD(d.fn[symMemcpyHtoD], C.CUdeviceptr(dst), p, C.size_t(n)),
		symMemcpyHtoD, fmt.Sprintf("%#x, %s", uint64(dst), bytesArg(uint64(n))))
	runtime.KeepAlive(src)
	return err
}

// MemcpyDtoH copies device memory at src into the host slice dst (see
// MemcpyHtoD for the slices allowed), filling the whole slice.
func (d *Driver) MemcpyDtoH(dst any, src DevicePtr) error {
	p, n, err := hostBuffer(dst)
	if err != nil || n == 0 {
		return wrapHost(symMemcpyDtoH, err)
	}
	err = d.check(C.mr_cuMemcpyDtoH(d.fn[symMemcpyDtoH], p, C.CUdeviceptr(src), C.size_t(n)),
		symMemcpyDtoH, fmt.Sprintf("%s, %#x", bytesArg(uint64(n)), uint64(src)))
	runtime.KeepAlive(dst)
	return err
}

// MemcpyDtoD copies bytes from src to dst, both device memory (peers too,
// under unified addressing).
func (d *Driver) MemcpyDtoD(dst, src DevicePtr, bytes uint64) error {
	if bytes == 0 {
		return nil
	}
	return d.check(C.mr_cuMemcpyDtoD(d.fn[symMemcpyDtoD], C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes)),
		symMemcpyDtoD, fmt.Sprintf("%#x, %#x, %s", uint64(dst), uint64(src), bytesArg(bytes)))
}

// MemcpyHtoDAsync is MemcpyHtoD ordered on stream. Go memory is pageable, so
// the driver stages the copy and src may be reused when the call returns; it
// does not overlap with host work the way pinned memory would.
func (d *Driver) MemcpyHtoDAsync(dst DevicePtr, src any, stream Stream) error {
	p, n, err := hostBuffer(src)
	if err != nil || n == 0 {
		return wrapHost(symMemcpyHtoDAsync, err)
	}
	err = d.check(C.mr_cuMemcpyHtoDAsync(d.fn[symMemcpyHtoDAsync], C.CUdeviceptr(dst), p, C.size_t(n), C.uintptr_t(stream)),
		symMemcpyHtoDAsync, fmt.Sprintf("%#x, %s", uint64(dst), bytesArg(uint64(n))))
	runtime.KeepAlive(src)
	return err
}

// MemcpyDtoHAsync is MemcpyDtoH ordered on stream. With pageable (Go) memory
// as the destination the driver returns only once the copy is done.
func (d *Driver) MemcpyDtoHAsync(dst any, src DevicePtr, stream Stream) error {
	p, n, err := hostBuffer(dst)
	if err != nil || n == 0 {
		return wrapHost(symMemcpyDtoHAsync, err)
	}
	err = d.check(C.mr_cuMemcpyDtoHAsync(d.fn[symMemcpyDtoHAsync], p, C.CUdeviceptr(src), C.size_t(n), C.uintptr_t(stream)),
		symMemcpyDtoHAsync, fmt.Sprintf("%s, %#x", bytesArg(uint64(n)), uint64(src)))
	runtime.KeepAlive(dst)
	return err
}

// MemcpyDtoDAsync is MemcpyDtoD ordered on stream.
func (d *Driver) MemcpyDtoDAsync(dst, src DevicePtr, bytes uint64, stream Stream) error {
	if bytes == 0 {
		return nil
	}
	return d.check(C.mr_cuMemcpyDtoDAsync(d.fn[symMemcpyDtoDAsync], C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes), C.uintptr_t(stream)),
		symMemcpyDtoDAsync, fmt.Sprintf("%#x, %#x, %s", uint64(dst), uint64(src), bytesArg(bytes)))
}

func ptrArg(p DevicePtr) string { return fmt.Sprintf("%#x", uint64(p)) }

func wrapHost(s sym, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", symbols[s].api, err)
}

// hostBuffer returns the address and byte length of the data of a slice
// whose elements hold no pointers. The address is of Go memory without Go
// pointers in it, which cgo allows to pass for the length of a call.
func hostBuffer(v any) (unsafe.Pointer, uintptr, error) {
	switch s := v.(type) {
	case []byte:
		if len(s) == 0 {
			return nil, 0, nil
		}
		return unsafe.Pointer(&s[0]), uintptr(len(s)), nil
	case []float32:
		if len(s) == 0 {
			return nil, 0, nil
		}
		return unsafe.Pointer(&s[0]), uintptr(len(s)) * 4, nil
	case []uint32:
		if len(s) == 0 {
			return nil, 0, nil
		}
		return unsafe.Pointer(&s[0]), uintptr(len(s)) * 4, nil
	case []int32:
		if len(s) == 0 {
			return nil, 0, nil
		}
		return unsafe.Pointer(&s[0]), uintptr(len(s)) * 4, nil
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Slice {
		return nil, 0, fmt.Errorf("host buffer must be a slice, not %T", v)
	}
	et := rv.Type().Elem()
	if !pointerFree(et) {
		return nil, 0, fmt.Errorf("host buffer %T: elements must not contain pointers", v)
	}
	if rv.Len() == 0 || et.Size() == 0 {
		return nil, 0, nil
	}
	return rv.UnsafePointer(), uintptr(rv.Len()) * et.Size(), nil
}

var pointerFreeCache sync.Map // reflect.Type -> bool

// pointerFree reports whether values of t hold no pointers (and so may be
// copied to the device byte for byte).
func pointerFree(t reflect.Type) bool {
	if v, ok := pointerFreeCache.Load(t); ok {
		return v.(bool)
	}
	var ok bool
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		ok = true
	case reflect.Array:
		ok = pointerFree(t.Elem())
	case reflect.Struct:
		ok = true
		for i := 0; i < t.NumField(); i++ {
			if !pointerFree(t.Field(i).Type) {
				ok = false
				break
			}
		}
	}
	pointerFreeCache.Store(t, ok)
	return ok
}
