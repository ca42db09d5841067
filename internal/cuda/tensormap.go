package cuda

/*
#include "cudadl.h"
*/
import "C"

import "fmt"

// TensorMap is a CUtensorMap: the 128-byte descriptor that the GPU's tensor
// memory accelerator (TMA) reads a tile of a global-memory tensor through.
// Opaque; cuda.h (13.0) aligns it to 128 bytes, and so does the kernel.
type TensorMap [16]uint64

// TensorMapDataType is CUtensorMapDataType: the element type of a map.
type TensorMapDataType int32

// The element types moerun's tensor-core tiles load.
const (
	TensorFloat32  TensorMapDataType = 7 // CU_TENSOR_MAP_DATA_TYPE_FLOAT32
	TensorBFloat16 TensorMapDataType = 9 // CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
)

// Swizzle and L2 promotion modes of the maps moerun encodes.
const (
	tensorSwizzle128B   = 3 // CU_TENSOR_MAP_SWIZZLE_128B
	tensorL2Promote256B = 3 // CU_TENSOR_MAP_L2_PROMOTION_L2_256B
)

// TensorMapMatrix describes a row-major matrix in device memory for
// TensorMapEncode2D: rows of Cols elements, Pitch bytes apart, read in boxes
// of BoxCols x BoxRows elements.
type TensorMapMatrix struct {
	Type             TensorMapDataType
	Addr             DevicePtr
	Cols, Rows       uint64
	Pitch            uint64 // bytes from one row to the next
	BoxCols, BoxRows uint32
}

// TensorMapEncode2D encodes m as a 2-D tiled tensor map with the 128-byte
// swizzle (the layout wgmma reads K-major operands in; a box row must then
// be at most 128 bytes), L2 promotion of 256 bytes and zero fill outside the
// matrix (cuTensorMapEncodeTiled). A pure host call; the map holds m.Addr,
// so it is valid while that memory is.
func (d *Driver) TensorMapEncode2D(m TensorMapMatrix) (TensorMap, error) {
	var out TensorMap
	args := fmt.Sprintf("type %d, %#x, %d x %d, pitch %d, box %d x %d", m.Type, uint64(m.Addr), m.Rows, m.Cols, m.Pitch, m.BoxRows, m.BoxCols)
	f, err := d.need(symTensorMapEncodeTiled)
	if err != nil {
		return out, err
	}
	dims := [2]C.uint64_t{C.uint64_t(m.Cols), C.uint64_t(m.Rows)}
	box := [2]C.uint32_t{C.uint32_t(m.BoxCols), C.uint32_t(m.BoxRows)}
	words := [16]C.uint64_t{}
	r := C.mr_cuTensorMapEncodeTiled2D(f, &words[0], C.int(m.Type), C.CUdeviceptr(m.Addr), &dims[0],
		C.uint64_t(m.Pitch), &box[0], C.int(tensorSwizzle128B), C.int(tensorL2Promote256B))
	if err := d.check(r, symTensorMapEncodeTiled, args); err != nil {
		return out, err
	}
	for i := range out {
		out[i] = uint64(words[i])
	}
	return out, nil
}
