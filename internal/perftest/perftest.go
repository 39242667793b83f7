// Package perftest separates herd's wall-clock bounds from its correctness tests. A test
// measures a latency as part of what it checks and hands the figure to Within: with
// HERD_PERF=1 (the CI's performance step, on a quiet machine) a figure over its bound fails
// the test; otherwise it is only logged, so a loaded machine cannot fail a correctness run.
package perftest

import (
	"os"
	"testing"
)

// EnvVar is the environment variable that turns wall-clock bounds into failures.
const EnvVar = "HERD_PERF"

// Enabled reports whether wall-clock bounds are enforced (HERD_PERF=1).
func Enabled() bool { return os.Getenv(EnvVar) == "1" }

// Within checks a measured figure against its bound: over it, the test fails when Enabled
// and logs otherwise. what names the figure and its unit ("window delay p99 (ms)").
func Within[T ~int | ~int64 | ~float64](t testing.TB, what string, got, limit T) {
	t.Helper()
	switch {
	case got <= limit:
		t.Logf("perf: %s = %v (bound %v)", what, got, limit)
	case Enabled():
		t.Errorf("perf: %s = %v; want ≤ %v", what, got, limit)
	default:
		t.Logf("perf: %s = %v is over its bound %v (not enforced; %s=1 enforces it)", what, got, limit, EnvVar)
	}
}

// Parallel marks t parallel unless the bounds are enforced: `make test` runs such a test
// beside others, `make perf` alone, so that what it measures is herd and not its neighbours.
func Parallel(t *testing.T) {
	if !Enabled() {
		t.Parallel()
	}
}
