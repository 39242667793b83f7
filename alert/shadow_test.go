package alert

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// splitGroup simulates one group's windows as the rollup publishes them with a per-instance
// warm-up: two halves of warm instances and a part of warming instances. Series is the sum
// of the three parts, Warm the sum of the halves.
type splitGroup struct {
	version string
	half    [2]*traffic.WindowGroup
	warming *traffic.WindowGroup
	inst    [2]int // warm instances per half
	// warmingInst is the number of warming instances; 0 leaves the warming part out.
	warmingInst int
}

// splitFleet feeds a Detector with split windows of a baseline v1 and a canary v2 in window
// time (no clock).
type splitFleet struct {
	detectorRun
	r    *rand.Rand
	bins *traffic.Bins
	set  *metrics.Set // d's metrics
	a, b *splitGroup
	// plain: publish windows without Warm and Halves, as a rollup without warm-up does.
	plain bool
}

func newSplitFleet(t *testing.T, cfg Config) *splitFleet {
	t.Helper()
	f := &splitFleet{detectorRun: detectorRun{t: t, nowMs: 1_700_000_000_000}, r: rand.New(rand.NewPCG(21, 23))}
	f.set = metrics.NewSet()
	d, err := NewWithPolicy(cfg, f.set, nil, f.record, nil)
	if err != nil {
		t.Fatalf("NewWithPolicy: got %v; want no error", err)
	}
	f.d = d
	f.bins = traffic.NewBins(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1})
	return f
}

// group returns a split group serving perWindow requests per part with error ratio errP in
// every part; callers adjust parts.
func (f *splitFleet) group(version string, perWindow float64, errP float64, inst [2]int) *splitGroup {
	m := traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}
	g := &splitGroup{version: version, inst: inst}
	for i := range 3 {
		sg := traffic.NewWindowGroup("shop", version, f.bins)
		sg.Means[traffic.Normal] = f.bins.Means(m, perWindow, nil)
		sg.ErrorRate[traffic.Normal] = errP
		if i < 2 {
			g.half[i] = sg
		} else {
			g.warming = sg
		}
	}
	return g
}

// window draws one window of g.
func (f *splitFleet) window(g *splitGroup, startMs, endMs int64) *proto.Window {
	var parts [3][]proto.WindowSeries
	for i, sg := range []*traffic.WindowGroup{g.half[0], g.half[1], g.warming} {
		if i < 2 && g.inst[i] == 0 || i == 2 && g.warmingInst == 0 {
			continue
		}
		parts[i] = sumSeries(sg.Fill(f.r, startMs, endMs, 1, traffic.Normal, 0).Series)
	}
	w := &proto.Window{
		Service: "shop", Version: g.version, StartMs: startMs, EndMs: endMs, ClosedMs: endMs,
		Instances: g.inst[0] + g.inst[1] + g.warmingInst,
		Series:    sumSeries(parts[0], parts[1], parts[2]),
	}
	if f.plain {
		return w
	}
	w.WarmupMs = 5000
	w.SplitSeries = []string{proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency}
	w.Warm = sumSeries(parts[0], parts[1])
	w.Halves = [2][]proto.WindowSeries{parts[0], parts[1]}
	w.HalfInstances = g.inst
	w.WarmInstances = g.inst[0] + g.inst[1]
	return w
}

// sumSeries returns the RED triple summed over parts (nil parts are skipped), with its own
// histogram.
func sumSeries(parts ...[]proto.WindowSeries) []proto.WindowSeries {
	out := []proto.WindowSeries{
		{Name: proto.SeriesRequests, Kind: proto.KindCounter},
		{Name: proto.SeriesErrors, Kind: proto.KindCounter},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: &proto.Histogram{}},
	}
	for _, p := range parts {
		if p == nil {
			continue
		}
		out[0].Value += p[0].Value
		out[1].Value += p[1].Value
		out[2].Hist.Merge(p[2].Hist)
	}
	out[2].SetQuantiles()
	return out
}

