package checkpoint_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/checkpoint"
	"github.com/moerun/moerun/internal/checkpoint/cktest"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/rank"
)

func spec(n checkpoint.Naming, dtype string, shards int) cktest.Spec {
	return cktest.Spec{Naming: n, Hidden: 16, FFNHidden: 24, Experts: 8, TopK: 2, Layers: 3, DType: dtype, Shards: shards, Seed: 5}
}

// naive is the layer computed in float64 straight from the stored tensors
// ([out, in] layouts, no transposition), independently of packages
// reference and checkpoint: softmax gate, top-k (ties to the lower index),
// optional renormalisation, swiglu experts, weighted sum.
func naive(ts map[string]cktest.Tensor, n checkpoint.Naming, layer, h, in, e, k int, renorm bool, x []float32) []float64 {
	p := fmt.Sprintf("model.layers.%d.mlp.", layer)
	w1, w3, w2 := "gate_proj", "up_proj", "down_proj"
	if n == checkpoint.Mixtral {
		p = fmt.Sprintf("model.layers.%d.block_sparse_moe.", layer)
		w1, w3, w2 = "w1", "w3", "w2"
	}
	gate := ts[p+"gate.weight"].Data // [E, H]
	t := len(x) / h
	out := make([]float64, t*h)
	for tok := range t {
		xr := x[tok*h : (tok+1)*h]
		prob := make([]float64, e)
		mx := math.Inf(-1)
		for j := range e {
			for c := range h {
				prob[j] += float64(gate[j*h+c]) * float64(xr[c])
			}
			mx = math.Max(mx, prob[j])
		}
		var sum float64
		for j := range prob {
			prob[j] = math.Exp(prob[j] - mx)
			sum += prob[j]
		}
		idx := make([]int, e)
		for j := range idx {
			prob[j] /= sum
			idx[j] = j
		}
		sort.SliceStable(idx, func(a, b int) bool { return prob[idx[a]] > prob[idx[b]] })
		top := idx[:k]
		var wsum float64
		for _, j := range top {
			wsum += prob[j]
		}
		for _, j := range top {
			wt := prob[j]
			if renorm {
				wt /= wsum
			}
			g := ts[fmt.Sprintf("%sexperts.%d.%s.weight", p, j, w1)].Data // [I, H]
			u := ts[fmt.Sprintf("%sexperts.%d.%s.weight", p, j, w3)].Data // [I, H]
			d := ts[fmt.Sprintf("%sexperts.%d.%s.weight", p, j, w2)].Data // [H, I]
			act := make([]float64, in)
			for i := range in {
				var a, b float64
				for c := range h {
					a += float64(g[i*h+c]) * float64(xr[c])
					b += float64(u[i*h+c]) * float64(xr[c])
				}
				act[i] = a / (1 + math.Exp(-a)) * b
			}
			for c := range h {
				var y float64
				for i := range in {
					y += float64(d[c*in+i]) * act[i]
				}
				out[tok*h+c] += wt * y
			}
		}
	}
	return out
}

