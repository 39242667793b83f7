package sim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// Request-flow scenarios of BenchDetect: the bench service calls three dependencies (the
// shape of a mid-tier service of a generated graph: 1, 3 and 0.3 calls per request, error
// ratios 0.5–2 %, latencies a few ms); the canary's RED stays the baseline's.
//
//   - edges-aa: A/A with edges, canary instances spread as in aa-spread, bursts as in
//     aa-outage (both versions' calls fail 20× and slow down 3× for 15 s, twice);
//   - edges-fanout-x2, edges-fanout-x5: the canary calls the first dependency 2× / 5× as
//     often per request;
//   - edges-downstream-x3: the canary's calls to the first dependency fail 3× as often.

// benchEdgeSpecs are the bench service's dependencies.
var benchEdgeSpecs = []struct {
	callee     string
	perRequest float64
	errRatio   float64
	median     float64 // seconds
}{
	{"payments", 1, 0.02, 0.012},
	{"inventory", 3, 0.005, 0.004},
	{"audit", 0.3, 0.01, 0.002},
}

// edgeScenario is how a flow scenario's canary calls its first dependency.
type edgeScenario struct {
	on        bool
	fanout    float64 // calls-per-request multiplier
	errFactor float64 // call error-ratio multiplier
}

// edgeScenarioByName sets s for a request-flow scenario; false if name is not one.
func edgeScenarioByName(name string, s *detectScenario) bool {
	s.edge = edgeScenario{on: true, fanout: 1, errFactor: 1}
	switch name {
	case "edges-aa":
		s.regression, s.spread, s.outage = false, true, true
	case "edges-fanout-x2":
		s.edge.fanout = 2
	case "edges-fanout-x5":
		s.edge.fanout = 5
	case "edges-downstream-x3":
		s.edge.errFactor = 3
	default:
		s.edge = edgeScenario{}
		return false
	}
	return true
}

// benchEdges generates the edge series of one version's windows: a window group per edge
// whose "requests" are the calls.
type benchEdges struct {
	groups  []*traffic.WindowGroup
	callees []string
	// last are the calls and failed calls of each edge in the last decorated window.
	last [][2]float64
}

// newBenchEdges builds the edges of a version serving perWindow requests per window; canary
// applies the scenario's regression to the first edge.
func newBenchEdges(sc detectScenario, version string, perWindow float64, canary bool) *benchEdges {
	if !sc.edge.on {
		return nil
	}
	e := &benchEdges{}
	for i, spec := range benchEdgeSpecs {
		m := traffic.LatencyModel{Median: spec.median, Sigma: 0.4, Scale: 1}
		b := traffic.NewBins(m)
		g := traffic.NewWindowGroup(spec.callee, version, b)
		k, errRatio := spec.perRequest, spec.errRatio
		if canary && i == 0 {
			k *= sc.edge.fanout
			errRatio = min(errRatio*sc.edge.errFactor, 1)
		}
		slow := m
		slow.Scale = 3
		g.Means[traffic.Normal] = b.Means(m, perWindow*k, nil)
		g.Means[traffic.Outage] = b.Means(slow, perWindow*k, nil)
		g.ErrorRate[traffic.Normal], g.ErrorRate[traffic.Outage] = errRatio, min(errRatio*20, 1)
		e.groups = append(e.groups, g)
		e.callees = append(e.callees, spec.callee)
	}
	e.last = make([][2]float64, len(e.groups))
	return e
}

