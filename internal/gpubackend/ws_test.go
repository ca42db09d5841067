package gpubackend

import (
	"testing"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/symheap"
)

// The host's choice of kernel follows the kernel's own ws_tiles predicate
// (kernels/expert.cuh): bf16, relu or gelu, not pooled, H and I at least
// kernels.WSMinDim; without a loaded MOE_WS kernel, always the default.
func TestWSFor(t *testing.T) {
	paper := symheap.Layout{Hidden: 2048, TopK: 2, Experts: 32}
	layer := func(d config.DType, f config.FFN, tokens, ffnHidden int) config.Layer {
		return config.Layer{DType: d, FFN: f, Tokens: tokens, FFNHidden: ffnHidden}
	}
	// Pooled at W >= 2 when T*k <= E*MergeRows: T <= 2048 at the paper's shape.
	pooledT := 32 * kernels.MergeRows / 2
	cases := []struct {
		name  string
		world int
		lay   symheap.Layout
		cfg   config.Layer
		want  bool
	}{
		{"bf16 relu T=8192 W=4", 4, paper, layer(config.BF16, config.FFNReLU, 8192, 2048), true},
		{"bf16 gelu T=4096 W=2", 2, paper, layer(config.BF16, config.FFNGeLU, 4096, 2048), true},
		{"bf16 relu, just above pooling", 2, paper, layer(config.BF16, config.FFNReLU, pooledT+1, 2048), true},
		{"bf16 relu, pooled", 2, paper, layer(config.BF16, config.FFNReLU, pooledT, 2048), false},
		{"bf16 relu T=128 W=1 (no pooling on one rank)", 1, paper, layer(config.BF16, config.FFNReLU, 128, 2048), true},
		{"bf16 swiglu", 4, paper, layer(config.BF16, config.FFNSwiGLU, 8192, 2048), false},
		{"tf32", 4, paper, layer(config.TF32, config.FFNReLU, 8192, 2048), false},
		{"fp32", 4, paper, layer(config.FP32, config.FFNReLU, 8192, 2048), false},
		{"I below WSMinDim", 4, paper, layer(config.BF16, config.FFNReLU, 8192, kernels.WSMinDim-64), false},
		{"H below WSMinDim", 1, symheap.Layout{Hidden: 64, TopK: 2, Experts: 8}, layer(config.BF16, config.FFNReLU, 8192, 2048), false},
	}
	for _, c := range cases {
		b := &Backend{world: c.world, layout: c.lay, ws: &wsKernel{loaded: true}}
		if got := b.wsFor(c.cfg); got != c.want {
			t.Errorf("%s: wsFor = %v, want %v", c.name, got, c.want)
		}
		b.ws = nil
		if b.wsFor(c.cfg) {
			t.Errorf("%s: chose the MOE_WS kernel without one loaded", c.name)
		}
	}
}
