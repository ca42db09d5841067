package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoadFromMissingPathSaysDriverNotFound(t *testing.T) {
	_, err := LoadFrom("/nonexistent/libcuda.so.1")
	if err == nil {
		t.Fatal("LoadFrom of a missing file succeeded")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "CUDA driver not found: /nonexistent/libcuda.so.1: ") {
		t.Errorf("error = %q", msg)
	}
}

func TestLoadWithoutDriverNamesLibcuda(t *testing.T) {
	d, err := Load()
	if err == nil {
		t.Skipf("a CUDA driver is installed here (%s)", d.Path())
	}
	if !strings.HasPrefix(err.Error(), "CUDA driver not found: libcuda.so.1: ") {
		t.Errorf("error = %q", err)
	}
}

func TestLoadFromRejectsLibraryWithoutCUDASymbols(t *testing.T) {
	_, err := LoadFrom("libc.so.6")
	if err == nil {
		t.Fatal("libc.so.6 was accepted as a CUDA driver")
	}
	for _, want := range []string{"libc.so.6 is not a usable CUDA driver", "missing cuGetErrorName", "cuMemAlloc_v2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestFormatUUIDLikeNVML(t *testing.T) {
	b := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xab, 0xcd}
	if got, want := FormatUUID(b), "GPU-deadbeef-0102-0304-0506-0708090aabcd"; got != want {
		t.Errorf("FormatUUID = %q, want %q", got, want)
	}
}

func TestResultErrorNamesKnownAndUnknownCodes(t *testing.T) {
	if got := ErrorOutOfMemory.Error(); got != "CUDA_ERROR_OUT_OF_MEMORY" {
		t.Errorf("got %q", got)
	}
	if got := Result(12345).Error(); got != "CUresult 12345" {
		t.Errorf("got %q", got)
	}
}

func TestHostBufferAcceptsPlainSlicesOnly(t *testing.T) {
	type rec struct {
		A uint32
		B [2]float32
	}
	type withPtr struct{ P *int }
	cases := []struct {
		name  string
		v     any
		bytes uintptr
		ok    bool
	}{
		{"bytes", []byte{1, 2, 3}, 3, true},
		{"float32", make([]float32, 5), 20, true},
		{"uint16", make([]uint16, 3), 6, true},
		{"structs", make([]rec, 2), 24, true},
		{"empty", []float64{}, 0, true},
		{"nil", []byte(nil), 0, true},
		{"not a slice", 42, 0, false},
		{"array", [4]byte{}, 0, false},
		{"pointers", make([]*int, 1), 0, false},
		{"strings", []string{"x"}, 0, false},
		{"struct with pointer", make([]withPtr, 1), 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, n, err := hostBuffer(c.v)
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok=%v", err, c.ok)
			}
			if n != c.bytes {
				t.Errorf("n = %d, want %d", n, c.bytes)
			}
			if n > 0 && p == nil {
				t.Error("nil pointer for a non-empty slice")
			}
		})
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fakePath != "" {
		os.RemoveAll(filepath.Dir(fakePath))
	}
	os.Exit(code)
}

// The fake driver (testdata/fakecuda.c) is built once per test binary.
var (
	fakeOnce sync.Once
	fakePath string
	fakeErr  error
)

func fakeDriver(t *testing.T) *Driver {
	t.Helper()
	gcc := needTool(t, "gcc")
	fakeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fakecuda")
		if err != nil {
			fakeErr = err
			return
		}
		fakePath = filepath.Join(dir, "libfakecuda.so")
		fakeErr = buildFakeLib(gcc, "testdata/fakecuda.c", fakePath)
	})
	if fakeErr != nil {
		t.Fatalf("building the fake driver: %v", fakeErr)
	}
	return loadFake(t, fakePath)
}