// decorate returns w with the edges' series of the same interval added, their calls drawn
// in proportion to the window's requests (expected: its mean requests at load 1). The
// result shares the edge groups' histograms until their next decorate.
func (e *benchEdges) decorate(r *rand.Rand, w *proto.Window, expected float64, st traffic.Regime) *proto.Window {
	if e == nil {
		return w
	}
	out := *w
	out.Series = slices.Clone(w.Series)
	load := w.Find(proto.SeriesRequests).Value / max(expected, 1)
	for i, g := range e.groups {
		ew := g.Fill(r, w.StartMs, w.EndMs, load, st, 0)
		ls := proto.EdgeLabels(proto.EdgeKey{Callee: e.callees[i]})
		e.last[i] = [2]float64{ew.Series[0].Value, ew.Series[1].Value}
		lat := ew.Series[2]
		lat.Name, lat.Labels = proto.SeriesEdgeLatency, ls
		out.Series = append(out.Series,
			proto.WindowSeries{Name: proto.SeriesEdgeCalls, Labels: ls, Kind: proto.KindCounter, Value: ew.Series[0].Value},
			proto.WindowSeries{Name: proto.SeriesEdgeErrors, Labels: ls, Kind: proto.KindCounter, Value: ew.Series[1].Value},
			lat)
	}
	return &out
}

// The request-flow bench on a service graph (BenchDetectGraph): every trial deploys one caller
// of a generated graph, in turn, with its own rate, baseline instances and calls, so the A/A
// covers every shape of fan-out the graph has (0.2 to 3 calls per request, error ratios
// 0.1–0.5 %, latencies from 0.5 to 30 ms). Every trial has the instance spread of aa-spread
// (2 canary instances; instances differ in error rate, latency and calls per request) and two
// 15 s bursts hitting both versions (requests and calls fail 20× as often and slow down 3×).
// Beside the caller's windows, each callee's windows carry its requests and errors by caller
// group (the blast-radius test's data), counting the same calls.

// GraphScenarios lists the scenarios BenchDetectGraph knows, in report order.
var GraphScenarios = []string{"graph-aa", "graph-fanout-x2", "graph-fanout-x5", "graph-downstream-x3"}

// graphFanoutSpread is the log-sd of per-instance calls per request (caches, batching).
const graphFanoutSpread = 0.05

// EdgeBenchService is a caller of a service graph as BenchDetectGraph deploys it.
type EdgeBenchService struct {
	Name string
	// RPS is the service's total request rate; Instances its baseline's instances.
	RPS       float64
	Instances int
	// Calls are the service's edges; a scenario's regression hits the one with the most
	// calls per request (the first of those).
	Calls []Edge
}

// GraphDetectConfig configures BenchDetectGraph.
type GraphDetectConfig struct {
	// Services are the callers; trial i deploys Services[i mod len(Services)].
	Services []EdgeBenchService
	// Detect gives the trials, duration, window, shares, seed, workers and detector, with
	// BenchDetect's defaults; its RPS and Scenarios are not used.
	Detect DetectConfig
	// Scenarios to run [all of GraphScenarios].
	Scenarios []string
}

// graphService is a caller prepared for trials: its calls' latency bins, built once.
type graphService struct {
	EdgeBenchService
	bins  []*traffic.Bins
	model []traffic.LatencyModel
	first int // the edge the regressions hit
}

