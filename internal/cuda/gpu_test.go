package cuda

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"
)

// gpu loads the real driver, binds device 0's primary context to this test's
// thread, and skips the test where there is no GPU.
func gpu(t *testing.T) (*Driver, Device) {
	t.Helper()
	d, err := Load()
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	n, err := d.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no GPU: %d devices, %v", n, err)
	}
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := d.PrimaryCtxRetain(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.PrimaryCtxRelease(dev) })
	if err := d.CtxSetCurrent(ctx); err != nil {
		t.Fatal(err)
	}
	return d, dev
}

func TestGPUSmoke(t *testing.T) {
	d, dev := gpu(t)

	v, _ := d.DriverVersion()
	name, _ := d.DeviceName(dev)
	uuid, err := d.DeviceUUID(dev)
	if err != nil {
		t.Fatal(err)
	}
	bus, _ := d.DevicePCIBusID(dev)
	maj, min, _ := d.ComputeCapability(dev)
	sms, _ := d.Attribute(dev, AttrMultiprocessorCount)
	coop, _ := d.Attribute(dev, AttrCooperativeLaunch)
	smem, _ := d.Attribute(dev, AttrMaxSharedMemoryPerBlockOptin)
	total, _ := d.TotalMem(dev)
	t.Logf("driver %d; device 0: %s, %s, %s, sm_%d%d, %d SMs, cooperative %d, %d B smem opt-in, %d MiB",
		v, name, uuid, bus, maj, min, sms, coop, smem, total>>20)
	if len(uuid) != 40 || uuid[:4] != "GPU-" {
		t.Errorf("UUID %q is not in NVML's form", uuid)
	}

	free, tot, err := d.MemGetInfo()
	if err != nil || free == 0 || free > tot {
		t.Errorf("MemGetInfo = %d, %d, %v", free, tot, err)
	}

	const n = 1 << 20
	src := make([]float32, n)
	for i := range src {
		src[i] = rand.Float32()
	}
	a, err := d.MemAlloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(a)
	b, err := d.MemAlloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(b)

	if err := d.MemcpyHtoD(a, src); err != nil {
		t.Fatal(err)
	}
	if err := d.MemcpyDtoD(b, a, 4*n); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n)
	if err := d.MemcpyDtoH(got, b); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, src) {
		t.Fatal("host -> device -> device -> host round trip changed the data")
	}

	s, err := d.StreamCreate(true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.StreamDestroy(s)
	e0, _ := d.EventCreate()
	e1, _ := d.EventCreate()
	defer d.EventDestroy(e0)
	defer d.EventDestroy(e1)
	d.EventRecord(e0, s)
	if err := d.MemsetD32Async(a, 0x3f800000, n, s); err != nil { // 1.0f
		t.Fatal(err)
	}
	d.EventRecord(e1, s)
	if err := d.StreamWait(s, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	dt, err := d.EventElapsedTime(e0, e1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("memset of 4 MiB: %v", dt)
	if err := d.MemcpyDtoHAsync(got, a, s); err != nil {
		t.Fatal(err)
	}
	if err := d.StreamSynchronize(s); err != nil {
		t.Fatal(err)
	}
	if got[0] != 1 || got[n-1] != 1 {
		t.Errorf("after memset: %v ... %v", got[0], got[n-1])
	}
}

// replayCapture ends the capture on s (launchErr: what the captured launch
// returned), instantiates the graph, launches it once and waits for it.
func replayCapture(t *testing.T, d *Driver, s Stream, launchErr error) {
	t.Helper()
	g, err := d.StreamEndCapture(s)
	if launchErr != nil || err != nil {
		t.Fatal(errors.Join(launchErr, err))
	}
	t.Cleanup(func() { d.GraphDestroy(g) })
	e, err := d.GraphInstantiate(g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.GraphExecDestroy(e) })
	if err := d.GraphLaunch(e, s); err != nil {
		t.Fatal(err)
	}
	if err := d.StreamWait(s, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// smokeBuffers allocates the smoke kernel's n outputs (freed when the test
// ends) and its argument: the outputs, n, and the addend at arg[12:], which
// the caller sets. check copies the outputs back and wants out[i] = i + add
// for every i.
func smokeBuffers(t *testing.T, d *Driver, n uint32) (arg []byte, check func(what string, add uint32)) {
	t.Helper()
	out, err := d.MemAlloc(uint64(4 * n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.MemFree(out) })
	arg = make([]byte, 16)
	binary.LittleEndian.PutUint64(arg[0:], uint64(out))
	binary.LittleEndian.PutUint32(arg[8:], n)
	got := make([]uint32, n)
	check = func(what string, add uint32) {
		t.Helper()
		if err := d.MemcpyDtoH(got, out); err != nil {
			t.Fatal(err)
		}
		for i, v := range got {
			if v != uint32(i)+add {
				t.Fatalf("%s: out[%d] = %d, want %d", what, i, v, uint32(i)+add)
			}
		}
	}
	return arg, check
}

// smokeKernel loads testdata/smoke.ptx and returns its kernel; the module
// is unloaded when the test ends.
func smokeKernel(t *testing.T, d *Driver) Function {
	t.Helper()
	ptx, err := os.ReadFile("testdata/smoke.ptx")
	if err != nil {
		t.Fatal(err)
	}
	m, err := d.ModuleLoadData(ptx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.ModuleUnload(m) })
	fn, err := d.ModuleGetFunction(m, "smoke")
	if err != nil {
		t.Fatal(err)
	}
	return fn
}

func TestGPULaunchPTXKernel(t *testing.T) {
	d, dev := gpu(t)
	fn := smokeKernel(t, d)
	regs, _ := d.FuncGetAttribute(fn, FuncNumRegs)
	perSM, err := d.OccupancyMaxActiveBlocksPerMultiprocessor(fn, 256, 0)
	if err != nil || perSM < 1 {
		t.Fatalf("occupancy = %d, %v", perSM, err)
	}
	sms, _ := d.Attribute(dev, AttrMultiprocessorCount)
	t.Logf("smoke: %d registers, %d blocks of 256 per SM", regs, perSM)

	n := uint32(sms * perSM * 256)
	arg, check := smokeBuffers(t, d, n)
	binary.LittleEndian.PutUint32(arg[12:], 7)

	grid := [3]uint32{uint32(sms * perSM), 1, 1}
	if err := d.LaunchCooperative(fn, grid, [3]uint32{256, 1, 1}, 0, 0, arg); err != nil {
		t.Fatal(err)
	}
	if err := d.CtxSynchronize(); err != nil {
		t.Fatal(err)
	}
	check("direct", 7)

	// The same launch captured in a graph, with another addend.
	if _, size, err := d.FuncParamInfo(fn, 0); err == nil && size != 16 {
		t.Errorf("parameter size %d, want 16", size)
	}
	binary.LittleEndian.PutUint32(arg[12:], 9)
	s, _ := d.StreamCreate(true)
	defer d.StreamDestroy(s)
	if err := d.StreamBeginCapture(s, CaptureModeThreadLocal); err != nil {
		t.Fatal(err)
	}
	replayCapture(t, d, s, d.LaunchKernel(fn, grid, [3]uint32{256, 1, 1}, 0, s, arg))
	check("after the graph", 9)

	if err := d.LaunchCooperative(fn, [3]uint32{uint32(sms*perSM + sms), 1, 1}, [3]uint32{256, 1, 1}, 0, 0, arg); err == nil {
		t.Error("an oversized cooperative launch succeeded")
	} else {
		t.Logf("oversized cooperative launch: %v", err)
	}
}
