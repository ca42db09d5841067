// Package checkpoint loads MoE layers from a Hugging Face checkpoint folder
// (config.json and safetensors files, sharded with model.safetensors.index.json
// or not) into the layouts of package datagen, reading from disk only the
// tensors asked for.
//
// Two namings are read. Mixtral: model.layers.N.block_sparse_moe.gate.weight
// [E, H] and experts.J.w1 (gate projection [I, H]), w3 (up projection
// [I, H]) and w2 (down projection [H, I]). Qwen-MoE, DeepSeek and OLMoE:
// model.layers.N.mlp.gate.weight and mlp.experts.J.gate_proj, up_proj and
// down_proj. Linear weights are stored [out, in] and transposed here into
// datagen's [in, out]. Tensors may be F32, BF16 or F16; they are widened to
// float32 exactly.
//
// config.json gives H (hidden_size), I (moe_intermediate_size, else
// intermediate_size), E (num_local_experts, num_experts or
// n_routed_experts), k (num_experts_per_tok) and the activation (hidden_act
// silu: the swiglu FFN). Renormalisation of the top-k weights follows
// norm_topk_prob; Mixtral always renormalises (its Hugging Face
// implementation has no such flag) and the others default to false, as
// their Hugging Face configs do. What the layer does not implement is
// refused with the key and value that ask for it: shared experts, sigmoid
// scoring, grouped or other non-greedy top-k, a routed scaling factor other
// than 1, activations other than silu, biases in the MoE linears, fused
// expert tensors.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// Naming is the tensor naming of a checkpoint's MoE blocks.
type Naming string

// The namings this package reads.
const (
	Mixtral Naming = "mixtral" // block_sparse_moe.gate, experts.J.w1/w3/w2
	Qwen    Naming = "qwen"    // mlp.gate, mlp.experts.J.gate_proj/up_proj/down_proj (Qwen-MoE, DeepSeek, OLMoE)
)

// IndexFile is the name of a sharded checkpoint's index.
const IndexFile = "model.safetensors.index.json"

// Model is an open checkpoint folder: its configuration and the headers of
// its safetensors files. Its methods may be called from several goroutines.
type Model struct {
	Dir  string
	Type string // config.json's model_type
	// The layer's shape, from config.json.
	Hidden, FFNHidden, Experts, TopK, Layers int
	// Renormalize is whether top-k weights are renormalised to sum 1, and
	// RenormalizeFrom says what decided it.
	Renormalize     bool
	RenormalizeFrom string

	files     []*stFile
	where     map[string]*stFile // tensor name → its file
	read      atomic.Int64       // bytes of tensor data read
	closeOnce sync.Once
}

// Open reads dir's config.json and the headers of its safetensors files
// (model.safetensors.index.json's shards, model.safetensors, or every
// *.safetensors file) and refuses what the layer does not implement.
func Open(dir string) (*Model, error) {
	m := &Model{Dir: dir, where: map[string]*stFile{}}
	if err := m.readConfig(filepath.Join(dir, "config.json")); err != nil {
		return nil, err
	}
	files, err := shardFiles(dir)
	if err != nil {
		return nil, err
	}
	for _, path := range files {
		s, err := openSafetensors(path)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		m.files = append(m.files, s)
		for name := range s.tensors {
			if prev, dup := m.where[name]; dup {
				m.Close()
				return nil, fmt.Errorf("checkpoint %s: tensor %q is in both %s and %s", dir, name, filepath.Base(prev.path), filepath.Base(path))
			}
			m.where[name] = s
		}
	}
	return m, nil
}

