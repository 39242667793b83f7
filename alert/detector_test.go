package alert

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// detectorRun is what the fleets of the detector's tests share: the Detector they feed, the
// window time and the verdicts it published.
type detectorRun struct {
	t        *testing.T
	d        *Detector
	nowMs    int64
	mu       sync.Mutex
	verdicts []proto.Verdict // state changes
	updates  []proto.Verdict // verdicts with Update set: live evidence, watch ends
}

// record is the Detector's publish function.
func (f *detectorRun) record(v proto.Verdict) {
	f.mu.Lock()
	if v.Update {
		f.updates = append(f.updates, v)
	} else {
		f.verdicts = append(f.verdicts, v)
	}
	f.mu.Unlock()
}

func (f *detectorRun) announce() {
	f.t.Helper()
	if err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2", UnixMs: f.nowMs}); err != nil {
		f.t.Fatalf("Announce: got %v; want no error", err)
	}
}

func (f *detectorRun) states() []proto.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []proto.State
	for _, v := range f.verdicts {
		out = append(out, v.State)
	}
	return out
}

func (f *detectorRun) last() proto.Verdict {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.verdicts) == 0 {
		f.t.Fatalf("got no verdict; want at least one")
	}
	return f.verdicts[len(f.verdicts)-1]
}

// fleet feeds a Detector with simulated windows of a baseline v1 and a canary v2.
type fleet struct {
	detectorRun
	r    *rand.Rand
	a, b *traffic.WindowGroup
}

// fleetOpts describe the simulated traffic.
type fleetOpts struct {
	rps, share float64
	errA, errB float64 // error ratios
	scaleB     float64 // canary latency multiplier
}

func newFleet(t *testing.T, cfg Config, pol *Policy, o fleetOpts) *fleet {
	t.Helper()
	f := &fleet{detectorRun: detectorRun{t: t, nowMs: 1_700_000_000_000}, r: rand.New(rand.NewPCG(11, 13))}
	d, err := NewWithPolicy(cfg, nil, pol, f.record, nil)
	if err != nil {
		t.Fatalf("NewWithPolicy: got %v; want no error", err)
	}
	f.d = d
	base := traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}
	bins := traffic.NewBins(base)
	f.a, f.b = traffic.NewWindowGroup("shop", "v1", bins), traffic.NewWindowGroup("shop", "v2", bins)
	f.a.Instances, f.b.Instances = 10, 2
	if o.scaleB == 0 {
		o.scaleB = 1
	}
	per := o.rps * testWindow.Seconds()
	canary := base
	canary.Scale = o.scaleB
	f.a.Means[traffic.Normal] = bins.Means(base, per*(1-o.share), nil)
	f.b.Means[traffic.Normal] = bins.Means(canary, per*o.share, nil)
	f.a.ErrorRate[traffic.Normal], f.b.ErrorRate[traffic.Normal] = o.errA, o.errB
	return f
}

// step feeds n windows of the groups selected; errFrac overrides the canary's error ratio.
func (f *fleet) step(n int, feedA, feedB bool, loadB, errFracA, errFracB float64) {
	win := testWindow.Milliseconds()
	for range n {
		if feedA {
			f.d.AddWindow(f.a.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, errFracA))
		}
		if feedB {
			f.d.AddWindow(f.b.Fill(f.r, f.nowMs, f.nowMs+win, loadB, traffic.Normal, errFracB))
		}
		f.nowMs += win
	}
}

// stepGone feeds n windows in which the baseline reports and the canary group's windows
// come empty, as the rollup emits them once every instance of a group has stopped.
func (f *fleet) stepGone(n int) {
	win := testWindow.Milliseconds()
	for range n {
		f.d.AddWindow(f.a.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0))
		f.d.AddWindow(&proto.Window{Service: "shop", Version: "v2", StartMs: f.nowMs, EndMs: f.nowMs + win})
		f.nowMs += win
	}
}

// testWindow is the width of the simulated windows.
const testWindow = 250 * time.Millisecond

func testConfig() Config {
	c := DefaultConfig()
	c.MinExposure = 30 * time.Second
	return c
}

