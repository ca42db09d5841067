package rank

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/moerun/moerun/internal/config"
)

// describe names every field of c, MaxTokens included (its String does not).
func describe(c config.Layer) string {
	type fields config.Layer // without config.Layer's String method
	return fmt.Sprintf("%+v", fields(c))
}

// vote is one rank's part of agree.
type vote struct {
	Desc string `json:"desc"`
	Err  string `json:"err,omitempty"`
}

// agree all-gathers every rank's description of a collective call and its
// local error, so that every rank returns the same answer: nil, or an error
// naming each rank that failed (with its message) or the first rank whose
// call differs from rank 0's. Nothing goes on after a failure on any rank,
// so no rank is left waiting in a later collective.
func agree(c Comm, what, desc string, local error) error {
	mine := vote{Desc: desc}
	if local != nil {
		mine.Err = local.Error()
	}
	b, err := json.Marshal(mine)
	if err != nil {
		return fmt.Errorf("rank %d: %s: %w", c.Rank(), what, err)
	}
	all, err := c.AllGather(b)
	if err != nil {
		return fmt.Errorf("rank %d: %s: agree with the other ranks: %w", c.Rank(), what, err)
	}
	votes := make([]vote, len(all))
	for r, b := range all {
		if err := json.Unmarshal(b, &votes[r]); err != nil {
			return fmt.Errorf("rank %d: %s: rank %d sent an unreadable answer %q: %w", c.Rank(), what, r, b, err)
		}
	}
	// Each distinct failure once: this rank's own first, then the others'.
	var errs []error
	var failed []int
	seen := map[string]bool{}
	if local != nil {
		errs = append(errs, fmt.Errorf("rank %d: %s: %w", c.Rank(), what, local))
		seen[mine.Err] = true
	}
	for r, v := range votes {
		if v.Err == "" {
			continue
		}
		failed = append(failed, r)
		if !seen[v.Err] {
			seen[v.Err] = true
			errs = append(errs, fmt.Errorf("rank %d: %s: rank %d failed: %s", c.Rank(), what, r, v.Err))
		}
	}
	if len(failed) > 1 {
		errs = append(errs, fmt.Errorf("(%s failed on ranks %v of %d)", what, failed, len(votes)))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for r, v := range votes {
		if v.Desc != votes[0].Desc {
			return fmt.Errorf("rank %d: %s: ranks disagree: rank %d has %s; rank 0 has %s: every rank must make the same calls with the same configuration",
				c.Rank(), what, r, v.Desc, votes[0].Desc)
		}
	}
	return nil
}