// shardFiles lists the safetensors files of dir.
func shardFiles(dir string) ([]string, error) {
	idx := filepath.Join(dir, IndexFile)
	if b, err := os.ReadFile(idx); err == nil {
		var ix struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(b, &ix); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %s: %w", dir, IndexFile, err)
		}
		if len(ix.WeightMap) == 0 {
			return nil, fmt.Errorf("checkpoint %s: %s has no weight_map", dir, IndexFile)
		}
		seen := map[string]bool{}
		var files []string
		for _, f := range ix.WeightMap {
			if f != filepath.Base(f) {
				return nil, fmt.Errorf("checkpoint %s: %s names shard %q outside the folder", dir, IndexFile, f)
			}
			if !seen[f] {
				seen[f] = true
				files = append(files, filepath.Join(dir, f))
			}
		}
		sort.Strings(files)
		return files, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	single := filepath.Join(dir, "model.safetensors")
	if _, err := os.Stat(single); err == nil {
		return []string{single}, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("checkpoint %s: no %s, model.safetensors or *.safetensors file", dir, IndexFile)
	}
	sort.Strings(files)
	return files, nil
}

// Close closes the files. The Model must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	m.closeOnce.Do(func() {
		for _, s := range m.files {
			errs = append(errs, s.close())
		}
	})
	return errors.Join(errs...)
}

// BytesRead is the number of tensor data bytes read so far.
func (m *Model) BytesRead() int64 { return m.read.Load() }

// readConfig parses config.json into the shape and refuses what the layer
// does not implement.
func (m *Model) readConfig(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("checkpoint: %s: %w", path, err)
	}
	cfg := jsonConfig{raw: raw, path: path}
	m.Type, _ = raw["model_type"].(string)
	var errs []error
	intKey := func(keys ...string) int {
		for _, k := range keys {
			if v, ok := cfg.number(k); ok {
				if v < 1 || v != math.Trunc(v) || v > 1<<30 {
					errs = append(errs, fmt.Errorf("%s = %v: want a positive integer", k, v))
					return 0
				}
				return int(v)
			}
		}
		errs = append(errs, fmt.Errorf("no %s", strings.Join(keys, " or ")))
		return 0
	}
	m.Hidden = intKey("hidden_size")
	m.FFNHidden = intKey("moe_intermediate_size", "intermediate_size")
	m.Experts = intKey("num_local_experts", "num_experts", "n_routed_experts")
	m.TopK = intKey("num_experts_per_tok")
	m.Layers = intKey("num_hidden_layers")
	if act, ok := raw["hidden_act"].(string); !ok || (act != "silu" && act != "swish") {
		errs = append(errs, fmt.Errorf("hidden_act = %v: only silu (the swiglu FFN of Mixtral, Qwen and DeepSeek) is implemented", raw["hidden_act"]))
	}

	// Refusals: what the layer does not implement.
	refuse := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if v, ok := cfg.number("shared_expert_intermediate_size"); ok && v > 0 {
		refuse("shared_expert_intermediate_size = %v: shared experts are not implemented", v)
	}
	if v, ok := cfg.number("n_shared_experts"); ok && v > 0 {
		refuse("n_shared_experts = %v: shared experts are not implemented", v)
	}
	if s, ok := raw["scoring_func"].(string); ok && s != "softmax" {
		refuse("scoring_func = %q: only softmax routing is implemented", s)
	}
	if s, ok := raw["topk_method"].(string); ok && s != "greedy" {
		refuse("topk_method = %q: only greedy top-k over all experts is implemented (no group-limited or bias-corrected routing)", s)
	}
	for _, k := range []string{"n_group", "topk_group"} {
		if v, ok := cfg.number(k); ok && v > 1 {
			refuse("%s = %v: grouped routing is not implemented", k, v)
		}
	}
	if v, ok := cfg.number("routed_scaling_factor"); ok && v != 1 {
		refuse("routed_scaling_factor = %v: only 1 is implemented (the combine weights are not scaled)", v)
	}
	if m.Type == "deepseek_v3" {
		refuse("model_type deepseek_v3: its routing (sigmoid scores with a correction bias, grouped top-k) is not implemented")
	}

	switch norm, ok := raw["norm_topk_prob"].(bool); {
	case m.Type == "mixtral":
		m.Renormalize, m.RenormalizeFrom = true, "mixtral always renormalises"
	case ok:
		m.Renormalize, m.RenormalizeFrom = norm, "norm_topk_prob"
	case raw["norm_topk_prob"] != nil:
		refuse("norm_topk_prob = %v: want true or false", raw["norm_topk_prob"])
	default:
		m.Renormalize, m.RenormalizeFrom = false, "norm_topk_prob absent (false, the Hugging Face default)"
	}
	if m.Experts > 0 && m.TopK > m.Experts {
		refuse("num_experts_per_tok = %d exceeds the %d experts", m.TopK, m.Experts)
	}
	if len(errs) > 0 {
		return fmt.Errorf("checkpoint %s: config.json: %w", filepath.Dir(path), errors.Join(errs...))
	}
	return nil
}

