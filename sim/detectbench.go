package sim

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// DetectScenarios lists the scenarios BenchDetect knows, in report order.
var DetectScenarios = []string{
	"aa", "aa-outage", "aa-spread", "aa-promote",
	"errors-x1.5", "errors-x3", "errors-x10", "crash-loop", "latency-tail", "latency-x1.2",
	"edges-aa", "edges-fanout-x2", "edges-fanout-x5", "edges-downstream-x3", // detectedges.go
}

// detectScenario describes how the simulated canary differs from the baseline.
type detectScenario struct {
	name       string
	regression bool
	errFactor  float64 // canary error-rate multiplier
	crash      bool    // canary instances crash-loop: 90 % errors, half the traffic
	tailFrac   float64 // share of canary requests delayed by tailShift
	tailShift  float64
	scale      float64      // canary latency multiplier
	outage     bool         // two 15 s outages hitting both versions: errors ×20, latency ×3
	spread     bool         // 2 canary vs 20 baseline instances, instances differ
	promote    bool         // A/A with promotion enabled: measures time to pass
	edge       edgeScenario // request-flow scenarios (detectedges.go)
}

func scenarioByName(name string) (detectScenario, bool) {
	s := detectScenario{name: name, errFactor: 1, scale: 1, regression: true}
	switch name {
	case "aa":
		s.regression = false
	case "aa-outage":
		s.regression, s.outage = false, true
	case "aa-spread":
		s.regression, s.spread = false, true
	case "aa-promote":
		s.regression, s.promote = false, true
	case "errors-x1.5":
		s.errFactor = 1.5
	case "errors-x3":
		s.errFactor = 3
	case "errors-x10":
		s.errFactor = 10
	case "crash-loop":
		s.crash = true
	case "latency-tail":
		s.tailFrac, s.tailShift = 0.05, 0.3
	case "latency-x1.2":
		s.scale = 1.2
	default:
		return s, edgeScenarioByName(name, &s)
	}
	return s, true
}

// Simulation constants, stated in the report and in docs/detector.md.
const (
	benchService        = "bench"
	benchBaseErrors     = 0.005 // baseline error ratio
	benchLatencyMedian  = 0.050 // seconds
	benchLatencySigma   = 0.5   // log-sd of latency
	benchBaselineInst   = 20
	benchSpreadErrors   = 0.1  // log-sd of per-instance error rates in aa-spread
	benchSpreadLatency  = 0.02 // log-sd of per-instance latency scale in aa-spread
	benchPreSeconds     = 30   // baseline-only time before the canary starts
	benchOutageSeconds  = 15
	benchLoadSwing      = 0.3 // traffic varies ±30 % with a 2-minute period
	benchLoadPeriodSecs = 120
)

// DetectConfig configures BenchDetect. Zero fields take the defaults in brackets.
type DetectConfig struct {
	// Trials per scenario and canary share [1000].
	Trials int
	// Duration is the simulated comparison time of a trial [10m].
	Duration time.Duration
	// Window is the length of the simulated rollup windows [250ms].
	Window time.Duration
	// RPS is the service's total request rate [2000].
	RPS float64
	// Shares are the canary's traffic shares [0.05, 0.2].
	Shares []float64
	// Scenarios to run [all of DetectScenarios].
	Scenarios []string
	// Seed of the trials [1]; a trial's draws depend only on the seed, scenario, share and index.
	Seed uint64
	// Workers running trials in parallel [GOMAXPROCS].
	Workers int
	// Detector is the detector configuration [alert.DefaultConfig() with Warmup and
	// ColdStart 0: the simulation has no cold starts]; its PolicyFile is ignored. A/A scenarios run with
	// promotion disabled so that every trial lasts the full Duration.
	Detector *alert.Config
}

