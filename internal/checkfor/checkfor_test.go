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
