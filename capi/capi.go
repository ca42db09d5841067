// Command capi is moerun's C ABI, built as a shared library:
//
//	go build -buildmode=c-shared -tags mpi -o build/libmoerun.so ./capi
//
// moerun.h declares it and README.md gives the rules (threads, MPI
// initialisation, RTLD_GLOBAL). Handles are integers: no Go pointer crosses
// into C. Every call recovers from panics and reports them as
// MOERUN_EINTERNAL.
package main

/*
#define MOERUN_NO_PROTOTYPES
#include <stdlib.h>
#include <string.h>
#include "moerun.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/moerun/moerun/bootstrap"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
	"github.com/moerun/moerun/rank"
)

func main() {} // a c-shared library has no main of its own

// state is the library's: handles, the MPI world and the last error.
var state struct {
	mu        sync.Mutex
	next      int64
	runtimes  map[int64]*rank.Runtime
	layers    map[int64]layerRef
	world     *bootstrap.World
	finalized bool
	lastErr   *C.char
}

type layerRef struct {
	rt int64
	l  *rank.Layer
}

func init() {
	state.runtimes = map[int64]*rank.Runtime{}
	state.layers = map[int64]layerRef{}
}

// errStatus is an error with the status code it returns.
type errStatus struct {
	code C.moerun_status
	err  error
}

func (e *errStatus) Error() string { return e.err.Error() }
func (e *errStatus) Unwrap() error { return e.err }

func invalid(format string, a ...any) error {
	return &errStatus{C.MOERUN_EINVAL, fmt.Errorf(format, a...)}
}

// call runs fn, records its error as the last error and turns it, or a
// panic, into a status. The calling thread's CUDA context is current again
// when it returns (the GPU backend makes its device's primary context
// current for its own work).
func call(name string, fn func() error) (st C.moerun_status) {
	// cgo runs an exported function on the thread that called it; keep
	// this goroutine there for the whole call (MPI and CUDA state are per
	// thread). The lock nests with the backends' own.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer func() {
		if p := recover(); p != nil {
			setError(fmt.Sprintf("%s: internal error (please report): panic: %v", name, p))
			st = C.MOERUN_EINTERNAL
		}
	}()
	restore := keepCallerContext()
	err := func() (err error) {
		defer func() {
			if rerr := restore(); rerr != nil && err == nil {
				err = rerr
			}
		}()
		return fn()
	}()
	if err == nil {
		return C.MOERUN_OK
	}
	setError(name + ": " + err.Error())
	return statusOf(err)
}

// Status codes by name, for tests (which cannot use cgo).
const (
	statusOK      = C.MOERUN_OK
	statusEINVAL  = C.MOERUN_EINVAL
	statusENOTSUP = C.MOERUN_ENOTSUP
	statusEFAILED = C.MOERUN_EFAILED
	statusECLOSED = C.MOERUN_ECLOSED
)

// statusOf is the status of a failed call's error: the code an errStatus
// carries; MOERUN_ENOTSUP for what the backend does not support
// (rank.ErrNotSupported, which the backends wrap: the CPU backend's device
// pointers); ECLOSED for
// a closed runtime; EFAILED otherwise.
func statusOf(err error) C.moerun_status {
	var es *errStatus
	switch {
	case err == nil:
		return C.MOERUN_OK
	case errors.As(err, &es):
		return es.code
	case errors.Is(err, rank.ErrNotSupported):
		return C.MOERUN_ENOTSUP
	case errors.Is(err, rank.ErrClosed):
		return C.MOERUN_ECLOSED
	}
	return C.MOERUN_EFAILED
}

func setError(msg string) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if state.lastErr != nil {
		C.free(unsafe.Pointer(state.lastErr))
	}
	state.lastErr = C.CString(msg)
}

var empty = C.CString("")

//export moerun_abi_version
func moerun_abi_version() C.int32_t { return C.MOERUN_ABI_VERSION }

//export moerun_last_error
func moerun_last_error() *C.char {
	state.mu.Lock()
	defer state.mu.Unlock()
	if state.lastErr == nil {
		return empty
	}
	return state.lastErr
}

// goConfig converts and checks a C configuration.
func goConfig(c *C.moerun_config) (config.Layer, error) {
	if c == nil {
		return config.Layer{}, invalid("no configuration given (NULL)")
	}
	var ffn config.FFN
	switch c.ffn {
	case C.MOERUN_FFN_RELU:
		ffn = config.FFNReLU
	case C.MOERUN_FFN_GELU:
		ffn = config.FFNGeLU
	case C.MOERUN_FFN_SWIGLU:
		ffn = config.FFNSwiGLU
	default:
		return config.Layer{}, invalid("ffn %d: want MOERUN_FFN_RELU, _GELU or _SWIGLU", int(c.ffn))
	}
	var dt config.DType
	switch c.dtype {
	case C.MOERUN_DTYPE_FP32:
		dt = config.FP32
	case C.MOERUN_DTYPE_TF32:
		dt = config.TF32
	case C.MOERUN_DTYPE_BF16:
		dt = config.BF16
	default:
		return config.Layer{}, invalid("dtype %d: want MOERUN_DTYPE_FP32, _TF32 or _BF16", int(c.dtype))
	}
	return config.Layer{
		MaxTokens: int(c.max_tokens), Hidden: int(c.hidden), FFNHidden: int(c.ffn_hidden),
		Experts: int(c.experts), TopK: int(c.topk), FFN: ffn, DType: dt,
		CapacityFactor: float64(c.capacity_factor), Renormalize: c.renormalize != 0,
		Route: config.RouteSoftmax, Seed: uint64(c.seed),
	}, nil
}

func goOptions(o *C.moerun_options) (rank.Options, error) {
	opts := rank.Options{Backend: rank.BackendCPU, LocalRank: -1}
	if o == nil {
		return opts, nil
	}
	switch o.backend {
	case C.MOERUN_BACKEND_CPU:
	case C.MOERUN_BACKEND_GPU:
		opts.Backend = rank.BackendGPU
	default:
		return opts, invalid("backend %d: want MOERUN_BACKEND_CPU or _GPU", int(o.backend))
	}
	if o.timeout_ms < 0 || o.watchdog_ms < 0 {
		return opts, invalid("timeout_ms %d, watchdog_ms %d: must not be negative", int64(o.timeout_ms), int64(o.watchdog_ms))
	}
	opts.LocalRank = int(o.local_rank)
	opts.KeepWeights = o.keep_weights != 0
	opts.Timeout = time.Duration(o.timeout_ms) * time.Millisecond
	opts.TimeoutName = "moerun_options.timeout_ms"
	opts.Watchdog = time.Duration(o.watchdog_ms) * time.Millisecond
	return opts, nil
}

func checkOpen() error {
	if state.finalized {
		return &errStatus{C.MOERUN_ECLOSED, errors.New("the library was finalized (moerun_finalize)")}
	}
	return nil
}

func addRuntime(rt *rank.Runtime, out *C.moerun_runtime) {
	state.mu.Lock()
	defer state.mu.Unlock()
	state.next++
	state.runtimes[state.next] = rt
	*out = C.moerun_runtime(state.next)
}

//export moerun_open
func moerun_open(opts *C.moerun_options, shape *C.moerun_config, out *C.moerun_runtime) C.moerun_status {
	return call("moerun_open", func() error {
		syncEnv() // what the host set after loading the library
		if err := checkOpen(); err != nil {
			return err
		}
		if out == nil {
			return invalid("rt is NULL")
		}
		o, err := goOptions(opts)
		if err != nil {
			return err
		}
		s, err := goConfig(shape)
		if err != nil {
			return err
		}
		if state.world == nil {
			bootstrap.DisableNVLS()
			w, err := bootstrap.Init(bootstrap.Options{Timeout: o.Timeout, TimeoutName: "moerun_options.timeout_ms"})
			// Init locks the calling goroutine to its thread for MPI; a call
			// from C runs on the caller's thread anyway, so balance it.
			runtime.UnlockOSThread()
			if err != nil {
				return err
			}
			state.world = w
		}
		// The GPU is the launcher's local rank's (local_rank is for
		// moerun_open_with_id); OpenWorld refuses GPUs on several nodes.
		looked := withLibraryCubin(&o)
		rt, err := rank.OpenWorld(state.world, s, o)
		if err != nil {
			return cubinNotFound(err, looked)
		}
		addRuntime(rt, out)
		return nil
	})
}

//export moerun_get_unique_id
func moerun_get_unique_id(id *C.uint8_t) C.moerun_status {
	return call("moerun_get_unique_id", func() error {
		syncEnv() // MOERUN_BOOTSTRAP_ADDR
		if id == nil {
			return invalid("id is NULL")
		}
		u, err := rank.NewUniqueID()
		if err != nil {
			return err
		}
		copy(unsafe.Slice((*byte)(unsafe.Pointer(id)), rank.UniqueIDSize), u[:])
		return nil
	})
}

//export moerun_open_with_id
func moerun_open_with_id(id *C.uint8_t, rnk, size C.int32_t, opts *C.moerun_options, shape *C.moerun_config, out *C.moerun_runtime) C.moerun_status {
	return call("moerun_open_with_id", func() error {
		syncEnv() // what the host set after loading the library
		if err := checkOpen(); err != nil {
			return err
		}
		if id == nil || out == nil {
			return invalid("id or rt is NULL")
		}
		if size < 1 || rnk < 0 || rnk >= size {
			return invalid("rank %d of %d: want 0 <= rank < size", int(rnk), int(size))
		}
		o, err := goOptions(opts)
		if err != nil {
			return err
		}
		if o.LocalRank < 0 {
			// torchrun and most launchers say it in LOCAL_RANK.
			o.LocalRank = 0
			if lr, err := strconv.Atoi(os.Getenv("LOCAL_RANK")); err == nil && lr >= 0 {
				o.LocalRank = lr
			}
		}
		s, err := goConfig(shape)
		if err != nil {
			return err
		}
		var u rank.UniqueID
		copy(u[:], unsafe.Slice((*byte)(unsafe.Pointer(id)), rank.UniqueIDSize))
		looked := withLibraryCubin(&o)
		rt, err := rank.OpenWithID(u, int(rnk), int(size), s, o)
		if err != nil {
			return cubinNotFound(err, looked)
		}
		addRuntime(rt, out)
		return nil
	})
}

func getRuntime(h C.moerun_runtime) (*rank.Runtime, error) {
	state.mu.Lock()
	defer state.mu.Unlock()
	rt, ok := state.runtimes[int64(h)]
	if !ok {
		return nil, invalid("runtime %d: no such runtime (closed, or never opened)", int64(h))
	}
	return rt, nil
}

func getLayer(h C.moerun_layer) (*rank.Layer, error) {
	state.mu.Lock()
	defer state.mu.Unlock()
	l, ok := state.layers[int64(h)]
	if !ok {
		return nil, invalid("layer %d: no such layer (its runtime is closed, or it was never added)", int64(h))
	}
	return l.l, nil
}

//export moerun_rank
func moerun_rank(h C.moerun_runtime, rnk, size *C.int32_t) C.moerun_status {
	return call("moerun_rank", func() error {
		rt, err := getRuntime(h)
		if err != nil {
			return err
		}
		if rnk != nil {
			*rnk = C.int32_t(rt.Rank())
		}
		if size != nil {
			*size = C.int32_t(rt.Size())
		}
		return nil
	})
}

//export moerun_device
func moerun_device(h C.moerun_runtime, ordinal *C.int32_t) C.moerun_status {
	return call("moerun_device", func() error {
		if ordinal == nil {
			return invalid("ordinal is NULL")
		}
		rt, err := getRuntime(h)
		if err != nil {
			return err
		}
		*ordinal = C.int32_t(rt.Device())
		return nil
	})
}

//export moerun_owned_experts
func moerun_owned_experts(h C.moerun_runtime, first, count *C.int32_t) C.moerun_status {
	return call("moerun_owned_experts", func() error {
		rt, err := getRuntime(h)
		if err != nil {
			return err
		}
		f, e := rt.Owned()
		if first != nil {
			*first = C.int32_t(f)
		}
		if count != nil {
			*count = C.int32_t(e - f)
		}
		return nil
	})
}

// floats views n floats of C memory (nil for a NULL pointer or n 0).
func floats(p *C.float, n int) []float32 {
	if p == nil || n == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), n)
}

func addLayer(h C.moerun_runtime, out *C.moerun_layer, add func(*rank.Runtime) (*rank.Layer, error)) error {
	if out == nil {
		return invalid("layer is NULL")
	}
	rt, err := getRuntime(h)
	if err != nil {
		return err
	}
	l, err := add(rt)
	if err != nil {
		return err
	}
	state.mu.Lock()
	defer state.mu.Unlock()
	state.next++
	state.layers[state.next] = layerRef{rt: int64(h), l: l}
	*out = C.moerun_layer(state.next)
	return nil
}

//export moerun_add_layer
func moerun_add_layer(h C.moerun_runtime, cfg *C.moerun_config, gate, w1, wu, w2, b1, b2 *C.float, out *C.moerun_layer) C.moerun_status {
	return call("moerun_add_layer", func() error {
		c, err := goConfig(cfg)
		if err != nil {
			return err
		}
		return addLayer(h, out, func(rt *rank.Runtime) (*rank.Layer, error) {
			w, err := hostWeights(rt, c, gate, w1, wu, w2, b1, b2)
			if err != nil {
				// Every rank must still take part: AddLayer reports the
				// problem to all of them.
				return rt.AddLayer(c, &rank.Weights{})
			}
			return rt.AddLayer(c, w)
		})
	})
}

// hostWeights views the caller's stacked arrays as this rank's experts.
// A NULL array that the FFN needs leaves that part empty, which AddLayer
// names on every rank.
func hostWeights(rt *rank.Runtime, c config.Layer, gate, w1, wu, w2, b1, b2 *C.float) (*rank.Weights, error) {
	if c.Hidden < 1 || c.FFNHidden < 1 || c.Experts < 1 || c.Experts%rt.Size() != 0 {
		return nil, errors.New("bad shape") // AddLayer names it
	}
	h, i := c.Hidden, c.FFNHidden
	first, end := rt.Owned()
	if c.Experts != rt.Shape().Experts {
		first, end = rt.Rank()*c.Experts/rt.Size(), (rt.Rank()+1)*c.Experts/rt.Size()
	}
	w := &rank.Weights{Gate: floats(gate, h*c.Experts), Experts: map[int]*datagen.Expert{}}
	swiglu := c.FFN == config.FFNSwiGLU
	at := func(p *C.float, j, n int) []float32 {
		all := floats(p, (end-first)*n)
		if all == nil {
			return nil
		}
		return all[j*n : (j+1)*n : (j+1)*n]
	}
	for e := first; e < end; e++ {
		j := e - first
		ex := &datagen.Expert{W1: at(w1, j, h*i), W2: at(w2, j, i*h)}
		if swiglu {
			ex.Wu = at(wu, j, h*i)
		} else {
			ex.B1, ex.B2 = at(b1, j, i), at(b2, j, h)
		}
		w.Experts[e] = ex
	}
	if swiglu && (b1 != nil || b2 != nil) {
		w.Experts[first].B1 = make([]float32, i) // AddLayer: "the swiglu FFN has none"
	}
	if !swiglu && wu != nil {
		w.Experts[first].Wu = make([]float32, h*i) // AddLayer: "only the swiglu FFN has one"
	}
	return w, nil
}

//export moerun_add_layer_seed
func moerun_add_layer_seed(h C.moerun_runtime, cfg *C.moerun_config, out *C.moerun_layer) C.moerun_status {
	return call("moerun_add_layer_seed", func() error {
		c, err := goConfig(cfg)
		if err != nil {
			return err
		}
		return addLayer(h, out, func(rt *rank.Runtime) (*rank.Layer, error) { return rt.AddLayer(c, nil) })
	})
}

//export moerun_add_layer_device
func moerun_add_layer_device(h C.moerun_runtime, cfg *C.moerun_config, w *C.moerun_device_weights, out *C.moerun_layer) C.moerun_status {
	return call("moerun_add_layer_device", func() error {
		c, err := goConfig(cfg)
		if err != nil {
			return err
		}
		if w == nil {
			return invalid("device weights are NULL")
		}
		dw := &rank.DeviceWeights{
			Gate: rank.DevicePtr(w.gate), W1: rank.DevicePtr(w.w1), Wu: rank.DevicePtr(w.wu),
			W2: rank.DevicePtr(w.w2), B1: rank.DevicePtr(w.b1), B2: rank.DevicePtr(w.b2),
		}
		return addLayer(h, out, func(rt *rank.Runtime) (*rank.Layer, error) { return rt.AddLayerDevice(c, dw) })
	})
}

// tokenArrays checks the token count and views x and out.
func tokenArrays(l *rank.Layer, tokens C.int32_t, x, out *C.float) ([]float32, []float32, error) {
	c := l.Config()
	if tokens < 0 || int(tokens) > c.MaxTokens {
		return nil, nil, invalid("tokens %d: must be in [0, max_tokens %d]", int(tokens), c.MaxTokens)
	}
	n := int(tokens) * c.Hidden
	if n > 0 && (x == nil || out == nil) {
		return nil, nil, invalid("x or out is NULL for %d tokens", int(tokens))
	}
	return floats(x, n), floats(out, n), nil
}

//export moerun_forward
func moerun_forward(h C.moerun_layer, tokens C.int32_t, x, out *C.float) C.moerun_status {
	return call("moerun_forward", func() error {
		l, err := getLayer(h)
		if err != nil {
			return err
		}
		xs, os, err := tokenArrays(l, tokens, x, out)
		if err != nil {
			return err
		}
		return l.Forward(int(tokens), xs, os)
	})
}

//export moerun_forward_device
func moerun_forward_device(h C.moerun_layer, tokens C.int32_t, x, out, stream C.uint64_t) C.moerun_status {
	return call("moerun_forward_device", func() error {
		l, err := getLayer(h)
		if err != nil {
			return err
		}
		return l.ForwardDevice(int(tokens), rank.DevicePtr(x), rank.DevicePtr(out), rank.Stream(stream))
	})
}

//export moerun_routing
func moerun_routing(h C.moerun_layer, tokens C.int32_t, idx *C.int32_t, wts *C.float) C.moerun_status {
	return call("moerun_routing", func() error {
		l, err := getLayer(h)
		if err != nil {
			return err
		}
		ids, ws := l.Routing()
		k := l.Config().TopK
		if int(tokens)*k != len(ids) {
			return invalid("tokens %d: the last host forward of layer %d had %d", int(tokens), l.ID(), len(ids)/k)
		}
		if idx != nil {
			copy(unsafe.Slice((*int32)(unsafe.Pointer(idx)), len(ids)), ids)
		}
		if wts != nil {
			copy(unsafe.Slice((*float32)(unsafe.Pointer(wts)), len(ws)), ws)
		}
		return nil
	})
}

//export moerun_verify
func moerun_verify(h C.moerun_layer, tokens C.int32_t, x, out *C.float, v *C.moerun_verification) C.moerun_status {
	return call("moerun_verify", func() error {
		l, err := getLayer(h)
		if err != nil {
			return err
		}
		xs, os, err := tokenArrays(l, tokens, x, out)
		if err != nil {
			return err
		}
		res, err := l.Verify(int(tokens), xs, os)
		if err != nil {
			return err
		}
		if v != nil {
			*v = C.moerun_verification{
				checked: C.int64_t(res.Checked), rel_err: C.double(res.RelErr), wrong: C.int64_t(res.Wrong),
				route_mismatch: C.int64_t(res.RouteMismatch),
			}
			if res.OK {
				v.ok = 1
			}
		}
		if !res.OK {
			msg := fmt.Sprintf("layer %d: verification failed: rel err %.3g, %d wrong, %d routing mismatches", l.ID(), res.RelErr, res.Wrong, res.RouteMismatch)
			if len(res.Failures) > 0 {
				msg += fmt.Sprintf(" (this rank: %v)", res.Failures)
			}
			return &errStatus{C.MOERUN_EVERIFY, errors.New(msg)}
		}
		return nil
	})
}

//export moerun_get_stats
func moerun_get_stats(h C.moerun_runtime, lh C.moerun_layer, st *C.moerun_stats) C.moerun_status {
	return call("moerun_get_stats", func() error {
		if st == nil {
			return invalid("st is NULL")
		}
		rt, err := getRuntime(h)
		if err != nil {
			return err
		}
		s := rt.Stats()
		if lh != 0 {
			state.mu.Lock()
			ref, ok := state.layers[int64(lh)]
			state.mu.Unlock()
			if !ok || ref.rt != int64(h) {
				return invalid("layer %d is not a layer of runtime %d", int64(lh), int64(h))
			}
			s = ref.l.Stats()
		}
		*st = C.moerun_stats{forwards: C.int64_t(s.Forwards), tokens: C.int64_t(s.Tokens),
			elapsed_ns: C.int64_t(s.Elapsed.Nanoseconds()), bytes_put: C.int64_t(s.BytesPut)}
		return nil
	})
}

// closeRuntime drops h and its layers from the tables and closes it.
func closeRuntime(h int64) error {
	state.mu.Lock()
	rt, ok := state.runtimes[h]
	delete(state.runtimes, h)
	for lh, ref := range state.layers {
		if ref.rt == h {
			delete(state.layers, lh)
		}
	}
	state.mu.Unlock()
	if !ok {
		return invalid("runtime %d: no such runtime (closed, or never opened)", h)
	}
	return rt.Close()
}

//export moerun_close
func moerun_close(h C.moerun_runtime) C.moerun_status {
	return call("moerun_close", func() error { return closeRuntime(int64(h)) })
}

//export moerun_finalize
func moerun_finalize() C.moerun_status {
	return call("moerun_finalize", func() error {
		if state.finalized {
			return nil
		}
		state.mu.Lock()
		hs := make([]int64, 0, len(state.runtimes))
		for h := range state.runtimes {
			hs = append(hs, h)
		}
		state.mu.Unlock()
		sort.Slice(hs, func(i, j int) bool { return hs[i] < hs[j] }) // the same order on every rank
		var errs []error
		for _, h := range hs {
			errs = append(errs, closeRuntime(h))
		}
		state.finalized = true
		if state.world != nil {
			errs = append(errs, state.world.Close())
			state.world = nil
		}
		return errors.Join(errs...)
	})
}
