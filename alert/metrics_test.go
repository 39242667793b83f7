package alert

import (
	"bytes"
	"strings"
	"testing"

	"github.com/herd-dev/herd/internal/promhelp"
)

// TestDetectorMetricsExposition renders the detector's families as /metrics does, with a
// shadow comparison running so that the per-service families exist, and parses them like
// Prometheus: each family has HELP text and a TYPE.
func TestDetectorMetricsExposition(t *testing.T) {
	t.Parallel()
	f := newSplitFleet(t, shadowConfig())
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 50, 0.005, [2]int{1, 1})
	f.step(40, false)
	f.announce()
	f.step(4, true)
	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, f.set)
	if err := promhelp.Check(buf.Bytes()); err != nil {
		t.Errorf("%v\nin\n%s", err, buf.String())
	}
	for family := range detectorHelp {
		if !strings.Contains(buf.String(), "# TYPE "+family+" ") {
			t.Errorf("family %s is described but not in\n%s", family, buf.String())
		}
	}
}
