// Package rank is the per-rank driver of the MoE layer: it binds a backend to
// a layer configuration inside a job, runs forwards with a per-call token
// count, and, once a forward has failed, refuses further forwards until it is
// closed (a failed forward may leave peers and device state mid-flight).
package rank

import (
	"errors"
	"fmt"

	"github.com/moerun/moerun/internal/backend"
	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/transport"
)

// ErrClosed is returned by calls on a closed runtime.
var ErrClosed = errors.New("rank: runtime is closed")

// Runtime is one rank's layer runtime. Its methods are collective: every rank
// of the job calls them in the same order.
type Runtime struct {
	comm   transport.Comm
	b      backend.Backend
	cfg    config.Layer
	failed error
}

// Open validates cfg for the job's size and prepares b for it (weights
// generated from cfg.Seed, buffers sized for cfg.MaxTokens).
func Open(comm transport.Comm, b backend.Backend, cfg config.Layer) (*Runtime, error) {
	if err := cfg.Validate(comm.Size()); err != nil {
		return nil, fmt.Errorf("rank %d: open: %w", comm.Rank(), err)
	}
	if err := b.Prepare(cfg); err != nil {
		return nil, fmt.Errorf("rank %d: open %s backend: %w", comm.Rank(), b.Name(), err)
	}
	return &Runtime{comm: comm, b: b, cfg: cfg}, nil
}

// Config returns the configuration the runtime was opened with.
func (r *Runtime) Config() config.Layer { return r.cfg }

// Forward runs the layer on this rank's tokens x [tokens, H]; tokens may
// differ between ranks and between calls, from 0 to MaxTokens.
func (r *Runtime) Forward(tokens int, x []float32) (*backend.Result, backend.Timing, error) {
	if r.b == nil {
		return nil, backend.Timing{}, ErrClosed
	}
	if r.failed != nil {
		return nil, backend.Timing{}, fmt.Errorf("rank %d: a previous forward failed, close and reopen the runtime: %w", r.comm.Rank(), r.failed)
	}
	if tokens < 0 || tokens > r.cfg.MaxTokens {
		return nil, backend.Timing{}, fmt.Errorf("rank %d: tokens %d: must be in [0, max-tokens %d]", r.comm.Rank(), tokens, r.cfg.MaxTokens)
	}
	cfg := r.cfg
	cfg.Tokens = tokens
	t, err := r.b.Forward(cfg, x)
	if err != nil {
		r.failed = err
		return nil, t, fmt.Errorf("rank %d: forward: %w", r.comm.Rank(), err)
	}
	res, err := r.b.Result()
	if err != nil {
		r.failed = err
		return nil, t, fmt.Errorf("rank %d: read result: %w", r.comm.Rank(), err)
	}
	return res, t, nil
}

// Close releases the backend; later calls return ErrClosed.
func (r *Runtime) Close() error {
	if r.b == nil {
		return nil
	}
	err := r.b.Close()
	r.b = nil
	return err
}
