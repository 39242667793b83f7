package web

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// chromiumPath finds Debian's chromium; tests skip without it unless HERD_REQUIRE_BROWSER is set.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("HERD_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("HERD_REQUIRE_BROWSER") != "" {
		t.Fatalf("chromium not found and HERD_REQUIRE_BROWSER is set: install Debian's chromium (apt-get install chromium)")
	}
	t.Skip("chromium not found: install Debian's chromium (apt-get install chromium) to run the dashboard's browser tests")
	return ""
}

// browser is a headless chromium with one tab; uncaught exceptions and console.error calls
// are collected and fail the test.
type browser struct {
	ctx    context.Context
	cancel func()
	mu     sync.Mutex // guards the fields below
	errs   []string
	expect []string // substrings of console errors a test provokes on purpose
}

// expectErrors makes console errors holding any of substrs expected rather than failures.
func (b *browser) expectErrors(substrs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expect = append(b.expect, substrs...)
}

// chromiumOptions are the flags herd's browser tests and screenshots use.
func chromiumOptions(path, userDir string) []chromedp.ExecAllocatorOption {
	return []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(userDir),
		chromedp.WindowSize(1400, 1000),
	}
}

// newBrowser starts a headless chromium; extra adds flags (e.g. host resolver rules).
func newBrowser(t *testing.T, extra ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	opts := append(chromiumOptions(chromiumPath(t), t.TempDir()), extra...)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{ctx: ctx, cancel: func() { cancel(); acancel() }}
	if err := chromedp.Do(ctx); err != nil {
		b.cancel()
		t.Fatalf("cannot start chromium: %v", err)
	}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source == "") {
				b.mu.Lock()
				b.errs = append(b.errs, fmt.Sprintf("%s:%d %s", m.URL, m.Line+1, m.Text))
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		b.cancel()
		b.mu.Lock()
		defer b.mu.Unlock()
	next:
		for _, e := range b.errs {
			for _, x := range b.expect {
				if strings.Contains(e, x) {
					continue next
				}
			}
			t.Errorf("page error: %s", e)
		}
	})
	return b
}

// do runs chromedp actions with a timeout.
func (b *browser) do(t *testing.T, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JS expression.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS polls a JS boolean expression until it is true.
func (b *browser) waitJS(t *testing.T, timeout time.Duration, expr string) {
	t.Helper()
	checkFor(t, timeout, 25*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s is false", expr)
		}
		return nil
	})
}

