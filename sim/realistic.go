package sim

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// The realistic suite of BenchRealistic: fleets as they are, not as the tests' model assumes.
// Every instance is simulated on its own (its error rate, latency, age and bursts), and the
// windows carry what the rollup publishes with its production defaults: Series (every
// instance), Warm (instances running for at least the rollup's warm-up, 5 s), Halves and the
// instance Buckets of the warm instances.

// RealisticScenarios lists the scenarios BenchRealistic knows, in report order: the
// realistic nulls (a good canary: every rollback is false) first, then regressions, which
// report an oracle's time beside herd's.
var RealisticScenarios = []string{
	"null-cold-2x", "null-cold-1.3x", "null-cold-2x-steady", "null-low-traffic", "null-err-spread-0.5", "null-err-spread-0.5-k2",
	"null-err-spread-0.3", "null-lat-spread-0.05", "null-retry-storms", "null-ramp-x3", "null-endpoint-mix",
	"errors-x3-5%", "errors-x2-10%", "latency-tail-5%", "errors-x3-5%-churn", "latency-tail-5%-churn",
}

// realScenario describes one fleet condition.
type realScenario struct {
	name       string
	regression bool
	rps        float64 // the service's total rate at load 1
	kA, kB     int     // baseline and canary instances
	baseErr    float64 // error ratio of a median instance
	errSpread  float64 // log-sd of per-instance error rates
	latSpread  float64 // log-sd of per-instance latency scales
	coldFactor float64 // latency multiplier of an instance younger than coldSecs (0: none)
	coldSecs   float64
	churn      bool    // baseline instances restart (mean life 10 min), going through the cold start
	bursts     bool    // retry storms: an instance at 20–60 % errors for 2 s, 1–6 times an hour each
	ramp       float64 // load multiplier reached 5 min after the canary starts (0: none)
	mix        bool    // three endpoints; every instance serves its own mix of them
	errFactor  float64 // canary error multiplier (regressions)
	tailFrac   float64 // share of canary requests delayed by tailShift seconds
	tailShift  float64
	// burstPerSec is each instance's retry-storm rate in this trial (drawn per trial).
	burstPerSec float64
}

func realScenarioByName(name string) (realScenario, bool) {
	s := realScenario{name: name, rps: 2000, kA: 20, kB: 1, baseErr: benchBaseErrors, errFactor: 1}
	switch name {
	case "null-cold-2x":
		s.coldFactor, s.coldSecs, s.churn = 2, 30, true
	case "null-cold-1.3x":
		s.coldFactor, s.coldSecs, s.churn = 1.3, 30, true
	case "null-cold-2x-steady": // the baseline never restarts: nothing to learn the cold start from
		s.coldFactor, s.coldSecs = 2, 30
	case "null-low-traffic":
		s.rps, s.kA, s.baseErr = 50, 4, 0.10
	case "null-err-spread-0.5":
		s.errSpread = 0.5
	case "null-err-spread-0.5-k2":
		s.errSpread, s.kB = 0.5, 2
	case "null-err-spread-0.3":
		s.errSpread = 0.3
	case "null-lat-spread-0.05":
		s.latSpread = 0.05
	case "null-retry-storms":
		s.bursts = true
	case "null-ramp-x3":
		s.ramp = 3
	case "null-endpoint-mix":
		s.mix = true
	case "errors-x3-5%":
		s.regression, s.kA, s.errFactor = true, 19, 3
	case "errors-x2-10%":
		s.regression, s.kA, s.kB, s.errFactor = true, 18, 2, 2
	case "latency-tail-5%":
		s.regression, s.kA, s.tailFrac, s.tailShift = true, 19, 0.05, 0.3
	case "errors-x3-5%-churn": // as errors-x3-5% in an ephemeral fleet (baseline instances restart)
		s.regression, s.kA, s.errFactor, s.churn = true, 19, 3, true
	case "latency-tail-5%-churn":
		s.regression, s.kA, s.tailFrac, s.tailShift, s.churn = true, 19, 0.05, 0.3, true
	default:
		return s, false
	}
	return s, true
}

// Constants of the realistic fleet, stated in docs/detector.md.
const (
	realRollupWarmupSecs = 5    // the rollup's per-instance warm-up (-rollup.warmup default)
	realHistorySecs      = 1800 // baseline-only history before the canary starts, in realHistoryWindow windows
	realHistoryWindow    = 10   // seconds
	realLifeSecs         = 600  // mean instance life with churn
	realBurstSecs        = 2
	realRampSecs         = 300
)

