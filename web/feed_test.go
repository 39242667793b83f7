package web

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/proto"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

// groupSpec describes one simulated (service, version) group.
type groupSpec struct {
	service, version string
	instances        int     // mean instance count; churns ±2
	rps              float64 // requests per second per instance
	errRate          float64 // error ratio
	latency          float64 // median latency in seconds (log-normal)
}

// makeWindow builds a realistic closed window ending at endMs: request and error counters
// and a latency histogram filled through proto.Histogram.Observe, quantiles set as the
// rollup sets them.
func makeWindow(rng *rand.Rand, g groupSpec, instances int, endMs int64, window time.Duration) *proto.Window {
	reqs := math.Round(g.rps * float64(instances) * window.Seconds() * (0.9 + 0.2*rng.Float64()))
	errs := 0.0
	for range int(reqs) {
		if rng.Float64() < g.errRate {
			errs++
		}
	}
	h := &proto.Histogram{}
	for range int(reqs) {
		h.Observe(g.latency*math.Exp(0.35*rng.NormFloat64()), 1)
	}
	lat := proto.WindowSeries{Name: "latency_seconds", Kind: proto.KindHistogram, Hist: h}
	lat.SetQuantiles()
	started, stopped := 0, 0
	if rng.IntN(8) == 0 {
		started = 1
	}
	if rng.IntN(8) == 0 {
		stopped = 1
	}
	return &proto.Window{
		Service: g.service, Version: g.version,
		StartMs: endMs - window.Milliseconds(), EndMs: endMs, ClosedMs: time.Now().UnixMilli(),
		Instances: instances, InstancesStarted: started, InstancesStopped: stopped,
		Series: []proto.WindowSeries{
			{Name: "errors_total", Kind: proto.KindCounter, Value: errs},
			lat,
			{Name: "requests_total", Kind: proto.KindCounter, Value: reqs},
		},
	}
}

// feeder publishes windows of its groups every window, aligned; a window ending at t is
// published at t + lateness, as the rollup closes it.
type feeder struct {
	srv      *Server
	window   time.Duration
	lateness time.Duration
	mu       sync.Mutex // guards groups, rng, inst and next
	groups   []groupSpec
	rng      *rand.Rand
	inst     map[string]int
	next     int64 // the end of the first window run emits; 0: the next aligned end
	ran      int   // window ends run has emitted
}

func newFeeder(srv *Server, window time.Duration, groups ...groupSpec) *feeder {
	return &feeder{srv: srv, window: window, groups: groups, rng: rand.New(rand.NewPCG(1, 2)), inst: map[string]int{}}
}

// tick emits one window per group ending at endMs.
func (f *feeder) tick(endMs int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		k := g.service + "/" + g.version
		n, ok := f.inst[k]
		if !ok {
			n = g.instances
		}
		// Instances churn around the mean: join and leave.
		n += f.rng.IntN(3) - 1
		n = max(g.instances-2, min(g.instances+2, n))
		if g.instances == 0 {
			n = 0
		}
		f.inst[k] = n
		f.srv.AddWindow(makeWindow(f.rng, g, n, endMs, f.window))
	}
}

// backfill emits d of history before now.
func (f *feeder) backfill(d time.Duration) {
	w := f.window.Milliseconds()
	end := time.Now().UnixMilli() / w * w
	for t := end - d.Milliseconds(); t <= end; t += w {
		f.tick(t)
	}
	f.next = end + w
}

// run emits every aligned window at its end plus lateness until ctx is done.
func (f *feeder) run(ctx context.Context) {
	w := f.window.Milliseconds()
	next := f.next // continue after the backfill, without a gap
	if next == 0 {
		next = (time.Now().UnixMilli()/w + 1) * w
	}
	for {
		wait := time.Until(time.UnixMilli(next).Add(f.lateness))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		f.tick(next)
		f.mu.Lock()
		f.ran++
		f.mu.Unlock()
		next += w
	}
}

// emitted returns how many windows of service run has emitted.
func (f *feeder) emitted(service string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, g := range f.groups {
		if g.service == service {
			n++
		}
	}
	return n * f.ran
}

// testServer runs a Server and its handler on a real listener.
type testServer struct {
	srv  *Server
	http *httptest.Server
	// down makes the listener refuse websocket upgrades with 503, as a restarting server would.
	down   atomic.Bool
	cancel context.CancelFunc
	done   chan error
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	srv, err := New(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, cancel: cancel, done: make(chan error, 1)}
	h := srv.Handler()
	ts.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ts.down.Load() && strings.HasSuffix(r.URL.Path, "/stream") {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	go func() { ts.done <- srv.Run(ctx) }()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	if err := <-ts.done; err != nil && !errors.Is(err, context.Canceled) {
		panic(fmt.Sprintf("BUG: Run returned %v", err))
	}
	ts.http.Close()
}

// demoGroups is a small fleet like herd demo's: checkout with a canary, and two more services.
func demoGroups() []groupSpec {
	return []groupSpec{
		{service: "checkout", version: "1.4.2", instances: 20, rps: 100, errRate: 0.005, latency: 0.030},
		{service: "checkout", version: "1.5.0", instances: 5, rps: 100, errRate: 0.005, latency: 0.031},
		{service: "search", version: "2.0.1", instances: 12, rps: 150, errRate: 0.002, latency: 0.045},
		{service: "payments", version: "3.2.0", instances: 6, rps: 40, errRate: 0.001, latency: 0.080},
	}
}
