package web

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
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
	mu     sync.Mutex // guards errs
	errs   []string
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

func newBrowser(t *testing.T) *browser {
	t.Helper()
	actx, acancel := chromedp.NewExecAllocator(context.Background(), chromiumOptions(chromiumPath(t), t.TempDir())...)
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
		for _, e := range b.errs {
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

// screenshot captures the whole page.
func (b *browser) screenshot(t *testing.T) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return png
}

func TestBrowserSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test")
	}
	ts := startServer(t, DefaultConfig())
	f := newFeeder(ts.srv, 250*time.Millisecond, demoGroups()...)
	f.backfill(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.run(ctx)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`a.tile`)))
	time.Sleep(2 * time.Second)
	os.WriteFile("/tmp/herd-overview.png", b.screenshot(t), 0o644)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/checkout"), chromedp.WaitVisible(chromedp.CSS(`#c-rate .uplot`)))
	time.Sleep(2 * time.Second)
	os.WriteFile("/tmp/herd-service.png", b.screenshot(t), 0o644)
}
