package gpubackend

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/kernels"
)

// GemmCase is one measurement of the GEMM phase alone: the forward's GEMM0
// over Experts local experts (bf16 in, fp32 accumulate, bf16 out, relu),
// C[e*Rows + r][c] = relu(sum_k A[e*Rows + r][k] B[e*N + c][k]), without
// the forward's routing, scheduling and signals (the debug entries
// moerun_gemm_bench_tc and moerun_gemm_bench_ws, params.h MoeGemmBench).
type GemmCase struct {
	Tile    GemmTile
	Experts int // >= 1
	Rows    int // rows per expert, a multiple of 128
	N       int // output columns, a multiple of 256
	K       int // a multiple of 64
	// Sources picks the task order: <= 1 expert-major (concurrent tasks
	// share one expert's operands); S >= 2 the order the forward meets the
	// rows of S sources arriving in turn (Rows / 128 a multiple of S).
	Sources int
	Seed    uint64
	Warmup  int // untimed launches after the checked one
	Iters   int // timed launches (device events around each), >= 1
	// CheckEvery compares every CheckEvery-th row of C (and the last) with
	// float64, all columns; 1 checks every row. Every element of C is
	// checked to have been written (C is NaN-poisoned first).
	CheckEvery int
}

// GemmTile names the tile a GemmCase runs.
type GemmTile int

const (
	// GemmTC is the forward's own tile: 128 x 128, MOE_THREADS threads, the
	// forward's blocks per SM, thread 0 issuing the TMA loads.
	GemmTC GemmTile = iota
	// GemmWS is the warp-specialised tile: one 384-thread block per SM, a
	// producer warpgroup, two consumer warpgroups, 128 x 256.
	GemmWS
	// GemmWide is GemmWS's tile and stages at one 256-thread block per SM
	// without the producer warpgroup (thread 0 issues the loads).
	GemmWide
)

func (t GemmTile) String() string {
	switch t {
	case GemmTC:
		return "tc 128x128"
	case GemmWS:
		return "ws 128x256"
	case GemmWide:
		return "wide 128x256"
	}
	return fmt.Sprintf("GemmTile(%d)", int(t))
}

func (c GemmCase) String() string {
	order := "expert-major"
	if c.Sources > 1 {
		order = fmt.Sprintf("%d sources", c.Sources)
	}
	return fmt.Sprintf("gemm %s E=%d rows=%d N=%d K=%d %s", c.Tile, c.Experts, c.Rows, c.N, c.K, order)
}

// Flop is the multiply-adds of one launch, counted twice.
func (c GemmCase) Flop() float64 {
	return 2 * float64(c.Experts) * float64(c.Rows) * float64(c.N) * float64(c.K)
}

// GemmReport is what GemmBench measured.
type GemmReport struct {
	Grid, BlocksPerSM int
	Times             []time.Duration // every timed launch, in order
	Median            time.Duration
	TFLOPs            float64 // Flop / Median
	Checked           int     // elements compared with float64
	MaxErr            float64 // largest |got - want| / (|want| + sum_k |a_k b_k|) over the checked elements
}

// gemmAccTol: an output element is a bf16 rounding of an fp32 sum of exact
// products; allowed |got - want| <= 2^-8 |want| + gemmAccTol * sum_k |a_k b_k|.
const gemmAccTol = 1e-4

