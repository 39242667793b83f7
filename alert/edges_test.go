package alert

import (
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// edgeSpec is one simulated outbound edge of a group: calls per request, the calls' error
// ratio and their latency (log-normal, seconds).
type edgeSpec struct {
	callee         string
	perRequest     float64
	errRatio       float64
	latencyMedian  float64
	latencyScaleUp float64 // multiplies the latency (1 if 0)
}

// withEdges returns a copy of w with the edges' series added: Poisson calls per request,
// Poisson errors among them, the latencies of a sample of calls.
func withEdges(r *rand.Rand, w *proto.Window, edges []edgeSpec) *proto.Window {
	out := *w
	out.Series = slices.Clone(w.Series)
	n := w.Find(proto.SeriesRequests).Value
	for _, e := range edges {
		calls := traffic.Poisson(r, n*e.perRequest)
		errs := min(traffic.Poisson(r, calls*e.errRatio), calls)
		h := &proto.Histogram{}
		scale := e.latencyScaleUp
		if scale == 0 {
			scale = 1
		}
		for range int(calls) {
			h.Observe(e.latencyMedian*scale*math.Exp(0.4*r.NormFloat64()), 1)
		}
		ls := proto.EdgeLabels(proto.EdgeKey{Callee: e.callee})
		out.Series = append(out.Series,
			proto.WindowSeries{Name: proto.SeriesEdgeCalls, Labels: ls, Kind: proto.KindCounter, Value: calls},
			proto.WindowSeries{Name: proto.SeriesEdgeErrors, Labels: ls, Kind: proto.KindCounter, Value: errs},
			proto.WindowSeries{Name: proto.SeriesEdgeLatency, Labels: ls, Kind: proto.KindHistogram, Hist: h, Count: h.Count})
	}
	return &out
}

// edgeFleet feeds windows with edges: the baseline's edges ea, the canary's eb.
func (f *fleet) stepEdges(n int, ea, eb []edgeSpec) {
	win := testWindow.Milliseconds()
	for range n {
		f.d.AddWindow(withEdges(f.r, f.a.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0), ea))
		f.d.AddWindow(withEdges(f.r, f.b.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0), eb))
		f.nowMs += win
	}
}

func TestEdgeFanoutRollsBack(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.1, errA: 0.01, errB: 0.01})
	base := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.01, latencyMedian: 0.02}}
	f.stepEdges(20, base, nil)
	f.announce()
	f.stepEdges(8, base, base) // warm-up and a few good pairs
	if s := f.last().State; s != proto.StatePending {
		t.Fatalf("before the fan-out: got %s; want pending", s)
	}
	fan := slices.Clone(base)
	fan[0].perRequest = 5
	start := f.nowMs
	for range 200 {
		f.stepEdges(1, base, fan)
		if f.last().State != proto.StatePending {
			break
		}
	}
	v := f.last()
	t.Logf("after %d ms: %s", f.nowMs-start, v.Sentence)
	if v.State != proto.StateRollback || v.Evidence.Decisive != "edge_fanout payments" {
		t.Fatalf("got %s by %q (%s); want rollback by edge_fanout payments", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if !regexp.MustCompile(`^shop v2 → payments: [4-6]\.\d calls per request vs 1\.0 over the last`).MatchString(v.Sentence) {
		t.Errorf("sentence %q; want it to name the edge and its calls per request", v.Sentence)
	}
	if got := time.Duration(f.nowMs-start) * time.Millisecond; got > 3*time.Second {
		t.Errorf("fan-out ×5 took %s of windows; want at most 3 s", got)
	}
}

func TestEdgeDownstreamErrorsRollBack(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
	base := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.02, latencyMedian: 0.02},
		{callee: "search", perRequest: 2, errRatio: 0.01, latencyMedian: 0.01}}
	f.stepEdges(20, base, nil)
	f.announce()
	f.stepEdges(8, base, base)
	bad := slices.Clone(base)
	bad[1].errRatio = 0.05
	for range 400 {
		f.stepEdges(1, base, bad)
		if f.last().State != proto.StatePending {
			break
		}
	}
	v := f.last()
	t.Log(v.Sentence)
	if v.State != proto.StateRollback || v.Evidence.Decisive != "edge_errors search" {
		t.Fatalf("got %s by %q (%s); want rollback by edge_errors search", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if !strings.HasPrefix(v.Sentence, "shop v2 → search: ") || !strings.Contains(v.Sentence, "% of calls fail vs ") {
		t.Errorf("sentence %q; want it to name the edge and its error ratios", v.Sentence)
	}
}

func TestEdgeLatencyRollsBack(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
	base := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.01, latencyMedian: 0.02}}
	f.stepEdges(20, base, nil)
	f.announce()
	f.stepEdges(12, base, base)
	slow := slices.Clone(base)
	slow[0].latencyScaleUp = 2
	for range 400 {
		f.stepEdges(1, base, slow)
		if f.last().State != proto.StatePending {
			break
		}
	}
	v := f.last()
	t.Log(v.Sentence)
	if v.State != proto.StateRollback || v.Evidence.Decisive != "edge_latency payments" {
		t.Fatalf("got %s by %q (%s); want rollback by edge_latency payments", v.State, v.Evidence.Decisive, v.Sentence)
	}
}