// fakeKernArg is the fake driver's kernel argument (testdata/fakecuda.c):
// the output buffer, then 11, 22, 1<<40 and 44, which the fake writes back
// to out for the tests to check.
func fakeKernArg(out DevicePtr) []byte {
	arg := make([]byte, 32)
	binary.LittleEndian.PutUint64(arg[0:], uint64(out))
	binary.LittleEndian.PutUint32(arg[8:], 11)
	binary.LittleEndian.PutUint32(arg[12:], 22)
	binary.LittleEndian.PutUint64(arg[16:], 1<<40)
	binary.LittleEndian.PutUint64(arg[24:], 44)
	return arg
}

// buildFakeLib compiles a fake driver's C source into the shared library lib.
func buildFakeLib(gcc, src, lib string) error {
	out, err := exec.Command(gcc, "-shared", "-fPIC", "-Wall", "-Werror", "-I", ".", src, "-o", lib).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func loadFake(t *testing.T, lib string) *Driver {
	t.Helper()
	d, err := LoadFrom(lib)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLoadFailsWhenDriverSeesNoGPU(t *testing.T) {
	fakeDriver(t) // builds the fake
	t.Setenv("FAKECUDA_NO_DEVICE", "1")
	d, err := LoadFrom(fakePath)
	if d != nil || err == nil {
		t.Fatalf("LoadFrom = %v, %v; want an error", d, err)
	}
	if got, want := err.Error(), "cuInit(0): CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrorNoDevice) {
		t.Error("errors.Is(err, ErrorNoDevice) = false")
	}
}

func TestFakeDriverDevices(t *testing.T) {
	d := fakeDriver(t)
	if v, err := d.DriverVersion(); err != nil || v != 13000 {
		t.Errorf("DriverVersion = %d, %v", v, err)
	}
	n, err := d.DeviceCount()
	if err != nil || n != 2 {
		t.Fatalf("DeviceCount = %d, %v (cuInit(0) not called?)", n, err)
	}
	dev, err := d.DeviceGet(1)
	if err != nil || dev != 1 {
		t.Fatalf("DeviceGet(1) = %d, %v", dev, err)
	}
	if name, _ := d.DeviceName(dev); name != "Fake GPU 1" {
		t.Errorf("DeviceName = %q", name)
	}
	if u, _ := d.DeviceUUID(dev); u != "GPU-10111213-1415-1617-1819-1a1b1c1d1e1f" {
		t.Errorf("DeviceUUID = %q", u)
	}
	if b, _ := d.DevicePCIBusID(dev); b != "0000:19:00.0" {
		t.Errorf("DevicePCIBusID = %q", b)
	}
	if maj, min, err := d.ComputeCapability(dev); maj != 9 || min != 0 || err != nil {
		t.Errorf("ComputeCapability = %d.%d, %v", maj, min, err)
	}
	if m, _ := d.TotalMem(dev); m != 80<<30+1 {
		t.Errorf("TotalMem = %d", m)
	}
	if v, _ := d.Attribute(dev, AttrCooperativeLaunch); v != 1095 {
		t.Errorf("Attribute(1, 95) = %d (argument order?)", v)
	}
	if p, _ := d.CanAccessPeer(0, 1); !p {
		t.Error("CanAccessPeer(0, 1) = false")
	}

	_, err = d.DeviceGet(7)
	if got, want := err.Error(), "cuDeviceGet(7): CUDA_ERROR_INVALID_DEVICE: invalid device ordinal"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrorInvalidDevice) {
		t.Error("errors.Is(err, ErrorInvalidDevice) = false")
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != ErrorInvalidDevice || ce.Call != "cuDeviceGet" {
		t.Errorf("errors.As: %+v", ce)
	}

	ctx, err := d.PrimaryCtxRetain(dev)
	if err != nil || ctx == 0 {
		t.Fatalf("PrimaryCtxRetain = %#x, %v", ctx, err)
	}
	// The fake keeps the current context per thread, as CUDA does.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.CtxSetCurrent(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := d.CtxGetCurrent(); c != ctx || err != nil {
		t.Errorf("CtxGetCurrent = %#x, %v; want %#x", c, err, ctx)
	}
	if cd, err := d.CtxGetDevice(); cd != dev || err != nil {
		t.Errorf("CtxGetDevice = %d, %v", cd, err)
	}
	if err := d.CtxSynchronize(); err != nil {
		t.Error(err)
	}
	if err := d.PrimaryCtxRelease(dev); err != nil {
		t.Error(err)
	}
	if !slices.Contains(d.Symbols(), "cuMemAlloc=cuMemAlloc_v2") || !slices.Contains(d.Symbols(), "cuGraphInstantiate=cuGraphInstantiateWithFlags") {
		t.Errorf("Symbols() = %v", d.Symbols())
	}
}

