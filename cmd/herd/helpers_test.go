package main

import (
	"fmt"
	"testing"
	"time"
)

// checkFor polls f every interval until it returns nil or timeout passes, then fails the
// test with f's last error.
func checkFor(t *testing.T, timeout, interval time.Duration, f func() error) {
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

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
