package web

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// TestMetricsExposition renders the Server's families, in the caller's Set, as /metrics does
// and parses them like Prometheus: each family has HELP text and a TYPE, and the window delay
// is a histogram with le buckets.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	srv, err := New(testConfig(), set, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	srv.AddWindow(window("checkout", "1.4.2", time.Now().UnixMilli()/250*250, 10))
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := srv.m.inputs["window"].Get(); n != 1 {
			return fmt.Errorf("got %d windows applied; want 1", n)
		}
		return nil
	})
	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, set)
	if err := promhelp.Check(buf.Bytes()); err != nil {
		t.Errorf("%v\nin\n%s", err, buf.String())
	}
	for _, help := range []map[string]string{serverHelp, guardHelp} {
		for family := range help {
			if !strings.Contains(buf.String(), "# TYPE "+family+" ") {
				t.Errorf("family %s is described but not in\n%s", family, buf.String())
			}
		}
	}
	for _, want := range []string{"# TYPE herd_web_window_delay_seconds histogram\n", "\nherd_web_window_delay_seconds_count 1\n"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("got\n%s\nwant %q", buf.String(), want)
		}
	}
}