// jsonConfig reads numbers out of config.json.
type jsonConfig struct {
	raw  map[string]any
	path string
}

// number returns key's value when it is a JSON number (null and absent
// are both "not set").
func (c jsonConfig) number(key string) (float64, bool) {
	v, ok := c.raw[key].(float64)
	return v, ok
}

// names are the tensor names of one layer's MoE block in one naming.
type names struct {
	prefix            string
	gate              string
	gateProj, up, dwn func(e int) string
}

func namesFor(n Naming, layer int) names {
	switch n {
	case Mixtral:
		p := fmt.Sprintf("model.layers.%d.block_sparse_moe.", layer)
		return names{prefix: p, gate: p + "gate.weight",
			gateProj: func(e int) string { return fmt.Sprintf("%sexperts.%d.w1.weight", p, e) },
			up:       func(e int) string { return fmt.Sprintf("%sexperts.%d.w3.weight", p, e) },
			dwn:      func(e int) string { return fmt.Sprintf("%sexperts.%d.w2.weight", p, e) },
		}
	default:
		p := fmt.Sprintf("model.layers.%d.mlp.", layer)
		return names{prefix: p, gate: p + "gate.weight",
			gateProj: func(e int) string { return fmt.Sprintf("%sexperts.%d.gate_proj.weight", p, e) },
			up:       func(e int) string { return fmt.Sprintf("%sexperts.%d.up_proj.weight", p, e) },
			dwn:      func(e int) string { return fmt.Sprintf("%sexperts.%d.down_proj.weight", p, e) },
		}
	}
}

