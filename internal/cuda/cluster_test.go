package cuda

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeClusterC adds the launch-attribute functions to the fake driver
// (testdata/fakecuda.c, which lacks them as a driver older than CUDA 11.8
// does). Attribute ids are cuda.h's numbers, not cudadl.h's names.
const fakeClusterC = `#include "testdata/fakecuda.c"

static int cluster_of(const CUlaunchConfig *c, int *coop, unsigned int dim[3]) {
	*coop = 0;
	dim[0] = dim[1] = dim[2] = 0;
	for (unsigned int i = 0; i < c->numAttrs; i++) {
		switch (c->attrs[i].id) {
		case 2: *coop = c->attrs[i].value.cooperative; break;
		case 4:
			dim[0] = c->attrs[i].value.clusterDim.x;
			dim[1] = c->attrs[i].value.clusterDim.y;
			dim[2] = c->attrs[i].value.clusterDim.z;
			break;
		default: return 0;
		}
	}
	return dim[0] > 0 && dim[1] > 0 && dim[2] > 0 && c->gridDimX % dim[0] == 0 &&
	       c->gridDimY % dim[1] == 0 && c->gridDimZ % dim[2] == 0;
}

// kern's record, then {cluster xyz, stream} after it.
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
	int coop;
	unsigned int dim[3];
	if (extra != NULL || !cluster_of(c, &coop, dim)) return FAKE_INVALID_VALUE;
	CUresult r = run(coop, f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY,
	                 c->blockDimZ, c->sharedMemBytes, params);
	if (r != 0 || f != (CUfunction)&fn_kern) return r;
	unsigned long long out;
	memcpy(&out, params[0], 8);
	unsigned long long *o = (unsigned long long *)(uintptr_t)out;
	o[12] = dim[0], o[13] = dim[1], o[14] = dim[2];
	o[15] = (uintptr_t)c->hStream;
	return 0;
}

// Half the cooperative limit in pairs, less a cluster per 64 KiB of shared
// memory and per 128 threads of a block: every field counts.
CUresult cuOccupancyMaxActiveClusters(int *n, CUfunction f, const CUlaunchConfig *c) {
	int coop;
	unsigned int dim[3];
	(void)f;
	if (c->hStream != NULL || !cluster_of(c, &coop, dim) || coop) return FAKE_INVALID_VALUE;
	unsigned int size = dim[0] * dim[1] * dim[2];
	*n = (int)(264 / size) - (int)(c->sharedMemBytes >> 16) -
	     (int)(c->blockDimX * c->blockDimY * c->blockDimZ / 128);
	return 0;
}
`

func fakeClusterDriver(t *testing.T) *Driver {
	t.Helper()
	gcc := needTool(t, "gcc")
	dir := t.TempDir()
	src := filepath.Join(dir, "fakecluster.c")
	if err := os.WriteFile(src, []byte(fakeClusterC), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "libfakecluster.so")
	if err := buildFakeLib(gcc, src, lib); err != nil {
		t.Fatalf("building the fake driver with cluster launches: %v", err)
	}
	return loadFake(t, lib)
}