func TestDetectorCrashLoopRollsBackInFirstWindow(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	start := f.nowMs
	f.step(1, true, true, 1, 0, 0.95) // first canary window, inside the 5 s warm-up
	v := f.last()
	if v.State != proto.StateRollback || v.Evidence.Decisive != "guard_error_ceiling" {
		t.Fatalf("after the first crash-looping window: got %s by %q (%s); want rollback by guard_error_ceiling", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if got, want := v.UnixMs-start, int64(250); got != want {
		t.Fatalf("decision time: got %d ms; want %d ms", got, want)
	}
	if v.DecisionID == "" || !strings.Contains(v.Sentence, "canary error ratio") {
		t.Fatalf("got decision id %q, sentence %q; want a UUID and a ceiling sentence", v.DecisionID, v.Sentence)
	}
	f.step(20, true, true, 1, 0, 0.95)
	if got := f.states(); len(got) != 2 {
		t.Fatalf("verdicts: got %v; want [pending rollback] and nothing after a final verdict", got)
	}
}

func TestDetectorAAPassesAfterMinExposure(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	f := newFleet(t, cfg, nil, fleetOpts{rps: 40000, share: 0.2, errA: 0.01, errB: 0.01})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	start := f.nowMs
	for range 4 * 120 {
		f.step(1, true, true, 1, 0, 0)
		if s := f.last().State; s != proto.StatePending {
			break
		}
	}
	v := f.last()
	if v.State != proto.StatePass {
		t.Fatalf("A/A after 2 min: got %s (%s); want pass", v.State, v.Sentence)
	}
	minMs := (cfg.Warmup + cfg.MinExposure).Milliseconds()
	if got := v.UnixMs - start; got < minMs {
		t.Fatalf("pass after %d ms; want ≥ %d ms (warm-up + min exposure)", got, minMs)
	}
	if !strings.HasPrefix(v.Sentence, "no regression after") || v.DecisionID == "" {
		t.Fatalf("pass verdict: got sentence %q, id %q; want 'no regression after …' and an id", v.Sentence, v.DecisionID)
	}
	for _, te := range v.Evidence.Tests {
		if te.Name != "dkw" && !(te.CSHigh < cfg.AcceptMargin) {
			t.Errorf("test %s: got CS high %g; want < %g at a pass", te.Name, te.CSHigh, cfg.AcceptMargin)
		}
	}
}

func TestDetectorErrorsRegression(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.05})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(4*60, true, true, 1, 0, 0)
	v := f.last()
	if v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
		t.Fatalf("errors ×10: got %s by %q (%s); want rollback by errors", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if !strings.HasPrefix(v.Sentence, "errors ") || !strings.Contains(v.Sentence, "× baseline, 99 % CS [") || !strings.Contains(v.Sentence, "decided after") {
		t.Fatalf("sentence: got %q; want 'errors N× baseline, 99 %% CS [lo, hi], decided after T s'", v.Sentence)
	}
	if !(v.Evidence.EValue >= 100) {
		t.Fatalf("evidence e-value: got %g; want ≥ 1/α = 100", v.Evidence.EValue)
	}
}

func TestDetectorLatencyTail(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.005, scaleB: 3})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(4*60, true, true, 1, 0, 0)
	v := f.last()
	if v.State != proto.StateRollback || !strings.HasPrefix(v.Evidence.Decisive, "latency_") && v.Evidence.Decisive != "dkw" {
		t.Fatalf("latency ×3: got %s by %q (%s); want rollback by a latency test", v.State, v.Evidence.Decisive, v.Sentence)
	}
}

func TestDetectorCanaryGone(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(40, true, true, 1, 0, 0)
	if s := f.last().State; s != proto.StatePending {
		t.Fatalf("before the canary vanishes: got %s; want pending", s)
	}
	f.stepGone(3)
	if s := f.last().State; s != proto.StatePending {
		t.Fatalf("canary silent 0.75 s: got %s; want pending", s)
	}
	f.stepGone(1)
	v := f.last()
	if want := "canary crash-looping: no canary instance reporting for 1.0 s while the baseline served traffic"; v.State != proto.StateRollback || v.Sentence != want {
		t.Fatalf("canary silent 1 s: got %s %q; want rollback %q", v.State, v.Sentence, want)
	}
}