func TestFakeDriverMemory(t *testing.T) {
	d := fakeDriver(t)

	_, err := d.MemAlloc(2 << 40)
	if got, want := err.Error(), "cuMemAlloc(2199023255552 bytes): CUDA_ERROR_OUT_OF_MEMORY: out of memory"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrorOutOfMemory) {
		t.Error("errors.Is(err, ErrorOutOfMemory) = false")
	}

	if f, tot, err := d.MemGetInfo(); f != 1000 || tot != 2000 || err != nil {
		t.Errorf("MemGetInfo = %d, %d, %v", f, tot, err)
	}

	a, err := d.MemAlloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(a)
	b, err := d.MemAlloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(b)

	src := []float32{1, -2.5, 3e9, 0, 7}
	if err := d.MemcpyHtoD(a, src); err != nil {
		t.Fatal(err)
	}
	if err := d.MemcpyDtoD(b, a, 20); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 5)
	if err := d.MemcpyDtoH(got, b); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, src) {
		t.Errorf("round trip = %v, want %v", got, src)
	}

	type rec struct {
		A uint32
		B uint16
		C [2]byte
	}
	recs := []rec{{1, 2, [2]byte{3, 4}}, {5, 6, [2]byte{7, 8}}}
	if err := d.MemcpyHtoDAsync(a, recs, 0); err != nil {
		t.Fatal(err)
	}
	back := make([]rec, 2)
	if err := d.MemcpyDtoHAsync(back, a, 0); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back, recs) {
		t.Errorf("struct round trip = %v", back)
	}

	if err := d.MemsetD32(a, 0xdeadbeef, 3); err != nil {
		t.Fatal(err)
	}
	if err := d.MemsetD32Async(a, 7, 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.MemcpyDtoDAsync(b, a, 16, 0); err != nil {
		t.Fatal(err)
	}
	words := make([]uint32, 4)
	if err := d.MemcpyDtoH(words, b); err != nil {
		t.Fatal(err)
	}
	// Word 3 still holds the second record's B and C: 6, then bytes 7, 8.
	if want := []uint32{7, 0xdeadbeef, 0xdeadbeef, 0x08070006}; !slices.Equal(words, want) {
		t.Errorf("after memset: %#x, want %#x", words, want)
	}

	if err := d.MemcpyHtoD(a, []byte{}); err != nil {
		t.Errorf("empty copy: %v", err)
	}
	err = d.MemcpyHtoD(a, []*int{nil})
	if err == nil || !strings.HasPrefix(err.Error(), "cuMemcpyHtoD: host buffer []*int") {
		t.Errorf("pointer slice: %v", err)
	}
	if err := d.MemcpyDtoH(3, a); err == nil {
		t.Error("MemcpyDtoH into an int succeeded")
	}
}