// step feeds n windows: the baseline always, the canary when canary is set.
func (f *splitFleet) step(n int, canary bool) {
	win := testWindow.Milliseconds()
	for range n {
		f.d.AddWindow(f.window(f.a, f.nowMs, f.nowMs+win))
		if canary {
			f.d.AddWindow(f.window(f.b, f.nowMs, f.nowMs+win))
		}
		f.nowMs += win
	}
}

// deployWithWarmupBurst runs a baseline of 10 instances, then a canary of 4 new instances
// whose first burst (at most their 5 s warm-up) serve 20 % errors and whose traffic after it
// has error ratio canaryErr; it returns the fleet after 60 s of canary. With youngErr > 0 the
// baseline churns: 2 of its instances are always young, erring at youngErr.
func deployWithWarmupBurst(t *testing.T, plain bool, burst time.Duration, canaryErr, youngErr float64) *splitFleet {
	t.Helper()
	f := newSplitFleet(t, testConfig())
	f.plain = plain
	// 2000 rps at 250 ms: the baseline serves 80 % (200 requests per half), the canary 20 %.
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	if youngErr > 0 {
		f.a.warming.ErrorRate[traffic.Normal] = youngErr
		f.a.warmingInst = 2
	}
	f.b = f.group("v2", 50, canaryErr, [2]int{0, 0})
	f.b.warming.Means[traffic.Normal] = f.bins.Means(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}, 100, nil)
	f.b.warming.ErrorRate[traffic.Normal] = 0.2
	f.b.warmingInst = 4
	f.step(40, false)
	f.announce()
	n := int(burst / testWindow)
	f.step(n, true) // the canary's instances err while they warm up
	f.b.warming.ErrorRate[traffic.Normal] = canaryErr
	f.step(20-n, true) // and warm up for the rest of the 5 s
	f.b.warmingInst, f.b.inst = 0, [2]int{2, 2}
	f.step(4*55, true)
	return f
}

// errorsEvidence returns the errors test's evidence of f's canary.
func errorsEvidence(f *splitFleet) *proto.TestEvidence {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	return findTest(f.d.services["shop"].comps["v2"].evidence(""), "errors")
}

func TestDetectorIgnoresInstanceWarmupBurst(t *testing.T) {
	t.Parallel()
	// The baseline never restarts, so nothing tells whether its instances err while young:
	// the canary's errors are compared whole, warm-up included, and the per-block bound of the
	// e-process keeps a 3 s burst short of a rollback, like a retry storm.
	f := deployWithWarmupBurst(t, false, 3*time.Second, 0.005, 0)
	if got := f.states(); len(got) != 1 || got[0] != proto.StatePending {
		t.Fatalf("20 %% errors for 3 s while the canary's instances warm up: got verdicts %v (%s); want [pending]", got, f.last().Sentence)
	}
	if got := f.d.m.warmWindows.Get(); got == 0 {
		t.Fatalf("windows tested on the warm aggregate: got %d; want > 0", got)
	}
	// A churning baseline whose young instances err alike (20 %): the detector learns the
	// cold start, so the canary's warm-up errors are compared only with the baseline's young
	// instances' and its warm errors with the warm ones: a burst through the whole 5 s
	// warm-up weighs nothing.
	g := deployWithWarmupBurst(t, false, 5*time.Second, 0.005, 0.2)
	if got := g.states(); slices.Contains(got, proto.StateRollback) {
		t.Fatalf("baseline young instances err alike: got verdicts %v (%s); want no rollback", got, g.last().Sentence)
	}
	we, ge := errorsEvidence(f), errorsEvidence(g)
	if we == nil || ge == nil || ge.EValue > 1 || ge.CanaryRatio >= we.CanaryRatio/2 {
		t.Fatalf("errors evidence with a learned error cold start: got %+v; want an e-value below 1 and the burst left out of the canary's ratio (whole: %+v)", ge, we)
	}
}

