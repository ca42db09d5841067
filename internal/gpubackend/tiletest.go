package gpubackend

import (
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/kernels"
)

// TileCase is one run of the kernel's tensor-core tile alone (the debug entry
// moerun_tile_test, params.h MoeTileTest).
type TileCase struct {
	DType config.DType // tf32 or bf16
	NB    int          // 1, or 2 (swiglu's paired operands: 64 output columns each)
	MRows int          // valid A rows, 1..128
	NCols int          // valid output columns per operand: NB 1: 8..128, NB 2: 8..64 (multiples of 8)
	K     int          // multiple of 64
	Seed  uint64
	TMA   bool // load the stages with TMA (kernels.FlagTMA), else with cp.async
	// Grid > 1 launches that many blocks, each computing the same tile (its
	// operands stay in L2): the tile's own throughput, without the forward's
	// scheduling and epilogue stores. Block 0's output is checked.
	Grid int
}

func (c TileCase) String() string {
	loader := "cp.async"
	if c.TMA {
		loader = "tma"
	}
	return fmt.Sprintf("%s nb=%d mrows=%d ncols=%d k=%d %s grid=%d", c.DType, c.NB, c.MRows, c.NCols, c.K, loader, max(c.Grid, 1))
}

// TileReport is what TileCheck measured.
type TileReport struct {
	MaxErr   float64 // largest |got - want| / (sum_k |a_k b_k| + tiny) over valid elements
	Bad      int     // elements outside tolerance (valid ones), non-zero padding, or NaN
	First    string  // the first bad element, in words ("" when none)
	Elapsed  time.Duration
	Checked  int // valid elements compared
	ZeroPads int // padding elements checked to be exactly 0
}

// tileTol bounds |got - want| relative to sum_k |a_k b_k|: the products are
// exact (inputs are tf32 / bf16 values), only the fp32 accumulation rounds.
// A wrong fragment or address gives errors of order 1.
const tileTol = 1e-4

