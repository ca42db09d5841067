package bench

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// dumpRank writes one rank's forward in the format of DESIGN.md section 4c.
func dumpRank(dir string, index int, multi bool, c config.Layer, rank, world int, x []float32, res *backend.Result) error {
	d := filepath.Join(dir, fmt.Sprintf("rank%03d", rank))
	if multi {
		d = filepath.Join(dir, fmt.Sprintf("cfg%03d", index), fmt.Sprintf("rank%03d", rank))
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	el := c.ExpertsPerRank(world)
	first := rank * el
	meta := map[string]any{"config": c, "rank": rank, "world": world, "experts": []int{first, first + el}}
	mb, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d, "meta.json"), append(mb, '\n'), 0o644); err != nil {
		return err
	}
	t, h, i, e, k := c.Tokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK
	files := []npyFile{
		{"x.npy", x, []int{t, h}},
		{"gate.npy", datagen.Gate(c), []int{h, e}},
		{"topk_idx.npy", res.TopKIdx, []int{t, k}},
		{"topk_w.npy", res.TopKW, []int{t, k}},
		{"out.npy", res.Out, []int{t, h}},
	}
	if res.Logits != nil {
		files = append(files, npyFile{"logits.npy", res.Logits, []int{t, e}})
	}
	var w1, b1, w2, b2, wu []float32
	for g := first; g < first+el; g++ {
		ex := datagen.ExpertWeights(c, g)
		w1, w2 = append(w1, ex.W1...), append(w2, ex.W2...)
		b1, b2, wu = append(b1, ex.B1...), append(b2, ex.B2...), append(wu, ex.Wu...)
	}
	if c.FFN == config.FFNSwiGLU {
		files = append(files, npyFile{"wg.npy", w1, []int{el, h, i}},
			npyFile{"wu.npy", wu, []int{el, h, i}}, npyFile{"wd.npy", w2, []int{el, i, h}})
	} else {
		files = append(files, npyFile{"w1.npy", w1, []int{el, h, i}}, npyFile{"b1.npy", b1, []int{el, i}},
			npyFile{"w2.npy", w2, []int{el, i, h}}, npyFile{"b2.npy", b2, []int{el, h}})
	}
	for _, f := range files {
		if err := writeNPY(filepath.Join(d, f.name), f.data, f.shape); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// npyFile is one array of the dump.
type npyFile struct {
	name  string
	data  any // []float32 or []int32
	shape []int
}

// writeNPY writes a little-endian, C-order NumPy .npy file (format 1.0) of
// float32 or int32 values.
func writeNPY(path string, data any, shape []int) error {
	var descr string
	var body bytes.Buffer
	n := 1
	for _, s := range shape {
		n *= s
	}
	switch v := data.(type) {
	case []float32:
		descr = "<f4"
		if len(v) != n {
			return fmt.Errorf("%d values for shape %v", len(v), shape)
		}
		for _, x := range v {
			binary.Write(&body, binary.LittleEndian, math.Float32bits(x))
		}
	case []int32:
		descr = "<i4"
		if len(v) != n {
			return fmt.Errorf("%d values for shape %v", len(v), shape)
		}
		binary.Write(&body, binary.LittleEndian, v)
	default:
		return fmt.Errorf("unsupported element type %T", data)
	}
	dims := make([]string, len(shape))
	for i, s := range shape {
		dims[i] = fmt.Sprint(s)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	header := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	// magic(6) + version(2) + length(2) + header + '\n', padded to 64 bytes.
	total := 10 + len(header) + 1
	header += strings.Repeat(" ", (64-total%64)%64) + "\n"
	var out bytes.Buffer
	out.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&out, binary.LittleEndian, uint16(len(header)))
	out.WriteString(header)
	out.Write(body.Bytes())
	return os.WriteFile(path, out.Bytes(), 0o644)
}
