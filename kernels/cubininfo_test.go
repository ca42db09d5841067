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
	if info.BlockThreads != Threads {
		t.Errorf("default build: moerun_block_threads = %d, want %d", info.BlockThreads, Threads)
	}
	t.Logf("cubin: ABI %d, params %d bytes, NVSHMEM device %s", info.ABIVersion, info.ParamsSize, info.NVSHMEMVersion())
}

// TestReadCubinInfoWS reads the MOE_WS build (make kernels-ws), when there
// is one: its blocks carry the producer warpgroup, and its phase buffer the
// four 48 KB stages.
func TestReadCubinInfoWS(t *testing.T) {
	image, err := os.ReadFile("../build/ws/moerun.cubin")
	if err != nil {
		t.Skip("no MOE_WS cubin built here (make kernels-ws)")
	}
	info, err := ReadCubinInfo(image)
	if err != nil {
		t.Fatal(err)
	}
	if err := info.Check(); err != nil {
		t.Fatal(err)
	}
	if info.BlockThreads != Threads+WSProducerThreads {
		t.Errorf("MOE_WS build: moerun_block_threads = %d, want %d", info.BlockThreads, Threads+WSProducerThreads)
	}
	if min := WSStages * (TCTileM + WSTileN) * TCKBytes; info.PhaseBytes < min {
		t.Errorf("MOE_WS build: moerun_phase_bytes = %d, below its %d bytes of stages", info.PhaseBytes, min)
	}
}

// TestCubinInfoCheckBlockThreads: a block size that is neither build's is refused.
func TestCubinInfoCheckBlockThreads(t *testing.T) {
	good := CubinInfo{ABIVersion: ABIVersion, ParamsSize: int(ParamsSize), PhaseBytes: PhaseBytes, HasKernel: true}
	for _, n := range []int{Threads, Threads + WSProducerThreads} {
		good.BlockThreads = n
		if err := good.Check(); err != nil {
			t.Errorf("block threads %d: %v", n, err)
		}
	}
	good.BlockThreads = 512
	if err := good.Check(); err == nil {
		t.Error("block threads 512 accepted")
	}
}

func TestReadCubinInfoRejectsGarbage(t *testing.T) {
	if _, err := ReadCubinInfo([]byte("not an elf")); err == nil {
		t.Error("garbage accepted")
	}
}