// realEndpoints are the endpoints of the endpoint-mix scenario: share of requests, error
// ratio and median latency (seconds); every instance's shares are these times exp(0.2·Z),
// renormalised (sticky routing gives each instance its own mix).
var realEndpoints = [3]struct{ share, errs, median float64 }{{0.6, 0.002, 0.030}, {0.3, 0.005, 0.060}, {0.1, 0.03, 0.200}}

// RealisticConfig configures BenchRealistic. Zero fields take the defaults in brackets.
type RealisticConfig struct {
	// Trials per scenario [100]; the figures in docs/BENCHMARKS.md use 1000.
	Trials int
	// Duration is the longest simulated comparison of a trial [10m]; a trial ends earlier
	// when the detector passes or rolls back the canary.
	Duration time.Duration
	// Scenarios to run [all of RealisticScenarios].
	Scenarios []string
	// Seed of the trials [1].
	Seed uint64
	// Workers running trials in parallel [GOMAXPROCS].
	Workers int
	// Detector is the detector configuration [alert.DefaultConfig(): production defaults,
	// warm-ups and promotion included]; its PolicyFile is ignored.
	Detector *alert.Config
}

// BenchRealistic runs the realistic suite: for every scenario seeded trials on simulated
// time with a simulated fleet of instances, feeding a real alert.Detector with production
// defaults. Times are seconds from the canary's first window, warm-ups included. For each
// regression it also runs an oracle on the same windows: a sequential probability ratio
// test of the true effect against "no worse" on the counts the effect moves (every instance,
// no warm-up), which no method that does not know the effect can beat by much.
func BenchRealistic(cfg RealisticConfig) (*DetectReport, error) {
	if cfg.Trials == 0 {
		cfg.Trials = 100
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Minute
	}
	if len(cfg.Scenarios) == 0 {
		cfg.Scenarios = RealisticScenarios
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	dc := alert.DefaultConfig()
	if cfg.Detector != nil {
		dc = *cfg.Detector
	}
	dc.PolicyFile = ""
	if err := dc.Validate(); err != nil {
		return nil, fmt.Errorf("cannot run realistic detector bench: %w", err)
	}
	if cfg.Trials < 1 || cfg.Duration < time.Second {
		return nil, fmt.Errorf("cannot run realistic detector bench: want trials ≥ 1 and a duration ≥ 1s")
	}
	var scs []realScenario
	for _, name := range cfg.Scenarios {
		sc, ok := realScenarioByName(name)
		if !ok {
			return nil, fmt.Errorf("cannot run realistic detector bench: unknown scenario %q (known: %s)", name, strings.Join(RealisticScenarios, ", "))
		}
		scs = append(scs, sc)
	}
	began := time.Now()
	rep := &DetectReport{
		Suite: "realistic", Alpha: dc.Alpha, RPS: 2000, Duration: cfg.Duration.String(), Window: "250ms",
		Warmup: fmt.Sprintf("%s (rollup %ds per instance)", dc.Warmup, realRollupWarmupSecs), Trials: cfg.Trials, Seed: cfg.Seed,
		BaseErrorRatio: benchBaseErrors,
	}
	bins := traffic.NewBins(traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1})
	for _, sc := range scs {
		res, err := runRealScenario(cfg, dc, bins, sc)
		if err != nil {
			return nil, fmt.Errorf("cannot run realistic detector bench: %w", err)
		}
		rep.Results = append(rep.Results, res)
	}
	rep.Elapsed = time.Since(began).Round(time.Millisecond).String()
	return rep, nil
}

// realTrial is the outcome of one realistic trial.
type realTrial struct {
	trialResult
	oracle float64 // seconds to the oracle's decision; < 0: none
	// oracleMargin is the same against the comparison's margin ψ0; < 0: none.
	oracleMargin float64
}