// TestEdgeNewDependencyPasses: a canary that calls a service the baseline never calls, and
// is otherwise the baseline's equal, passes; the new dependency is named in the verdict.
func TestEdgeNewDependencyPasses(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
	base := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.01, latencyMedian: 0.02}}
	more := append(slices.Clone(base), edgeSpec{callee: "audit", perRequest: 3, errRatio: 0.2, latencyMedian: 0.05})
	f.stepEdges(20, base, nil)
	f.announce()
	for range 2000 {
		f.stepEdges(1, base, more)
		if f.last().State != proto.StatePending {
			break
		}
	}
	v := f.last()
	t.Log(v.Sentence)
	if v.State != proto.StatePass {
		t.Fatalf("got %s by %q (%s); want pass", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if !strings.Contains(v.Sentence, "new dependencies the baseline never calls: audit (") {
		t.Errorf("sentence %q; want it to name the new dependency audit", v.Sentence)
	}
	var judged, reported bool
	for _, te := range v.Evidence.Tests {
		judged = judged || te.Name == "edge_fanout payments"
		reported = reported || te.Name == "edge_new audit" && te.CanaryN > 0
	}
	if !judged || !reported {
		t.Errorf("evidence tests %v; want edge_fanout payments judged and edge_new audit reported", v.Evidence.Tests)
	}
}

// TestEdgeAAFalseRollbacks runs A/A comparisons with three edges each and counts the
// rollbacks: at most α of them (with binomial slack).
func TestEdgeAAFalseRollbacks(t *testing.T) {
	if testing.Short() {
		t.Skip("A/A trials")
	}
	t.Parallel()
	const trials = 60
	cfg := testConfig()
	cfg.Alpha = 0.05
	cfg.MinExposure = 10 * time.Second
	edges := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.02, latencyMedian: 0.02},
		{callee: "search", perRequest: 3, errRatio: 0.01, latencyMedian: 0.01},
		{callee: "cache", perRequest: 0.3, errRatio: 0.05, latencyMedian: 0.002}}
	rollbacks, passes := 0, 0
	for i := range trials {
		f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
		f.r = rand.New(rand.NewPCG(uint64(i), 99))
		f.stepEdges(20, edges, nil)
		f.announce()
		for range 400 {
			f.stepEdges(1, edges, edges)
			if f.last().State != proto.StatePending {
				break
			}
		}
		switch f.last().State {
		case proto.StateRollback:
			rollbacks++
			t.Logf("trial %d: %s", i, f.last().Sentence)
		case proto.StatePass:
			passes++
		}
	}
	t.Logf("A/A with edges: %d rollbacks, %d passes of %d (α %g)", rollbacks, passes, trials, cfg.Alpha)
	// P(Binomial(60, 0.05) ≥ 9) < 0.01.
	if rollbacks >= 9 {
		t.Errorf("got %d false rollbacks of %d; want fewer than 9 (α %g)", rollbacks, trials, cfg.Alpha)
	}
}

// TestEdgeBlastRadiusRollsBack: the canary's calls look fine from its side, but the callee's
// own windows show it failing the canary's requests 5× as often as the baseline's.
func TestEdgeBlastRadiusRollsBack(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
	base := []edgeSpec{{callee: "payments", perRequest: 1, errRatio: 0.01, latencyMedian: 0.02}}
	win := testWindow.Milliseconds()
	// callee feeds payments' window of the interval just fed: its requests from each shop
	// version (the calls) and its errors on them.
	callee := func(errA, errB float64) {
		start := f.nowMs - win
		calls := func(share float64) float64 { return traffic.Poisson(f.r, 2000*share*testWindow.Seconds()) }
		w := &proto.Window{Service: "payments", Version: "7.1.0", StartMs: start, EndMs: start + win, Instances: 4}
		for _, g := range []struct {
			version  string
			n, ratio float64
		}{{"v1", calls(0.8), errA}, {"v2", calls(0.2), errB}} {
			ls := []proto.Label{{Name: proto.LabelCaller, Value: "shop"}, {Name: proto.LabelCallerVersion, Value: g.version}}
			w.Series = append(w.Series,
				proto.WindowSeries{Name: proto.SeriesInboundRequests, Labels: ls, Kind: proto.KindCounter, Value: g.n},
				proto.WindowSeries{Name: proto.SeriesInboundErrors, Labels: ls, Kind: proto.KindCounter, Value: min(traffic.Poisson(f.r, g.n*g.ratio), g.n)})
		}
		f.d.AddWindow(w)
	}
	f.stepEdges(20, base, nil)
	f.announce()
	for range 8 {
		f.stepEdges(1, base, base)
		callee(0.01, 0.01)
	}
	for range 400 {
		f.stepEdges(1, base, base)
		callee(0.01, 0.05)
		if f.last().State != proto.StatePending {
			break
		}
	}
	v := f.last()
	t.Log(v.Sentence)
	if v.State != proto.StateRollback || v.Evidence.Decisive != "edge_blast payments" {
		t.Fatalf("got %s by %q (%s); want rollback by edge_blast payments", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if !strings.HasPrefix(v.Sentence, "shop v2 → payments: payments fails ") {
		t.Errorf("sentence %q; want it to name the edge and the callee's failures", v.Sentence)
	}
}
