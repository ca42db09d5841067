// Package cktest writes small Hugging Face style MoE checkpoints for tests:
// config.json and safetensors files, in either naming, sharded or not, in
// F32, BF16 or F16.
package cktest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/moerun/moerun/internal/checkpoint"
	"github.com/moerun/moerun/internal/datagen"
)

// Spec describes a checkpoint to write.
type Spec struct {
	Naming                       checkpoint.Naming
	ModelType                    string // config.json model_type ("" picks one for the naming)
	Hidden, FFNHidden            int
	Experts, TopK, Layers        int
	DType                        string // "F32", "BF16" or "F16"
	Shards                       int    // < 2: one model.safetensors; else that many shards and an index
	Seed                         uint64
	Dense                        []int          // layers without an MoE block
	Config                       map[string]any // extra or overriding config.json keys (nil values delete)
	ExtraTensors                 map[string][]int64
	GateScale, WeightScaleFactor float32 // 0: defaults
}

// Tensor is one written tensor: its stored shape and values exactly as
// stored (rounded to the dtype), in stored order.
type Tensor struct {
	Shape []int
	Data  []float32
}

// Write writes the checkpoint into dir and returns every tensor written.
func Write(dir string, s Spec) (map[string]Tensor, error) {
	if s.DType == "" {
		s.DType = "F32"
	}
	if s.ModelType == "" {
		s.ModelType = "qwen3_moe"
		if s.Naming == checkpoint.Mixtral {
			s.ModelType = "mixtral"
		}
	}
	cfg := map[string]any{
		"model_type":          s.ModelType,
		"hidden_size":         s.Hidden,
		"num_hidden_layers":   s.Layers,
		"num_experts_per_tok": s.TopK,
		"hidden_act":          "silu",
		"torch_dtype":         map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[s.DType],
	}
	if s.Naming == checkpoint.Mixtral {
		cfg["num_local_experts"] = s.Experts
		cfg["intermediate_size"] = s.FFNHidden
	} else {
		cfg["num_experts"] = s.Experts
		cfg["moe_intermediate_size"] = s.FFNHidden
		cfg["intermediate_size"] = 4 * s.FFNHidden // the dense layers' width: must not be used
		cfg["norm_topk_prob"] = true
	}
	for k, v := range s.Config {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		return nil, err
	}

	tensors := map[string]Tensor{}
	var order []string
	add := func(name string, shape []int, scale float32) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		id := datagen.Tensor(uint64(len(order) + 1))
		for i := range v {
			v[i] = round(datagen.Uniform(s.Seed, id, uint64(i))*scale, s.DType)
		}
		tensors[name] = Tensor{Shape: shape, Data: v}
		order = append(order, name)
	}
	dense := map[int]bool{}
	for _, l := range s.Dense {
		dense[l] = true
	}
	h, in := s.Hidden, s.FFNHidden
	gs, ws := s.GateScale, s.WeightScaleFactor
	if gs == 0 {
		gs = 4
	}
	if ws == 0 {
		ws = 1
	}
	for l := range s.Layers {
		// Attention and norms stand for the rest of a real checkpoint: the
		// loader must skip them.
		add(fmt.Sprintf("model.layers.%d.input_layernorm.weight", l), []int{h}, 1)
		if dense[l] {
			p := fmt.Sprintf("model.layers.%d.mlp.", l)
			add(p+"gate_proj.weight", []int{in, h}, ws/float32(math.Sqrt(float64(h))))
			add(p+"up_proj.weight", []int{in, h}, ws/float32(math.Sqrt(float64(h))))
			add(p+"down_proj.weight", []int{h, in}, ws/float32(math.Sqrt(float64(in))))
			continue
		}
		p := fmt.Sprintf("model.layers.%d.mlp.", l)
		w1, w3, w2 := "gate_proj", "up_proj", "down_proj"
		if s.Naming == checkpoint.Mixtral {
			p = fmt.Sprintf("model.layers.%d.block_sparse_moe.", l)
			w1, w3, w2 = "w1", "w3", "w2"
		}
		add(p+"gate.weight", []int{s.Experts, h}, gs/float32(math.Sqrt(float64(h))))
		for e := range s.Experts {
			add(fmt.Sprintf("%sexperts.%d.%s.weight", p, e, w1), []int{in, h}, ws/float32(math.Sqrt(float64(h))))
			add(fmt.Sprintf("%sexperts.%d.%s.weight", p, e, w3), []int{in, h}, ws/float32(math.Sqrt(float64(h))))
			add(fmt.Sprintf("%sexperts.%d.%s.weight", p, e, w2), []int{h, in}, ws/float32(math.Sqrt(float64(in))))
		}
	}
	extra := make([]string, 0, len(s.ExtraTensors))
	for name := range s.ExtraTensors {
		extra = append(extra, name)
	}
	sort.Strings(extra)
	for _, name := range extra {
		shape := make([]int, len(s.ExtraTensors[name]))
		for i, d := range s.ExtraTensors[name] {
			shape[i] = int(d)
		}
		add(name, shape, 1)
	}

	shards := max(s.Shards, 1)
	if shards == 1 {
		return tensors, WriteFile(filepath.Join(dir, "model.safetensors"), order, tensors, s.DType)
	}
	weightMap := map[string]string{}
	per := (len(order) + shards - 1) / shards
	for i := range shards {
		lo, hi := min(i*per, len(order)), min((i+1)*per, len(order))
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, shards)
		if err := WriteFile(filepath.Join(dir, file), order[lo:hi], tensors, s.DType); err != nil {
			return nil, err
		}
		for _, name := range order[lo:hi] {
			weightMap[name] = file
		}
	}
	ix, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return nil, err
	}
	return tensors, os.WriteFile(filepath.Join(dir, checkpoint.IndexFile), ix, 0o644)
}

// round rounds v to what dtype stores.
func round(v float32, dtype string) float32 {
	switch dtype {
	case "BF16":
		return datagen.RoundBF16(v)
	case "F16":
		return checkpoint.HalfToFloat32(checkpoint.Float32ToHalf(v))
	}
	return v
}

// WriteFile writes the named tensors to one safetensors file in dtype, in
// the given order, with a header padded to 8 bytes as the format's writer
// does.
func WriteFile(path string, order []string, tensors map[string]Tensor, dtype string) error {
	type entry struct {
		DType   string   `json:"dtype"`
		Shape   []int    `json:"shape"`
		Offsets [2]int64 `json:"data_offsets"`
	}
	es := map[string]int64{"F32": 4, "BF16": 2, "F16": 2}[dtype]
	if es == 0 {
		return fmt.Errorf("dtype %q: want F32, BF16 or F16", dtype)
	}
	hdr := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var off int64
	for _, name := range order {
		t := tensors[name]
		n := int64(len(t.Data)) * es
		hdr[name] = entry{DType: dtype, Shape: t.Shape, Offsets: [2]int64{off, off + n}}
		off += n
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	buf := binary.LittleEndian.AppendUint64(nil, uint64(len(hb)))
	buf = append(buf, hb...)
	for _, name := range order {
		for _, v := range tensors[name].Data {
			switch dtype {
			case "F32":
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			case "BF16":
				buf = binary.LittleEndian.AppendUint16(buf, uint16(math.Float32bits(v)>>16))
			case "F16":
				buf = binary.LittleEndian.AppendUint16(buf, checkpoint.Float32ToHalf(v))
			}
		}
	}
	return os.WriteFile(path, buf, 0o644)
}