// liveDemo runs a server fed with a fleet of 1,000 instances in four groups, windows closing
// 500 ms after their end as the rollup closes them, with a minute of history.
func liveDemo(t *testing.T) (*testServer, *feeder) {
	t.Helper()
	ts := startServer(t, DefaultConfig())
	groups := []groupSpec{
		{service: "checkout", version: "1.4.2", instances: 600, rps: 5, errRate: 0.005, latency: 0.030},
		{service: "checkout", version: "1.5.0", instances: 100, rps: 5, errRate: 0.005, latency: 0.031},
		{service: "search", version: "2.0.1", instances: 200, rps: 5, errRate: 0.002, latency: 0.045},
		{service: "payments", version: "3.2.0", instances: 100, rps: 4, errRate: 0.001, latency: 0.080},
	}
	f := newFeeder(ts.srv, 250*time.Millisecond, groups...)
	f.lateness = 500 * time.Millisecond
	f.backfill(time.Minute)
	ts.srv.AddDeployment(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", UnixMs: time.Now().Add(-30 * time.Second).UnixMilli()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ts, f
}

func TestBrowserOverview(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/"))
	b.waitJS(t, 10*time.Second, `document.querySelectorAll('a.tile').length === 3`)
	names := eval[[]string](t, b, `[...document.querySelectorAll('a.tile')].map(a => a.dataset.service)`)
	// checkout has a canary without a verdict yet (pending) and sorts first.
	if got := strings.Join(names, ","); got != "checkout,search,payments" {
		t.Fatalf("got tiles %q; want checkout,search,payments", got)
	}
	text := eval[string](t, b, `document.querySelector('a.tile[data-service=checkout]').innerText`)
	for _, want := range []string{"1.4.2", "1.5.0", "canary", "req/s", "p99", "PENDING"} {
		if !strings.Contains(text, want) {
			t.Errorf("checkout tile %q lacks %q", text, want)
		}
	}
	// The filter narrows the tiles and lands in the URL.
	b.do(t, 10*time.Second, chromedp.SendKeys(chromedp.CSS(`#filter`), "sea"))
	b.waitJS(t, 5*time.Second, `document.querySelectorAll('a.tile').length === 1 && location.search.includes('q=sea')`)
	// Clicking a tile opens the service page with the state kept.
	b.do(t, 10*time.Second, chromedp.Click(chromedp.CSS(`a.tile[data-service=search]`)))
	b.waitJS(t, 5*time.Second, `location.pathname === '/services/search' && document.querySelector('#svc-name').textContent === 'search'`)
}

// TestBrowserServiceLive checks that the service page's charts receive live points and
// measures window end → page latency.
func TestBrowserServiceLive(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/checkout?range=60"))
	b.waitJS(t, 10*time.Second, `(window.__herd.chartPoints || 0) > 200`)
	first := eval[float64](t, b, `window.__herd.chartLastMs`)
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](`window.__herd.lags = []`))
	// The chart moves on by 4 s of windows and 30 windows (two groups at 4/s) reach the
	// page; a slow machine takes longer, not fails.
	start := time.Now()
	var lags []float64
	checkfor.Within(t, 10*time.Second, 100*time.Millisecond, func() error {
		last := eval[float64](t, b, `window.__herd.chartLastMs`)
		lags = eval[[]float64](t, b, `window.__herd.lags`)
		if last-first < 4000 || len(lags) < 30 {
			return fmt.Errorf("the rate chart's newest point moved %.0f ms and %d windows arrived in %s; want 4000 ms and 30",
				last-first, len(lags), time.Since(start).Round(time.Millisecond))
		}
		return nil
	})
	slices.Sort(lags)
	p50, p99 := lags[len(lags)/2], lags[len(lags)*99/100]
	t.Logf("window end → page: %d windows, p50 %.0f ms, p99 %.0f ms, max %.0f ms (includes the simulated 500 ms rollup lateness)",
		len(lags), p50, p99, lags[len(lags)-1])
	perftest.Within(t, "p99 window end → page (ms)", p99, 1000)
	// Both versions are charted, the deploy marker is known, the evidence panel explains.
	if n := eval[int](t, b, `window.__herd.charts['c-rate'].series.length`); n != 3 {
		t.Fatalf("got %d series on the rate chart; want 3 (time, baseline, canary)", n)
	}
	text := eval[string](t, b, `document.querySelector('#evidence').innerText`)
	if !strings.Contains(text, "Canary 1.5.0 deployed beside 1.4.2") {
		t.Fatalf("got evidence %q; want the canary named", text)
	}
}

