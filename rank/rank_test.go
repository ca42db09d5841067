package rank

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/cpubackend"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/internal/reference"
	"github.com/moerun/moerun/internal/transport"
)

func small() config.Layer {
	c := config.Default()
	c.Tokens, c.MaxTokens, c.Hidden, c.FFNHidden, c.Experts = 0, 32, 16, 16, 4
	return c
}

// runRanks runs fn on n in-process ranks and returns their errors.
func runRanks(n int, fn func(c Comm) error) []error {
	return transport.NewLocal(n, 10*time.Second).Run(fn)
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// allFail checks that every rank failed with an error containing want.
func allFail(t *testing.T, errs []error, want string) {
	t.Helper()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("rank %d: got %v, want an error containing %q", r, err, want)
		}
	}
}

// ownWeights are the weights a driver hands rank me: the gate and its experts.
func ownWeights(c config.Layer, me, w int) *Weights {
	wt := &Weights{Gate: datagen.Gate(c), Experts: map[int]*datagen.Expert{}}
	el := c.ExpertsPerRank(w)
	for e := me * el; e < (me+1)*el; e++ {
		ex := datagen.ExpertWeights(c, e)
		wt.Experts[e] = &ex
	}
	return wt
}

// TestForwardWithTokensPerCallAndRank runs two ranks through three calls
// with different token counts on each rank, each bitwise equal to the
// reference (rounded to float32).
func TestForwardWithTokensPerCallAndRank(t *testing.T) {
	calls := [][2]int{{5, 32}, {0, 7}, {32, 1}}
	noErrors(t, runRanks(2, func(comm Comm) error {
		r := comm.Rank()
		rt, err := Open(comm, small(), Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		l, err := rt.AddLayer(small(), nil)
		if err != nil {
			return err
		}
		for _, call := range calls {
			c := l.Config()
			c.Tokens = call[r]
			x := datagen.Tokens(c, r, c.Tokens)
			out := make([]float32, len(x))
			if err := l.Forward(c.Tokens, x, out); err != nil {
				return err
			}
			want, _ := reference.Forward(c, x, datagen.Gate(c), reference.CachedExperts(c, 1<<20))
			for i, v := range want {
				if float32(v) != out[i] {
					return fmt.Errorf("tokens %d element %d: %v, want %v", c.Tokens, i, out[i], v)
				}
			}
		}
		if s := rt.Stats(); s.Forwards != 3 || s.Tokens != int64(calls[0][r]+calls[1][r]+calls[2][r]) {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	}))
}

// TestStackOfLayersWithCallerWeights chains three layers with caller-given
// weights (each layer's output is the next one's input) on four ranks and
// checks every output against the reference, directly and with Verify.
func TestStackOfLayersWithCallerWeights(t *testing.T) {
	shape := small()
	shape.Experts, shape.FFNHidden, shape.TopK = 8, 24, 2
	cfgs := make([]config.Layer, 3)
	for i := range cfgs {
		cfgs[i] = shape
		cfgs[i].FFN, cfgs[i].Seed = config.FFNSwiGLU, uint64(100+i)
	}
	cfgs[1].FFN, cfgs[1].FFNHidden, cfgs[1].Renormalize = config.FFNGeLU, 16, false
	noErrors(t, runRanks(4, func(comm Comm) error {
		me := comm.Rank()
		rt, err := Open(comm, shape, Options{KeepWeights: true})
		if err != nil {
			return err
		}
		defer rt.Close()
		var layers []*Layer
		for _, c := range cfgs {
			l, err := rt.AddLayer(c, ownWeights(c, me, comm.Size()))
			if err != nil {
				return err
			}
			layers = append(layers, l)
		}
		for step := range 3 {
			tokens := (step*11 + me*7) % (shape.MaxTokens + 1)
			x := datagen.Tokens(config.Layer{Hidden: shape.Hidden, Seed: uint64(step)}, me, tokens)
			for i, l := range layers {
				out := make([]float32, tokens*shape.Hidden)
				if err := l.Forward(tokens, x, out); err != nil {
					return err
				}
				c := cfgs[i]
				c.Tokens = tokens
				want, _ := reference.Forward(c, x, datagen.Gate(c), reference.CachedExperts(c, 1<<20))
				for j, v := range want {
					if float32(v) != out[j] {
						return fmt.Errorf("step %d layer %d element %d: %v, want %v", step, i, j, out[j], v)
					}
				}
				v, err := l.Verify(tokens, x, out)
				if err != nil {
					return err
				}
				if !v.OK || v.Wrong != 0 || v.RelErr > 1e-7 {
					return fmt.Errorf("step %d layer %d: verify %+v", step, i, v)
				}
				x = out
			}
		}
		if s := layers[1].Stats(); s.Forwards != 3 || s.BytesPut <= 0 {
			return fmt.Errorf("layer 1 stats %+v", s)
		}
		return nil
	}))
}

func TestVerifyFailsOnEveryRankWhenOneOutputIsWrong(t *testing.T) {
	errs := runRanks(2, func(comm Comm) error {
		rt, err := Open(comm, small(), Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		l, err := rt.AddLayer(small(), nil)
		if err != nil {
			return err
		}
		x := datagen.Tokens(small(), comm.Rank(), 9)
		out := make([]float32, len(x))
		if err := l.Forward(9, x, out); err != nil {
			return err
		}
		if comm.Rank() == 1 {
			out[17] += 1
		}
		v, err := l.Verify(9, x, out)
		if err != nil {
			return err
		}
		if v.OK || v.Wrong == 0 {
			return fmt.Errorf("verify passed a wrong output: %+v", v)
		}
		if comm.Rank() == 1 && len(v.Failures) == 0 {
			return fmt.Errorf("rank 1 names no failure")
		}
		return nil
	})
	noErrors(t, errs)
}

func TestAddLayerErrorOnOneRankFailsEveryRank(t *testing.T) {
	errs := runRanks(3, func(comm Comm) error {
		c := small()
		c.Experts = 6
		rt, err := Open(comm, c, Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		w := ownWeights(c, comm.Rank(), 3)
		if comm.Rank() == 2 {
			w.Gate = w.Gate[:3]
		}
		_, err = rt.AddLayer(c, w)
		return err
	})
	allFail(t, errs, "gate has 3 values")
	for r := range 2 {
		if errs[r] != nil && !strings.Contains(errs[r].Error(), "rank 2 failed") {
			t.Errorf("rank %d does not name rank 2: %v", r, errs[r])
		}
	}
}

func TestRanksThatDisagreeAreRefused(t *testing.T) {
	errs := runRanks(2, func(comm Comm) error {
		c := small()
		rt, err := Open(comm, c, Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		if comm.Rank() == 1 {
			c.FFN = config.FFNSwiGLU
		}
		_, err = rt.AddLayer(c, nil)
		return err
	})
	allFail(t, errs, "ranks disagree: rank 1 has layer 0")
	errs = runRanks(2, func(comm Comm) error {
		c := small()
		c.MaxTokens += comm.Rank()
		_, err := Open(comm, c, Options{})
		return err
	})
	allFail(t, errs, "ranks disagree")
}

func TestLayerMustFitTheShape(t *testing.T) {
	noErrors(t, runRanks(1, func(comm Comm) error {
		rt, err := Open(comm, small(), Options{})
		if err != nil {
			return err
		}
		c := small()
		c.Hidden, c.FFNHidden = 32, 64
		_, err = rt.AddLayer(c, nil)
		if err == nil || !strings.Contains(err.Error(), "hidden 32 (the runtime's is 16)") || !strings.Contains(err.Error(), "ffn-hidden 64") {
			return fmt.Errorf("got %v", err)
		}
		c = small()
		c.FFNHidden, c.MaxTokens = 8, 0 // narrower FFN fits; 0 takes the shape's max
		l, err := rt.AddLayer(c, nil)
		if err != nil {
			return err
		}
		if l.Config().MaxTokens != 32 || l.ID() != 0 {
			return fmt.Errorf("layer config %v id %d", l.Config(), l.ID())
		}
		return nil
	}))
}

type failing struct{ backend.Backend }

func (failing) Forward(config.Layer, []float32) (backend.Timing, error) {
	return backend.Timing{}, errors.New("watchdog: rank 0 waited 2s for a signal")
}

func TestFailedForwardIsSticky(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	rt, err := OpenBackend(comm, failing{cpubackend.New(comm)}, small(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := rt.AddLayer(small(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Forward(1, make([]float32, 16), make([]float32, 16)); err == nil {
		t.Fatal("the failing forward succeeded")
	}
	err = l.Forward(1, make([]float32, 16), make([]float32, 16))
	if err == nil || !strings.Contains(err.Error(), "previous forward failed") || !strings.Contains(err.Error(), "watchdog") {
		t.Errorf("second forward: %v", err)
	}
	if _, err := rt.AddLayer(small(), nil); err == nil {
		t.Errorf("add layer after a failed forward succeeded")
	}
	rt.Close()
	if err := l.Forward(1, nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("forward after close: %v", err)
	}
	if err := rt.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// A backend that holds one generated layer (the GPU backend until it
// implements backend.Layers) refuses caller weights and a second layer.
func TestSingleLayerBackendRefusesWhatItCannotHold(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	rt, err := OpenBackend(comm, struct{ backend.Backend }{cpubackend.New(comm)}, small(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.AddLayer(small(), ownWeights(small(), 0, 1)); !errors.Is(err, ErrNotSupported) {
		t.Errorf("caller weights: %v", err)
	}
	l, err := rt.AddLayer(small(), nil)
	if err != nil {
		t.Fatal(err)
	}
	x := datagen.Tokens(small(), 0, 3)
	out := make([]float32, len(x))
	if err := l.Forward(3, x, out); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.AddLayer(small(), nil); !errors.Is(err, ErrNotSupported) {
		t.Errorf("second layer: %v", err)
	}
}

func TestForwardRefusesBadArguments(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	c := small()
	c.Experts = 0
	if _, err := Open(comm, c, Options{}); err == nil {
		t.Error("opened with 0 experts")
	}
	if _, err := Open(comm, small(), Options{Backend: "tpu"}); err == nil || !strings.Contains(err.Error(), `backend "tpu"`) {
		t.Errorf("backend tpu: %v", err)
	}
	rt, err := Open(comm, small(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	l, err := rt.AddLayer(small(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Forward(33, make([]float32, 33*16), make([]float32, 33*16)); err == nil {
		t.Error("tokens above max-tokens accepted")
	}
	if err := l.Forward(2, make([]float32, 32), make([]float32, 31)); err == nil || !strings.Contains(err.Error(), "out 31") {
		t.Errorf("short out: %v", err)
	}
	// Longer buffers are fine: the first tokens·H values are used.
	if err := l.Forward(1, make([]float32, 64), make([]float32, 64)); err != nil {
		t.Errorf("long buffers: %v", err)
	}
	if _, err := l.Verify(2, make([]float32, 32), make([]float32, 32)); err == nil || !strings.Contains(err.Error(), "had 1 tokens") {
		t.Errorf("verify of another forward: %v", err)
	}
}

func TestDevicePointersAreNotSupportedByTheCPUBackend(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	rt, err := Open(comm, small(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	_, err = rt.AddLayerDevice(small(), &DeviceWeights{Gate: 1, W1: 2, W2: 3})
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "not supported by the cpu backend") {
		t.Errorf("AddLayerDevice: %v", err)
	}
	l, err := rt.AddLayer(small(), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = l.ForwardDevice(4, 0x1000, 0x2000, 0)
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "not supported by the cpu backend") {
		t.Errorf("ForwardDevice: %v", err)
	}
}

// TestOpenWithIDRunsOverTCP is the torchrun path: rank 0 makes the id, the
// "driver" hands it to every rank, and the ranks run over TCP.
func TestOpenWithIDRunsOverTCP(t *testing.T) {
	id, err := NewUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	shape := small()
	shape.Experts = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = func() error {
				rt, err := OpenWithID(id, r, n, shape, Options{Timeout: 10 * time.Second, KeepWeights: true})
				if err != nil {
					return err
				}
				defer rt.Close()
				if rt.Rank() != r || rt.Size() != n {
					return fmt.Errorf("rank %d of %d", rt.Rank(), rt.Size())
				}
				if f, e := rt.Owned(); f != 2*r || e != 2*r+2 {
					return fmt.Errorf("owns [%d, %d)", f, e)
				}
				l, err := rt.AddLayer(shape, ownWeights(shape, r, n))
				if err != nil {
					return err
				}
				x := datagen.Tokens(shape, r, 10+r)
				out := make([]float32, len(x))
				if err := l.Forward(10+r, x, out); err != nil {
					return err
				}
				v, err := l.Verify(10+r, x, out)
				if err != nil {
					return err
				}
				if !v.OK || v.RelErr > 1e-7 {
					return fmt.Errorf("verify %+v", v)
				}
				if s := rt.Stats(); s.BytesPut == 0 {
					return fmt.Errorf("no bytes put: %+v", s)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	noErrors(t, errs)
}

func TestVerifyNeedsKeptWeights(t *testing.T) {
	errs := runRanks(2, func(comm Comm) error {
		rt, err := Open(comm, small(), Options{})
		if err != nil {
			return err
		}
		defer rt.Close()
		l, err := rt.AddLayer(small(), ownWeights(small(), comm.Rank(), 2))
		if err != nil {
			return err
		}
		x := datagen.Tokens(small(), 0, 2)
		out := make([]float32, len(x))
		if err := l.Forward(2, x, out); err != nil {
			return err
		}
		_, err = l.Verify(2, x, out)
		return err
	})
	allFail(t, errs, "Options.KeepWeights")
}

func TestVerifyReportsRelativeError(t *testing.T) {
	// Float32 rounding of the output is the only difference from the
	// float64 reference: the relative error is tiny but not always zero.
	noErrors(t, runRanks(1, func(comm Comm) error {
		rt, err := Open(comm, small(), Options{})
		if err != nil {
			return err
		}
		l, err := rt.AddLayer(small(), nil)
		if err != nil {
			return err
		}
		x := datagen.Tokens(small(), 0, 32)
		out := make([]float32, len(x))
		if err := l.Forward(32, x, out); err != nil {
			return err
		}
		v, err := l.Verify(32, x, out)
		if err != nil {
			return err
		}
		if !v.OK || v.RelErr > 1e-7 || math.IsNaN(v.RelErr) || v.Checked != 32 {
			return fmt.Errorf("verify %+v", v)
		}
		return nil
	}))
}

// fakeDevice is a backend that takes device pointers: the CPU backend for
// everything else, and a device forward that refuses bf16 (a stand-in for
// any refusal before device work: ErrNotSupported), or fails at its launch
// when launchErr is set.
type fakeDevice struct {
	backend.Backend
	launchErr error
	forwards  int
}

func (f *fakeDevice) PrepareLayerDevice(int, config.Layer, *DeviceWeights) error { return nil }

func (f *fakeDevice) ForwardLayerDevice(id int, cfg config.Layer, x, out DevicePtr, s Stream) (backend.Timing, error) {
	if cfg.DType == config.BF16 {
		return backend.Timing{}, fmt.Errorf("a forward on device pointers in bf16 mode is %w yet", backend.ErrNotSupported)
	}
	if cfg.Tokens > 0 && x == 0 {
		return backend.Timing{}, backend.Refuse(fmt.Errorf("forward of layer %d: null device pointer", id))
	}
	if f.launchErr != nil {
		return backend.Timing{}, f.launchErr
	}
	f.forwards++
	return backend.Timing{}, nil
}

func openFakeDevice(t *testing.T, dt config.DType) (*Runtime, *fakeDevice, *Layer) {
	t.Helper()
	comm := transport.NewLocal(1, 0).Rank(0)
	c := small()
	c.DType = dt
	fd := &fakeDevice{Backend: cpubackend.New(comm)}
	rt, err := OpenBackend(comm, fd, c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	l, err := rt.AddLayerDevice(c, &DeviceWeights{Gate: 1, W1: 2, W2: 3, B1: 4, B2: 5})
	if err != nil {
		t.Fatal(err)
	}
	return rt, fd, l
}

// A device forward the backend refuses (bf16, a bad argument) is an error
// wrapping ErrNotSupported (or a plain refusal) and leaves the runtime
// usable; one that fails at its launch makes it refuse every later forward.
func TestDeviceForwardRefusalLeavesTheRuntimeUsable(t *testing.T) {
	if ErrNotSupported != backend.ErrNotSupported {
		t.Fatal("rank.ErrNotSupported is not backend.ErrNotSupported")
	}
	rt, fd, l := openFakeDevice(t, config.BF16)
	for i := range 2 {
		err := l.ForwardDevice(2, 0x1000, 0x2000, 0)
		if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "bf16") {
			t.Fatalf("bf16 device forward %d: %v", i, err)
		}
	}
	if err := rt.usable("forward"); err != nil {
		t.Errorf("the runtime after a refused forward: %v", err)
	}
	if fd.forwards != 0 {
		t.Errorf("%d forwards ran", fd.forwards)
	}

	_, fd, l = openFakeDevice(t, config.FP32)
	if err := l.ForwardDevice(2, 0, 0x2000, 0); err == nil || errors.Is(err, ErrNotSupported) {
		t.Fatalf("null x: %v", err)
	}
	if err := l.ForwardDevice(2, 0x1000, 0x2000, 0); err != nil {
		t.Fatalf("forward after a refused argument: %v", err)
	}
	if fd.forwards != 1 {
		t.Errorf("%d forwards ran, want 1", fd.forwards)
	}
}

func TestDeviceForwardLaunchFailureFailsTheRuntime(t *testing.T) {
	rt, fd, l := openFakeDevice(t, config.FP32)
	fd.launchErr = errors.New("kernel launch failed: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
	err := l.ForwardDevice(2, 0x1000, 0x2000, 0)
	if err == nil || errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "launch failed") {
		t.Fatalf("failed launch: %v", err)
	}
	fd.launchErr = nil
	err = l.ForwardDevice(2, 0x1000, 0x2000, 0)
	if err == nil || !strings.Contains(err.Error(), "previous forward failed") || !strings.Contains(err.Error(), "launch failed") {
		t.Errorf("forward after a failed launch: %v", err)
	}
	if err := rt.usable("add layer"); err == nil {
		t.Error("the runtime is usable after a failed launch")
	}
	if fd.forwards != 0 {
		t.Errorf("%d forwards ran", fd.forwards)
	}
}

func TestDeviceIsMinusOneWithoutAGPU(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	rt, err := Open(comm, small(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if d := rt.Device(); d != -1 {
		t.Errorf("Device() = %d on the cpu backend, want -1", d)
	}
}