// GemmBench runs c on this rank's GPU: one checked launch on fresh random
// operands with C poisoned, c.Warmup more, then c.Iters timed ones. It
// returns an error naming the first wrong element. Not collective; the
// backend must be open.
func (b *Backend) GemmBench(c GemmCase) (GemmReport, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var rep GemmReport
	if err := b.usable(); err != nil {
		return rep, err
	}
	var threads, smem int
	var name string
	switch c.Tile {
	case GemmTC:
		threads, name, smem = kernels.Threads, kernels.GemmBenchTCName, b.info.DynamicSmem
	case GemmWS:
		threads, name, smem = kernels.WSThreads, kernels.GemmBenchWSName, kernels.WSSmemBytes
	case GemmWide:
		threads, name, smem = kernels.Threads, kernels.GemmBenchWideName, kernels.WSSmemBytes
	default:
		return rep, fmt.Errorf("%s: no such tile", c)
	}
	if c.Experts < 1 || c.Rows < kernels.TCTileM || c.Rows%kernels.TCTileM != 0 || c.N < kernels.WSTileN ||
		c.N%kernels.WSTileN != 0 || c.K < 64 || c.K%64 != 0 || c.Iters < 1 || c.Warmup < 0 || c.CheckEvery < 1 ||
		c.Sources < 0 || (c.Sources > 1 && (c.Rows/kernels.TCTileM)%c.Sources != 0) {
		return rep, fmt.Errorf("%s: shape or counts out of range (rows a multiple of %d and of 128 x sources, N of %d, K of 64; iters >= 1)",
			c, kernels.TCTileM, kernels.WSTileN)
	}
	d := b.drv
	if err := d.CtxSetCurrent(b.ctx); err != nil {
		return rep, err
	}
	fn, err := d.ModuleGetFunction(b.mod, name)
	if err != nil {
		return rep, fmt.Errorf("%s: the cubin has no %s (older than the GEMM bench): %w", c, name, err)
	}
	if err := d.FuncSetAttribute(fn, cuda.FuncMaxDynamicSharedSizeBytes, smem); err != nil {
		return rep, fmt.Errorf("%s: allow %d bytes of dynamic shared memory: %w", c, smem, err)
	}
	if rep.BlocksPerSM, err = d.OccupancyMaxActiveBlocksPerMultiprocessor(fn, threads, uint64(smem)); err != nil {
		return rep, err
	}
	if rep.BlocksPerSM < 1 {
		return rep, fmt.Errorf("%s: no block of %d threads and %d bytes of shared memory fits an SM", c, threads, smem)
	}
	rep.Grid = rep.BlocksPerSM * b.info.SMs

	// Operands as the forward stores them: rows of A and of W^T, K contiguous.
	rowsA, rowsB := c.Experts*c.Rows, c.Experts*c.N
	gen := func(id uint64, n int) ([]float32, []uint16) {
		v := make([]float32, n)
		for i := range v {
			v[i] = datagen.RoundBF16(datagen.Uniform(c.Seed, datagen.Tensor(id), uint64(i)))
		}
		u := make([]uint16, n)
		toBF16(u, v)
		return v, u
	}
	a, ah := gen(0x6e33a0, rowsA*c.K)
	bw, bh := gen(0x6e33b0, rowsB*c.K)
	align := func(n int) uint64 { return uint64((n + 255) &^ 255) }
	offStatus := uint64(0)
	offA := offStatus + 256
	offB := offA + align(rowsA*c.K*2)
	offC := offB + align(rowsB*c.K*2)
	total := offC + align(rowsA*c.N*2)
	mem, err := d.MemAlloc(total)
	if err != nil {
		return rep, fmt.Errorf("%s: %w", c, err)
	}
	defer d.MemFree(mem)
	base := uint64(mem)
	if err := d.MemcpyHtoD(cuda.DevicePtr(base+offA), ah); err != nil {
		return rep, err
	}
	if err := d.MemcpyHtoD(cuda.DevicePtr(base+offB), bh); err != nil {
		return rep, err
	}
	// Two bf16 NaNs a word: an element the kernel does not write stays NaN.
	if err := d.MemsetD32(cuda.DevicePtr(base+offC), poisonNaN|poisonNaN>>16, uint64(rowsA*c.N/2)); err != nil {
		return rep, err
	}
	if err := d.MemsetD32(cuda.DevicePtr(base+offStatus), 0, 1); err != nil {
		return rep, err
	}
	arg := kernels.GemmBench{Experts: int32(c.Experts), Rows: int32(c.Rows), N: int32(c.N), K: int32(c.K), ReLU: 1,
		Sources: int32(c.Sources), C: base + offC, Status: base + offStatus}
	for i, s := range []tmapSpec{
		{"bench A", 0, base + offA, uint64(c.K), uint64(rowsA), kernels.TCTileM},
		{"bench B", 1, base + offB, uint64(c.K), uint64(rowsB), kernels.TCTileN}, // the forward's weight boxes
	} {
		if err := b.encodeTMap(arg.TMap[i*kernels.TMapWords:(i+1)*kernels.TMapWords], config.BF16, s); err != nil {
			return rep, fmt.Errorf("%s: %w", c, err)
		}
	}
	// The copies and memsets ran on the legacy stream, which the backend's
	// non-blocking stream does not wait for.
	if err := d.CtxSynchronize(); err != nil {
		return rep, err
	}
	launch := func() (time.Duration, error) {
		if err := d.EventRecord(b.evStart, b.stream); err != nil {
			return 0, err
		}
		if err := d.LaunchKernel(fn, [3]uint32{uint32(rep.Grid), 1, 1}, [3]uint32{uint32(threads), 1, 1}, uint32(smem), b.stream, arg.Bytes()); err != nil {
			return 0, fmt.Errorf("%s: launch: %w", c, err)
		}
		if err := d.EventRecord(b.evEnd, b.stream); err != nil {
			return 0, err
		}
		if err := d.EventWait(b.evEnd, 10*time.Second); err != nil {
			b.broken = fmt.Errorf("%s: the kernel did not finish: %w", c, err)
			return 0, b.broken
		}
		return d.EventElapsedTime(b.evStart, b.evEnd)
	}
	launches := 0
	checkStatus := func() error {
		var st [1]uint32
		if err := d.MemcpyDtoH(st[:], cuda.DevicePtr(base+offStatus)); err != nil {
			return err
		}
		if want := uint32(launches * rep.Grid); st[0] != want {
			return fmt.Errorf("%s: %d block completions after %d launches of %d blocks, want %d (bit 31: a block refused the argument)",
				c, st[0], launches, rep.Grid, want)
		}
		return nil
	}
	if _, err := launch(); err != nil {
		return rep, err
	}
	launches++
	if err := checkStatus(); err != nil {
		return rep, err
	}
	if err := checkGemm(c, &rep, a, bw, d, cuda.DevicePtr(base+offC)); err != nil {
		return rep, err
	}
	for i := 0; i < c.Warmup; i++ {
		if _, err := launch(); err != nil {
			return rep, err
		}
		launches++
	}
	for i := 0; i < c.Iters; i++ {
		t, err := launch()
		if err != nil {
			return rep, err
		}
		launches++
		rep.Times = append(rep.Times, t)
	}
	if err := checkStatus(); err != nil {
		return rep, err
	}
	s := slices.Clone(rep.Times)
	slices.Sort(s)
	rep.Median = s[len(s)/2]
	rep.TFLOPs = c.Flop() / rep.Median.Seconds() / 1e12
	return rep, nil
}

