package perftest

import (
	"testing"
	"time"
)

// recorder is a testing.TB that records whether the test failed.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Logf(string, ...any)   {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		perf     string
		got      time.Duration
		wantFail bool
	}{
		{"", 2 * time.Second, false},
		{"1", 2 * time.Second, true},
		{"1", time.Second / 2, false},
	} {
		t.Setenv(EnvVar, tc.perf)
		r := &recorder{TB: t}
		Within(r, "delay", tc.got, time.Second)
		if r.failed != tc.wantFail {
			t.Errorf("HERD_PERF=%q, %s against 1s: failed = %v; want %v", tc.perf, tc.got, r.failed, tc.wantFail)
		}
	}
}
