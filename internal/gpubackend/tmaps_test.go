package gpubackend

import (
	"testing"
	"time"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/kernels"
	"github.com/moerun/moerun/symheap"
)

// The maps follow the kernel's indexing: rows of the received rows and of
// the intermediate over all sources, the weights of all local experts stacked by output column, 16-row boxes for
// swiglu's interleaved operands, and no Wu map outside swiglu.
func TestKernelTMapsFollowTheKernelsIndexing(t *testing.T) {
	for _, ffn := range []config.FFN{config.FFNReLU, config.FFNSwiGLU} {
		c := config.Default()
		c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts, c.TopK = 37, 64, 128, 192, 8, 2
		c.FFN, c.DType = ffn, config.BF16
		lay, err := symheap.Plan(c, 2)
		if err != nil {
			t.Fatal(err)
		}
		b := &Backend{rank: 1, world: 2, layout: lay, sym: 0x10000, local: 0x900000, flags: kernels.FlagsDefault | kernels.FlagTMA,
			opt: Options{Watchdog: 2 * time.Second, DebugWithholdPeer: -1}, info: KernelInfo{Grid: 264}}
		p := b.params(c)
		got := map[int]tmapSpec{}
		for _, s := range kernelTMaps(&p) {
			if _, dup := got[s.index]; dup {
				t.Errorf("%s: map %d listed twice", ffn, s.index)
			}
			got[s.index] = s
		}
		rows := uint64(2 * lay.RowsPerSource)
		wbox := uint32(kernels.TCTileN)
		if ffn == config.FFNSwiGLU {
			wbox = kernels.TMapSwiGLURows
		}
		want := map[int]tmapSpec{
			kernels.TMapRecv:  {"received rows", kernels.TMapRecv, 0x10000 + lay.RecvRows.Off, 128, rows, kernels.TCTileM},
			kernels.TMapInter: {"intermediate", kernels.TMapInter, p.Inter, 192, rows, kernels.TCTileM},
			kernels.TMapW1:    {"W1", kernels.TMapW1, p.W1, 128, 4 * 192, wbox},
			kernels.TMapW2:    {"W2", kernels.TMapW2, p.W2, 192, 4 * 128, kernels.TCTileN},
		}
		if ffn == config.FFNSwiGLU {
			want[kernels.TMapWu] = tmapSpec{"Wu", kernels.TMapWu, p.Wu, 128, 4 * 192, wbox}
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d maps, want %d: %+v", ffn, len(got), len(want), got)
		}
		for i, w := range want {
			if got[i] != w {
				t.Errorf("%s: map %d = %+v, want %+v", ffn, i, got[i], w)
			}
		}
		// Without the flag, or in fp32 mode, no map is encoded (no driver needed).
		for _, mod := range []func(*kernels.Params, *config.Layer){
			func(p *kernels.Params, _ *config.Layer) { p.Flags &^= kernels.FlagTMA },
			func(_ *kernels.Params, c *config.Layer) { c.DType = config.FP32 },
		} {
			q, cq := p, c
			q.TMap[0] = 1
			mod(&q, &cq)
			if err := b.setTMaps(&q, cq); err != nil || q.TMap != [kernels.TMaps * kernels.TMapWords]uint64{} {
				t.Errorf("%s: maps without TMA: err %v, maps not cleared", ffn, err)
			}
		}
	}
}
