// Package datagen generates the layer's weights and tokens from a seed.
//
// Every element is a pure function of (seed, tensor, index): a counter-based
// hash, not a sequential generator. Any rank can therefore regenerate any
// tensor, or any single row of it, on its own and in parallel, which is what
// lets each rank verify its outputs without communication and lets a large
// configuration start in seconds.
package datagen

import (
	"math"
	"runtime"
	"sync"

	"github.com/moerun/moerun/internal/config"
)

// Tensor identifies one generated tensor; the zero value is never used.
type Tensor uint64

// Tensor kinds. An expert tensor's id also carries the expert index, and the
// token tensor's id carries the rank and the call.
const (
	kindTokens uint64 = iota + 1
	kindGate
	kindW1 // relu/gelu up projection, or swiglu gate projection
	kindB1
	kindW2 // relu/gelu down projection, or swiglu down projection
	kindB2
	kindWu // swiglu up projection
)

func tensorID(kind, a, b uint64) Tensor { return Tensor(kind<<56 | (a&0xffffff)<<32 | b&0xffffffff) }

// mix is the SplitMix64 finaliser: a bijection on 64 bits with full avalanche.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Uniform returns element i of tensor t for seed, uniform on [-1, 1) with 24
// random bits, so that the value is exact in float32.
func Uniform(seed uint64, t Tensor, i uint64) float32 {
	h := mix(mix(seed^0x9e3779b97f4a7c15) ^ mix(uint64(t)+0x632be59bd9b4e019) ^ (i * 0xd1342543de82ef95))
	h = mix(h)
	return float32(int32(h>>40)-(1<<23)) / (1 << 23)
}

// RoundedBF16 returns x if every value is a bf16 value already, else a copy
// rounded with RoundBF16: what a bf16 tensor made from x holds.
func RoundedBF16(x []float32) []float32 {
	for i, v := range x {
		if RoundBF16(v) != v && v == v {
			y := make([]float32, len(x))
			copy(y, x[:i])
			for j := i; j < len(x); j++ {
				y[j] = RoundBF16(x[j])
			}
			return y
		}
	}
	return x
}

// StoredAs returns the expert's weights as a layer of dtype d stores them:
// in bf16 mode the matrices (W1, Wu, W2) rounded to bf16 (biases stay
// float32), a copy only where a value changes; ex itself otherwise.
func (ex *Expert) StoredAs(d config.DType) *Expert {
	if ex == nil || d != config.BF16 {
		return ex
	}
	r := &Expert{W1: RoundedBF16(ex.W1), B1: ex.B1, W2: RoundedBF16(ex.W2), B2: ex.B2, Wu: RoundedBF16(ex.Wu)}
	if sameSlice(r.W1, ex.W1) && sameSlice(r.W2, ex.W2) && sameSlice(r.Wu, ex.Wu) {
		return ex
	}
	return r
}

// sameSlice says whether a and b are the same backing array and length.
func sameSlice(a, b []float32) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// RoundBF16 rounds an fp32 value to the nearest bf16 (ties to even) and
// widens it back, so that the value is exactly what a bf16 tensor holds.
func RoundBF16(x float32) float32 {
	b := math.Float32bits(x)
	if x != x { // NaN stays NaN
		return x
	}
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

// fill writes n elements of tensor t, scaled, in parallel.
func fill(dst []float32, seed uint64, t Tensor, scale float32, bf16 bool) {
	n := len(dst)
	workers := runtime.GOMAXPROCS(0)
	if n < 1<<16 || workers < 2 {
		fillRange(dst, 0, n, seed, t, scale, bf16)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() { defer wg.Done(); fillRange(dst, lo, hi, seed, t, scale, bf16) }()
	}
	wg.Wait()
}

func fillRange(dst []float32, lo, hi int, seed uint64, t Tensor, scale float32, bf16 bool) {
	for i := lo; i < hi; i++ {
		v := Uniform(seed, t, uint64(i)) * scale
		if bf16 {
			v = RoundBF16(v)
		}
		dst[i] = v
	}
}

// Scales keep activations of order one through both GEMMs for any width:
// weights are U(-1,1)/sqrt(fan_in), biases U(-1,1)/8. The gate is scaled up
// so that routing is decisive (top-k gaps well above the tie tolerance for
// most tokens) rather than near-uniform.
func weightScale(fanIn int) float32 { return float32(1 / math.Sqrt(float64(fanIn))) }

const (
	biasScale  = 0.125
	gateBoost  = 4
	tokenScale = 1
)

// Tokens returns rank r's input tokens for a call of t rows, [t, H]
// row-major. Row i is the same for every t > i, so calls of different sizes
// share their first rows.
func Tokens(c config.Layer, rank, t int) []float32 {
	x := make([]float32, t*c.Hidden)
	fill(x, c.Seed, tensorID(kindTokens, uint64(rank), 0), tokenScale, c.DType == config.BF16)
	return x
}

// Gate returns the gate weights Wg [H, E], replicated on every rank.
func Gate(c config.Layer) []float32 {
	g := make([]float32, c.Hidden*c.Experts)
	fill(g, c.Seed, tensorID(kindGate, 0, 0), gateBoost*weightScale(c.Hidden), c.DType == config.BF16)
	return g
}

// Expert holds one expert's weights, row-major.
// relu/gelu: W1 [H, I], B1 [I], W2 [I, H], B2 [H].
// swiglu: W1 is the gate projection Wg_e [H, I], Wu [H, I] the up projection,
// W2 the down projection Wd_e [I, H]; no biases (B1, B2 nil).
type Expert struct {
	W1, B1, W2, B2, Wu []float32
}

// ExpertWeights generates global expert e's weights.
func ExpertWeights(c config.Layer, e int) Expert {
	h, i, bf := c.Hidden, c.FFNHidden, c.DType == config.BF16
	ex := Expert{W1: make([]float32, h*i), W2: make([]float32, i*h)}
	fill(ex.W1, c.Seed, tensorID(kindW1, uint64(e), 0), weightScale(h), bf)
	fill(ex.W2, c.Seed, tensorID(kindW2, uint64(e), 0), weightScale(i), bf)
	if c.FFN == config.FFNSwiGLU {
		ex.Wu = make([]float32, h*i)
		fill(ex.Wu, c.Seed, tensorID(kindWu, uint64(e), 0), weightScale(h), bf)
		return ex
	}
	ex.B1 = make([]float32, i)
	ex.B2 = make([]float32, h)
	fill(ex.B1, c.Seed, tensorID(kindB1, uint64(e), 0), biasScale, bf)
	fill(ex.B2, c.Seed, tensorID(kindB2, uint64(e), 0), biasScale, bf)
	return ex
}
