package rank_test

import (
	"fmt"
	"sync"

	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/transport"
	"github.com/moerun/moerun/rank"
)

// onRanks runs fn as n ranks of one in-process job (what mpirun does with n
// processes) and prints each rank's lines in rank order.
func onRanks(n int, fn func(c rank.Comm) (string, error)) {
	lines := make([]string, n)
	transport.NewLocal(n, 0).Run(func(c rank.Comm) error {
		s, err := fn(c)
		if err != nil {
			s = "error: " + err.Error()
		}
		lines[c.Rank()] = s
		return nil
	})
	for r, s := range lines {
		fmt.Printf("rank %d: %s\n", r, s)
	}
}

// A driver opens one runtime per job and adds its MoE layers to it. Here
// the weights come from a seed; each rank gives its own tokens, as many as
// it has, and checks its output against the float64 reference.
func Example() {
	onRanks(4, func(c rank.Comm) (string, error) {
		shape := rank.Config{
			MaxTokens: 64, Hidden: 32, FFNHidden: 64, Experts: 8, TopK: 2,
			FFN: rank.FFNSwiGLU, DType: rank.FP32, Renormalize: true, Route: rank.RouteSoftmax, Seed: 1,
		}
		rt, err := rank.Open(c, shape, rank.Options{Backend: rank.BackendCPU})
		if err != nil {
			return "", err
		}
		defer rt.Close()
		layer, err := rt.AddLayer(shape, nil) // nil: weights from shape.Seed
		if err != nil {
			return "", err
		}
		tokens := 16 * (c.Rank() + 1) // T differs between ranks
		x := datagen.Tokens(shape, c.Rank(), tokens)
		out := make([]float32, tokens*shape.Hidden) // the caller owns the output
		if err := layer.Forward(tokens, x, out); err != nil {
			return "", err
		}
		v, err := layer.Verify(tokens, x, out)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d tokens, every rank verified: %t", tokens, v.OK), nil
	})
	// Output:
	// rank 0: 16 tokens, every rank verified: true
	// rank 1: 32 tokens, every rank verified: true
	// rank 2: 48 tokens, every rank verified: true
	// rank 3: 64 tokens, every rank verified: true
}

// Several layers share one runtime, each with the weights the driver gives
// it: the gate, and the experts this rank owns (Owned). Each layer's output
// is the next one's input.
func ExampleRuntime_AddLayer() {
	onRanks(2, func(c rank.Comm) (string, error) {
		shape := rank.Config{
			MaxTokens: 8, Hidden: 16, FFNHidden: 32, Experts: 4, TopK: 2,
			FFN: rank.FFNSwiGLU, DType: rank.FP32, Renormalize: true, Route: rank.RouteSoftmax,
		}
		rt, err := rank.Open(c, shape, rank.Options{KeepWeights: true})
		if err != nil {
			return "", err
		}
		defer rt.Close()
		first, end := rt.Owned()
		var layers []*rank.Layer
		for i := range 3 {
			cfg := shape
			cfg.Seed = uint64(10 + i) // stands for the model's weights of layer i
			w := &rank.Weights{Gate: datagen.Gate(cfg), Experts: map[int]*rank.Expert{}}
			for e := first; e < end; e++ {
				ex := datagen.ExpertWeights(cfg, e)
				w.Experts[e] = &ex
			}
			l, err := rt.AddLayer(cfg, w)
			if err != nil {
				return "", err
			}
			layers = append(layers, l)
		}
		x := datagen.Tokens(shape, c.Rank(), 8)
		ok := true
		for _, l := range layers {
			out := make([]float32, len(x))
			if err := l.Forward(8, x, out); err != nil {
				return "", err
			}
			v, err := l.Verify(8, x, out)
			if err != nil {
				return "", err
			}
			ok = ok && v.OK
			x = out
		}
		s := rt.Stats()
		return fmt.Sprintf("experts [%d, %d), %d forwards, verified: %t", first, end, s.Forwards, ok), nil
	})
	// Output:
	// rank 0: experts [0, 2), 3 forwards, verified: true
	// rank 1: experts [2, 4), 3 forwards, verified: true
}

// A driver started without MPI (torchrun) makes the id on rank 0 and sends
// it to every rank itself; here the ranks are goroutines and the id is
// shared memory.
func ExampleOpenWithID() {
	id, err := rank.NewUniqueID() // on rank 0 only
	if err != nil {
		fmt.Println(err)
		return
	}
	shape := rank.Config{
		MaxTokens: 4, Hidden: 8, FFNHidden: 8, Experts: 2, TopK: 1,
		FFN: rank.FFNReLU, DType: rank.FP32, Renormalize: true, Route: rank.RouteSoftmax, Seed: 3,
	}
	results := make([]string, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rt, err := rank.OpenWithID(id, r, 2, shape, rank.Options{})
			if err != nil {
				results[r] = err.Error()
				return
			}
			defer rt.Close()
			l, err := rt.AddLayer(shape, nil)
			if err != nil {
				results[r] = err.Error()
				return
			}
			x := datagen.Tokens(shape, r, 4)
			out := make([]float32, len(x))
			if err := l.Forward(4, x, out); err != nil {
				results[r] = err.Error()
				return
			}
			v, err := l.Verify(4, x, out)
			if err != nil {
				results[r] = err.Error()
				return
			}
			results[r] = fmt.Sprintf("rank %d of %d over TCP, verified: %t", rt.Rank(), rt.Size(), v.OK)
		}()
	}
	wg.Wait()
	for _, s := range results {
		fmt.Println(s)
	}
	// Output:
	// rank 0 of 2 over TCP, verified: true
	// rank 1 of 2 over TCP, verified: true
}

// Device pointers are for the GPU backend; the CPU backend says so.
func ExampleLayer_ForwardDevice() {
	onRanks(1, func(c rank.Comm) (string, error) {
		shape := rank.Config{
			MaxTokens: 4, Hidden: 8, FFNHidden: 8, Experts: 2, TopK: 1,
			FFN: rank.FFNReLU, DType: rank.FP32, Renormalize: true, Route: rank.RouteSoftmax,
		}
		rt, err := rank.Open(c, shape, rank.Options{})
		if err != nil {
			return "", err
		}
		defer rt.Close()
		l, err := rt.AddLayer(shape, nil)
		if err != nil {
			return "", err
		}
		return "", l.ForwardDevice(4, 0x7f0000000000, 0x7f0000100000, 0)
	})
	// Output:
	// rank 0: error: rank 0: layer 0: forward on device pointers: not supported by the cpu backend (it computes on host memory: use Forward)
}
