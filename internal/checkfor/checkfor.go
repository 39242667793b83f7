// Package checkfor is the polling helper of herd's tests: cross-goroutine and cross-process
// waits poll a condition until a deadline instead of sleeping a fixed time.
package checkfor

import (
	"testing"
	"time"
)

// Within calls f every interval until it returns nil, and fails the test with f's last error
// if timeout passes first.
func Within(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
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