func TestDetectorRollsBackRegressionInWarm(t *testing.T) {
	t.Parallel()
	for _, youngErr := range []float64{0, 0.2} {
		f := deployWithWarmupBurst(t, false, 5*time.Second, 0.05, youngErr)
		v := f.last()
		if v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
			t.Fatalf("errors ×10 in the warm canary (baseline young errors %v): got %s by %q (%s); want rollback by errors", youngErr, v.State, v.Evidence.Decisive, v.Sentence)
		}
	}
}

func TestDetectorGuardsReadEveryInstance(t *testing.T) {
	t.Parallel()
	// A crash-looping canary never gets warm: its Warm is empty, its Series fails 95 %.
	f := newSplitFleet(t, testConfig())
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 50, 0.005, [2]int{0, 0})
	f.b.warming.ErrorRate[traffic.Normal] = 0.95
	f.b.warmingInst = 2
	f.step(40, false)
	f.announce()
	f.step(4, true)
	if v := f.last(); v.State != proto.StateRollback || v.Evidence.Decisive != "guard_error_ceiling" {
		t.Fatalf("crash-looping warming canary: got %s by %q (%s); want rollback by guard_error_ceiling", v.State, v.Evidence.Decisive, v.Sentence)
	}
}

// shadowConfig keeps the real comparison pending for the whole test (and the shadows
// from concluding by a pass), so that only rollbacks conclude shadows.
func shadowConfig() Config {
	c := DefaultConfig()
	c.MinExposure = time.Hour
	c.MaxDuration = 2 * time.Hour
	return c
}

func TestShadowAANeverVerdictAndCountsInjectedDifference(t *testing.T) {
	t.Parallel()
	f := newSplitFleet(t, shadowConfig())
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 50, 0.005, [2]int{1, 1})
	f.step(40, false)
	f.announce()
	f.step(4*120, true) // 2 min of A/A
	if got := f.d.ShadowStats("shop"); got.Rollbacks != 0 {
		t.Fatalf("A/A halves for 2 min: got %d shadow rollbacks; want 0", got.Rollbacks)
	}
	// A contrived difference: half 1 of the baseline fails 10× as often as half 0.
	f.a.half[1].ErrorRate[traffic.Normal] = 0.05
	f.step(4*60, true)
	st := f.d.ShadowStats("shop")
	if st.Rollbacks < 2 || st.Comparisons != st.Rollbacks {
		t.Fatalf("half 1 with 10× errors for 60 s: got %d rollbacks of %d shadow comparisons; want ≥ 2 (restarting after each), all rollbacks", st.Rollbacks, st.Comparisons)
	}
	if got := f.states(); len(got) != 1 || got[0] != proto.StatePending {
		t.Fatalf("verdicts: got %v; want only [pending]: a shadow never publishes", got)
	}
	var buf bytes.Buffer
	f.set.WritePrometheus(&buf)
	for _, want := range []string{
		`herd_detector_shadow_comparisons_total{service="shop"} `,
		`herd_detector_shadow_rollbacks_total{service="shop"} `,
		`herd_detector_shadow_rollback_ratio{service="shop"} 1` + "\n",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("metrics: got\n%s\nwant a line starting %q", buf.String(), want)
		}
	}
	// The canary is judged (here: a crash loop); the baseline is no baseline any more, so its
	// unfinished shadow is abandoned and no new one starts.
	f.a.half[1].ErrorRate[traffic.Normal] = 0.005
	f.step(4*2, true) // the shadow under way concludes; a new A/A one starts
	f.b.half[0].ErrorRate[traffic.Normal], f.b.half[1].ErrorRate[traffic.Normal] = 0.95, 0.95
	f.step(8, true)
	if v := f.last(); v.State != proto.StateRollback {
		t.Fatalf("crash-looping canary: got %s (%s); want rollback", v.State, v.Sentence)
	}
	st = f.d.ShadowStats("shop")
	f.step(4*60, false)
	if got := f.d.ShadowStats("shop"); got != st {
		t.Fatalf("shadow stats after the comparison ended: got %+v; want unchanged %+v", got, st)
	}
	if got := f.d.m.shadowNoBaseline.Get(); got != 1 {
		t.Fatalf("abandoned shadows: got %d; want 1", got)
	}
}