func runRealScenario(cfg RealisticConfig, dc alert.Config, bins *traffic.Bins, sc realScenario) (DetectResult, error) {
	dc.MaxDuration = max(dc.MaxDuration, cfg.Duration+time.Minute)
	results := runTrials(cfg.Trials, cfg.Workers, func(i int) realTrial { return runRealTrial(cfg, dc, bins, sc, i) })
	share := float64(sc.kB) / float64(sc.kA+sc.kB)
	res := DetectResult{Scenario: sc.name, Share: share, Regression: sc.regression, Trials: cfg.Trials, Decisive: map[string]int{}}
	var times, passTimes, oracle, oracleMargin []float64
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
		if r.oracle >= 0 && sc.regression {
			oracle = append(oracle, r.oracle)
		}
		if r.oracleMargin >= 0 && sc.regression {
			oracleMargin = append(oracleMargin, r.oracleMargin)
		}
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
	if len(oracle) > 0 {
		sort.Float64s(oracle)
		res.OracleMedianSeconds = quantileOf(oracle, 0.5)
		res.OracleDecided = len(oracle)
	}
	if len(oracleMargin) > 0 {
		sort.Float64s(oracleMargin)
		res.OracleMarginMedianSeconds = quantileOf(oracleMargin, 0.5)
		res.OracleMarginDecided = len(oracleMargin)
	}
	return res, nil
}

// runRealTrial runs trial idx: realHistorySecs of baseline windows (10 s wide: the baseline
// has been running for a while, as baselines do), then baseline
// and canary windows of 250 ms until the detector (and, for a regression, the oracle)
// decided or the duration ends.
func runRealTrial(cfg RealisticConfig, dc alert.Config, bins *traffic.Bins, sc realScenario, idx int) realTrial {
	h := fnv.New64a()
	fmt.Fprintf(h, "realistic/%s", sc.name)
	r := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()^uint64(idx)*0x9e3779b97f4a7c15))
	if sc.bursts {
		sc.burstPerSec = (1 + 5*r.Float64()) / 3600
	}
	ga := newRealGroup(benchService, "v1", bins)
	gb := newRealGroup(benchService, "v2", bins)
	gb.noBuckets = true
	total := float64(sc.kA + sc.kB)
	ga.perInstRPS, gb.perInstRPS = sc.rps/total, sc.rps/total
	ga.inst = newRealInstances(r, &sc, bins, sc.kA, false, 0)
	for _, in := range ga.inst {
		in.startSec = -3600 * r.Float64() // running for up to an hour: warm
	}
	const canarySec = realHistorySecs
	gb.inst = newRealInstances(r, &sc, bins, sc.kB, true, canarySec)
	phase := r.Float64() * 2 * math.Pi
	load := func(t float64) float64 {
		l := 1 + benchLoadSwing*math.Sin(phase+2*math.Pi*t/benchLoadPeriodSecs)
		if sc.ramp > 0 && t > canarySec {
			l *= 1 + (sc.ramp-1)*min((t-canarySec)/realRampSecs, 1)
		}
		return l
	}
	churn := func(t, width float64) {
		if !sc.churn {
			return
		}
		for _, in := range ga.inst {
			if r.Float64() < width/realLifeSecs {
				in.startSec, in.bucket = t, r.IntN(proto.NumBuckets)
			}
		}
	}

	// Oracle: the log likelihood ratio of the true effect against "no worse".
	var oracleLLR, oraclePsi float64
	oracleBucket, oracleLatency := 0, false
	switch {
	case sc.errFactor != 1:
		oraclePsi = sc.errFactor
	case sc.tailFrac > 0:
		base := traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: 1}
		p99 := benchLatencyMedian * math.Exp(2.3263*benchLatencySigma)
		oracleBucket, oracleLatency = proto.BucketIndex(p99)+1, true
		edge := proto.BucketLower(oracleBucket)
		tail := base
		tail.TailFrac, tail.TailShift = sc.tailFrac, sc.tailShift
		oraclePsi = (1 - tail.CDF(edge)) / (1 - base.CDF(edge))
	}
	oracle := -1.0
	var last proto.Verdict
	det, err := alert.NewWithPolicy(dc, nil, nil, func(v proto.Verdict) { last = v }, nil)
	if err != nil {
		return realTrial{trialResult: trialResult{err: err}}
	}
	t0 := int64(1_700_000_000_000)
	for t := 0.0; t < canarySec; t += realHistoryWindow {
		churn(t, realHistoryWindow)
		det.AddWindow(ga.fill(r, t0, t, realHistoryWindow, load(t), &sc))
	}
	ga.coarse = true
	canaryStartMs := t0 + canarySec*1000
	// The oracle against the comparison's margin ψ0 replays the windows' counts once the
	// live evidence tells ψ0, then follows them.
	type counts struct {
		nA, nB, eA, eB float64
		endMs          int64
	}
	var seen []counts
	oracleMargin, marginLLR, psiM := -1.0, 0.0, 0.0
	marginTest := "errors"
	if oracleLatency {
		marginTest = "latency_p99"
	}
	marginStep := func(c counts) {
		if oracleMargin >= 0 || psiM >= oraclePsi || !(c.nA > 0 && c.nB > 0 && c.eA+c.eB > 0) {
			return
		}
		pi := c.nB / (c.nA + c.nB)
		marginLLR += c.eB*math.Log(oraclePsi/psiM) - (c.eA+c.eB)*(math.Log1p(pi*(oraclePsi-1))-math.Log1p(pi*(psiM-1)))
		if marginLLR >= math.Log(1/dc.Alpha) {
			oracleMargin = float64(c.endMs-canaryStartMs) / 1000
		}
	}

	_ = det.Announce(proto.Deployment{Service: benchService, Baseline: "v1", Canary: "v2", UnixMs: canaryStartMs})
	const width = 0.25
	windows := int(cfg.Duration.Seconds() / width)
	lnTh := math.Log(1 / dc.Alpha)
	for k := range windows {
		t := canarySec + float64(k)*width
		churn(t, width)
		wa := ga.fill(r, t0, t, width, load(t), &sc)
		det.AddWindow(wa)
		wb := gb.fill(r, t0, t, width, load(t), &sc)
		if oraclePsi > 1 {
			nA, eA := oracleCounts(wa, oracleLatency, oracleBucket)
			nB, eB := oracleCounts(wb, oracleLatency, oracleBucket)
			c := counts{nA, nB, eA, eB, wb.EndMs}
			if psiM == 0 {
				seen = append(seen, c)
			} else {
				marginStep(c)
			}
			if oracle < 0 && nA > 0 && nB > 0 && eA+eB > 0 {
				pi := nB / (nA + nB)
				oracleLLR += eB*math.Log(oraclePsi) - (eA+eB)*math.Log1p(pi*(oraclePsi-1))
				if oracleLLR >= lnTh {
					oracle = float64(wb.EndMs-canaryStartMs) / 1000
				}
			}
		}
		det.AddWindow(wb)
		if psiM == 0 && oraclePsi > 1 {
			for _, te := range last.Evidence.Tests {
				if te.Name == marginTest && te.Margin > 0 {
					psiM = te.Margin
				}
			}
			if psiM > 0 {
				for _, c := range seen {
					marginStep(c)
				}
				seen = nil
			}
		}
		final := last.State == proto.StatePass || last.State == proto.StateRollback
		if final && (oraclePsi <= 1 || oracle >= 0 && (oracleMargin >= 0 || psiM >= oraclePsi)) {
			break
		}
	}
	tr := realTrial{oracle: oracle, oracleMargin: oracleMargin, trialResult: trialResult{state: last.State, decisive: last.Evidence.Decisive,
		seconds: float64(last.UnixMs-canaryStartMs) / 1000, margin: last.Evidence.Margin}}
	if tr.state != proto.StatePass && tr.state != proto.StateRollback {
		det.Tick(time.UnixMilli(canaryStartMs).Add(dc.MaxDuration + time.Millisecond))
		tr.margin = last.Evidence.Margin
	}
	return tr
}

