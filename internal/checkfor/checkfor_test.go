package checkfor

import (
	"errors"
	"testing"
	"time"
)

func TestWithinReturnsOnceTrue(t *testing.T) {
	t.Parallel()
	n := 0
	Within(t, time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Errorf("condition checked %d times; want 3", n)
	}
}

func TestScale(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]float64{"": 3, "1": 1, "2.5": 2.5, "0": 3, "-1": 3, "x": 3} {
		if got := scale(env); got != want {
			t.Errorf("scale(%q) = %v; want %v", env, got, want)
		}
	}
}