func TestFakeDriverStreamsEventsAndBoundedWaits(t *testing.T) {
	d := fakeDriver(t)
	s, err := d.StreamCreate(true) // the fake says "not ready" 3 times
	if err != nil {
		t.Fatal(err)
	}
	defer d.StreamDestroy(s)
	if done, err := d.StreamQuery(s); done || err != nil {
		t.Errorf("StreamQuery = %v, %v; want false, nil", done, err)
	}
	if err := d.StreamWait(s, time.Second); err != nil {
		t.Errorf("StreamWait: %v", err)
	}

	s2, _ := d.StreamCreate(true)
	defer d.StreamDestroy(s2)
	err = d.StreamWait(s2, 0)
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("StreamWait with no time = %v, want ErrTimeout", err)
	}
	if err := d.StreamSynchronize(s2); err != nil {
		t.Error(err)
	}

	start, _ := d.EventCreate()
	end, err := d.EventCreateWithFlags(EventBlockingSync)
	if err != nil {
		t.Fatal(err)
	}
	d.EventRecord(start, s)
	d.EventRecord(end, s)
	if err := d.EventWait(end, time.Second); err != nil {
		t.Error(err)
	}
	if err := d.StreamWaitEvent(s, end); err != nil {
		t.Error(err)
	}
	if dt, err := d.EventElapsedTime(start, end); dt != 1500*time.Microsecond || err != nil {
		t.Errorf("EventElapsedTime = %v, %v", dt, err)
	}
	d.EventDestroy(start)
	d.EventDestroy(end)
}

