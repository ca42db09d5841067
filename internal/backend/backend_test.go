package backend

import (
	"errors"
	"fmt"
	"testing"
)

func TestRefusals(t *testing.T) {
	plain := errors.New("kernel launch failed")
	r := Refuse(fmt.Errorf("layer 3: bad argument"))
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{plain, false},
		{fmt.Errorf("forward: %w", plain), false},
		{r, true},
		{fmt.Errorf("rank 0: %w", r), true},
		{fmt.Errorf("bf16 is %w yet", ErrNotSupported), true},
	} {
		if got := IsRefusal(c.err); got != c.want {
			t.Errorf("IsRefusal(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if Refuse(nil) != nil {
		t.Error("Refuse(nil) is not nil")
	}
	if r.Error() != "layer 3: bad argument" {
		t.Errorf("a refusal's text is %q", r.Error())
	}
}
