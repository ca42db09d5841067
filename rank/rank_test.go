package rank

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

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

// TestForwardWithTokensPerCallAndRank runs two ranks through three calls
// with different token counts on each rank, each checked by the reference.
func TestForwardWithTokensPerCallAndRank(t *testing.T) {
	l := transport.NewLocal(2, 0)
	calls := [][2]int{{5, 32}, {0, 7}, {32, 1}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = func() error {
				comm := l.Rank(r)
				rt, err := Open(comm, cpubackend.New(comm), small())
				if err != nil {
					return err
				}
				defer rt.Close()
				for _, call := range calls {
					c := rt.Config()
					c.Tokens = call[r]
					x := datagen.Tokens(c, r, c.Tokens)
					res, _, err := rt.Forward(c.Tokens, x)
					if err != nil {
						return err
					}
					want, _ := reference.Forward(c, x, datagen.Gate(c), reference.CachedExperts(c, 1<<20))
					for i, v := range want {
						if float32(v) != res.Out[i] {
							return fmt.Errorf("tokens %d element %d: %v, want %v", c.Tokens, i, res.Out[i], v)
						}
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

type failing struct{ backend.Backend }

func (failing) Forward(config.Layer, []float32) (backend.Timing, error) {
	return backend.Timing{}, errors.New("watchdog: rank 0 waited 2s for a signal")
}

func TestFailedForwardIsSticky(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	rt, err := Open(comm, failing{cpubackend.New(comm)}, small())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rt.Forward(1, make([]float32, 16)); err == nil {
		t.Fatal("the failing forward succeeded")
	}
	_, _, err = rt.Forward(1, make([]float32, 16))
	if err == nil || !strings.Contains(err.Error(), "previous forward failed") || !strings.Contains(err.Error(), "watchdog") {
		t.Errorf("second forward: %v", err)
	}
	rt.Close()
	if _, _, err := rt.Forward(1, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("forward after close: %v", err)
	}
}

func TestOpenAndForwardRefuseBadShapes(t *testing.T) {
	comm := transport.NewLocal(1, 0).Rank(0)
	c := small()
	c.Experts = 0
	if _, err := Open(comm, cpubackend.New(comm), c); err == nil {
		t.Error("opened with 0 experts")
	}
	rt, err := Open(comm, cpubackend.New(comm), small())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rt.Forward(33, make([]float32, 33*16)); err == nil {
		t.Errorf("tokens above max-tokens accepted: %v", err)
	}
}
