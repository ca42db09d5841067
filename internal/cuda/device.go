package cuda

/*
#include "cudadl.h"
*/
import "C"

import (
	"fmt"
	"strconv"
)

// DeviceAttribute is a CUdevice_attribute.
type DeviceAttribute int32

// Device attributes (values from cuda.h, CUDA 13.0).
const (
	AttrMaxThreadsPerBlock               DeviceAttribute = 1
	AttrMaxSharedMemoryPerBlock          DeviceAttribute = 8
	AttrWarpSize                         DeviceAttribute = 10
	AttrMaxRegistersPerBlock             DeviceAttribute = 12
	AttrClockRate                        DeviceAttribute = 13 // kHz
	AttrMultiprocessorCount              DeviceAttribute = 16
	AttrPCIBusID                         DeviceAttribute = 33
	AttrPCIDeviceID                      DeviceAttribute = 34
	AttrMemoryClockRate                  DeviceAttribute = 36 // kHz
	AttrGlobalMemoryBusWidth             DeviceAttribute = 37 // bits
	AttrL2CacheSize                      DeviceAttribute = 38 // bytes
	AttrMaxThreadsPerMultiprocessor      DeviceAttribute = 39
	AttrUnifiedAddressing                DeviceAttribute = 41
	AttrPCIDomainID                      DeviceAttribute = 50
	AttrComputeCapabilityMajor           DeviceAttribute = 75
	AttrComputeCapabilityMinor           DeviceAttribute = 76
	AttrMaxSharedMemoryPerMultiprocessor DeviceAttribute = 81
	AttrMaxRegistersPerMultiprocessor    DeviceAttribute = 82
	AttrCooperativeLaunch                DeviceAttribute = 95
	AttrMaxSharedMemoryPerBlockOptin     DeviceAttribute = 97
	AttrMaxBlocksPerMultiprocessor       DeviceAttribute = 106
	AttrReservedSharedMemoryPerBlock     DeviceAttribute = 111
	AttrMulticastSupported               DeviceAttribute = 132
)

// DeviceCount is the number of CUDA devices visible to this process (after
// CUDA_VISIBLE_DEVICES).
func (d *Driver) DeviceCount() (int, error) {
	var n C.int
	err := d.check(C.mr_cuDeviceGetCount(d.fn[symDeviceGetCount], &n), symDeviceGetCount, "")
	return int(n), err
}

// DeviceGet returns the device with the given ordinal (0 to DeviceCount-1).
func (d *Driver) DeviceGet(ordinal int) (Device, error) {
	var dev C.CUdevice
	err := d.check(C.mr_cuDeviceGet(d.fn[symDeviceGet], &dev, C.int(ordinal)), symDeviceGet, strconv.Itoa(ordinal))
	return Device(dev), err
}

