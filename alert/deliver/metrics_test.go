package deliver

import (
	"bytes"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// TestMetricsExposition exercises every kind of event the Deliverer counts, renders its
// families as /metrics does and parses them like Prometheus: each family has HELP text and a
// TYPE, and the attempt durations are a histogram with le buckets.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	fs, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Create(t.Context(), "corrupt", []byte(`"not a record"`)); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}, Timeout: 2 * time.Second, MaxRetry: time.Hour}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	d, err := New(cfg, set, fs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, d)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, v.DecisionID, "delivered")
	// The attempt is counted and timed right after its row is stored, which waitStatus sees.
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var buf bytes.Buffer
		set.WritePrometheus(&buf)
		for _, want := range []string{`herd_deliver_attempts_total{target_kind="webhook",outcome="done"} 1`,
			`herd_deliver_attempt_duration_seconds_count{target_kind="webhook"} 1`} {
			if !strings.Contains(buf.String(), want) {
				return fmt.Errorf("got no %s in\n%s", want, buf.String())
			}
		}
		return nil
	})
	_ = d.Decide(testVerdict(proto.StatePending))    // refused
	_ = d.Redeliver(v.DecisionID, "webhook:nowhere") // refused by the API
	flagger := httptest.NewServer(d.FlaggerHandler(func(string) (proto.Verdict, bool) { return v, true }, nil))
	defer flagger.Close()
	doJSON(t, "POST", flagger.URL+"/api/v1/flagger/rollback", `{"name":"checkout","namespace":"shop"}`, nil)
	doJSON(t, "POST", flagger.URL+"/api/v1/flagger/rollback", `{`, nil)

	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, set)
	if err := promhelp.Check(buf.Bytes()); err != nil {
		t.Errorf("%v\nin\n%s", err, buf.String())
	}
	for family := range deliverHelp {
		if !strings.Contains(buf.String(), "# TYPE "+family+" ") {
			t.Errorf("family %s is described but not in\n%s", family, buf.String())
		}
	}
	if !strings.Contains(buf.String(), "# TYPE herd_deliver_attempt_duration_seconds histogram\n") {
		t.Errorf("herd_deliver_attempt_duration_seconds is not a histogram in\n%s", buf.String())
	}
}
