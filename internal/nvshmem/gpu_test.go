package nvshmem

import (
	"os"
	"runtime"
	"testing"

	"github.com/moerun/moerun/internal/cuda"
)

// TestGPUSinglePE initialises NVSHMEM as the only PE on GPU 0, allocates
// symmetric memory, writes and reads it, and finalizes.
func TestGPUSinglePE(t *testing.T) {
	d, err := cuda.Load()
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	if n, err := d.DeviceCount(); err != nil || n == 0 {
		t.Skipf("no GPU: %d devices, %v", n, err)
	}
	path, err := Find()
	if err != nil {
		t.Skipf("no NVSHMEM: %v", err)
	}
	if _, ok := os.LookupEnv("NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME"); !ok {
		t.Setenv("NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME", "lo")
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dev, err := d.DeviceGet(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := d.PrimaryCtxRetain(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer d.PrimaryCtxRelease(dev)
	if err := d.CtxSetCurrent(ctx); err != nil {
		t.Fatal(err)
	}

	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (%s), defaults set: %v", path, l.Name(), l.Defaults())
	id, err := l.GetUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.InitWithUniqueID(id, 0, 1); err != nil {
		t.Fatal(err)
	}
	defer l.HostlibFinalize()
	if st := l.InitStatus(); st < StatusIsInitialized {
		t.Errorf("InitStatus = %d", st)
	}
	if l.MyPE() != 0 || l.NPEs() != 1 {
		t.Errorf("PE %d of %d, want 0 of 1", l.MyPE(), l.NPEs())
	}

	p, err := l.Calloc(1024, 4)
	if err != nil {
		t.Fatal(err)
	}
	if q := l.Ptr(p, 0); q != p {
		t.Errorf("Ptr(p, self) = %#x, want %#x", q, p)
	}
	if err := d.MemcpyHtoD(p, []uint32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	l.BarrierAll()
	got := make([]uint32, 4)
	if err := d.MemcpyDtoH(got, p); err != nil {
		t.Fatal(err)
	}
	if got[0] != 1 || got[2] != 3 || got[3] != 0 {
		t.Errorf("symmetric memory holds %v", got)
	}
	l.Free(p)
}