// TestBrowserRollback checks that a rollback verdict shows on the service page within 2 s
// and that the decisions page shows it with its delivery log.
func TestBrowserRollback(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/checkout"))
	b.waitJS(t, 10*time.Second, `(window.__herd.chartPoints || 0) > 100`)
	now := time.Now()
	v := proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback,
		UnixMs: now.UnixMilli(), StartedMs: now.Add(-8 * time.Second).UnixMilli(), DecisionID: "4b6f0f7e-2f0e-4c1e-9d7a-1f2e3d4c5b6a",
		Sentence: "errors 5.1× baseline, 99 % CS [2.9, 9.0], decided after 7.8 s",
		Evidence: proto.Evidence{Alpha: 0.01, EValue: 180, Threshold: 100, Decisive: "errors", Windows: 31,
			Tests: []proto.TestEvidence{{Name: "errors", EValue: 355, Weight: 0.5, BaselineN: 37000, BaselineE: 185, CanaryN: 6100, CanaryE: 156, Effect: 5.1, CSLow: 2.9, CSHigh: 9.0}}}}
	ts.srv.SetDecisions(func() []proto.Decision {
		return []proto.Decision{{ID: v.DecisionID, Verdict: v, CreatedMs: v.UnixMs, Status: "delivered",
			Deliveries: []proto.Delivery{{DecisionID: v.DecisionID, Target: "webhook:http://127.0.0.1:9000/hooks/herd", Attempt: 1, UnixMs: v.UnixMs + 40, Status: 204, Outcome: "done", DurationMs: 3}}}}
	})
	start := time.Now()
	ts.srv.SetVerdict(v)
	b.waitJS(t, 2*time.Second, `document.querySelector('#verdict-state')?.textContent === 'rollback'`)
	took := time.Since(start)
	t.Logf("verdict → page: %s", took.Round(time.Millisecond))
	text := eval[string](t, b, `document.querySelector('#evidence').innerText`)
	for _, want := range []string{"errors 5.1× baseline", "threshold", "decided after"} {
		if !strings.Contains(text, want) {
			t.Errorf("evidence %q lacks %q", text, want)
		}
	}
	b.do(t, 10*time.Second, chromedp.Click(chromedp.CSS(`a[href^="/decisions"]`)))
	b.waitJS(t, 5*time.Second, `!!document.querySelector('[data-decision="4b6f0f7e-2f0e-4c1e-9d7a-1f2e3d4c5b6a"]')`)
	text = eval[string](t, b, `document.querySelector('[data-decision]').innerText`)
	for _, want := range []string{"ROLLBACK", "checkout", "webhook:http://127.0.0.1:9000/hooks/herd", "204", "done"} {
		if !strings.Contains(text, want) {
			t.Errorf("decision card %q lacks %q", text, want)
		}
	}
}

// TestBrowserReconnect drops the page's websocket and refuses it for a while: the page says
// it is disconnected and retrying, then resumes with ?since= and has no gap in its windows.
func TestBrowserReconnect(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/checkout?range=60"))
	b.waitJS(t, 10*time.Second, `window.__herd.status === 'live' && (window.__herd.chartPoints || 0) > 100`)
	ts.down.Store(true)
	ts.srv.mu.RLock()
	for c := range ts.srv.clients {
		c.conn.Close()
	}
	ts.srv.mu.RUnlock()
	b.waitJS(t, 5*time.Second, `!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('Disconnected — retrying')`)
	time.Sleep(1500 * time.Millisecond) // windows flow on while the page is away
	ts.down.Store(false)
	b.waitJS(t, 10*time.Second, `window.__herd.status === 'live' && window.__herd.resumes >= 1 && document.getElementById('banner').hidden`)
	time.Sleep(time.Second)
	if n := eval[int](t, b, `window.__herd.resets`); n != 0 {
		t.Fatalf("got %d reset snapshots; want a resume without reset", n)
	}
	gaps := eval[[]float64](t, b, `(() => {
		const ps = window.__herd.stream.services.get('checkout').groups.get('1.4.2').points, gaps = [];
		for (let i = 1; i < ps.length; i++) if (ps[i][0] - ps[i-1][0] !== 250) gaps.push(ps[i-1][0], ps[i][0]);
		return gaps;
	})()`)
	if len(gaps) > 0 {
		t.Fatalf("got gaps %v in the page's windows after resuming; want none", gaps)
	}
}

// TestBrowserDarkMode checks that the page follows the OS colour scheme.
func TestBrowserDarkMode(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	b := newBrowser(t)
	b.do(t, 10*time.Second, setColorScheme("dark"), chromedp.Navigate(ts.http.URL+"/"))
	b.waitJS(t, 10*time.Second, `document.querySelectorAll('a.tile').length === 3`)
	if bg := eval[string](t, b, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(15, 18, 22)" {
		t.Fatalf("got background %s in dark mode; want rgb(15, 18, 22)", bg)
	}
}

// setColorScheme emulates prefers-color-scheme.
func setColorScheme(scheme string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		return err
	})
}