// layerNames finds layer's naming and checks its tensors' presence, shapes
// and dtypes against the configuration (headers only).
func (m *Model) layerNames(layer int) (names, Naming, error) {
	if layer < 0 || layer >= m.Layers {
		return names{}, "", fmt.Errorf("layer %d: the checkpoint has layers 0..%d (num_hidden_layers %d)", layer, m.Layers-1, m.Layers)
	}
	var found []Naming
	for _, n := range []Naming{Mixtral, Qwen} {
		if _, ok := m.where[namesFor(n, layer).gate]; ok {
			found = append(found, n)
		}
	}
	switch len(found) {
	case 0:
		return names{}, "", fmt.Errorf("layer %d has no MoE block: no tensor %s or %s (a dense layer? see first_k_dense_replace, mlp_only_layers or decoder_sparse_step in config.json)",
			layer, namesFor(Mixtral, layer).gate, namesFor(Qwen, layer).gate)
	case 2:
		return names{}, "", fmt.Errorf("layer %d has both a Mixtral and a Qwen-style gate", layer)
	}
	n := found[0]
	nm := namesFor(n, layer)
	// Tensors of the block that the layer would ignore: refuse them.
	var extra []string
	for name := range m.where {
		if !strings.HasPrefix(name, nm.prefix) {
			continue
		}
		rest := name[len(nm.prefix):]
		switch {
		case strings.HasPrefix(rest, "shared_expert"):
			extra = append(extra, name+" (shared experts are not implemented)")
		case strings.HasSuffix(rest, ".bias"):
			extra = append(extra, name+" (biases in the MoE block are not implemented)")
		case strings.Contains(rest, "e_score_correction_bias"):
			extra = append(extra, name+" (bias-corrected routing is not implemented)")
		case strings.HasPrefix(rest, "experts.") && !isExpertLinear(rest):
			extra = append(extra, name+" (fused or unknown expert tensors are not read)")
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nm, n, fmt.Errorf("layer %d: %s", layer, strings.Join(extra, "; "))
	}
	if err := m.checkShape(nm.gate, m.Experts, m.Hidden); err != nil {
		return nm, n, fmt.Errorf("layer %d: %w", layer, err)
	}
	return nm, n, nil
}

// isExpertLinear says whether rest (a name after the block's prefix) is
// one of the per-expert linear weights of either naming.
func isExpertLinear(rest string) bool {
	parts := strings.Split(rest, ".")
	if len(parts) != 4 || parts[0] != "experts" || parts[3] != "weight" {
		return false
	}
	switch parts[2] {
	case "w1", "w2", "w3", "gate_proj", "up_proj", "down_proj":
		return true
	}
	return false
}

// checkShape checks that tensor name exists with shape [rows, cols] and a
// readable dtype.
func (m *Model) checkShape(name string, rows, cols int) error {
	s, ok := m.where[name]
	if !ok {
		return fmt.Errorf("no tensor %s", name)
	}
	t := s.tensors[name]
	if len(t.Shape) != 2 || t.Shape[0] != int64(rows) || t.Shape[1] != int64(cols) {
		return fmt.Errorf("tensor %s has shape %s, want [%d, %d] from config.json", name, shapeString(t.Shape), rows, cols)
	}
	if !readable[t.DType] {
		return fmt.Errorf("tensor %s is %s: only F32, BF16 and F16 are read (quantised or fp8 checkpoints: dequantise to bf16 first)", name, t.DType)
	}
	return nil
}

func shapeString(s []int64) string {
	p := make([]string, len(s))
	for i, d := range s {
		p[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(p, ", ") + "]"
}

// Config returns layer's configuration: the shape of config.json, the swiglu
// FFN, softmax routing, renormalisation as Renormalize says, and the dtype
// bf16 when the gate and every expert tensor of the layer are stored in
// BF16, fp32 otherwise (F16 values are exact in fp32). Tokens, MaxTokens and
// Seed are left 0 for the caller. Only headers are read.
func (m *Model) Config(layer int) (config.Layer, error) {
	nm, naming, err := m.layerNames(layer)
	if err != nil {
		return config.Layer{}, fmt.Errorf("checkpoint %s: %w", m.Dir, err)
	}
	allBF16 := m.where[nm.gate].tensors[nm.gate].DType == "BF16"
	h, i := m.Hidden, m.FFNHidden
	for e := range m.Experts {
		for _, t := range []struct {
			name       string
			rows, cols int
		}{{nm.gateProj(e), i, h}, {nm.up(e), i, h}, {nm.dwn(e), h, i}} {
			if err := m.checkShape(t.name, t.rows, t.cols); err != nil {
				return config.Layer{}, fmt.Errorf("checkpoint %s: layer %d (%s naming): expert %d: %w", m.Dir, layer, naming, e, err)
			}
			allBF16 = allBF16 && m.where[t.name].tensors[t.name].DType == "BF16"
		}
	}
	dt := config.FP32
	if allBF16 {
		dt = config.BF16
	}
	return config.Layer{
		Hidden: h, FFNHidden: i, Experts: m.Experts, TopK: m.TopK, FFN: config.FFNSwiGLU,
		DType: dt, Renormalize: m.Renormalize, Route: config.RouteSoftmax,
	}, nil
}

// readTransposed reads tensor name, stored [rows, cols], as [cols, rows].
func (m *Model) readTransposed(name string, rows, cols int) ([]float32, error) {
	if err := m.checkShape(name, rows, cols); err != nil {
		return nil, err
	}
	v, n, err := m.where[name].read(name)
	if err != nil {
		return nil, err
	}
	m.read.Add(n)
	return transpose(v, rows, cols), nil
}

// transpose returns the [cols, rows] transpose of src [rows, cols].
func transpose(src []float32, rows, cols int) []float32 {
	dst := make([]float32, len(src))
	const blk = 64
	for r0 := 0; r0 < rows; r0 += blk {
		r1 := min(r0+blk, rows)
		for c0 := 0; c0 < cols; c0 += blk {
			c1 := min(c0+blk, cols)
			for r := r0; r < r1; r++ {
				row := src[r*cols : (r+1)*cols]
				for c := c0; c < c1; c++ {
					dst[c*rows+r] = row[c]
				}
			}
		}
	}
	return dst
}

// Gate reads layer's gate as [H, E] (stored [E, H]).
func (m *Model) Gate(layer int) ([]float32, error) {
	nm, _, err := m.layerNames(layer)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", m.Dir, err)
	}
	g, err := m.readTransposed(nm.gate, m.Experts, m.Hidden)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: layer %d: %w", m.Dir, layer, err)
	}
	return g, nil
}

// Expert reads global expert e of layer: W1 = gate projection [H, I], Wu =
// up projection [H, I], W2 = down projection [I, H] (stored [I, H], [I, H]
// and [H, I]).
func (m *Model) Expert(layer, e int) (*datagen.Expert, error) {
	nm, _, err := m.layerNames(layer)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", m.Dir, err)
	}
	if e < 0 || e >= m.Experts {
		return nil, fmt.Errorf("checkpoint %s: layer %d: expert %d: the layer has experts 0..%d", m.Dir, layer, e, m.Experts-1)
	}
	h, i := m.Hidden, m.FFNHidden
	ex := &datagen.Expert{}
	for _, t := range []struct {
		dst        *[]float32
		name       string
		rows, cols int
	}{{&ex.W1, nm.gateProj(e), i, h}, {&ex.Wu, nm.up(e), i, h}, {&ex.W2, nm.dwn(e), h, i}} {
		v, err := m.readTransposed(t.name, t.rows, t.cols)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: layer %d: expert %d: %w", m.Dir, layer, e, err)
		}
		*t.dst = v
	}
	return ex, nil
}