// BenchDetect measures the detector's statistical quality: for every scenario and canary share
// it runs seeded trials on simulated time, generating windows of a baseline and a canary
// (Poisson counts, coarse latency histograms on herd's buckets) and feeding an alert.Detector
// directly. The same config and seed give the same report (but for Elapsed).
func BenchDetect(cfg DetectConfig) (*DetectReport, error) {
	if cfg.Trials == 0 {
		cfg.Trials = 1000
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Minute
	}
	if cfg.Window == 0 {
		cfg.Window = 250 * time.Millisecond
	}
	if cfg.RPS == 0 {
		cfg.RPS = 2000
	}
	if len(cfg.Shares) == 0 {
		cfg.Shares = []float64{0.05, 0.2}
	}
	if len(cfg.Scenarios) == 0 {
		cfg.Scenarios = DetectScenarios
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	dc := alert.DefaultConfig()
	dc.Warmup, dc.ColdStart = 0, 0
	if cfg.Detector != nil {
		dc = *cfg.Detector
	}
	dc.PolicyFile = ""
	if err := dc.Validate(); err != nil {
		return nil, fmt.Errorf("cannot run detector bench: %w", err)
	}
	if cfg.Trials < 1 || cfg.Window < time.Millisecond || cfg.Duration < cfg.Window || !(cfg.RPS > 0) || math.IsInf(cfg.RPS, 1) {
		return nil, fmt.Errorf("cannot run detector bench: want trials ≥ 1, a window ≥ 1ms, duration ≥ one window and a finite rps > 0")
	}
	var scs []detectScenario
	for _, name := range cfg.Scenarios {
		sc, ok := scenarioByName(name)
		if !ok {
			return nil, fmt.Errorf("cannot run detector bench: unknown scenario %q (known: %s)", name, strings.Join(DetectScenarios, ", "))
		}
		scs = append(scs, sc)
	}
	for _, s := range cfg.Shares {
		if !(s > 0 && s < 1) {
			return nil, fmt.Errorf("cannot run detector bench: canary share %g not in (0, 1)", s)
		}
	}
	began := time.Now()
	rep := &DetectReport{
		Alpha: dc.Alpha, RPS: cfg.RPS, Duration: cfg.Duration.String(), Window: cfg.Window.String(),
		Warmup: dc.Warmup.String(), Trials: cfg.Trials, Seed: cfg.Seed, BaseErrorRatio: benchBaseErrors,
	}
	b := traffic.NewBins(traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1})
	for _, sc := range scs {
		for _, share := range cfg.Shares {
			res, err := runScenario(cfg, dc, b, sc, share)
			if err != nil {
				return nil, fmt.Errorf("cannot run detector bench: %w", err)
			}
			rep.Results = append(rep.Results, res)
		}
	}
	rep.Elapsed = time.Since(began).Round(time.Millisecond).String()
	return rep, nil
}

// trialResult is the outcome of one trial.
type trialResult struct {
	state    proto.State
	seconds  float64
	decisive string
	margin   float64
	err      error
}

// runScenario runs the trials of one scenario and share on cfg.Workers goroutines, which it
// waits for.
func runScenario(cfg DetectConfig, dc alert.Config, b *traffic.Bins, sc detectScenario, share float64) (DetectResult, error) {
	if !sc.regression && !sc.promote {
		dc.MinExposure = cfg.Duration + time.Hour // no promotion: every trial runs the full time
	}
	dc.MaxDuration = max(dc.MaxDuration, cfg.Duration+time.Minute)
	dc.EvidenceEvery = 0 // live evidence updates decide nothing, and the bench reads only the final verdicts
	results := runTrials(cfg.Trials, cfg.Workers, func(i int) trialResult { return runTrial(cfg, dc, b, sc, share, i) })
	res := DetectResult{Scenario: sc.name, Share: share, Regression: sc.regression, Trials: cfg.Trials, Decisive: map[string]int{}}
	var times, passTimes []float64
	for _, r := range results {
		if r.err != nil {
			return res, r.err
		}
		switch r.state {
		case proto.StateRollback:
			res.Rollbacks++
			times = append(times, r.seconds)
			res.Decisive[r.decisive]++
		case proto.StatePass:
			res.Passes++
			passTimes = append(passTimes, r.seconds)
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
	if len(passTimes) > 0 {
		sort.Float64s(passTimes)
		res.PassMedianSeconds = quantileOf(passTimes, 0.5)
		res.PassP90Seconds = quantileOf(passTimes, 0.9)
	}
	return res, nil
}

// runTrial runs trial idx: 30 s of baseline windows, then the canary's windows beside them
// until the detector decides or the duration ends.
func runTrial(cfg DetectConfig, dc alert.Config, b *traffic.Bins, sc detectScenario, share float64, idx int) trialResult {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%g", sc.name, share)
	r := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()^uint64(idx)*0x9e3779b97f4a7c15))

	winMs := cfg.Window.Milliseconds()
	perWindow := cfg.RPS * cfg.Window.Seconds()
	kA := benchBaselineInst
	kB := max(1, int(math.Round(share/(1-share)*benchBaselineInst)))
	if sc.spread {
		kB = 2
	}
	base := traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1}
	canary := base
	canary.Scale = sc.scale
	canary.TailFrac, canary.TailShift = sc.tailFrac, sc.tailShift

	ga, gb := traffic.NewWindowGroup(benchService, "v1", b), traffic.NewWindowGroup(benchService, "v2", b)
	ga.Instances, gb.Instances = kA, kB
	var scalesA, scalesB []float64
	errA, errB := benchBaseErrors, benchBaseErrors*sc.errFactor
	if sc.spread {
		draw := func(k int) (scales []float64, errMean float64) {
			for range k {
				scales = append(scales, math.Exp(benchSpreadLatency*r.NormFloat64()))
				errMean += math.Exp(benchSpreadErrors*r.NormFloat64()) / float64(k)
			}
			return scales, errMean
		}
		var fa, fb float64
		scalesA, fa = draw(kA)
		scalesB, fb = draw(kB)
		errA, errB = errA*fa, errB*fb
	}
	for st, mult := range [2]float64{traffic.Normal: 1, traffic.Outage: 3} {
		a, c := base, canary
		a.Scale *= mult
		c.Scale *= mult
		ga.Means[st] = b.Means(a, perWindow*(1-share), scalesA)
		gb.Means[st] = b.Means(c, perWindow*share, scalesB)
		f := [2]float64{traffic.Normal: 1, traffic.Outage: 20}[st]
		ga.ErrorRate[st], gb.ErrorRate[st] = min(errA*f, 1), min(errB*f, 1)
	}
	edgesA := newBenchEdges(sc, "v1", perWindow*(1-share), false)
	edgesB := newBenchEdges(sc, "v2", perWindow*share, true)
	tl := newTrialTimeline(r, cfg.Duration, cfg.Window, sc.outage)
	pre := tl.pre

	// The detector calls back from AddWindow, Announce and Tick, on this goroutine.
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
			_ = det.Announce(proto.Deployment{Service: benchService, Baseline: "v1", Canary: "v2", UnixMs: canaryStart})
		}
		if k < pre {
			continue
		}
		if sc.crash {
			gb.Instances, gb.InstancesStarted = 1+r.IntN(kB), 1
			det.AddWindow(gb.Fill(r, start, start+winMs, load*0.5, st, 0.9))
		} else {
			det.AddWindow(edgesB.decorate(r, gb.Fill(r, start, start+winMs, load, st, 0), perWindow*share, st))
		}
		if last.State == proto.StatePass || last.State == proto.StateRollback {
			break
		}
	}
	tr := trialResult{state: last.State, decisive: last.Evidence.Decisive, seconds: float64(last.UnixMs-canaryStart) / 1000,
		margin: last.Evidence.Margin}
	if tr.state != proto.StatePass && tr.state != proto.StateRollback {
		// An undecided comparison published no evidence since it started: expiring it (a tick
		// past its maximum duration) publishes its final evidence, margin included.
		det.Tick(time.UnixMilli(canaryStart).Add(dc.MaxDuration + time.Millisecond))
		tr.margin = last.Evidence.Margin
	}
	return tr
}

