package web

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/graph"
)

// graphFeed feeds a Server windows with edges 4 times a second: every service of a
// generated graph at one version, plus checkout's baseline and canary (whose canary calls
// payments fanout times per request).
type graphFeed struct {
	srv    *Server
	g      *graph.Graph
	fanout float64
	// canaryErr, if set, are the error ratios of the canary's calls to payments and
	// inventory (the baseline's: 0.005 and 0.002).
	canaryErr *[2]float64
}

func (f *graphFeed) window(service, version string, start, end int64, rps float64, calls map[string][2]float64) *proto.Window {
	sec := float64(end-start) / 1000
	w := &proto.Window{Service: service, Version: version, StartMs: start, EndMs: end, ClosedMs: end, Instances: 3,
		Series: []proto.WindowSeries{
			{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: rps * sec},
			{Name: proto.SeriesErrors, Kind: proto.KindCounter, Value: rps * sec * 0.002},
		}}
	for _, callee := range slices.Sorted(mapsKeys(calls)) {
		c := calls[callee]
		ls := proto.EdgeLabels(proto.EdgeKey{Callee: callee})
		w.Series = append(w.Series,
			proto.WindowSeries{Name: proto.SeriesEdgeCalls, Labels: ls, Kind: proto.KindCounter, Value: rps * c[0] * sec},
			proto.WindowSeries{Name: proto.SeriesEdgeErrors, Labels: ls, Kind: proto.KindCounter, Value: rps * c[0] * c[1] * sec})
	}
	return w
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// feed sends one round of windows ending at end.
func (f *graphFeed) feed(end time.Time) {
	e := end.UnixMilli()
	s := e - 250
	for _, sv := range f.g.Services {
		calls := map[string][2]float64{}
		for _, c := range f.g.Calls[sv.Name] {
			calls[c.Callee] = [2]float64{c.PerRequest, c.ErrorRate}
		}
		f.srv.AddWindow(f.window(sv.Name, "1.0.0", s, e, sv.RPS, calls))
	}
	f.srv.AddWindow(f.window("web", "3.2.0", s, e, 2000, map[string][2]float64{"checkout": {1, 0.002}}))
	f.srv.AddWindow(f.window("checkout", "1.4.2", s, e, 1600, map[string][2]float64{"payments": {1, 0.005}, "inventory": {2, 0.002}}))
	ce := [2]float64{0.005, 0.002}
	if f.canaryErr != nil {
		ce = *f.canaryErr
	}
	f.srv.AddWindow(f.window("checkout", "1.5.0", s, e, 400, map[string][2]float64{"payments": {f.fanout, ce[0]}, "inventory": {2, ce[1]}}))
	for _, name := range []string{"payments", "inventory"} {
		f.srv.AddWindow(f.window(name, "7.1.0", s, e, 2000, map[string][2]float64{"pay-db": {1, 0.001}}))
	}
}

func (f *graphFeed) run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f.feed(now)
		}
	}
}

// startGraphFeed starts a server fed with a graph of n services; it stops with the test.
func startGraphFeed(t *testing.T, n int, callees float64) (*testServer, *graphFeed) {
	t.Helper()
	return startGraphFeedOf(t, n, callees, &graphFeed{fanout: 5})
}