func TestFakeDriverClusterLaunch(t *testing.T) {
	d := fakeClusterDriver(t)
	for _, want := range []string{"cuLaunchKernelEx=cuLaunchKernelEx", "cuOccupancyMaxActiveClusters=cuOccupancyMaxActiveClusters"} {
		if !slices.Contains(d.Symbols(), want) {
			t.Errorf("Symbols() lacks %s", want)
		}
	}
	m, err := d.ModuleLoadData([]byte("fake module"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.ModuleUnload(m)
	fn, err := d.ModuleGetFunction(m, "kern")
	if err != nil {
		t.Fatal(err)
	}

	grid, block := [3]uint32{132, 1, 1}, [3]uint32{384, 1, 1}
	if n, err := d.OccupancyMaxActiveClusters(fn, grid, block, 2, 200<<10); n != 132-3-3 || err != nil {
		t.Errorf("OccupancyMaxActiveClusters = %d, %v; want 126", n, err)
	}
	_, err = d.OccupancyMaxActiveClusters(fn, [3]uint32{131, 1, 1}, block, 2, 0)
	if !errors.Is(err, ErrorInvalidValue) || !strings.Contains(err.Error(), "cuOccupancyMaxActiveClusters(kern, grid [131 1 1], block [384 1 1], cluster [2 1 1], 0 bytes shared)") {
		t.Errorf("odd grid: %v", err)
	}

	s, err := d.StreamCreate(true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.StreamDestroy(s)
	out, _ := d.MemAlloc(16 * 8)
	defer d.MemFree(out)
	arg := fakeKernArg(out)
	if err := d.LaunchCooperativeCluster(fn, grid, block, 2, 200<<10, s, arg); err != nil {
		t.Fatal(err)
	}
	rec := make([]uint64, 16)
	if err := d.MemcpyDtoH(rec, out); err != nil {
		t.Fatal(err)
	}
	want := []uint64{1, 132, 1, 1, 384, 1, 1, 200 << 10, 11, 22, 1 << 40, 44, 2, 1, 1, uint64(s)}
	if !slices.Equal(rec, want) {
		t.Errorf("kernel saw %v, want %v", rec, want)
	}

	err = d.LaunchCooperativeCluster(fn, [3]uint32{300, 1, 1}, block, 2, 0, 0, arg)
	if !errors.Is(err, ErrorCooperativeLaunchTooLarge) ||
		!strings.Contains(err.Error(), "cuLaunchKernelEx(kern, cooperative, grid [300 1 1], block [384 1 1], cluster [2 1 1], 0 bytes shared, 32-byte argument)") {
		t.Errorf("too large: %v", err)
	}
	if err := d.LaunchCooperativeCluster(fn, [3]uint32{3, 1, 1}, block, 2, 0, 0, arg); !errors.Is(err, ErrorInvalidValue) {
		t.Errorf("grid not a multiple of the cluster: %v", err)
	}
	err = d.LaunchCooperativeCluster(fn, grid, block, 2, 0, 0, arg[:24])
	if err == nil || !strings.Contains(err.Error(), "cuLaunchKernelEx(kern): kernel parameter is 32 bytes, argument is 24 bytes") {
		t.Errorf("short argument: %v", err)
	}
}

// A driver without cuLaunchKernelEx (before CUDA 11.8) still loads; only
// the cluster calls fail, saying so.
func TestFakeDriverWithoutClusterLaunch(t *testing.T) {
	d := fakeDriver(t)
	if !slices.Contains(d.Symbols(), "cuLaunchKernelEx=(missing)") {
		t.Errorf("Symbols() = %v", d.Symbols())
	}
	err := d.LaunchCooperativeCluster(0, [3]uint32{2, 1, 1}, [3]uint32{32, 1, 1}, 2, 0, 0, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "cuLaunchKernelEx: not in ") {
		t.Errorf("LaunchCooperativeCluster = %v", err)
	}
	if _, err := d.OccupancyMaxActiveClusters(0, [3]uint32{2, 1, 1}, [3]uint32{32, 1, 1}, 2, 0); err == nil ||
		!strings.HasPrefix(err.Error(), "cuOccupancyMaxActiveClusters: not in ") {
		t.Errorf("OccupancyMaxActiveClusters = %v", err)
	}
}

// The smoke kernel (no cluster code of its own) launched cooperatively in
// pairs, directly and captured in a graph; sm_90 and newer.
func TestGPULaunchCooperativeCluster(t *testing.T) {
	d, dev := gpu(t)
	if maj, _, _ := d.ComputeCapability(dev); maj < 9 {
		t.Skipf("thread-block clusters need sm_90; device is sm_%d", maj)
	}
	fn := smokeKernel(t, d)
	perSM, err := d.OccupancyMaxActiveBlocksPerMultiprocessor(fn, 256, 0)
	if err != nil {
		t.Fatal(err)
	}
	sms, _ := d.Attribute(dev, AttrMultiprocessorCount)
	block := [3]uint32{256, 1, 1}
	grid := [3]uint32{uint32(sms*perSM) &^ 1, 1, 1}
	clusters, err := d.OccupancyMaxActiveClusters(fn, grid, block, 2, 0)
	if err != nil || clusters < 1 {
		t.Fatalf("OccupancyMaxActiveClusters = %d, %v", clusters, err)
	}
	t.Logf("%d blocks of 256 resident, %d clusters of 2", grid[0], clusters)
	grid[0] = min(grid[0], uint32(2*clusters))

	arg, check := smokeBuffers(t, d, grid[0]*256)

	binary.LittleEndian.PutUint32(arg[12:], 5)
	if err := d.LaunchCooperativeCluster(fn, grid, block, 2, 0, 0, arg); err != nil {
		t.Fatal(err)
	}
	if err := d.CtxSynchronize(); err != nil {
		t.Fatal(err)
	}
	check("direct", 5)

	binary.LittleEndian.PutUint32(arg[12:], 8)
	s, _ := d.StreamCreate(true)
	defer d.StreamDestroy(s)
	if err := d.StreamBeginCapture(s, CaptureModeThreadLocal); err != nil {
		t.Fatal(err)
	}
	replayCapture(t, d, s, d.LaunchCooperativeCluster(fn, grid, block, 2, 0, s, arg))
	check("graph", 8)

	if err := d.LaunchCooperativeCluster(fn, [3]uint32{3, 1, 1}, block, 2, 0, 0, arg); err == nil {
		t.Error("a grid of 3 blocks launched in clusters of 2")
	} else {
		t.Logf("odd grid: %v", err)
	}
}