func TestFakeDriverModulesAndLaunches(t *testing.T) {
	d := fakeDriver(t)
	if _, err := d.ModuleLoadData(nil); !errors.Is(err, ErrorInvalidImage) {
		t.Errorf("empty image: %v", err)
	}
	if _, err := d.ModuleLoadData([]byte("ELF?")); !errors.Is(err, ErrorInvalidImage) {
		t.Errorf("bad image: %v", err)
	}
	m, err := d.ModuleLoadData([]byte("fake module"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.ModuleGetFunction(m, "nope")
	if got, want := err.Error(), `cuModuleGetFunction("nope"): CUDA_ERROR_NOT_FOUND: named symbol not found`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
	g, n, err := d.ModuleGetGlobal(m, "g")
	if err != nil || g == 0 || n != 32 {
		t.Errorf("ModuleGetGlobal = %#x, %d, %v", g, n, err)
	}

	fn, err := d.ModuleGetFunction(m, "kern")
	if err != nil {
		t.Fatal(err)
	}
	if d.FuncName(fn) != "kern" {
		t.Errorf("FuncName = %q", d.FuncName(fn))
	}
	if err := d.FuncSetAttribute(fn, FuncMaxDynamicSharedSizeBytes, 200<<10); err != nil {
		t.Fatal(err)
	}
	if v, _ := d.FuncGetAttribute(fn, FuncMaxDynamicSharedSizeBytes); v != 200<<10 {
		t.Errorf("FuncGetAttribute = %d", v)
	}
	if v, _ := d.FuncGetAttribute(fn, FuncNumRegs); v != 104 {
		t.Errorf("FuncGetAttribute(NUM_REGS) = %d", v)
	}
	if nb, err := d.OccupancyMaxActiveBlocksPerMultiprocessor(fn, 512, 1<<17); nb != 2 || err != nil {
		t.Errorf("Occupancy = %d, %v", nb, err)
	}
	if off, size, err := d.FuncParamInfo(fn, 0); off != 0 || size != 32 || err != nil {
		t.Errorf("FuncParamInfo = %d, %d, %v", off, size, err)
	}

	out, _ := d.MemAlloc(12 * 8)
	defer d.MemFree(out)
	arg := fakeKernArg(out)

	for _, coop := range []bool{true, false} {
		launch := d.LaunchKernel
		if coop {
			launch = d.LaunchCooperative
		}
		if err := launch(fn, [3]uint32{132, 2, 1}, [3]uint32{384, 1, 1}, 200<<10, 0, arg); err != nil {
			t.Fatal(err)
		}
		rec := make([]uint64, 12)
		if err := d.MemcpyDtoH(rec, out); err != nil {
			t.Fatal(err)
		}
		c := uint64(0)
		if coop {
			c = 1
		}
		want := []uint64{c, 132, 2, 1, 384, 1, 1, 200 << 10, 11, 22, 1 << 40, 44}
		if !slices.Equal(rec, want) {
			t.Errorf("coop=%v: kernel saw %v, want %v", coop, rec, want)
		}
	}

	err = d.LaunchCooperative(fn, [3]uint32{300, 1, 1}, [3]uint32{384, 1, 1}, 0, 0, arg)
	if !errors.Is(err, ErrorCooperativeLaunchTooLarge) || !strings.Contains(err.Error(), "cuLaunchCooperativeKernel(kern, grid [300 1 1], block [384 1 1]") {
		t.Errorf("too large: %v", err)
	}
	err = d.LaunchCooperative(fn, [3]uint32{1, 1, 1}, [3]uint32{32, 1, 1}, 0, 0, arg[:24])
	if err == nil || !strings.Contains(err.Error(), "kernel parameter is 32 bytes, argument is 24 bytes") {
		t.Errorf("short argument: %v", err)
	}
	two, _ := d.ModuleGetFunction(m, "two")
	if err := d.LaunchKernel(two, [3]uint32{1, 1, 1}, [3]uint32{1, 1, 1}, 0, 0, arg[:8]); err == nil {
		t.Error("launching a two-parameter kernel succeeded")
	}
	noargs, _ := d.ModuleGetFunction(m, "noargs")
	if err := d.LaunchKernel(noargs, [3]uint32{1, 1, 1}, [3]uint32{1, 1, 1}, 0, 0, nil); err != nil {
		t.Errorf("no-argument launch: %v", err)
	}
	if err := d.LaunchKernel(noargs, [3]uint32{1, 1, 1}, [3]uint32{1, 1, 1}, 0, 0, arg); err == nil {
		t.Error("argument to a kernel without parameters accepted")
	}
	if err := d.ModuleUnload(m); err != nil {
		t.Error(err)
	}
}

func TestFakeDriverGraphCapture(t *testing.T) {
	d := fakeDriver(t)
	s, _ := d.StreamCreate(false)
	defer d.StreamDestroy(s)
	if _, err := d.StreamEndCapture(s); err == nil {
		t.Error("EndCapture without BeginCapture succeeded")
	}
	if err := d.StreamBeginCapture(s, CaptureModeThreadLocal); err != nil {
		t.Fatal(err)
	}
	g, err := d.StreamEndCapture(s)
	if err != nil {
		t.Fatal(err)
	}
	e, err := d.GraphInstantiate(g)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.GraphLaunch(e, s); err != nil {
		t.Error(err)
	}
	if err := d.GraphExecDestroy(e); err != nil {
		t.Error(err)
	}
	if err := d.GraphDestroy(g); err != nil {
		t.Error(err)
	}
}

// Loaded binds a driver only once the process has loaded it, and never
// loads it itself.
func TestLoadedBindsOnlyALoadedDriver(t *testing.T) {
	fakeDriver(t) // builds the fake
	b, err := os.ReadFile(fakePath)
	if err != nil {
		t.Fatal(err)
	}
	// A copy of its own: other tests have loaded the fake already.
	path := filepath.Join(t.TempDir(), "libfakecuda-loaded.so")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if d, err := loaded([]string{path}); d != nil || err != nil {
		t.Fatalf("before loading: loaded = %v, %v; want nil, nil", d, err)
	}
	if d, err := loaded([]string{path}); d != nil || err != nil {
		t.Fatalf("loaded loaded it: %v, %v", d, err)
	}
	ld, err := LoadFrom(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := loaded([]string{"/nonexistent/libcuda.so.1", path})
	if d == nil || err != nil {
		t.Fatalf("after LoadFrom: loaded = %v, %v", d, err)
	}
	if d.Path() != path {
		t.Errorf("Path() = %q, want %q", d.Path(), path)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx, err := ld.PrimaryCtxRetain(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ld.CtxSetCurrent(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := d.CtxGetCurrent(); c != ctx || err != nil {
		t.Errorf("CtxGetCurrent through Loaded's driver = %#x, %v; want %#x (the same library)", c, err, ctx)
	}
	if err := d.CtxSetCurrent(0); err != nil {
		t.Fatal(err)
	}
	if _, err := Loaded(); err != nil {
		t.Errorf("Loaded() = %v", err)
	}
}
