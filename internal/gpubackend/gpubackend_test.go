package gpubackend

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
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
	const room = 1 << 30 // partial-sum rows: no limit from the buffer here (TestGateSplitRoom)
	if ks := gateSplit(8192, 32, 2048, 264, room, false); ks != 2 {
		t.Errorf("T=8192 E=32: 128 tiles for a 264-block grid: split %d, want 2 (one wave)", ks)
	}
	if ks := gateSplit(65536, 64, 2048, 264, room, false); ks != 1 {
		t.Errorf("1024 tiles: split %d, want 1", ks)
	}
	if ks := gateSplit(10, 8, 64, 264, room, false); ks != 4 || 64%(ks*kernels.TileK) != 0 {
		t.Errorf("H=64: split %d, want 4 (H/split = 16 = TileK)", ks)
	}
	if ks := gateSplit(10, 8, 96*2, 264, room, false); 192%(ks*kernels.TileK) != 0 {
		t.Errorf("H=192: split %d leaves H/split not a multiple of TileK", ks)
	}
	if ks := gateSplit(0, 8, 2048, 264, room, false); ks < 1 || ks > kernels.GateMaxSplit {
		t.Errorf("T=0: split %d", ks)
	}
	// Tensor-core gate: 128-token x 32-expert tiles, K steps of 64.
	if ks := gateSplit(8192, 32, 2048, 264, room, true); ks != 4 {
		t.Errorf("tc T=8192 E=32: 64 tiles: split %d, want 4", ks)
	}
	if ks := gateSplit(8192, 32, 2048, 132, room, true); ks != 2 {
		t.Errorf("tc T=8192 E=32 on 132 blocks (the WS grid): split %d, want 2 (one wave)", ks)
	}
	if ks := gateSplit(4096, 32, 2048, 264, room, true); ks != 8 {
		t.Errorf("tc T=4096 E=32: 32 tiles: split %d, want 8", ks)
	}
	if ks := gateSplit(128, 32, 2048, 264, room, true); ks != kernels.GateMaxSplit {
		t.Errorf("tc T=128 E=32: one tile: split %d, want %d", ks, kernels.GateMaxSplit)
	}
	if ks := gateSplit(65536, 32, 2048, 264, room, true); ks != 1 {
		t.Errorf("tc 512 tiles: split %d, want 1", ks)
	}
	for _, h := range []int{64, 128, 192, 320, 2048} {
		if ks := gateSplit(10, 8, h, 264, room, true); h%(ks*64) != 0 {
			t.Errorf("tc H=%d: split %d leaves H/split not a multiple of 64", h, ks)
		}
	}
}

