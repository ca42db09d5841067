package gpubackend

import (
	"fmt"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cuda"
	"github.com/moerun/moerun/kernels"
)

// tmapSpec is one tensor map the kernel reads (params.h MOE_TMAP_*): a
// row-major matrix of the storage dtype at addr, rows x cols, read in boxes
// of 128 bytes of K by boxRows rows.
type tmapSpec struct {
	name       string
	index      int
	addr       uint64
	cols, rows uint64
	boxRows    uint32
}

// kernelTMaps lists the maps of a forward with params p (params.h
// MOE_TMAP_*): the received rows and the intermediate by row (boxes of a
// row tile) and the transposed expert weights of all local experts stacked, by output
// column (boxes of a column tile, or 16 rows for swiglu's interleaved
// operands). A weight the layer does not have (Wu outside swiglu) is left out.
func kernelTMaps(p *kernels.Params) []tmapSpec {
	h, i := uint64(p.Hidden), uint64(p.FFNHidden)
	rows := uint64(p.World) * uint64(p.RowsPerSource)
	el := uint64(p.ExpertsPerRank)
	wbox := weightBoxRows(p.FFN == kernels.FFNSwiGLU)
	specs := []tmapSpec{
		{"received rows", kernels.TMapRecv, p.HeapBase + p.OffRecvRows, h, rows, kernels.TCTileM},
		{"intermediate", kernels.TMapInter, p.Inter, i, rows, kernels.TCTileM},
		{"W1", kernels.TMapW1, p.W1, h, el * i, wbox},
		{"Wu", kernels.TMapWu, p.Wu, h, el * i, wbox},
		{"W2", kernels.TMapW2, p.W2, i, el * h, kernels.TCTileN},
	}
	out := specs[:0]
	for _, s := range specs {
		if s.addr != 0 {
			out = append(out, s)
		}
	}
	return out
}

// weightBoxRows is the rows of a weight map's box: a column tile, or for
// swiglu's paired operands the 16 rows the tile interleaves them by.
func weightBoxRows(paired bool) uint32 {
	if paired {
		return kernels.TMapSwiGLURows
	}
	return kernels.TCTileN
}

// tmapType is the map element type and size of the storage dtype d (tf32
// values are stored as rounded fp32: the map reads them as fp32, unchanged).
func tmapType(d config.DType) (cuda.TensorMapDataType, int) {
	if d == config.BF16 {
		return cuda.TensorBFloat16, 2
	}
	return cuda.TensorFloat32, 4
}

// encodeTMap encodes s for dtype d into dst (kernels.TMapWords words).
func (b *Backend) encodeTMap(dst []uint64, d config.DType, s tmapSpec) error {
	typ, es := tmapType(d)
	m, err := b.drv.TensorMapEncode2D(cuda.TensorMapMatrix{Type: typ, Addr: cuda.DevicePtr(s.addr), Cols: s.cols,
		Rows: s.rows, Pitch: s.cols * uint64(es), BoxCols: uint32(kernels.TCKBytes / es), BoxRows: s.boxRows})
	if err != nil {
		return fmt.Errorf("tensor map of the %s: %w", s.name, err)
	}
	copy(dst, m[:])
	return nil
}

// setTMaps encodes p's tensor maps for a forward of cfg when p asks for the
// TMA loader (kernels.FlagTMA) in a tensor-core mode; otherwise the maps stay
// zero. Pure host work (a few microseconds): done for every launch, so the
// maps always describe the addresses and widths in p.
func (b *Backend) setTMaps(p *kernels.Params, cfg config.Layer) error {
	p.TMap = [kernels.TMaps * kernels.TMapWords]uint64{}
	if p.Flags&kernels.FlagTMA == 0 || !tensorCore(cfg.DType) {
		return nil
	}
	for _, s := range kernelTMaps(p) {
		if err := b.encodeTMap(p.TMap[s.index*kernels.TMapWords:(s.index+1)*kernels.TMapWords], cfg.DType, s); err != nil {
			return fmt.Errorf("forward of %s: %w", cfg.String(), err)
		}
	}
	return nil
}
