package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/sim/demo"
	"github.com/herd-dev/herd/web"
)

// demoEvents collects the events `herd demo --json` writes, line by line.
type demoEvents struct {
	w  *io.PipeWriter
	ch chan demo.Event
}

func newDemoEvents(t *testing.T) *demoEvents {
	r, w := io.Pipe()
	e := &demoEvents{w: w, ch: make(chan demo.Event, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev demo.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("demo event %q: %v", sc.Text(), err)
				continue
			}
			select {
			case e.ch <- ev:
			default: // a test that stopped reading does not stall the demo
			}
		}
	}()
	t.Cleanup(func() {
		w.Close()
		<-done
	})
	return e
}

// wait returns the first event of type typ, skipping the others.
func (e *demoEvents) wait(t *testing.T, typ string, timeout time.Duration) demo.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-e.ch:
			if ev.Type == typ {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %q event from the demo after %s", typ, timeout)
		}
	}
}

// TestBrowserGraphDemoFanout opens the dependency graph of the live fanout demo (a simulated
// fleet along a generated service graph → NATS → rollup → detector → web) in chromium: its
// neighbourhood shows checkout's baseline and canary edges side by side, and after the onset
// highlights the canary's fan-out to payments, which the detector rolls back.
func TestBrowserGraphDemoFanout(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test of the live demo")
	}
	b := web.NewBrowser(t)
	events := newDemoEvents(t)
	cfg := demo.DefaultConfig()
	cfg.Scenario, cfg.JSON, cfg.Out = "fanout", true, events.w
	cfg.Node.HTTPListen, cfg.Node.DataDir = "127.0.0.1:0", t.TempDir()
	cfg.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() {
		_, err := demo.Run(ctx, cfg)
		runErr <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("demo: %v", err)
		}
	})

	start := events.wait(t, "start", 30*time.Second)
	if start.DashboardURL == "" {
		t.Fatalf("start event %+v; want the dashboard's address", start)
	}
	b.Navigate(t, start.DashboardURL+"/graph")
	events.wait(t, "deploy", 10*time.Second)
	deployed := time.Now()
	// Before the onset: checkout, the service being deployed, with both versions' edges to
	// payments and inventory, and no difference.
	b.WaitJS(t, 15*time.Second, `document.querySelector('#graph-info').textContent.startsWith('checkout: baseline 1.4.2 beside canary 1.5.0')
		&& ['1.4.2 → payments', '1.4.2 → inventory', '1.5.0 → payments', '1.5.0 → inventory'].every(p => window.__herdGraph.focusEdges.some(e => e.startsWith(p)))`)
	if time.Since(deployed) > cfg.OnsetAfter-time.Second {
		t.Logf("the page showed both versions only %s after the deploy: the quiet before the onset is not checked", time.Since(deployed))
	} else if hl := b.EvalStrings(t, `window.__herdGraph.highlighted`); len(hl) != 0 {
		t.Errorf("before the onset: highlighted %q; want nothing", hl)
	}
	events.wait(t, "onset", 20*time.Second)
	// After it: the canary's edge to payments is highlighted with its calls per request, and
	// the verdict is shown.
	b.WaitJS(t, 10*time.Second, `window.__herdGraph.highlighted.some(h => h.startsWith('checkout 1.5.0 → payments: '))`)
	hl := b.EvalStrings(t, `window.__herdGraph.highlighted`)
	if len(hl) != 1 || !strings.Contains(hl[0], " calls per request vs 1.0") {
		t.Errorf("highlighted %q; want checkout 1.5.0 → payments: … calls per request vs 1.0", hl)
	}
	legend := b.EvalString(t, `document.querySelector('#graph-legend').innerText`)
	if !strings.Contains(legend, "⚠ checkout 1.5.0 → payments") {
		t.Errorf("legend %q; want the highlighted edge", legend)
	}
	b.WaitJS(t, 15*time.Second, `document.querySelector('#graph-info').textContent.includes('(rollback)')`)
	events.wait(t, "instances_stopped", 15*time.Second) // the story has ended: the demo stops cleanly
	t.Logf("fanout demo: highlighted %q; checkout's edges %q", hl, b.EvalStrings(t, `window.__herdGraph.focusEdges`))
	b.ShootGraph(t, "graph-demo-fanout")
}