// TileCheck runs the tensor-core GEMM tile of the kernel once on operands
// generated from c.Seed (rounded to the mode) and compares every one of the
// 128 x 128 outputs with a float64 product of the same values: valid
// elements within tileTol, rows >= MRows and columns >= NCols exactly 0. It
// returns an error that names the first wrong element. Not collective; the
// backend must be open (it needs no Prepare).
func (b *Backend) TileCheck(c TileCase) (TileReport, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var rep TileReport
	if err := b.usable(); err != nil {
		return rep, err
	}
	if c.DType != config.TF32 && c.DType != config.BF16 {
		return rep, fmt.Errorf("tile check %s: dtype must be tf32 or bf16", c)
	}
	outCols := kernels.TCTileN / max(c.NB, 1)
	if (c.NB != 1 && c.NB != 2) || c.MRows < 1 || c.MRows > kernels.TCTileM || c.NCols < 8 || c.NCols%8 != 0 ||
		c.NCols > outCols || c.K < 64 || c.K%64 != 0 || c.Grid < 0 || c.Grid > 1<<16 {
		return rep, fmt.Errorf("tile check %s: shape out of range", c)
	}
	d := b.drv
	if err := d.CtxSetCurrent(b.ctx); err != nil {
		return rep, err
	}
	// Operands as the kernel stores them: A [MRows][K], B_o [NCols][K] (W^T rows).
	gen := func(id uint64, n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			x := datagen.Uniform(c.Seed, datagen.Tensor(id), uint64(i))
			if c.DType == config.BF16 {
				x = datagen.RoundBF16(x)
			} else {
				x = roundTF32(x)
			}
			v[i] = x
		}
		return v
	}
	a := gen(0x7111e0, c.MRows*c.K)
	bs := [][]float32{gen(0x7111e1, c.NCols*c.K)}
	if c.NB == 2 {
		bs = append(bs, gen(0x7111e2, c.NCols*c.K))
	}
	es := storageBytes(c.DType)
	host := func(v []float32) any {
		if c.DType == config.BF16 {
			u := make([]uint16, len(v))
			toBF16(u, v)
			return u
		}
		return v
	}
	// One allocation: out [128][128] f32 | status | A | B0 | B1, each 256-aligned.
	align := func(n int) uint64 { return uint64((n + 255) &^ 255) }
	offOut := uint64(0)
	offStatus := offOut + align(kernels.TCTileM*128*4)
	offA := offStatus + 256
	offB0 := offA + align(c.MRows*c.K*es)
	offB1 := offB0 + align(c.NCols*c.K*es)
	total := offB1 + align(c.NCols*c.K*es)
	mem, err := d.MemAlloc(total)
	if err != nil {
		return rep, fmt.Errorf("tile check: %w", err)
	}
	defer d.MemFree(mem)
	base := uint64(mem)
	if err := d.MemsetD32(mem, poisonNaN, uint64(kernels.TCTileM*128)); err != nil {
		return rep, err
	}
	if err := d.MemsetD32(cuda.DevicePtr(base+offStatus), 0, 1); err != nil {
		return rep, err
	}
	if err := d.MemcpyHtoD(cuda.DevicePtr(base+offA), host(a)); err != nil {
		return rep, err
	}
	for o, bv := range bs {
		if err := d.MemcpyHtoD(cuda.DevicePtr(base+offB0+uint64(o)*(offB1-offB0)), host(bv)); err != nil {
			return rep, err
		}
	}
	arg := kernels.TileTest{DType: dtypeCode(c.DType), NB: int32(c.NB), MRows: int32(c.MRows), NCols: int32(c.NCols),
		K: int32(c.K), A: base + offA, B0: base + offB0, Out: base + offOut, Status: base + offStatus}
	if c.NB == 2 {
		arg.B1 = base + offB1
	}
	if c.TMA {
		// The kernel's maps of these operands (kernelTMaps): A by row tile,
		// B by column tile or, paired, by 16 rows.
		arg.TMA = 1
		bbox := weightBoxRows(c.NB == 2)
		specs := []tmapSpec{{"tile A", 0, arg.A, uint64(c.K), uint64(c.MRows), kernels.TCTileM},
			{"tile B0", 1, arg.B0, uint64(c.K), uint64(c.NCols), bbox}}
		if c.NB == 2 {
			specs = append(specs, tmapSpec{"tile B1", 2, arg.B1, uint64(c.K), uint64(c.NCols), bbox})
		}
		for _, s := range specs {
			if err := b.encodeTMap(arg.TMap[s.index*kernels.TMapWords:(s.index+1)*kernels.TMapWords], c.DType, s); err != nil {
				return rep, fmt.Errorf("tile check %s: %w", c, err)
			}
		}
	}
	// The copies and memsets above ran on the legacy stream, which the
	// backend's non-blocking stream does not wait for.
	if err := d.CtxSynchronize(); err != nil {
		return rep, err
	}
	if err := d.EventRecord(b.evStart, b.stream); err != nil {
		return rep, err
	}
	if err := d.LaunchKernel(b.tileFn, [3]uint32{uint32(max(c.Grid, 1)), 1, 1}, [3]uint32{kernels.Threads, 1, 1}, uint32(b.info.DynamicSmem), b.stream, arg.Bytes()); err != nil {
		return rep, fmt.Errorf("tile check %s: launch: %w", c, err)
	}
	if err := d.EventRecord(b.evEnd, b.stream); err != nil {
		return rep, err
	}
	if err := d.EventWait(b.evEnd, 10*time.Second); err != nil {
		b.broken = fmt.Errorf("tile check %s: the debug kernel did not finish: %w", c, err)
		return rep, b.broken
	}
	if rep.Elapsed, err = d.EventElapsedTime(b.evStart, b.evEnd); err != nil {
		return rep, err
	}
	var status [1]uint32
	if err := d.MemcpyDtoH(status[:], cuda.DevicePtr(base+offStatus)); err != nil {
		return rep, err
	}
	if status[0] != 1 {
		return rep, fmt.Errorf("tile check %s: the debug kernel reported status %d (2: refused its arguments; 0: did not run to the end)", c, status[0])
	}
	got := make([]float32, kernels.TCTileM*128)
	if err := d.MemcpyDtoH(got, mem); err != nil {
		return rep, err
	}
	// Reference: out[r][o*outCols + n] = sum_k A[r][k] * B_o[n][k] (NB 2: o = 0, 1; NB 1: o = 0, outCols 128).
	for r := 0; r < kernels.TCTileM; r++ {
		for col := 0; col < 128; col++ {
			o, n := col/outCols, col%outCols
			g := float64(got[r*128+col])
			valid := r < c.MRows && n < c.NCols
			var want, mag float64
			if valid {
				ar, br := a[r*c.K:(r+1)*c.K], bs[o][n*c.K:(n+1)*c.K]
				for k := range ar {
					p := float64(ar[k]) * float64(br[k])
					want += p
					mag += math.Abs(p)
				}
			}
			bad := false
			if math.IsNaN(g) {
				bad = true
			} else if !valid {
				rep.ZeroPads++
				bad = g != 0
			} else {
				rep.Checked++
				e := math.Abs(g-want) / (mag + 1e-30)
				rep.MaxErr = math.Max(rep.MaxErr, e)
				bad = e > tileTol
			}
			if bad {
				rep.Bad++
				if rep.First == "" {
					what := "valid"
					if !valid {
						what = "padding (must be 0)"
					}
					rep.First = fmt.Sprintf("out[%d][%d] (row %d, operand %d column %d, %s) = %g, want %g", r, col, r, o, n, what, g, want)
				}
			}
		}
	}
	if rep.Bad > 0 {
		return rep, fmt.Errorf("tile check %s: %d of %d elements wrong; first: %s; max rel. error %.3g", c, rep.Bad,
			kernels.TCTileM*128, rep.First, rep.MaxErr)
	}
	return rep, nil
}
