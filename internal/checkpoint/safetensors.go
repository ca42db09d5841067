package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// A safetensors file is an 8-byte little-endian header length N, a JSON
// header of N bytes that maps each tensor name to its dtype, shape and
// data_offsets [begin, end) relative to the end of the header (and an
// optional "__metadata__" map of strings), then the data, row-major and
// little-endian.

// maxHeader bounds the header this reader accepts (the format's own limit
// is 100 MB).
const maxHeader = 100 << 20

// tensorInfo is one tensor's header entry.
type tensorInfo struct {
	DType   string   `json:"dtype"`
	Shape   []int64  `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// stFile is one safetensors file whose header has been read.
type stFile struct {
	path    string
	f       *os.File
	data    int64 // offset of the data section in the file
	tensors map[string]tensorInfo
}

// elemSize is the size in bytes of each safetensors dtype.
var elemSize = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// readable are the dtypes this package converts to float32 exactly.
var readable = map[string]bool{"F32": true, "BF16": true, "F16": true}

// openSafetensors opens path and reads and checks its header.
func openSafetensors(path string) (*stFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	s, err := readHeader(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func readHeader(f *os.File, path string) (*stFile, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	var lenBuf [8]byte
	if _, err := io.ReadFull(f, lenBuf[:]); err != nil {
		return nil, fmt.Errorf("%s: not a safetensors file: shorter than its 8-byte header length", path)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeader || int64(n) > size-8 {
		return nil, fmt.Errorf("%s: not a safetensors file: header length %d (file of %d bytes, limit %d)", path, n, size, maxHeader)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return nil, fmt.Errorf("%s: read the header: %w", path, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &raw); err != nil {
		return nil, fmt.Errorf("%s: the header is not a JSON object: %w", path, err)
	}
	s := &stFile{path: path, f: f, data: 8 + int64(n), tensors: make(map[string]tensorInfo, len(raw))}
	dataLen := size - s.data
	type span struct {
		name       string
		begin, end int64
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			continue
		}
		var t tensorInfo
		if err := json.Unmarshal(msg, &t); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: bad header entry %s: %w", path, name, msg, err)
		}
		es, ok := elemSize[t.DType]
		if !ok {
			return nil, fmt.Errorf("%s: tensor %q: unknown dtype %q", path, name, t.DType)
		}
		numel := int64(1)
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && numel > math.MaxInt64/8/d) {
				return nil, fmt.Errorf("%s: tensor %q: bad shape %v", path, name, t.Shape)
			}
			numel *= d
		}
		b, e := t.Offsets[0], t.Offsets[1]
		if b < 0 || e < b || e > dataLen {
			return nil, fmt.Errorf("%s: tensor %q: data_offsets [%d, %d) lie outside the %d data bytes", path, name, b, e, dataLen)
		}
		if e-b != numel*es {
			return nil, fmt.Errorf("%s: tensor %q: data_offsets [%d, %d) hold %d bytes; shape %v of %s needs %d", path, name, b, e, e-b, t.Shape, t.DType, numel*es)
		}
		s.tensors[name] = t
		spans = append(spans, span{name, b, e})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].begin < spans[j].begin })
	for i := 1; i < len(spans); i++ {
		if spans[i].begin < spans[i-1].end {
			return nil, fmt.Errorf("%s: tensors %q and %q overlap", path, spans[i-1].name, spans[i].name)
		}
	}
	return s, nil
}

// read reads tensor name as float32 values in its stored (row-major)
// order; only its own bytes are read.
func (s *stFile) read(name string) ([]float32, int64, error) {
	t, ok := s.tensors[name]
	if !ok {
		return nil, 0, fmt.Errorf("%s: no tensor %q", s.path, name)
	}
	if !readable[t.DType] {
		return nil, 0, fmt.Errorf("%s: tensor %q is %s: only F32, BF16 and F16 are read (quantised or fp8 checkpoints: dequantise to bf16 first)", s.path, name, t.DType)
	}
	n := t.Offsets[1] - t.Offsets[0]
	buf := make([]byte, n)
	if _, err := s.f.ReadAt(buf, s.data+t.Offsets[0]); err != nil {
		return nil, 0, fmt.Errorf("%s: read tensor %q: %w", s.path, name, err)
	}
	es := elemSize[t.DType]
	out := make([]float32, n/es)
	switch t.DType {
	case "F32":
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
		}
	case "BF16":
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(buf[2*i:])) << 16)
		}
	case "F16":
		for i := range out {
			out[i] = HalfToFloat32(binary.LittleEndian.Uint16(buf[2*i:]))
		}
	}
	return out, n, nil
}

// HalfToFloat32 widens an IEEE 754 half-precision value exactly.
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf, NaN
		return math.Float32frombits(sign | 0xff<<23 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// subnormal: man · 2^-24
	v := float32(man) / (1 << 24)
	if sign != 0 {
		v = -v
	}
	return v
}

// Float32ToHalf rounds x to the nearest half-precision value (ties to
// even); values beyond its range become ±Inf.
func Float32ToHalf(x float32) uint16 {
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff { // inf, NaN
		h := sign | 0x7c00
		if man != 0 {
			h |= 0x200
		}
		return h
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 { // subnormal or zero in half
		if e < -10 {
			return sign
		}
		m := man | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, up to Inf: still correct
	}
	return sign | uint16(h)
}

func (s *stFile) close() error { return s.f.Close() }