// BenchDetectGraph measures the detector on the callers of a service graph: for every
// scenario and canary share it runs seeded trials on simulated time like BenchDetect, feeding
// an alert.Detector the caller's baseline and canary windows with their edges, and the callees'
// windows with their requests by caller group. The same config and seed give the same report
// (but for Elapsed).
func BenchDetectGraph(cfg GraphDetectConfig) (*DetectReport, error) {
	dcfg := cfg.Detect
	if dcfg.Trials == 0 {
		dcfg.Trials = 1000
	}
	if dcfg.Duration == 0 {
		dcfg.Duration = 10 * time.Minute
	}
	if dcfg.Window == 0 {
		dcfg.Window = 250 * time.Millisecond
	}
	if len(dcfg.Shares) == 0 {
		dcfg.Shares = []float64{0.05, 0.2}
	}
	if dcfg.Seed == 0 {
		dcfg.Seed = 1
	}
	if dcfg.Workers <= 0 {
		dcfg.Workers = runtime.GOMAXPROCS(0)
	}
	dc := alert.DefaultConfig()
	dc.Warmup = 0
	if dcfg.Detector != nil {
		dc = *dcfg.Detector
	}
	dc.PolicyFile = ""
	if err := dc.Validate(); err != nil {
		return nil, fmt.Errorf("cannot run graph detector bench: %w", err)
	}
	if dcfg.Trials < 1 || dcfg.Window < time.Millisecond || dcfg.Duration < dcfg.Window {
		return nil, errors.New("cannot run graph detector bench: want trials ≥ 1, a window ≥ 1ms and a duration ≥ one window")
	}
	for _, sh := range dcfg.Shares {
		if !(sh > 0 && sh < 1) {
			return nil, fmt.Errorf("cannot run graph detector bench: canary share %g not in (0, 1)", sh)
		}
	}
	var svcs []*graphService
	for _, s := range cfg.Services {
		if err := proto.ValidService(s.Name); err != nil {
			return nil, fmt.Errorf("cannot run graph detector bench: %w", err)
		}
		if !(s.RPS > 0) || math.IsInf(s.RPS, 1) || s.Instances < 1 || len(s.Calls) == 0 {
			return nil, fmt.Errorf("cannot run graph detector bench: service %s needs a finite rate > 0, an instance and calls", s.Name)
		}
		gs := &graphService{EdgeBenchService: s}
		for i, e := range s.Calls {
			if err := e.validate(); err != nil {
				return nil, fmt.Errorf("cannot run graph detector bench: service %s: %w", s.Name, err)
			}
			m := traffic.LogNormal(e.LatencyMedian, e.LatencyP99, 1)
			gs.model = append(gs.model, m)
			gs.bins = append(gs.bins, traffic.NewBins(m))
			if e.PerRequest > s.Calls[gs.first].PerRequest {
				gs.first = i
			}
		}
		svcs = append(svcs, gs)
	}
	if len(svcs) == 0 {
		return nil, errors.New("cannot run graph detector bench: no services")
	}
	names := cfg.Scenarios
	if len(names) == 0 {
		names = GraphScenarios
	}
	var scs []detectScenario
	for _, name := range names {
		sc, ok := graphScenarioByName(name)
		if !ok {
			return nil, fmt.Errorf("cannot run graph detector bench: unknown scenario %q (known: %s)", name, strings.Join(GraphScenarios, ", "))
		}
		scs = append(scs, sc)
	}
	began := time.Now()
	rep := &DetectReport{Alpha: dc.Alpha, Duration: dcfg.Duration.String(), Window: dcfg.Window.String(),
		Warmup: dc.Warmup.String(), Trials: dcfg.Trials, Seed: dcfg.Seed, BaseErrorRatio: benchBaseErrors}
	for _, s := range svcs {
		rep.RPS += s.RPS / float64(len(svcs))
	}
	rep.RPS = math.Round(rep.RPS) // the callers' mean rate
	b := traffic.NewBins(traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1})
	for _, sc := range scs {
		for _, share := range dcfg.Shares {
			res, err := runGraphScenario(dcfg, dc, b, svcs, sc, share)
			if err != nil {
				return nil, fmt.Errorf("cannot run graph detector bench: %w", err)
			}
			rep.Results = append(rep.Results, res)
		}
	}
	rep.Elapsed = time.Since(began).Round(time.Millisecond).String()
	return rep, nil
}

// graphScenarioByName returns a graph scenario: spread and bursts always, the regression on
// the service's first edge.
func graphScenarioByName(name string) (detectScenario, bool) {
	s := detectScenario{name: name, errFactor: 1, scale: 1, regression: true, spread: true, outage: true,
		edge: edgeScenario{on: true, fanout: 1, errFactor: 1}}
	switch name {
	case "graph-aa":
		s.regression = false
	case "graph-fanout-x2":
		s.edge.fanout = 2
	case "graph-fanout-x5":
		s.edge.fanout = 5
	case "graph-downstream-x3":
		s.edge.errFactor = 3
	default:
		return s, false
	}
	return s, true
}