// oracleCounts returns a window's requests and events for the oracle: errors, or (latency)
// latency observations at or above the bucket's lower edge; every instance counts.
func oracleCounts(w *proto.Window, latency bool, bucket int) (n, e float64) {
	for i := range w.Series {
		s := &w.Series[i]
		switch {
		case !latency && s.Name == proto.SeriesRequests:
			n = s.Value
		case !latency && s.Name == proto.SeriesErrors:
			e = s.Value
		case latency && s.Name == proto.SeriesLatency && s.Hist != nil:
			n, e = float64(s.Hist.Count), float64(s.Hist.CountAtOrAbove(bucket))
		}
	}
	return n, e
}

// sumOf returns the sum of xs.
func sumOf(xs []float64) (s float64) {
	for _, x := range xs {
		s += x
	}
	return s
}

// binomial draws the errors among n requests failing with probability p: Poisson(n·p) capped
// at n for small p (where the two agree), one draw per request otherwise (bursts, high error
// ratios), so that a 60 % burst does not read as 90 %.
func binomial(r *rand.Rand, n, p float64) float64 {
	p = min(p, 1)
	if p < 0.05 {
		return min(traffic.Poisson(r, n*p), n)
	}
	var e float64
	for range int(n) {
		if r.Float64() < p {
			e++
		}
	}
	return e
}
