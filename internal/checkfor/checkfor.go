// Package checkfor is the polling helper of herd's tests: cross-goroutine and cross-process
// waits poll a condition until a deadline instead of sleeping a fixed time.
//
// A deadline is how long a test is willing to wait before it calls the condition broken, not
// a claim about speed: a passing test returns at the first poll that holds. Deadlines are
// stretched by Scale (3, or HERD_WAIT_SCALE) because the suite runs with the race detector,
// packages in parallel, on machines shared with other work: a wait written as 10 s fails
// only after 30 s. Speed is asserted by benchmarks and `make perf`, never here.
package checkfor

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// Scale multiplies every deadline of Within: HERD_WAIT_SCALE if it is a positive number,
// else 3.
var Scale = scale(os.Getenv("HERD_WAIT_SCALE"))

func scale(env string) float64 {
	if f, err := strconv.ParseFloat(env, 64); err == nil && f > 0 {
		return f
	}
	return 3
}

// Within calls f every interval until it returns nil, and fails the test with f's last error
// if timeout (stretched by Scale) passes first.
func Within(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	timeout = time.Duration(float64(timeout) * Scale)
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}
