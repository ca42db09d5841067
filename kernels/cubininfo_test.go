package kernels

import (
	"os"
	"testing"
)

// TestReadCubinInfo reads the cubin that `make kernels` built, when there is one.
func TestReadCubinInfo(t *testing.T) {
	var image []byte
	for _, p := range []string{"../build/moerun.cubin", CubinName} {
		if b, err := os.ReadFile(p); err == nil {
			image = b
			break
		}
	}
	if image == nil {
		t.Skip("no cubin built here (make kernels)")
	}
	info, err := ReadCubinInfo(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := info.Check(); err != nil {
		t.Fatal(err)
	}
	if info.NVSHMEM[0] != 3 {
		t.Errorf("NVSHMEM device library %s, want 3.x", info.NVSHMEMVersion())
	}
	t.Logf("cubin: ABI %d, params %d bytes, NVSHMEM device %s", info.ABIVersion, info.ParamsSize, info.NVSHMEMVersion())
}

func TestReadCubinInfoRejectsGarbage(t *testing.T) {
	if _, err := ReadCubinInfo([]byte("not an elf")); err == nil {
		t.Error("garbage accepted")
	}
}
