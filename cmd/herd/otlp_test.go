package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/otlptest"
)

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServeTakesOTLP runs `herd serve` with its OTLP flags and the token from the
// environment, exports from a service instrumented with the OpenTelemetry SDK, and reads the
// receiver's and the intake's counters on /metrics.
func TestServeTakesOTLP(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs serve")
	}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--nats.listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", t.TempDir(),
			"--otlp.http", "127.0.0.1:0", "--otlp.grpc", "127.0.0.1:0"},
			&env{stdout: &out, stderr: io.Discard, getenv: func(k string) string {
				if k == "HERD_OTLP_TOKEN" {
					return "s3cret"
				}
				return ""
			}, logger: testLogger(t)})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d; want 0", code)
		}
	}()
	line := regexp.MustCompile(`HTTP (http://[0-9.:]+) .*OTLP/HTTP http://([0-9.:]+)/v1/metrics, OTLP/gRPC ([0-9.:]+)`)
	var m []string
	checkfor.Within(t, 20*time.Second, 20*time.Millisecond, func() error {
		if m = line.FindStringSubmatch(out.String()); m == nil {
			return fmt.Errorf("serve printed %q; want its HTTP, OTLP/HTTP and OTLP/gRPC addresses", out.String())
		}
		return nil
	})
	web, otlpHTTP, otlpGRPC := m[1], m[2], m[3]
	// Wait until serve is ready: the intake is subscribed.
	checkfor.Within(t, 20*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(web + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	for _, c := range []otlptest.Config{
		{Transport: "http", Endpoint: otlpHTTP, Token: "s3cret", Service: "checkout", Version: "1.0.0", Instance: "a"},
		{Transport: "grpc", Endpoint: otlpGRPC, Token: "s3cret", Service: "checkout", Version: "1.0.0", Instance: "b", Delta: true},
	} {
		in, err := otlptest.Start(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			in.Serve(context.Background(), 200, 0.02)
		}
		if err := in.Shutdown(context.Background()); err != nil {
			t.Fatalf("%s export: %v", c.Transport, err)
		}
	}
	metric := func(body, name string) float64 {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`)
		if mm := re.FindStringSubmatch(body); mm != nil {
			v, _ := strconv.ParseFloat(mm[1], 64)
			return v
		}
		return -1
	}
	checkfor.Within(t, 10*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(web + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		body := b.String()
		// Two instances, three series each, at least one export each.
		if got := metric(body, "herd_otlp_points_total"); got < 6 {
			return fmt.Errorf("herd_otlp_points_total %v; want ≥ 6", got)
		}
		if got := metric(body, "herd_otlp_batches_total"); got < 2 || metric(body, "herd_ingest_batches_total") < got {
			return fmt.Errorf("herd_otlp_batches_total %v, herd_ingest_batches_total %v; want ≥ 2 published and all taken in", got, metric(body, "herd_ingest_batches_total"))
		}
		return nil
	})
}