// runGraphScenario runs the trials of one scenario and share on cfg.Workers goroutines, which
// it waits for.
func runGraphScenario(cfg DetectConfig, dc alert.Config, b *traffic.Bins, svcs []*graphService, sc detectScenario, share float64) (DetectResult, error) {
	if !sc.regression {
		dc.MinExposure = cfg.Duration + time.Hour // no promotion: every trial runs the full time
	}
	dc.MaxDuration = max(dc.MaxDuration, cfg.Duration+time.Minute)
	dc.EvidenceEvery = 0
	results := runTrials(cfg.Trials, cfg.Workers, func(i int) trialResult { return runGraphTrial(cfg, dc, b, svcs[i%len(svcs)], sc, share, i) })
	res := DetectResult{Scenario: sc.name, Share: share, Regression: sc.regression, Trials: cfg.Trials, Decisive: map[string]int{}}
	var times []float64
	for _, r := range results {
		if r.err != nil {
			return res, r.err
		}
		switch r.state {
		case proto.StateRollback:
			res.Rollbacks++
			times = append(times, r.seconds)
			// The decisive test's kind, not its edge: the edges differ by service.
			kind, _, _ := strings.Cut(r.decisive, " ")
			res.Decisive[kind]++
		case proto.StatePass:
			res.Passes++
		default:
			res.Undecided++
		}
		res.Margin = max(res.Margin, r.margin)
	}
	res.RollbackRate = float64(res.Rollbacks) / float64(res.Trials)
	res.RollbackRateUpper95 = wilsonUpper(res.Rollbacks, res.Trials, 1.96)
	if len(times) > 0 {
		sort.Float64s(times)
		res.MedianSeconds = quantileOf(times, 0.5)
		res.P90Seconds = quantileOf(times, 0.9)
	}
	return res, nil
}

