package cpubackend

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

func layerCfg(seed uint64, ffn config.FFN) config.Layer {
	c := config.Default()
	c.Hidden, c.FFNHidden, c.Experts, c.TopK, c.MaxTokens, c.Tokens = 16, 24, 8, 2, 32, 0
	c.FFN, c.Seed = ffn, seed
	return c
}

// ownWeights is what a caller hands rank me: the gate and its own experts.
func ownWeights(c config.Layer, me, w int) *backend.Weights {
	wt := &backend.Weights{Gate: datagen.Gate(c), Experts: map[int]*datagen.Expert{}}
	el := c.ExpertsPerRank(w)
	for e := me * el; e < (me+1)*el; e++ {
		ex := datagen.ExpertWeights(c, e)
		wt.Experts[e] = &ex
	}
	return wt
}

// TestLayersInterleavedEqualReference holds three layers at once (caller
// weights and generated ones, two FFN kinds) and runs them interleaved: each
// output is bitwise the reference's for that layer's weights.
func TestLayersInterleavedEqualReference(t *testing.T) {
	cfgs := []config.Layer{layerCfg(3, config.FFNSwiGLU), layerCfg(4, config.FFNReLU), layerCfg(5, config.FFNSwiGLU)}
	runRanks(t, 4, func(comm transport.Comm) error {
		b := New(comm)
		defer b.Close()
		for id, c := range cfgs {
			var w *backend.Weights
			if id != 1 {
				w = ownWeights(c, comm.Rank(), comm.Size())
			}
			if err := b.PrepareLayer(id, c, w); err != nil {
				return err
			}
		}
		for step, id := range []int{2, 0, 1, 0, 2} {
			c := cfgs[id]
			c.Tokens = (step*7 + comm.Rank()*5) % 33
			c.Seed += uint64(step) // tokens differ per step; weights do not
			x := datagen.Tokens(c, comm.Rank(), c.Tokens)
			c.Seed = cfgs[id].Seed
			if _, err := b.ForwardLayer(id, c, x); err != nil {
				return err
			}
			want, _ := reference.Forward(c, x, datagen.Gate(c), reference.CachedExperts(c, 1<<30))
			got := b.Out64()
			for i := range want {
				if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
					return fmt.Errorf("step %d layer %d element %d: %v, reference %v", step, id, i, got[i], want[i])
				}
			}
		}
		return nil
	})
}

func TestPrepareLayerCopiesCallerWeights(t *testing.T) {
	runRanks(t, 1, func(comm transport.Comm) error {
		c := layerCfg(7, config.FFNSwiGLU)
		c.Tokens = 3
		b := New(comm)
		w := ownWeights(c, 0, 1)
		if err := b.PrepareLayer(0, c, w); err != nil {
			return err
		}
		x := datagen.Tokens(c, 0, c.Tokens)
		if _, err := b.ForwardLayer(0, c, x); err != nil {
			return err
		}
		before := append([]float64(nil), b.Out64()...)
		for i := range w.Gate {
			w.Gate[i] = 0
		}
		w.Experts[0].W1[0] = 1e9
		if _, err := b.ForwardLayer(0, c, x); err != nil {
			return err
		}
		for i, v := range b.Out64() {
			if v != before[i] {
				return fmt.Errorf("changing the caller's slices changed the output")
			}
		}
		return nil
	})
}

func TestCheckWeightsNamesTheProblem(t *testing.T) {
	c := layerCfg(1, config.FFNSwiGLU)
	for _, tc := range []struct {
		name  string
		edit  func(w *backend.Weights)
		wants string
	}{
		{"short gate", func(w *backend.Weights) { w.Gate = w.Gate[:5] }, "gate has 5 values, want hidden 16 × experts 8 = 128"},
		{"missing expert", func(w *backend.Weights) { delete(w.Experts, 3) }, "expert 3 is missing: rank 1 owns experts 2..3"},
		{"foreign expert", func(w *backend.Weights) { ex := datagen.ExpertWeights(c, 0); w.Experts[0] = &ex }, "expert 0 is not this rank's"},
		{"short W2", func(w *backend.Weights) { w.Experts[2].W2 = w.Experts[2].W2[:7] }, "expert 2 W2 has 7 values, want 384"},
		{"no Wu", func(w *backend.Weights) { w.Experts[2].Wu = nil }, "expert 2 Wu has 0 values"},
		{"biases", func(w *backend.Weights) { w.Experts[2].B1 = make([]float32, 24) }, "the swiglu FFN has none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := ownWeights(c, 1, 4)
			tc.edit(w)
			err := CheckWeights(c, w, 1, 4)
			if err == nil || !strings.Contains(err.Error(), tc.wants) {
				t.Errorf("got %v, want an error containing %q", err, tc.wants)
			}
			b := New(transport.NewLocal(4, 0).Rank(1))
			if err := b.PrepareLayer(0, c, w); err == nil {
				t.Errorf("PrepareLayer accepted the weights")
			}
		})
	}
	if err := CheckWeights(c, ownWeights(c, 1, 4), 1, 4); err != nil {
		t.Errorf("good weights refused: %v", err)
	}
}

func TestForwardLayerRefusesUnknownLayerAndOtherShape(t *testing.T) {
	runRanks(t, 1, func(comm transport.Comm) error {
		b := New(comm)
		c := layerCfg(1, config.FFNReLU)
		if _, err := b.ForwardLayer(0, c, nil); err == nil || !strings.Contains(err.Error(), "never prepared") {
			return fmt.Errorf("unknown layer: %v", err)
		}
		if err := b.PrepareLayer(0, c, nil); err != nil {
			return err
		}
		d := c
		d.Hidden = 8
		if _, err := b.ForwardLayer(0, d, nil); err == nil {
			return fmt.Errorf("forward with another hidden size succeeded")
		}
		c.Tokens = 33
		if _, err := b.ForwardLayer(0, c, make([]float32, 33*16)); err == nil {
			return fmt.Errorf("forward above max-tokens succeeded")
		}
		return nil
	})
}
