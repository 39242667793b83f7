package ingest

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

func TestAgentConfigEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		service string
		version string
		wantErr string
	}{
		{name: "otel", env: map[string]string{"OTEL_SERVICE_NAME": "payments", "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored, service.version=2026-11-26%2B3,k8s.pod.name=p"},
			args: []string{"-scrape", "http://localhost:8080/metrics"}, service: "payments", version: "2026-11-26+3"},
		{name: "otel resource only", env: map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,service.version=7"},
			args: []string{"-scrape", "http://localhost/metrics"}, service: "cart", version: "7"},
		{name: "flags win", env: map[string]string{"OTEL_SERVICE_NAME": "checkout", "OTEL_RESOURCE_ATTRIBUTES": "service.version=1"},
			args: []string{"-service", "web", "-version", "2", "-scrape", "https://x/metrics", "-interval", "1s"}, service: "web", version: "2"},
		{name: "bad env service", env: map[string]string{"OTEL_SERVICE_NAME": "Checkout Service"},
			args: []string{"-scrape", "http://x/metrics", "-version", "1"}, service: "Checkout Service", version: "1", wantErr: "-service (from OTEL_SERVICE_NAME)"},
		{name: "missing scrape", env: map[string]string{"OTEL_SERVICE_NAME": "a"},
			args: []string{"-version", "1"}, service: "a", version: "1", wantErr: "-scrape is required"},
		{name: "missing version", env: map[string]string{"OTEL_SERVICE_NAME": "a"},
			service: "a", wantErr: "-version is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var c AgentConfig
			fs := flag.NewFlagSet("agent", flag.ContinueOnError)
			c.RegisterFlags(fs, func(k string) string { return tc.env[k] })
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if c.Service != tc.service || c.Version != tc.version {
				t.Errorf("got service %q version %q; want %q %q", c.Service, c.Version, tc.service, tc.version)
			}
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate: got %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestAgent runs the agent against a real target and a real nats-server, received by an
// Intake.
func TestAgent(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))

	var mu sync.Mutex
	var requests float64
	var final bool
	in, err := NewIntake(IntakeConfig{}, nil, nc, func(b *proto.Batch) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range b.Series {
			if s.Name == "http_requests_total" {
				requests += s.Value
			}
		}
		final = final || b.Final
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ictx, icancel := context.WithCancel(t.Context())
	idone := make(chan error, 1)
	go func() { idone <- in.Run(ictx) }()
	<-in.Ready()

	tg := &target{status: 200, contentType: textType, body: exposition(10, 0, "", classic(1, 1, 1, 1, 0.1))}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	set := metrics.NewSet()
	a, err := NewAgent(AgentConfig{Service: "checkout", Version: "1.4.2", Scrape: srv.URL + "/metrics", Interval: 20 * time.Millisecond}, set, nc.Publish, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	// A successful scrape must have set the counters' baseline (scrapes time out after one
	// 20 ms interval on a starved machine): scrapes run one at a time, so two more scrapes
	// than failures mean at least one finished well.
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		n := set.GetOrCreateCounter("herd_agent_scrapes_total").Get()
		var failed uint64
		for _, name := range set.ListMetricNames() {
			if strings.HasPrefix(name, "herd_agent_scrape_errors_total") {
				failed += set.GetOrCreateCounter(name).Get()
			}
		}
		if n < failed+2 {
			return fmt.Errorf("got %d scrapes, %d failed; want ≥ 2 more scrapes than failures", n, failed)
		}
		return nil
	})
	tg.set(200, textType, exposition(25, 0, "", classic(1, 1, 1, 1, 0.1)))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if requests != 15 || !final {
			return fmt.Errorf("got %v requests, final %v; want 15 and a final batch", requests, final)
		}
		return nil
	})
	icancel()
	<-idone
}