// LoadExperts reads the given experts of layer (a few at a time).
func (m *Model) LoadExperts(layer int, ids []int) (map[int]*datagen.Expert, error) {
	var uniq []int
	seen := map[int]bool{}
	for _, e := range ids {
		if !seen[e] {
			seen[e] = true
			uniq = append(uniq, e)
		}
	}
	got := make([]*datagen.Expert, len(uniq))
	errs := make([]error, len(uniq))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for j, e := range uniq {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			got[j], errs[j] = m.Expert(layer, e)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make(map[int]*datagen.Expert, len(uniq))
	for j, e := range uniq {
		out[e] = got[j]
	}
	return out, nil
}

// Load reads what rank of world needs of layer: the gate and the experts
// it owns (expert e lives on rank e / (E/W)); nothing else is read.
func (m *Model) Load(layer, rank, world int) (*backend.Weights, error) {
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("checkpoint: rank %d of %d", rank, world)
	}
	if m.Experts%world != 0 {
		return nil, fmt.Errorf("checkpoint %s: %d experts on %d ranks: the number of experts must be a multiple of the number of ranks", m.Dir, m.Experts, world)
	}
	if _, err := m.Config(layer); err != nil {
		return nil, err
	}
	gate, err := m.Gate(layer)
	if err != nil {
		return nil, err
	}
	el := m.Experts / world
	ids := make([]int, el)
	for j := range ids {
		ids[j] = rank*el + j
	}
	experts, err := m.LoadExperts(layer, ids)
	if err != nil {
		return nil, err
	}
	return &backend.Weights{Gate: gate, Experts: experts}, nil
}
