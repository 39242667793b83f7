package promhelp

import (
	"bytes"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestWritePrometheusFillsHelp(t *testing.T) {
	t.Parallel()
	Describe(map[string]string{
		"promhelp_test_events_total":    "Events seen, by reason.",
		"promhelp_test_queue_length":    "Items waiting.",
		"promhelp_test_latency_seconds": `Time from a\b to "c"` + "\nsecond line.",
	})
	set := metrics.NewSet()
	set.NewCounter(`promhelp_test_events_total{reason="a"}`).Inc()
	set.NewCounter(`promhelp_test_events_total{reason="b"}`)
	set.NewGauge("promhelp_test_queue_length", func() float64 { return 3 })
	set.NewPrometheusHistogram("promhelp_test_latency_seconds").Update(0.3)
	var buf bytes.Buffer
	WritePrometheus(&buf, set, nil)
	out := buf.String()
	for _, want := range []string{
		"# HELP promhelp_test_events_total Events seen, by reason.\n# TYPE promhelp_test_events_total counter\n",
		"# HELP promhelp_test_queue_length Items waiting.\n# TYPE promhelp_test_queue_length gauge\n",
		"# TYPE promhelp_test_latency_seconds histogram\n",
		`promhelp_test_latency_seconds_bucket{le="0.5"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q; got\n%s", want, out)
		}
	}
	if strings.Count(out, "# HELP promhelp_test_events_total") != 1 {
		t.Errorf("got HELP of promhelp_test_events_total %d times; want once", strings.Count(out, "# HELP promhelp_test_events_total"))
	}
	if err := Check(buf.Bytes()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := mfs["promhelp_test_latency_seconds"].GetHelp(), Text("promhelp_test_latency_seconds"); got != want {
		t.Errorf("got help %q after parsing; want %q", got, want)
	}
}

func TestCheckReportsMissingMetadata(t *testing.T) {
	t.Parallel()
	Describe(map[string]string{"promhelp_test_described_total": "Described."})
	set := metrics.NewSet()
	set.NewCounter("promhelp_test_described_total")
	set.NewCounter("promhelp_test_undescribed_total")
	set.NewHistogram("promhelp_test_vm_histogram_seconds").Update(1) // vmrange buckets, untyped
	var buf bytes.Buffer
	WritePrometheus(&buf, set)
	err := Check(buf.Bytes())
	if err == nil {
		t.Fatalf("Check passed; want errors for the undescribed family and the untyped histogram in\n%s", buf.String())
	}
	for _, want := range []string{"promhelp_test_undescribed_total: no HELP text", "promhelp_test_vm_histogram_seconds"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got error %q; want it to mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "promhelp_test_described_total") {
		t.Errorf("got error %q; want none for the described family", err)
	}
}

func TestCheckRefusesUnparsableText(t *testing.T) {
	t.Parallel()
	if err := Check([]byte("not a metric line {\n")); err == nil {
		t.Fatal("Check accepted garbage; want a parse error")
	}
}