// TestDetectorMissingWindowsAreNotGone: when the canary's windows stop arriving at all (a
// rollup worker failing over), the canary is not judged gone; its windows resume.
func TestDetectorMissingWindowsAreNotGone(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(40, true, true, 1, 0, 0)
	f.step(12, true, false, 1, 0, 0) // 3 s without any canary window
	f.step(8, true, true, 1, 0, 0)
	if v := f.last(); v.State != proto.StatePending {
		t.Fatalf("canary windows missing for 3 s: got %s %q; want pending", v.State, v.Sentence)
	}
}

func TestDetectorSharedOutageDoesNotFire(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(40, true, true, 1, 0, 0)
	f.step(4*20, true, true, 1, 0.6, 0.6) // both versions fail 60 % for 20 s
	f.step(40, true, true, 1, 0, 0)
	if got := f.states(); len(got) != 1 || got[0] != proto.StatePending {
		t.Fatalf("shared outage: got verdicts %v; want [pending]", got)
	}
}

func TestDetectorInfersCanary(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(4*20, true, false, 1, 0, 0)
	f.step(4, true, true, 1, 0, 0) // v2 appears 20 s after v1: not established yet
	if got := f.states(); len(got) != 0 {
		t.Fatalf("v2 beside a 20 s old v1: got verdicts %v; want none (establish-after %s)", got, cfg.EstablishAfter)
	}
	g := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	g.step(4*40, true, false, 1, 0, 0)
	g.step(1, true, true, 1, 0, 0)
	v := g.last()
	if v.State != proto.StatePending || v.Baseline != "v1" || v.Canary != "v2" || !strings.Contains(v.Sentence, "inferred") {
		t.Fatalf("v2 beside a 40 s old v1: got %+v; want pending v2 against v1, inferred", v)
	}
	if got := g.d.Verdicts(); len(got) != 1 || got[0].Canary != "v2" {
		t.Fatalf("Verdicts: got %+v; want one for v2", got)
	}
}

func TestDetectorAnnounceRestartsFinalComparison(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(1, true, true, 1, 0, 0.95)
	f.step(1, true, false, 1, 0, 0)
	f.announce() // the comparison is final: a new deployment of v2 (after the verdict) restarts it
	f.step(40, true, true, 1, 0, 0)
	want := []proto.State{proto.StatePending, proto.StateRollback, proto.StatePending}
	if got := f.states(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("verdicts: got %v (%s); want %v", got, f.last().Sentence, want)
	}
	err := f.d.Announce(proto.Deployment{Service: "Shop!", Baseline: "v1", Canary: "v2"})
	if err == nil || !strings.Contains(err.Error(), "cannot announce deployment") {
		t.Fatalf("bad announcement: got %v; want 'cannot announce deployment: …'", err)
	}
	if got := f.d.m.badAnnouncement.Get(); got != 1 {
		t.Fatalf("rejected announcements: got %d; want 1", got)
	}
}

func TestDetectorNoTrafficIsInconclusiveUntilTrafficResumes(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(40, true, true, 1, 0, 0)
	f.step(4*11, true, true, 0, 0, 0) // canary instances report, but serve nothing
	if v := f.last(); v.State != proto.StateInconclusive || !strings.Contains(v.Sentence, "no canary traffic") {
		t.Fatalf("no canary traffic for 11 s: got %s %q; want inconclusive, no canary traffic", v.State, v.Sentence)
	}
	f.step(1, true, true, 1, 0, 0)
	if v := f.last(); v.State != proto.StatePending {
		t.Fatalf("traffic resumed: got %s; want pending", v.State)
	}
}

func TestDetectorDropsBadWindows(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(2, true, false, 1, 0, 0)
	w := f.a.Fill(f.r, f.nowMs-500, f.nowMs-250, 1, traffic.Normal, 0) // replays an older window
	f.d.AddWindow(w)
	f.d.AddWindow(&proto.Window{Service: "Bad Service", Version: "v1", StartMs: 0, EndMs: 250})
	f.d.AddWindow(nil)
	if got := f.d.m.outOfOrder.Get(); got != 1 {
		t.Errorf("out-of-order drops: got %d; want 1", got)
	}
	if got := f.d.m.badWindow.Get(); got != 2 {
		t.Errorf("bad-window drops: got %d; want 2", got)
	}
}