// runLayer loads layer from dir on w in-process ranks (each rank reading
// its own experts), runs one forward of tokens per rank through the CPU
// backend and compares every rank's output with the naive computation.
func runLayer(t *testing.T, dir string, ts map[string]cktest.Tensor, n checkpoint.Naming, layer, w int) {
	t.Helper()
	errs := transport.NewLocal(w, 0).Run(func(comm transport.Comm) error {
		r := comm.Rank()
		m, err := checkpoint.Open(dir)
		if err != nil {
			return err
		}
		defer m.Close()
		cfg, err := m.Config(layer)
		if err != nil {
			return err
		}
		cfg.MaxTokens, cfg.Seed = 32, 9
		weights, err := m.Load(layer, r, w)
		if err != nil {
			return err
		}
		rt, err := rank.Open(comm, cfg, rank.Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		l, err := rt.AddLayer(cfg, weights)
		if err != nil {
			return err
		}
		tokens := 5 + 9*r
		x := datagen.Tokens(cfg, r, tokens)
		out := make([]float32, len(x))
		if err := l.Forward(tokens, x, out); err != nil {
			return err
		}
		want := naive(ts, n, layer, cfg.Hidden, cfg.FFNHidden, cfg.Experts, cfg.TopK, cfg.Renormalize, x)
		var d2, r2 float64
		for i, v := range want {
			d2 += (float64(out[i]) - v) * (float64(out[i]) - v)
			r2 += v * v
		}
		if rel := math.Sqrt(d2 / r2); !(rel < 1e-6) {
			return fmt.Errorf("output differs from the tensors' own computation: relative error %g", rel)
		}
		// The verification rule, with experts read from the
		// checkpoint as bench --weights does.
		ids, _ := l.Routing()
		need := make([]int, len(ids))
		for i, e := range ids {
			need[i] = int(e)
		}
		experts, err := m.LoadExperts(layer, need)
		if err != nil {
			return err
		}
		gate, err := m.Gate(layer)
		if err != nil {
			return err
		}
		c := cfg
		c.Tokens = tokens
		rep := reference.Check(reference.CheckInput{Cfg: c, X: x, Gate: gate, Out: out, TopKIdx: ids,
			Expert: func(e int) *datagen.Expert { return experts[e] }})
		if !rep.OK() {
			return fmt.Errorf("verification: %v", rep.Failures)
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// TestLoadedLayerGivesTheTensorsOwnOutput: every naming, sharded or not,
// in every dtype, on 4 ranks.
func TestLoadedLayerGivesTheTensorsOwnOutput(t *testing.T) {
	for _, n := range []checkpoint.Naming{checkpoint.Mixtral, checkpoint.Qwen} {
		for _, dt := range []string{"F32", "BF16", "F16"} {
			for _, shards := range []int{1, 3} {
				t.Run(fmt.Sprintf("%s_%s_shards%d", n, dt, shards), func(t *testing.T) {
					dir := t.TempDir()
					ts, err := cktest.Write(dir, spec(n, dt, shards))
					if err != nil {
						t.Fatal(err)
					}
					if shards > 1 {
						if _, err := os.Stat(filepath.Join(dir, checkpoint.IndexFile)); err != nil {
							t.Fatal(err)
						}
					}
					runLayer(t, dir, ts, n, 1, 4)
				})
			}
		}
	}
}

func TestConfigFromConfigJSON(t *testing.T) {
	for _, tc := range []struct {
		name   string
		s      cktest.Spec
		dtype  config.DType
		renorm bool
		from   string
	}{
		{"mixtral bf16", spec(checkpoint.Mixtral, "BF16", 1), config.BF16, true, "mixtral always"},
		{"mixtral ignores norm_topk_prob", func() cktest.Spec {
			s := spec(checkpoint.Mixtral, "F32", 1)
			s.Config = map[string]any{"norm_topk_prob": false}
			return s
		}(), config.FP32, true, "mixtral always"},
		{"qwen f16 renorm", spec(checkpoint.Qwen, "F16", 1), config.FP32, true, "norm_topk_prob"},
		{"qwen2_moe no renorm", func() cktest.Spec {
			s := spec(checkpoint.Qwen, "F32", 1)
			s.ModelType = "qwen2_moe"
			s.Config = map[string]any{"norm_topk_prob": false, "shared_expert_intermediate_size": 0}
			return s
		}(), config.FP32, false, "norm_topk_prob"},
		{"deepseek_v2 keys, absent flag", func() cktest.Spec {
			s := spec(checkpoint.Qwen, "BF16", 2)
			s.ModelType = "deepseek_v2"
			s.Config = map[string]any{"num_experts": nil, "n_routed_experts": 8, "norm_topk_prob": nil,
				"n_shared_experts": nil, "routed_scaling_factor": 1.0, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
				"scoring_func": "softmax", "first_k_dense_replace": 1}
			s.Dense = []int{0}
			return s
		}(), config.BF16, false, "absent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := cktest.Write(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			m, err := checkpoint.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			c, err := m.Config(1)
			if err != nil {
				t.Fatal(err)
			}
			want := config.Layer{Hidden: 16, FFNHidden: 24, Experts: 8, TopK: 2, FFN: config.FFNSwiGLU,
				DType: tc.dtype, Renormalize: tc.renorm, Route: config.RouteSoftmax}
			if c != want {
				t.Errorf("config %+v, want %+v", c, want)
			}
			if !strings.Contains(m.RenormalizeFrom, tc.from) {
				t.Errorf("renormalisation from %q, want %q", m.RenormalizeFrom, tc.from)
			}
		})
	}
}

func TestRefusesWhatTheLayerDoesNotImplement(t *testing.T) {
	qwen := func(cfg map[string]any) cktest.Spec {
		s := spec(checkpoint.Qwen, "F32", 1)
		s.Config = cfg
		return s
	}
	for _, tc := range []struct {
		name  string
		s     cktest.Spec
		layer int
		want  string
	}{
		{"shared expert width", qwen(map[string]any{"shared_expert_intermediate_size": 64}), 1, "shared_expert_intermediate_size = 64: shared experts are not implemented"},
		{"shared experts count", qwen(map[string]any{"n_shared_experts": 2}), 1, "n_shared_experts = 2: shared experts"},
		{"sigmoid", qwen(map[string]any{"scoring_func": "sigmoid"}), 1, `scoring_func = "sigmoid": only softmax`},
		{"groups", qwen(map[string]any{"n_group": 8, "topk_group": 3}), 1, "n_group = 8: grouped routing"},
		{"topk group", qwen(map[string]any{"topk_group": 2}), 1, "topk_group = 2: grouped routing"},
		{"group-limited", qwen(map[string]any{"topk_method": "group_limited_greedy"}), 1, `topk_method = "group_limited_greedy"`},
		{"scaling", qwen(map[string]any{"routed_scaling_factor": 2.5}), 1, "routed_scaling_factor = 2.5: only 1"},
		{"gelu", qwen(map[string]any{"hidden_act": "gelu"}), 1, "hidden_act = gelu: only silu"},
		{"deepseek v3", qwen(map[string]any{"model_type": "deepseek_v3"}), 1, "deepseek_v3"},
		{"no experts key", qwen(map[string]any{"num_experts": nil}), 1, "no num_local_experts or num_experts or n_routed_experts"},
		{"norm flag not bool", qwen(map[string]any{"norm_topk_prob": "yes"}), 1, "norm_topk_prob = yes"},
		{"shared expert tensors", func() cktest.Spec {
			s := qwen(nil)
			s.ExtraTensors = map[string][]int64{"model.layers.1.mlp.shared_expert.gate_proj.weight": {24, 16}, "model.layers.1.mlp.shared_expert_gate.weight": {1, 16}}
			return s
		}(), 1, "model.layers.1.mlp.shared_expert.gate_proj.weight (shared experts are not implemented)"},
		{"gate bias", func() cktest.Spec {
			s := spec(checkpoint.Mixtral, "F32", 1)
			s.ExtraTensors = map[string][]int64{"model.layers.1.block_sparse_moe.gate.bias": {8}}
			return s
		}(), 1, "gate.bias (biases in the MoE block are not implemented)"},
		{"fused experts", func() cktest.Spec {
			s := qwen(nil)
			s.ExtraTensors = map[string][]int64{"model.layers.1.mlp.experts.gate_up_proj": {8, 16, 48}}
			return s
		}(), 1, "experts.gate_up_proj (fused or unknown expert tensors"},
		{"dense layer", func() cktest.Spec { s := qwen(nil); s.Dense = []int{1}; return s }(), 1, "layer 1 has no MoE block"},
		{"layer out of range", qwen(nil), 3, "layer 3: the checkpoint has layers 0..2"},
		{"shape mismatch", qwen(map[string]any{"moe_intermediate_size": 32}), 1, "has shape [24, 16], want [32, 16] from config.json"},
		{"experts mismatch", qwen(map[string]any{"num_experts": 16}), 1, "gate.weight has shape [8, 16], want [16, 16]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := cktest.Write(dir, tc.s); err != nil {
				t.Fatal(err)
			}
			m, err := checkpoint.Open(dir)
			if err == nil {
				_, err = m.Config(tc.layer)
				if err == nil {
					_, err = m.Load(tc.layer, 0, 1)
				}
				m.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEachRankReadsOnlyItsExperts counts the tensor bytes each rank reads:
// the gate and its own experts, nothing else.
func TestEachRankReadsOnlyItsExperts(t *testing.T) {
	for _, dt := range []string{"F32", "BF16"} {
		dir := t.TempDir()
		s := spec(checkpoint.Mixtral, dt, 2)
		if _, err := cktest.Write(dir, s); err != nil {
			t.Fatal(err)
		}
		es := int64(4)
		if dt == "BF16" {
			es = 2
		}
		gate := int64(s.Experts*s.Hidden) * es
		expert := int64(3*s.Hidden*s.FFNHidden) * es
		for r := range 4 {
			m, err := checkpoint.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			w, err := m.Load(2, r, 4)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := m.BytesRead(), gate+2*expert; got != want {
				t.Errorf("%s rank %d read %d bytes, want gate %d + 2 experts × %d = %d", dt, r, got, gate, expert, want)
			}
			var ids []int
			for e := range w.Experts {
				ids = append(ids, e)
			}
			sort.Ints(ids)
			if len(ids) != 2 || ids[0] != 2*r || ids[1] != 2*r+1 {
				t.Errorf("rank %d got experts %v", r, ids)
			}
			m.Close()
		}
	}
}

func TestLoadRefusesExpertsNotDivisibleByRanks(t *testing.T) {
	dir := t.TempDir()
	if _, err := cktest.Write(dir, spec(checkpoint.Qwen, "F32", 1)); err != nil {
		t.Fatal(err)
	}
	m, err := checkpoint.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Load(0, 0, 3); err == nil || !strings.Contains(err.Error(), "8 experts on 3 ranks") {
		t.Errorf("got %v", err)
	}
}

// writeRaw writes a safetensors file from a header string and data bytes.
func writeRaw(t *testing.T, dir, header string, data []byte) {
	t.Helper()
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), data...)
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSafetensorsRejectsBrokenFiles(t *testing.T) {
	cfg := `{"model_type":"qwen3_moe","hidden_size":2,"moe_intermediate_size":2,"num_experts":2,"num_experts_per_tok":1,"num_hidden_layers":1,"hidden_act":"silu"}`
	for _, tc := range []struct {
		name, header string
		data         []byte
		want         string
	}{
		{"offsets outside", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4), "lie outside the 4 data bytes"},
		{"size mismatch", `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, make([]byte, 8), "shape [3] of F32 needs 12"},
		{"unknown dtype", `{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1), `unknown dtype "Q4"`},
		{"overlap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8), "overlap"},
		{"not json", `{"a":`, nil, "not a JSON object"},
		{"huge header", "", nil, "header length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.name == "huge header" {
				b := binary.LittleEndian.AppendUint64(nil, 1<<40)
				os.WriteFile(filepath.Join(dir, "model.safetensors"), b, 0o644)
			} else {
				writeRaw(t, dir, tc.header, tc.data)
			}
			_, err := checkpoint.Open(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// fp8 is a known dtype that is refused when read, with a hint.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644)
	h := `{"model.layers.0.mlp.gate.weight":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]}}`
	writeRaw(t, dir, h, make([]byte, 4))
	m, err := checkpoint.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Gate(0); err == nil || !strings.Contains(err.Error(), "F8_E4M3: only F32, BF16 and F16") {
		t.Errorf("fp8: %v", err)
	}
}

func TestHalfConversionRoundTrips(t *testing.T) {
	for h := range 1 << 16 {
		f := checkpoint.HalfToFloat32(uint16(h))
		if f != f { // NaN: any NaN back is fine
			if g := checkpoint.Float32ToHalf(f); g&0x7c00 != 0x7c00 || g&0x3ff == 0 {
				t.Fatalf("NaN %#x came back as %#x", h, g)
			}
			continue
		}
		if g := checkpoint.Float32ToHalf(f); g != uint16(h) {
			t.Fatalf("half %#x → %v → %#x", h, f, g)
		}
	}
	for _, tc := range []struct {
		in   float32
		want uint16
	}{{1, 0x3c00}, {65504, 0x7bff}, {65520, 0x7c00}, {1 + 1.0/2048, 0x3c00}, {1 + 3.0/2048, 0x3c02}, {-2, 0xc000}, {5.96e-8, 0x0001}} {
		if got := checkpoint.Float32ToHalf(tc.in); got != tc.want {
			t.Errorf("Float32ToHalf(%v) = %#x, want %#x", tc.in, got, tc.want)
		}
	}
}