// checkGemm reads C back and compares it with float64: every element
// written (no NaN left of the poison), the sampled rows within tolerance.
func checkGemm(c GemmCase, rep *GemmReport, a, bw []float32, d *cuda.Driver, cp cuda.DevicePtr) error {
	rowsA := c.Experts * c.Rows
	got := make([]uint16, rowsA*c.N)
	if err := d.MemcpyDtoH(got, cp); err != nil {
		return err
	}
	for i, u := range got {
		if u&0x7f80 == 0x7f80 && u&0x7f != 0 {
			return fmt.Errorf("%s: C[%d][%d] is NaN: not written by the kernel", c, i/c.N, i%c.N)
		}
	}
	for r := 0; r < rowsA; r++ {
		if r%c.CheckEvery != 0 && r != rowsA-1 {
			continue
		}
		e := r / c.Rows
		ar := a[r*c.K : (r+1)*c.K]
		for col := 0; col < c.N; col++ {
			br := bw[(e*c.N+col)*c.K : (e*c.N+col+1)*c.K]
			var want, mag float64
			for k, x := range ar {
				p := float64(x) * float64(br[k])
				want += p
				mag += math.Abs(p)
			}
			want = math.Max(want, 0)
			g := float64(math.Float32frombits(uint32(got[r*c.N+col]) << 16))
			tol := math.Abs(want)/256 + gemmAccTol*mag
			err := math.Abs(g - want)
			rep.Checked++
			rep.MaxErr = math.Max(rep.MaxErr, err/(math.Abs(want)+mag+1e-30))
			if err > tol {
				return fmt.Errorf("%s: C[%d][%d] (expert %d) = %g, want %g (tolerance %.3g)", c, r, col, e, g, want, tol)
			}
		}
	}
	return nil
}