// runTrials runs trial(i) for i in [0, n) on workers goroutines and returns the results in
// trial order, so that a report depends on the trials' seeds only, not on their scheduling.
func runTrials[T any](n, workers int, trial func(i int) T) []T {
	results := make([]T, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				results[i] = trial(i)
			}
		})
	}
	wg.Wait()
	return results
}

// trialTimeline is a trial's simulated time: pre windows of the baseline alone, then the
// comparison's windows, the load's swing and up to two outages hitting both versions.
type trialTimeline struct {
	pre, windows int
	t0, winMs    int64
	outages      [2]int // first window of each outage; 0: none
	outageLen    int
	phase        float64
}

// newTrialTimeline draws the outages (when outages is set) and then the load's phase from r.
func newTrialTimeline(r *rand.Rand, duration, window time.Duration, outages bool) trialTimeline {
	tl := trialTimeline{
		pre: int(benchPreSeconds * time.Second / window), windows: int(duration / window),
		t0: 1_700_000_000_000, winMs: window.Milliseconds(), outageLen: int(benchOutageSeconds * time.Second / window),
	}
	if outages {
		for i := range tl.outages {
			tl.outages[i] = tl.pre + r.IntN(max(tl.windows-tl.outageLen, 1))
		}
	}
	tl.phase = r.Float64() * 2 * math.Pi
	return tl
}

// canaryStart is the start of the canary's first window, unix milliseconds.
func (tl *trialTimeline) canaryStart() int64 { return tl.t0 + int64(tl.pre)*tl.winMs }

// at returns window k's start (unix milliseconds), load multiplier and traffic regime.
func (tl *trialTimeline) at(k int) (start int64, load float64, st traffic.Regime) {
	start = tl.t0 + int64(k)*tl.winMs
	load = 1 + benchLoadSwing*math.Sin(tl.phase+2*math.Pi*float64(start-tl.t0)/(benchLoadPeriodSecs*1000))
	st = traffic.Normal
	for _, o := range tl.outages {
		if o > 0 && k >= o && k < o+tl.outageLen {
			st = traffic.Outage
		}
	}
	return start, load, st
}