// runGraphTrial runs trial idx of svc: 30 s of baseline windows, then the canary's beside them
// until the detector decides or the duration ends; after each pair, one window per callee.
func runGraphTrial(cfg DetectConfig, dc alert.Config, b *traffic.Bins, svc *graphService, sc detectScenario, share float64, idx int) trialResult {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%g", sc.name, share)
	r := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()^uint64(idx)*0x9e3779b97f4a7c15))

	winMs := cfg.Window.Milliseconds()
	perWindow := svc.RPS * cfg.Window.Seconds()
	kA, kB := svc.Instances, 2
	base := traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1}
	ga, gb := traffic.NewWindowGroup(svc.Name, "v1", b), traffic.NewWindowGroup(svc.Name, "v2", b)
	ga.Instances, gb.Instances = kA, kB
	// Instance spread: each instance its latency scale, error and calls-per-request factors.
	type spread struct {
		scales       []float64
		errF, callsF float64
	}
	draw := func(k int) spread {
		var s spread
		for range k {
			s.scales = append(s.scales, math.Exp(benchSpreadLatency*r.NormFloat64()))
			s.errF += math.Exp(benchSpreadErrors*r.NormFloat64()) / float64(k)
			s.callsF += math.Exp(graphFanoutSpread*r.NormFloat64()) / float64(k)
		}
		return s
	}
	sa, sb := draw(kA), draw(kB)
	for st, mult := range [2]float64{traffic.Normal: 1, traffic.Outage: 3} {
		m := base
		m.Scale *= mult
		ga.Means[st] = b.Means(m, perWindow*(1-share), sa.scales)
		gb.Means[st] = b.Means(m, perWindow*share, sb.scales)
		f := [2]float64{traffic.Normal: 1, traffic.Outage: 20}[st]
		ga.ErrorRate[st], gb.ErrorRate[st] = min(benchBaseErrors*sa.errF*f, 1), min(benchBaseErrors*sb.errF*f, 1)
	}
	edges := func(version string, perWindow float64, s spread, canary bool) *benchEdges {
		e := &benchEdges{last: make([][2]float64, len(svc.Calls))}
		for i, c := range svc.Calls {
			k, errRatio := c.PerRequest*s.callsF, c.ErrorRate*s.errF
			if canary && i == svc.first {
				k *= sc.edge.fanout
				errRatio = min(errRatio*sc.edge.errFactor, 1)
			}
			g := traffic.NewWindowGroup(c.Callee, version, svc.bins[i])
			slow := svc.model[i]
			slow.Scale = 3
			g.Means[traffic.Normal] = svc.bins[i].Means(svc.model[i], perWindow*k, s.scales)
			g.Means[traffic.Outage] = svc.bins[i].Means(slow, perWindow*k, s.scales)
			g.ErrorRate[traffic.Normal], g.ErrorRate[traffic.Outage] = errRatio, min(errRatio*20, 1)
			e.groups = append(e.groups, g)
			e.callees = append(e.callees, c.Callee)
		}
		return e
	}
	edgesA, edgesB := edges("v1", perWindow*(1-share), sa, false), edges("v2", perWindow*share, sb, true)
	// The callees' windows: requests and errors by caller group.
	callerA := []proto.Label{{Name: proto.LabelCaller, Value: svc.Name}, {Name: proto.LabelCallerVersion, Value: "v1"}}
	callerB := []proto.Label{{Name: proto.LabelCaller, Value: svc.Name}, {Name: proto.LabelCallerVersion, Value: "v2"}}
	callee := func(i int, start int64, withB bool) *proto.Window {
		w := &proto.Window{Service: svc.Calls[i].Callee, Version: "1", Instances: 1, StartMs: start, EndMs: start + winMs, ClosedMs: start + winMs}
		add := func(ls []proto.Label, c [2]float64) {
			w.Series = append(w.Series,
				proto.WindowSeries{Name: proto.SeriesInboundRequests, Labels: ls, Kind: proto.KindCounter, Value: c[0]},
				proto.WindowSeries{Name: proto.SeriesInboundErrors, Labels: ls, Kind: proto.KindCounter, Value: c[1]})
		}
		add(callerA, edgesA.last[i])
		if withB {
			add(callerB, edgesB.last[i])
		}
		return w
	}

	tl := newTrialTimeline(r, cfg.Duration, cfg.Window, true)
	pre := tl.pre
	var last proto.Verdict
	det, err := alert.NewWithPolicy(dc, nil, nil, func(v proto.Verdict) { last = v }, nil)
	if err != nil {
		return trialResult{err: err}
	}
	canaryStart := tl.canaryStart()
	for k := range pre + tl.windows {
		start, load, st := tl.at(k)
		det.AddWindow(edgesA.decorate(r, ga.Fill(r, start, start+winMs, load, st, 0), perWindow*(1-share), st))
		if k == pre {
			_ = det.Announce(proto.Deployment{Service: svc.Name, Baseline: "v1", Canary: "v2", UnixMs: canaryStart})
		}
		if k >= pre {
			det.AddWindow(edgesB.decorate(r, gb.Fill(r, start, start+winMs, load, st, 0), perWindow*share, st))
		}
		for i := range svc.Calls {
			det.AddWindow(callee(i, start, k >= pre))
		}
		if last.State == proto.StatePass || last.State == proto.StateRollback {
			break
		}
	}
	tr := trialResult{state: last.State, decisive: last.Evidence.Decisive, seconds: float64(last.UnixMs-canaryStart) / 1000,
		margin: last.Evidence.Margin}
	if tr.state != proto.StatePass && tr.state != proto.StateRollback {
		det.Tick(time.UnixMilli(canaryStart).Add(dc.MaxDuration + time.Millisecond))
		tr.margin = last.Evidence.Margin
	}
	return tr
}