func TestDetectorPolicySelectors(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	pol, err := ParsePolicy([]byte(`{"services": {"shop": {
		"requests": "http_requests_total",
		"errors": "http_requests_total{code=~'5..'}",
		"latency": "http_request_duration_seconds"}}}`), &cfg)
	if err != nil {
		t.Fatalf("ParsePolicy: got %v; want no error", err)
	}
	f := newFleet(t, cfg, pol, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.05})
	// Rename the simulated RED series into Prometheus-style series with a code label.
	prom := func(w *proto.Window) *proto.Window {
		n, e := w.Series[0].Value, w.Series[1].Value
		out := *w
		out.Series = []proto.WindowSeries{
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: n - e},
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "503"}}, Kind: proto.KindCounter, Value: e},
			{Name: "http_request_duration_seconds", Kind: proto.KindHistogram, Hist: w.Series[2].Hist},
		}
		return &out
	}
	win := testWindow.Milliseconds()
	feed := func(n int, canary bool) {
		for range n {
			f.d.AddWindow(prom(f.a.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0)))
			if canary {
				f.d.AddWindow(prom(f.b.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0)))
			}
			f.nowMs += win
		}
	}
	feed(40, false)
	f.announce()
	feed(4*60, true)
	if v := f.last(); v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
		t.Fatalf("errors ×10 via selectors: got %s by %q (%s); want rollback by errors", v.State, v.Evidence.Decisive, v.Sentence)
	}
}

func TestDetectorRunTicksNoCanary(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		var mu sync.Mutex
		var got []proto.Verdict
		d, err := New(cfg, nil, func(v proto.Verdict) { mu.Lock(); got = append(got, v); mu.Unlock() }, nil)
		if err != nil {
			t.Fatalf("New: got %v; want no error", err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- d.Run(ctx) }()
		if err := d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2"}); err != nil {
			t.Fatalf("Announce: got %v; want no error", err)
		}
		time.Sleep(cfg.NoCanaryAfter - time.Second)
		synctest.Wait()
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n != 1 {
			t.Fatalf("verdicts before %s: got %d; want 1 (pending)", cfg.NoCanaryAfter, n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		mu.Lock()
		last := got[len(got)-1]
		mu.Unlock()
		if last.State != proto.StateInconclusive || last.Evidence.Decisive != "guard_no_canary" {
			t.Fatalf("after %s without canary windows: got %s by %q; want inconclusive by guard_no_canary", cfg.NoCanaryAfter, last.State, last.Evidence.Decisive)
		}
		time.Sleep(cfg.MaxDuration)
		synctest.Wait()
		if v := d.Verdicts(); len(v) != 1 || v[0].State != proto.StateInconclusive || v[0].Evidence.Decisive != "max_duration" {
			t.Fatalf("after max duration: got %+v; want one inconclusive verdict by max_duration", v)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: got %v; want nil", err)
		}
	})
}

func TestVerdictJSONIsFinite(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0, errB: 0.5})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(40, true, true, 1, 0, 0)
	v := f.last()
	if _, err := proto.MarshalVerdict(&v); err != nil {
		t.Fatalf("MarshalVerdict(%s): got %v; want no error", v.State, err)
	}
}

// BenchmarkDetectorAddWindowPair measures one compared window pair (baseline and canary
// window with counters and a latency histogram) through AddWindow.
func BenchmarkDetectorAddWindowPair(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Warmup = 0
	cfg.MinExposure = 1000 * time.Hour
	cfg.MaxDuration = 1000 * time.Hour
	d, _ := NewWithPolicy(cfg, nil, nil, nil, nil)
	r := rand.New(rand.NewPCG(1, 1))
	m := traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}
	bins := traffic.NewBins(m)
	ga, gb := traffic.NewWindowGroup("bench", "v1", bins), traffic.NewWindowGroup("bench", "v2", bins)
	ga.Means[traffic.Normal], gb.Means[traffic.Normal] = bins.Means(m, 475, nil), bins.Means(m, 25, nil)
	ga.ErrorRate[traffic.Normal], gb.ErrorRate[traffic.Normal] = 0.005, 0.005
	ms := int64(1_700_000_000_000)
	for range 40 {
		d.AddWindow(ga.Fill(r, ms, ms+250, 1, traffic.Normal, 0))
		ms += 250
	}
	_ = d.Announce(proto.Deployment{Service: "bench", Baseline: "v1", Canary: "v2", UnixMs: ms})
	wa, wb := make([]proto.Window, 64), make([]proto.Window, 64)
	for i := range wa {
		wa[i] = cloneWindow(ga.Fill(r, 0, 250, 1, traffic.Normal, 0))
		wb[i] = cloneWindow(gb.Fill(r, 0, 250, 1, traffic.Normal, 0))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a, c := &wa[i%64], &wb[i%64]
		a.StartMs, a.EndMs, c.StartMs, c.EndMs = ms, ms+250, ms, ms+250
		d.AddWindow(a)
		d.AddWindow(c)
		ms += 250
	}
}

