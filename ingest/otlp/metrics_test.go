package otlp

import (
	"bytes"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// TestMetricsExposition renders the receiver's families as /metrics does and parses them like
// Prometheus: each family has HELP text and a TYPE, and every described family is there.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	if _, err := New(Config{}, set, func(string, []byte) error { return nil }, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, set)
	if err := promhelp.Check(buf.Bytes()); err != nil {
		t.Errorf("%v\nin\n%s", err, buf.String())
	}
	for f := range otlpHelp {
		if !strings.Contains(buf.String(), "# TYPE "+f+" ") {
			t.Errorf("family %s is described but not registered", f)
		}
	}
	for _, r := range append(append([]string{}, requestReasons...), pointReasons...) {
		if !strings.Contains(buf.String(), `reason="`+r+`"`) {
			t.Errorf("reason %s has no counter before its first refusal", r)
		}
	}
}
