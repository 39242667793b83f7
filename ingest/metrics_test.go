package ingest

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// TestMetricsExposition renders every ingest family (intake, agent client, scraper) as
// /metrics does and parses it like Prometheus: each family has HELP text and a TYPE.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	NewIntakeMetrics(set)
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: func(string, []byte) error { return nil }, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewScraper(ScraperConfig{URL: "http://127.0.0.1/metrics"}, c, quiet, set); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, set)
	if err := promhelp.Check(buf.Bytes()); err != nil {
		t.Errorf("%v\nin\n%s", err, buf.String())
	}
	var want []string
	for _, h := range []map[string]string{intakeHelp, clientHelp, scrapeHelp} {
		want = append(want, slices.Collect(maps.Keys(h))...)
	}
	for _, f := range want {
		if !strings.Contains(buf.String(), "# TYPE "+f+" ") {
			t.Errorf("family %s is described but not registered", f)
		}
	}
}
