package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/node"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/web"
)

// promApp is one instance of an ordinary HTTP service instrumented with
// prometheus/client_golang's promhttp middleware: http_requests_total{code,method} and
// http_request_duration_seconds{method}, exposed on /metrics. Every failEvery-th request
// answers 500 (0: none).
type promApp struct {
	srv       *httptest.Server
	served    atomic.Int64
	failEvery int64
}

func newPromApp(t *testing.T, failEvery int64) *promApp {
	t.Helper()
	a := &promApp{failEvery: failEvery}
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "http_requests_total",
		Help: "HTTP requests by status code and method."}, []string{"code", "method"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "http_request_duration_seconds",
		Help: "HTTP request latencies.", Buckets: prometheus.DefBuckets}, []string{"method"})
	reg.MustRegister(reqs, dur)
	work := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := a.served.Add(1)
		time.Sleep(2 * time.Millisecond) // the service's own work: what its latency measures
		if a.failEvery > 0 && n%a.failEvery == 0 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", promhttp.InstrumentHandlerCounter(reqs, promhttp.InstrumentHandlerDuration(dur, work)))
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

// load sends requests to a at about rps per second until ctx ends.
func (a *promApp) load(ctx context.Context, wg *sync.WaitGroup, rps int) {
	const workers = 4
	for range workers {
		wg.Go(func() {
			tick := time.NewTicker(time.Second * workers / time.Duration(rps))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.srv.URL+"/checkout", nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
}

// startAgent runs `herd agent` for one instance of a, scraping its /metrics and publishing to
// url, until the test ends.
func startAgent(t *testing.T, a *promApp, url, version string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ag, err := ingest.NewAgent(ingest.AgentConfig{Service: "shop", Version: version, Scrape: a.srv.URL + "/metrics",
		Interval: 250 * time.Millisecond}, nil, nc.Publish, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", version, err)
		}
	})
}

// TestBrowserPrometheusClientService is the path of a new user with an ordinary
// prometheus/client_golang service and no policy file: herd's agent scrapes each instance,
// `herd serve`'s node (embedded NATS, intake, rollup, detector, web) takes the windows, and
// the dashboard shows the service's request rate, error ratio and latency from the
// prometheus profile — the same signals on which the detector rolls back a failing canary.
func TestBrowserPrometheusClientService(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	b := web.NewBrowser(t) // skips without chromium, before anything starts
	cfg := node.DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var verdicts struct {
		sync.Mutex
		last proto.Verdict
	}
	n.OnVerdict(func(v proto.Verdict) { verdicts.Lock(); verdicts.last = v; verdicts.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node Run: %v", err)
		}
	})
	checkfor.Within(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(n.HTTPURL() + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %d", resp.StatusCode)
		}
		return nil
	})

	// The baseline: 1 % errors, 2 ms of work per request.
	var wg sync.WaitGroup
	loadCtx, stopLoad := context.WithCancel(context.Background())
	t.Cleanup(func() { stopLoad(); wg.Wait() })
	v1 := newPromApp(t, 100)
	v1.load(loadCtx, &wg, 200)
	startAgent(t, v1, n.NATSURL(), "1.0.0")

	b.Navigate(t, n.HTTPURL()+"/")
	b.WaitJS(t, 20*time.Second, `(() => {
		const t = document.querySelector('a.tile[data-service=shop]');
		return !!t && t.querySelector('.profile')?.textContent === 'prometheus' &&
			[...t.querySelectorAll('.big b')].every(b => b.textContent !== '–' && parseFloat(b.textContent) > 0);
	})()`)
	big := b.EvalStrings(t, `[...document.querySelectorAll('a.tile[data-service=shop] .big b')].map(b => b.textContent)`)
	t.Logf("overview tile of the client_golang service: %s req/s, %s errors, p50 %s, p99 %s", big[0], big[1], big[2], big[3])
	if len(big) != 4 || !strings.HasSuffix(big[1], " %") || !strings.HasSuffix(big[2], " ms") || !strings.HasSuffix(big[3], " ms") {
		t.Fatalf("got tile values %q; want a rate, an error percentage and two latencies in ms", big)
	}
	if rps, err := strconv.ParseFloat(big[0], 64); err != nil || !(rps > 0) {
		t.Errorf("got %q req/s on the tile; want a positive rate", big[0])
	}

	// The API says which profile it read, with its selectors.
	var services struct{ Services []web.ServiceSummary }
	resp, err := http.Get(n.HTTPURL() + "/api/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&services)
	resp.Body.Close()
	if err != nil || len(services.Services) != 1 {
		t.Fatalf("got %v, %+v; want one service", err, services)
	}
	shop := services.Services[0]
	if sig := shop.Signals; sig.Profile != "prometheus" || !sig.Detected || sig.Errors != `http_requests_total{code=~"5.."}` {
		t.Fatalf("API signals: got %+v; want the detected prometheus profile", sig)
	}
	if g := shop.Groups[0]; !(g.RequestsPerSecond > 0 && g.ErrorRatio > 0 && g.P50 > 0.002 && g.P99 > 0.002) {
		t.Fatalf("API group: got %+v; want non-zero rate, error ratio and latencies of at least 2 ms", g)
	}

	// A canary failing a third of its requests: the detector judges it on the same signals.
	v2 := newPromApp(t, 3)
	v2.load(loadCtx, &wg, 100)
	startAgent(t, v2, n.NATSURL(), "1.1.0")
	if err := n.Announce(proto.Deployment{Service: "shop", Baseline: "1.0.0", Canary: "1.1.0"}); err != nil {
		t.Fatal(err)
	}
	b.Navigate(t, n.HTTPURL()+"/services/shop")
	var v proto.Verdict
	checkfor.Within(t, 30*time.Second, 50*time.Millisecond, func() error {
		verdicts.Lock()
		v = verdicts.last
		verdicts.Unlock()
		if v.State != proto.StateRollback || v.Canary != "1.1.0" {
			return fmt.Errorf("got verdict %s for %q; want the canary 1.1.0 rolled back", v.State, v.Canary)
		}
		return nil
	})
	t.Logf("detector: %s (decisive %s)", v.Sentence, v.Evidence.Decisive)
	if d := n.Detector().Signals("shop"); d.Profile != "prometheus" {
		t.Fatalf("detector signals: got %v; want the prometheus profile the dashboard reads", d)
	}
	if got := b.EvalStrings(t, `[document.querySelector('#svc-signals').textContent]`); got[0] != "signals: prometheus" {
		t.Fatalf("service page: got %q; want the profile shown", got[0])
	}
	// The service page's charts carry non-zero rate, errors and latency for both versions.
	b.WaitJS(t, 10*time.Second, `(() => {
		const c = window.__herd.charts, max = (id, i) => Math.max(0, ...c[id].data[i].filter(v => v != null));
		return ['c-rate', 'c-err'].every(id => max(id, 1) > 0 && max(id, 2) > 0) && max('c-lat', 1) > 0.002;
	})()`)
	maxes := b.EvalFloats(t, `(() => {
		const c = window.__herd.charts, max = (id, i) => Math.max(0, ...c[id].data[i].filter(v => v != null));
		return [max('c-rate', 1), max('c-err', 1), max('c-lat', 1), max('c-rate', 2), max('c-err', 2)];
	})()`)
	t.Logf("service charts, peaks: baseline %.0f req/s, %.2f %% errors, p99 %.1f ms; canary %.0f req/s, %.1f %% errors",
		maxes[0], maxes[1], maxes[2]*1000, maxes[3], maxes[4])
}
