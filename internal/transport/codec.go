package transport

import (
	"encoding/binary"
	"fmt"
	"math"
)

// F64Bytes encodes float64 values little-endian, for Alltoallv and AllGather.
func F64Bytes(v []float64) []byte { return f64Bytes(v) }

func f64Bytes(v []float64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return b
}

// BytesF64 decodes what F64Bytes encoded.
func BytesF64(b []byte) ([]float64, error) {
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("decode float64: %d bytes is not a multiple of 8", len(b))
	}
	v := make([]float64, len(b)/8)
	for i := range v {
		v[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v, nil
}

// I64Bytes encodes int64 values little-endian.
func I64Bytes(v []int64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return b
}

// BytesI64 decodes what I64Bytes encoded.
func BytesI64(b []byte) ([]int64, error) {
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("decode int64: %d bytes is not a multiple of 8", len(b))
	}
	v := make([]int64, len(b)/8)
	for i := range v {
		v[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v, nil
}

// reduceInto reduces the encoded contributions of all ranks into vals.
func reduceInto(op Op, vals []float64, all [][]byte) error {
	for r, b := range all {
		v, err := BytesF64(b)
		if err != nil {
			return err
		}
		if len(v) != len(vals) {
			return fmt.Errorf("allreduce: rank %d has %d values, expected %d", r, len(v), len(vals))
		}
		for i, x := range v {
			switch {
			case r == 0:
				vals[i] = x
			case op == Sum:
				vals[i] += x
			case op == Max:
				vals[i] = math.Max(vals[i], x)
			case op == Min:
				vals[i] = math.Min(vals[i], x)
			}
		}
	}
	return nil
}
