package reference

import (
	"sync"

	"github.com/moerun/moerun/internal/config"
	"github.com/moerun/moerun/internal/datagen"
)

// CachedExperts returns an ExpertSource, safe for concurrent use, that
// regenerates experts from the seed on first use and keeps up to
// maxBytes of them (at least one), evicting the oldest when full.
func CachedExperts(c config.Layer, maxBytes int64) ExpertSource {
	perExpert := int64(4 * (2*c.Hidden*c.FFNHidden + c.Hidden + c.FFNHidden))
	if c.FFN == config.FFNSwiGLU {
		perExpert = int64(4 * 3 * c.Hidden * c.FFNHidden)
	}
	limit := max(1, int(maxBytes/max(perExpert, 1)))
	type entry struct {
		once sync.Once
		ex   datagen.Expert
	}
	var mu sync.Mutex
	cache := map[int]*entry{}
	var order []int
	return func(e int) *datagen.Expert {
		mu.Lock()
		en, ok := cache[e]
		if !ok {
			if len(order) >= limit {
				delete(cache, order[0])
				order = order[1:]
			}
			en = &entry{}
			cache[e] = en
			order = append(order, e)
		}
		mu.Unlock()
		en.once.Do(func() { en.ex = datagen.ExpertWeights(c, e) })
		return &en.ex
	}
}