// startGraphFeedOf is startGraphFeed with f's canary settings.
func startGraphFeedOf(t *testing.T, n int, callees float64, f *graphFeed) (*testServer, *graphFeed) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.MaxGroups = 2000
	ts := startServer(t, cfg)
	g, err := graph.New(graph.Config{Services: n, Callees: callees, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	f.srv, f.g = ts.srv, g
	now := time.Now().Truncate(250 * time.Millisecond)
	for k := 20; k > 0; k-- {
		f.feed(now.Add(-time.Duration(k) * 250 * time.Millisecond))
	}
	ts.srv.AddDeployment(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", UnixMs: time.Now().Add(-20 * time.Second).UnixMilli()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ts, f
}

// TestBrowserGraphNeighbourhood: the neighbourhood of the service being deployed shows its
// canary's edges beside its baseline's and highlights the fan-out to payments.
func TestBrowserGraphNeighbourhood(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := startGraphFeed(t, 30, 3)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/graph"))
	b.waitJS(t, 10*time.Second, `(window.__herdGraph.highlighted || []).length > 0`)
	hl := eval[[]string](t, b, `window.__herdGraph.highlighted`)
	if len(hl) != 1 || !strings.HasPrefix(hl[0], "checkout 1.5.0 → payments: 5.0 calls per request vs 1.0") {
		t.Fatalf("highlighted %q; want checkout 1.5.0 → payments: 5.0 calls per request vs 1.0", hl)
	}
	info := eval[string](t, b, `document.querySelector('#graph-info').textContent`)
	if !strings.Contains(info, "baseline 1.4.2 beside canary 1.5.0") {
		t.Errorf("info %q; want the baseline beside the canary", info)
	}
	legend := eval[string](t, b, `document.querySelector('#graph-legend').innerText`)
	if !strings.Contains(legend, "⚠ checkout 1.5.0 → payments") {
		t.Errorf("legend %q; want the highlighted edge", legend)
	}
	shoot(t, b, "graph-neighbourhood")
}

// TestBrowserGraphErrorDiff: a canary edge's error ratio is highlighted when it is clearly
// above its baseline's (inventory: 2 % vs 0.2 %), not when the excess is within the rates'
// noise (payments: 0.85 % vs 0.5 % of a few hundred calls a second).
func TestBrowserGraphErrorDiff(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := startGraphFeedOf(t, 30, 3, &graphFeed{fanout: 1, canaryErr: &[2]float64{0.0085, 0.02}})
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/graph"))
	b.waitJS(t, 10*time.Second, `(window.__herdGraph.highlighted || []).length > 0`)
	hl := eval[[]string](t, b, `window.__herdGraph.highlighted`)
	if len(hl) != 1 || hl[0] != "checkout 1.5.0 → inventory: 2.0 % of calls fail vs 0.2 %" {
		t.Fatalf("highlighted %q; want only checkout 1.5.0 → inventory: 2.0 %% of calls fail vs 0.2 %%", hl)
	}
}

// TestBrowserGraphFleet renders a 450-service fleet with over 3,000 edges while windows
// arrive 4 times a second, and measures in the page the first render and the frame rate.
func TestBrowserGraphFleet(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, f := startGraphFeed(t, 450, 13)
	if f.g.Edges() < 3000 {
		t.Fatalf("graph has %d edges; want ≥ 3000", f.g.Edges())
	}
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/graph?view=fleet"))
	b.waitJS(t, 10*time.Second, `window.__herdGraph.firstRenderMs > 0 && window.__herdGraph.services >= 450`)
	first := eval[float64](t, b, `window.__herdGraph.firstRenderMs`)
	layout := eval[float64](t, b, `window.__herdGraph.layoutMs`)
	edges := eval[int](t, b, `window.__herdGraph.edges`)
	// Positions must not move as windows arrive: sample now, compare after the frames.
	before := eval[string](t, b, `JSON.stringify([...window.__herdGraph.positions()])`)
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](`window.__herdGraph.frameGaps = []; window.__herdGraph.draws0 = window.__herdGraph.draws; window.__herdGraph.polls0 = window.__herdGraph.polls`))
	// 16 polls of the API (4 s when the page keeps up), however long a loaded machine takes.
	b.waitJS(t, 60*time.Second, `window.__herdGraph.polls - window.__herdGraph.polls0 >= 16`)
	gaps := eval[[]float64](t, b, `window.__herdGraph.frameGaps`)
	draws := eval[int](t, b, `window.__herdGraph.draws - window.__herdGraph.draws0`)
	polls := eval[int](t, b, `window.__herdGraph.polls - window.__herdGraph.polls0`)
	var sum float64
	for _, g := range gaps {
		sum += g
	}
	fps := float64(len(gaps)) / (sum / 1000)
	slices.Sort(gaps)
	p95 := gaps[len(gaps)*95/100]
	t.Logf("fleet: %d services, %d edges; first render %.0f ms (layout %.0f ms); over %.1f s: %d frames, %.1f fps, p95 frame gap %.1f ms, %d redraws for %d polls",
		eval[int](t, b, `window.__herdGraph.services`), edges, first, layout, sum/1000, len(gaps), fps, p95, draws, polls)
	if after := eval[string](t, b, `JSON.stringify([...window.__herdGraph.positions()])`); after != before {
		t.Errorf("the fleet layout moved while windows arrived")
	}
	if edges < 3000 {
		t.Errorf("page drew %d edges; want ≥ 3000", edges)
	}
	if draws < polls/2 {
		t.Errorf("got %d redraws for %d polls; want the graph redrawn as windows arrive", draws, polls)
	}
	perftest.Within(t, "fleet graph first render (ms)", first, 1000)
	perftest.Within(t, "fleet graph mean frame gap (ms), ≥ 30 fps", 1000/fps, 1000.0/30)
	t.Logf("draw ms: %v", eval[[]float64](t, b, `window.__herdGraph.drawMs.map(Math.round)`))
	shoot(t, b, "graph-fleet")
}

// shoot writes light and dark screenshots of the page as <dir>/<name>-{light,dark}.png
// when HERD_SCREENSHOTS names a directory.
func shoot(t *testing.T, b *browser, name string) {
	t.Helper()
	dir := os.Getenv("HERD_SCREENSHOTS")
	if dir == "" {
		return
	}
	for _, scheme := range []string{"light", "dark"} {
		b.do(t, 5*time.Second, setColorScheme(scheme))
		d0 := eval[int](t, b, `window.__herdGraph.draws`)
		b.waitJS(t, 5*time.Second, fmt.Sprintf(`window.__herdGraph.draws > %d`, d0+1)) // redrawn in the new colours
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		file := filepath.Join(dir, fmt.Sprintf("%s-%s.png", name, scheme))
		if err := os.WriteFile(file, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