// The gate's split stays within the layout's partial-sum rows, and the
// layouts of the benchmarks leave the splits measured in the tenth session.
func TestGateSplitRoom(t *testing.T) {
	for _, maxT := range []int{1, 128, 2048, 4096, 16384, 65536} {
		c := config.Default()
		c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 1, maxT, 2048, 2048, 32, 2
		lay, err := symheap.Plan(c, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []bool{false, true} {
			for _, grid := range []int{132, 264, 1024} {
				for tok := 1; tok <= maxT; tok = tok*2 + 1 {
					if ks := gateSplit(tok, 32, 2048, grid, lay.GatePartRows, tc); ks*tok > lay.GatePartRows {
						t.Errorf("max-tokens %d, T=%d, grid %d, tc %v: split %d x T > %d partial-sum rows", maxT, tok, grid, tc, ks, lay.GatePartRows)
					}
				}
			}
		}
	}
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 1, 16384, 2048, 2048, 32, 2
	lay, err := symheap.Plan(c, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ tokens, grid, want int }{
		{128, 264, 16}, {1024, 264, 16}, {4096, 264, 8}, {8192, 264, 4}, {8192, 132, 2}, {16384, 264, 2},
	} {
		if ks := gateSplit(w.tokens, 32, 2048, w.grid, lay.GatePartRows, true); ks != w.want {
			t.Errorf("tc T=%d grid %d, max-tokens 16384: split %d, want %d", w.tokens, w.grid, ks, w.want)
		}
	}
	// A layout for one T: that T's split is not cut by the buffer.
	for _, w := range []struct{ tokens, want int }{{128, 16}, {2048, 16}, {4096, 8}} {
		c.MaxTokens = w.tokens
		lay, err := symheap.Plan(c, 4)
		if err != nil {
			t.Fatal(err)
		}
		if ks := gateSplit(w.tokens, 32, 2048, 264, lay.GatePartRows, true); ks != w.want {
			t.Errorf("tc T=max-tokens=%d: split %d, want %d", w.tokens, ks, w.want)
		}
	}
}

func TestGatePiecesBF16(t *testing.T) {
	const h, e = 64, 40 // two groups, the second partial
	gate := make([]float32, h*e)
	for i := range gate {
		gate[i] = float32(math.Sin(float64(i)*0.37)) * 0.1 * float32(1+i%7)
	}
	out := gatePiecesBF16(gate, h, e)
	if len(out) != 2*kernels.GateTCRows*h {
		t.Fatalf("%d values, want %d", len(out), 2*kernels.GateTCRows*h)
	}
	f := func(b uint16) float64 { return float64(math.Float32frombits(uint32(b) << 16)) }
	for ex := 0; ex < 64; ex++ {
		g, i := ex/32, ex%32
		for k := 0; k < h; k++ {
			sum := 0.0
			for piece := 0; piece < 3; piece++ {
				sum += f(out[(g*kernels.GateTCRows+piece*32+i)*h+k])
			}
			if ex >= e {
				if sum != 0 {
					t.Fatalf("expert %d past E: piece sum %g, want 0", ex, sum)
				}
				continue
			}
			w := float64(gate[k*e+ex])
			if math.Abs(sum-w) > math.Abs(w)*math.Pow(2, -23) {
				t.Fatalf("expert %d k %d: pieces sum to %.10g, weight %.10g", ex, k, sum, w)
			}
		}
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
	errs := l.Run(func(c transport.Comm) error {
		var mine error
		if c.Rank() == 2 {
			mine = errors.New("not a Hopper GPU")
		}
		return agree(c, "open", mine)
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "rank 2: not a Hopper GPU") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	errs = l.Run(func(c transport.Comm) error { return agree(c, "open", nil) })
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

func TestBF16AndTF32Rounding(t *testing.T) {
	for _, x := range []float32{0, 1, -1, 1.00390625, 3.1415927, -2.7182817, 1e-30, 6.5e4, float32(math.Inf(1))} {
		want := datagen.RoundBF16(x)
		got := math.Float32frombits(uint32(bf16Bits(x)) << 16)
		if got != want {
			t.Errorf("bf16Bits(%g) widens to %g, datagen.RoundBF16 says %g", x, got, want)
		}
	}
	if n := bf16Bits(float32(math.NaN())); math.Float32frombits(uint32(n)<<16) == math.Float32frombits(uint32(n)<<16) {
		t.Error("bf16Bits(NaN) is not a NaN")
	}
	// tf32: 10 mantissa bits, nearest, ties away from zero (cvt.rna).
	cases := map[float32]float32{
		1:                                1,
		1 + 1.0/1024:                     1 + 1.0/1024,
		1 + 1.0/2048:                     1 + 1.0/1024, // tie: away from zero
		-(1 + 1.0/2048):                  -(1 + 1.0/1024),
		1 + 1.0/4096:                     1,
		float32(math.Inf(-1)):            float32(math.Inf(-1)),
		math.Float32frombits(0x3f800fff): 1,
	}
	for in, want := range cases {
		if got := roundTF32(in); got != want {
			t.Errorf("roundTF32(%g) = %g, want %g", in, got, want)
		}
		if b := math.Float32bits(roundTF32(in)); b&0x1fff != 0 {
			t.Errorf("roundTF32(%g) has low bits %#x", in, b&0x1fff)
		}
	}
	src := make([]float32, 100001)
	for i := range src {
		src[i] = datagen.Uniform(3, 9, uint64(i))
	}
	dst := make([]uint16, len(src))
	toBF16(dst, src)
	for i := range src {
		if dst[i] != bf16Bits(src[i]) {
			t.Fatalf("toBF16[%d] = %#x, want %#x", i, dst[i], bf16Bits(src[i]))
		}
	}
}

func TestTranspose(t *testing.T) {
	for _, sh := range [][2]int{{1, 1}, {64, 192}, {192, 64}, {33, 70}, {2048, 96}} {
		rows, cols := sh[0], sh[1]
		src := make([]float32, rows*cols)
		for i := range src {
			src[i] = datagen.Uniform(5, 1, uint64(i))
		}
		tf := transposeTF32(src, rows, cols)
		bf := transposeBF16(src, rows, cols)
		for r := 0; r < rows; r++ {
			for c := 0; c < cols; c++ {
				if tf[c*rows+r] != roundTF32(src[r*cols+c]) {
					t.Fatalf("%dx%d tf32: [%d][%d]", rows, cols, c, r)
				}
				if bf[c*rows+r] != bf16Bits(src[r*cols+c]) {
					t.Fatalf("%dx%d bf16: [%d][%d]", rows, cols, c, r)
				}
			}
		}
	}
}

func TestParamsDType(t *testing.T) {
	for d, want := range map[config.DType]int32{config.FP32: kernels.DTypeFP32, config.TF32: kernels.DTypeTF32, config.BF16: kernels.DTypeBF16} {
		c := config.Default()
		c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.DType = 10, 64, 128, 192, 8, 2, d
		lay, err := symheap.Plan(c, 2)
		if err != nil {
			t.Fatal(err)
		}
		b := &Backend{rank: 0, world: 2, layout: lay, sym: 0x10000, local: 0x900000,
			opt: Options{Watchdog: time.Second, DebugWithholdPeer: -1}, info: KernelInfo{Grid: 264}}
		if p := b.params(c); p.DType != want {
			t.Errorf("%s: params dtype %d, want %d", d, p.DType, want)
		}
		if tensorCore(d) != (d != config.FP32) || uint64(storageBytes(d)) != lay.ElemSize {
			t.Errorf("%s: tensorCore %v, storage %d, plan elem %d", d, tensorCore(d), storageBytes(d), lay.ElemSize)
		}
	}
}

// The checks before a device forward's device work are refusals; a bf16
// layer passes them (its tokens are converted on the device).
func TestDeviceForwardChecksAreRefusals(t *testing.T) {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts = 4, 32, 64, 64, 8
	if err := checkDeviceForward(0, c, 2, 0x1000, 0x2000); err != nil {
		t.Fatalf("fp32: %v", err)
	}
	bf := c
	bf.DType = config.BF16
	if err := checkDeviceForward(0, bf, 2, 0x1000, 0x2000); err != nil {
		t.Errorf("bf16: %v", err)
	}
	err := checkDeviceForward(3, c, 2, 0, 0x2000)
	if err == nil || errors.Is(err, backend.ErrNotSupported) || !backend.IsRefusal(err) || !strings.Contains(err.Error(), "layer 3: 4 tokens with a null device pointer") {
		t.Errorf("null x: %v", err)
	}
	bad := c
	bad.Experts = 7
	if err := checkDeviceForward(0, bad, 2, 0x1000, 0x2000); err == nil || !backend.IsRefusal(err) {
		t.Errorf("7 experts on 2 ranks: %v", err)
	}
	if backend.IsRefusal(errors.New("kernel launch failed")) || backend.Refuse(nil) != nil {
		t.Error("a plain error is a refusal, or Refuse(nil) is not nil")
	}
}
