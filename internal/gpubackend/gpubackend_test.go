package gpubackend

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/symheap"
)

func TestParseSize(t *testing.T) {
	cases := map[string]uint64{"1073741824": 1 << 30, "20m": 20 << 20, "2G": 2 << 30, "0.5k": 512, "3.1M": 3250586}
	for in, want := range cases {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("parseSize(lots): no error")
	}
}

func TestSymmetricSizeFromEnv(t *testing.T) {
	t.Setenv("NVSHMEM_SYMMETRIC_SIZE", "4g")
	if n, _ := symmetricSize(); n != 4<<30 {
		t.Errorf("4g: %d", n)
	}
}

func TestGateSplit(t *testing.T) {
	if ks := gateSplit(8192, 32, 2048, 264); ks != 4 {
		t.Errorf("T=8192 E=32: 128 tiles for a 264-block grid: split %d, want 4", ks)
	}
	if ks := gateSplit(65536, 64, 2048, 264); ks != 1 {
		t.Errorf("1024 tiles: split %d, want 1", ks)
	}
	if ks := gateSplit(10, 8, 64, 264); ks != 4 || 64%(ks*kernels.TileK) != 0 {
		t.Errorf("H=64: split %d, want 4 (H/split = 16 = TileK)", ks)
	}
	if ks := gateSplit(10, 8, 96*2, 264); 192%(ks*kernels.TileK) != 0 {
		t.Errorf("H=192: split %d leaves H/split not a multiple of TileK", ks)
	}
	if ks := gateSplit(0, 8, 2048, 264); ks < 1 || ks > kernels.GateMaxSplit {
		t.Errorf("T=0: split %d", ks)
	}
}

func TestStatusError(t *testing.T) {
	st := kernels.Status{Code: kernels.StatusWatchdog, Rank: 1, Kind: kernels.WaitDispatch, Peer: 3, Seq: 5, ElapsedNs: uint64(2 * time.Second)}
	msg := StatusError(st, 5).Error()
	if !strings.HasPrefix(msg, "watchdog: rank 1 waited 2.0s for the dispatch signal from rank 3 (launch 5)") {
		t.Errorf("message %q", msg)
	}
	st = kernels.Status{Code: kernels.StatusWatchdog, Rank: 0, Kind: kernels.WaitBarrier, Peer: -1, ElapsedNs: uint64(time.Second)}
	if msg := StatusError(st, 7).Error(); !strings.Contains(msg, "grid barrier (launch 7)") {
		t.Errorf("message %q", msg)
	}
}

func TestAgree(t *testing.T) {
	const n = 3
	l := transport.NewLocal(n, 5*time.Second)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine error
			if r == 2 {
				mine = errors.New("not a Hopper GPU")
			}
			errs[r] = agree(l.Rank(r), "open", mine)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 2: not a Hopper GPU") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = agree(l.Rank(r), "open", nil) }()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("all fine, rank %d: %v", r, err)
		}
	}
}

func TestParamsFromLayout(t *testing.T) {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 37, 64, 128, 192, 8, 2
	c.CapacityFactor = 0.5
	lay, err := symheap.Plan(c, 2)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{rank: 1, world: 2, layout: lay, sym: 0x10000, local: 0x900000,
		opt: Options{Watchdog: 2 * time.Second, DebugWithholdPeer: -1}, info: KernelInfo{Grid: 264}}
	p := b.params(c)
	if p.Tokens != 37 || p.MaxTokens != 64 || p.Rank != 1 || p.World != 2 || p.ExpertsPerRank != 4 {
		t.Errorf("shapes: %+v", p)
	}
	if p.Capacity != 5 {
		t.Errorf("capacity %d, want ceil(0.5*37*2/8) = 5", p.Capacity)
	}
	if p.DebugWithholdPeer != -1 || p.WatchdogNs != uint64(2*time.Second) || p.Renormalize != 1 {
		t.Errorf("options: %+v", p)
	}
	if p.HeapBase != 0x10000 || p.OffStatus != lay.Status.Off || p.X != 0x900000+lay.X.Off || p.Wu != 0 {
		t.Errorf("addresses: %+v", p)
	}
	if p.RowsPerSource != int32(lay.RowsPerSource) || p.MaxRowTiles != int32(lay.MaxRowTiles) {
		t.Errorf("plan fields: %+v", p)
	}
}