// DeviceName is the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
func (d *Driver) DeviceName(dev Device) (string, error) {
	var buf [256]C.char
	err := d.check(C.mr_cuDeviceGetName(d.fn[symDeviceGetName], &buf[0], C.int(len(buf)), C.CUdevice(dev)),
		symDeviceGetName, devArg(dev))
	if err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// DeviceUUID is the device's UUID in NVML's form, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
// so that CUDA devices can be matched with NVML devices (NVML ignores
// CUDA_VISIBLE_DEVICES; match by UUID, never by index).
func (d *Driver) DeviceUUID(dev Device) (string, error) {
	var u [16]C.uchar
	err := d.check(C.mr_cuDeviceGetUuid(d.fn[symDeviceGetUuid], &u[0], C.CUdevice(dev)), symDeviceGetUuid, devArg(dev))
	if err != nil {
		return "", err
	}
	var b [16]byte
	for i := range u {
		b[i] = byte(u[i])
	}
	return FormatUUID(b), nil
}

// FormatUUID formats 16 UUID bytes the way NVML prints GPU UUIDs.
func FormatUUID(b [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// DevicePCIBusID is the device's PCI address as the driver prints it,
// "dddd:bb:dd.f" (NVML pads the domain to 8 digits: "0000dddd:bb:dd.f").
func (d *Driver) DevicePCIBusID(dev Device) (string, error) {
	var buf [64]C.char
	err := d.check(C.mr_cuDeviceGetPCIBusId(d.fn[symDeviceGetPCIBusId], &buf[0], C.int(len(buf)), C.CUdevice(dev)),
		symDeviceGetPCIBusId, devArg(dev))
	if err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// ComputeCapability returns the device's compute capability (9, 0 on Hopper).
func (d *Driver) ComputeCapability(dev Device) (major, minor int, err error) {
	if major, err = d.Attribute(dev, AttrComputeCapabilityMajor); err != nil {
		return 0, 0, err
	}
	minor, err = d.Attribute(dev, AttrComputeCapabilityMinor)
	return major, minor, err
}

// TotalMem is the device's memory size in bytes.
func (d *Driver) TotalMem(dev Device) (uint64, error) {
	var n C.size_t
	err := d.check(C.mr_cuDeviceTotalMem(d.fn[symDeviceTotalMem], &n, C.CUdevice(dev)), symDeviceTotalMem, devArg(dev))
	return uint64(n), err
}

// Attribute returns one device attribute.
func (d *Driver) Attribute(dev Device, attr DeviceAttribute) (int, error) {
	var v C.int
	err := d.check(C.mr_cuDeviceGetAttribute(d.fn[symDeviceGetAttribute], &v, C.int(attr), C.CUdevice(dev)),
		symDeviceGetAttribute, fmt.Sprintf("attribute %d, device %d", attr, dev))
	return int(v), err
}

// CanAccessPeer reports whether dev can map peer's memory (P2P).
func (d *Driver) CanAccessPeer(dev, peer Device) (bool, error) {
	var v C.int
	err := d.check(C.mr_cuDeviceCanAccessPeer(d.fn[symDeviceCanAccessPeer], &v, C.CUdevice(dev), C.CUdevice(peer)),
		symDeviceCanAccessPeer, fmt.Sprintf("device %d, peer %d", dev, peer))
	return v != 0, err
}

// PrimaryCtxRetain retains the device's primary context (the CUDA runtime's
// context for the device) and returns it. Make it current with CtxSetCurrent;
// balance with PrimaryCtxRelease.
func (d *Driver) PrimaryCtxRetain(dev Device) (Context, error) {
	var c C.uintptr_t
	err := d.check(C.mr_cuDevicePrimaryCtxRetain(d.fn[symDevicePrimaryCtxRetain], &c, C.CUdevice(dev)),
		symDevicePrimaryCtxRetain, devArg(dev))
	return Context(c), err
}

// PrimaryCtxRelease releases a PrimaryCtxRetain.
func (d *Driver) PrimaryCtxRelease(dev Device) error {
	return d.check(C.mr_cuDevicePrimaryCtxRelease(d.fn[symDevicePrimaryCtxRelease], C.CUdevice(dev)),
		symDevicePrimaryCtxRelease, devArg(dev))
}

// CtxSetCurrent binds ctx to the calling OS thread (0 unbinds). Lock the
// goroutine to its thread first (runtime.LockOSThread).
func (d *Driver) CtxSetCurrent(ctx Context) error {
	return d.check(C.mr_cuCtxSetCurrent(d.fn[symCtxSetCurrent], C.uintptr_t(ctx)), symCtxSetCurrent, "")
}

// CtxGetCurrent returns the context bound to the calling thread (0 if none).
func (d *Driver) CtxGetCurrent() (Context, error) {
	var c C.uintptr_t
	err := d.check(C.mr_cuCtxGetCurrent(d.fn[symCtxGetCurrent], &c), symCtxGetCurrent, "")
	return Context(c), err
}

// CtxGetDevice returns the device of the calling thread's current context.
func (d *Driver) CtxGetDevice() (Device, error) {
	var dev C.CUdevice
	err := d.check(C.mr_cuCtxGetDevice(d.fn[symCtxGetDevice], &dev), symCtxGetDevice, "")
	return Device(dev), err
}

// CtxSynchronize waits for all work in the current context. It does not
// return while a kernel runs; prefer StreamWait for a bounded wait.
func (d *Driver) CtxSynchronize() error {
	return d.check(C.mr_cuCtxSynchronize(d.fn[symCtxSynchronize]), symCtxSynchronize, "")
}

func devArg(dev Device) string { return "device " + strconv.Itoa(int(dev)) }