func cloneWindow(w *proto.Window) proto.Window {
	out := *w
	out.Series = append([]proto.WindowSeries(nil), w.Series...)
	h := &proto.Histogram{}
	h.CopyFrom(w.Series[2].Hist)
	out.Series[2].Hist = h
	return out
}

func TestDetectorDoesNotReinferJudgedCanary(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(4*40, true, false, 1, 0, 0)
	f.step(4, true, true, 1, 0, 0.95) // inferred, then rolled back by the ceiling within a second
	f.mu.Lock()
	f.verdicts = nil
	f.mu.Unlock()
	f.d.mu.Lock()
	delete(f.d.services["shop"].comps, "v2") // as Tick does an hour after the final verdict
	f.d.mu.Unlock()
	f.step(8, true, true, 1, 0, 0)
	if got := f.states(); len(got) != 0 {
		t.Fatalf("windows of a judged canary after its verdict was forgotten: got verdicts %v; want none", got)
	}
}

func TestDetectorLatest(t *testing.T) {
	t.Parallel()
	d, err := NewWithPolicy(testConfig(), nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := d.Latest("shop"); ok {
		t.Fatalf("Latest of an unknown service: got %+v, true; want false", v)
	}
	announce := func(service, canary string, ms int64) {
		t.Helper()
		if err := d.Announce(proto.Deployment{Service: service, Baseline: "v1", Canary: canary, UnixMs: ms}); err != nil {
			t.Fatal(err)
		}
	}
	// lookup is what Latest replaces: a scan of Verdicts.
	lookup := func(service string) (proto.Verdict, bool) {
		var best proto.Verdict
		found := false
		for _, v := range d.Verdicts() {
			if v.Service == service && (!found || v.StartedMs >= best.StartedMs) {
				best, found = v, true
			}
		}
		return best, found
	}
	announce("shop", "v3", 2_000)
	announce("shop", "v2", 1_000)
	announce("cart", "v9", 3_000)
	for _, tc := range []struct {
		add         func()
		service     string
		wantCanary  string
		wantStarted int64
	}{
		{nil, "shop", "v3", 2_000},
		{nil, "cart", "v9", 3_000},
		{func() { announce("shop", "v4", 2_000) }, "shop", "v4", 2_000}, // same start: the greater canary
		{func() { announce("shop", "v5", 5_000) }, "shop", "v5", 5_000},
	} {
		if tc.add != nil {
			tc.add()
		}
		v, ok := d.Latest(tc.service)
		if !ok || v.Canary != tc.wantCanary || v.StartedMs != tc.wantStarted || v.State != proto.StatePending {
			t.Errorf("Latest(%s): got %s started %d (%s), %v; want pending %s started %d", tc.service, v.Canary, v.StartedMs, v.State, ok, tc.wantCanary, tc.wantStarted)
		}
		if w, _ := lookup(tc.service); w.Canary != v.Canary {
			t.Errorf("Latest(%s): got %s; a scan of Verdicts gives %s", tc.service, v.Canary, w.Canary)
		}
	}
}

// TestDetectorSkipsCorrections: a correction (late data of a window already taken) is not a
// window to decide on; were it taken, the windows after it would be out of order.
func TestDetectorSkipsCorrections(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.step(2, true, true, 1, 0, 0)
	c := f.a.Fill(f.r, f.nowMs+10_000, f.nowMs+10_250, 1, traffic.Normal, 1)
	c.Correction = true
	f.d.AddWindow(c)
	f.step(2, true, true, 1, 0, 0)
	if got := f.d.m.outOfOrder.Get(); got != 0 {
		t.Errorf("out-of-order drops after a correction: got %d; want 0", got)
	}
}