func TestShadowRateNearAlphaOnAA(t *testing.T) {
	t.Parallel()
	// Shadows conclude by pass after a short minimum exposure: over 20 min of A/A halves the
	// ratio of shadow rollbacks stays small (α = 0.01 bounds each comparison).
	cfg := DefaultConfig()
	cfg.MinExposure = 20 * time.Second
	cfg.MaxDuration = 3 * time.Hour
	f := newSplitFleet(t, cfg)
	f.a = f.group("v1", 500, 0.01, [2]int{5, 5})
	f.b = f.group("v2", 50, 0.01, [2]int{1, 1})
	f.step(40, false)
	f.announce()
	// The real comparison may pass; the baseline stays one only while it is pending, so keep
	// the canary's comparison open by making its traffic too thin to pass.
	f.b.half[0].Means[traffic.Normal] = f.bins.Means(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1}, 0.5, nil)
	f.b.half[1].Means[traffic.Normal] = f.b.half[0].Means[traffic.Normal]
	f.step(4*60*20, true)
	st := f.d.ShadowStats("shop")
	if st.Comparisons < 20 || st.Rollbacks > st.Comparisons/10 {
		t.Fatalf("20 min of A/A halves: got %d rollbacks of %d concluded shadows; want ≥ 20 concluded and ≤ 10 %% rolled back", st.Rollbacks, st.Comparisons)
	}
	t.Logf("shadow A/A: %d rollbacks of %d concluded comparisons", st.Rollbacks, st.Comparisons)
}

// BenchmarkDetectorAddWindowPairSplit is BenchmarkDetectorAddWindowPair with windows that
// carry Warm and Halves: the tests read Warm and the baseline's halves run a shadow A/A
// comparison.
func BenchmarkDetectorAddWindowPairSplit(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Warmup = 0
	cfg.MinExposure = 1000 * time.Hour
	cfg.MaxDuration = 1000 * time.Hour
	f := &splitFleet{detectorRun: detectorRun{nowMs: 1_700_000_000_000}, r: rand.New(rand.NewPCG(1, 1))}
	f.d, _ = NewWithPolicy(cfg, nil, nil, nil, nil)
	f.bins = traffic.NewBins(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 1})
	f.a = f.group("v1", 237.5, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 12.5, 0.005, [2]int{1, 1})
	f.step(40, false)
	if err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2", UnixMs: f.nowMs}); err != nil {
		b.Fatal(err)
	}
	wa, wb := make([]*proto.Window, 64), make([]*proto.Window, 64)
	for i := range wa {
		wa[i], wb[i] = f.window(f.a, 0, 250), f.window(f.b, 0, 250)
	}
	ms := f.nowMs
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a, c := wa[i%64], wb[i%64]
		a.StartMs, a.EndMs, c.StartMs, c.EndMs = ms, ms+250, ms, ms+250
		f.d.AddWindow(a)
		f.d.AddWindow(c)
		ms += 250
	}
	b.StopTimer()
	if v := f.d.Verdicts(); len(v) != 1 || v[0].State != proto.StatePending || f.d.m.warmWindows.Get() == 0 {
		b.Fatalf("got verdicts %+v and %d warm windows; want one pending comparison tested on Warm", v, f.d.m.warmWindows.Get())
	}
}

// findTest returns the test of ev with the given name, or nil.
func findTest(ev proto.Evidence, name string) *proto.TestEvidence {
	for i := range ev.Tests {
		if ev.Tests[i].Name == name {
			return &ev.Tests[i]
		}
	}
	return nil
}
