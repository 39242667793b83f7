package alert

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/herd-dev/herd/proto"
)

// BenchScenarios lists the scenarios Bench knows, in report order.
var BenchScenarios = []string{
	"aa", "aa-outage", "aa-spread", "aa-promote",
	"errors-x1.5", "errors-x3", "errors-x10", "crash-loop", "latency-tail", "latency-x1.2",
}

// benchScenario describes how the simulated canary differs from the baseline.
type benchScenario struct {
	name       string
	regression bool
	errFactor  float64 // canary error-rate multiplier
	crash      bool    // canary instances crash-loop: 90 % errors, half the traffic
	tailFrac   float64 // share of canary requests delayed by tailShift
	tailShift  float64
	scale      float64 // canary latency multiplier
	outage     bool    // two 15 s outages hitting both versions: errors ×20, latency ×3
	spread     bool    // 2 canary vs 20 baseline instances, instances differ
	promote    bool    // A/A with promotion enabled: measures time to pass
}

func scenarioByName(name string) (benchScenario, bool) {
	s := benchScenario{name: name, errFactor: 1, scale: 1, regression: true}
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
		return s, false
	}
	return s, true
}

// Simulation constants, stated in the report.
const (
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

// BenchConfig configures Bench. Zero fields take the defaults in brackets.
type BenchConfig struct {
	// Trials per scenario and canary share [1000].
	Trials int
	// Duration is the simulated comparison time of a trial [10m].
	Duration time.Duration
	// RPS is the service's total request rate [2000].
	RPS float64
	// Shares are the canary's traffic shares [0.05, 0.2].
	Shares []float64
	// Scenarios to run [all of BenchScenarios].
	Scenarios []string
	// Seed of the trials [1]; a trial's draws depend only on the seed, scenario, share and index.
	Seed uint64
	// Workers running trials in parallel [GOMAXPROCS].
	Workers int
	// Detector is the detector configuration [DefaultConfig() with Warmup 0: the simulation
	// has no cold starts]. A/A scenarios run with promotion disabled so that every trial
	// lasts the full Duration.
	Detector *Config
}

// BenchResult is the outcome of one scenario at one canary share.
type BenchResult struct {
	Scenario   string  `json:"scenario"`
	Share      float64 `json:"canary_share"`
	Regression bool    `json:"regression"`
	Trials     int     `json:"trials"`
	Rollbacks  int     `json:"rollbacks"`
	Passes     int     `json:"passes"`
	Undecided  int     `json:"undecided"`
	// RollbackRate is Rollbacks/Trials; for A/A scenarios it is the false-rollback rate and
	// RollbackRateUpper95 its 95 % upper confidence bound (Wilson).
	RollbackRate        float64 `json:"rollback_rate"`
	RollbackRateUpper95 float64 `json:"rollback_rate_upper95"`
	// Detection times of the rollbacks, seconds from the canary's first window (0 if none).
	MedianSeconds float64 `json:"median_s"`
	P90Seconds    float64 `json:"p90_s"`
	// Times to pass, seconds from the canary's first window (0 if none).
	PassMedianSeconds float64 `json:"pass_median_s"`
	PassP90Seconds    float64 `json:"pass_p90_s"`
	// Decisive counts rollbacks by the test or guard that decided.
	Decisive map[string]int `json:"decisive"`
	// Margin is the margin ψ0 the comparisons used (it depends on the instance counts).
	Margin float64 `json:"margin"`
}

// BenchReport is the result of Bench.
type BenchReport struct {
	Alpha          float64       `json:"alpha"`
	RPS            float64       `json:"rps"`
	Duration       string        `json:"duration"`
	Window         string        `json:"window"`
	Warmup         string        `json:"warmup"`
	Trials         int           `json:"trials"`
	Seed           uint64        `json:"seed"`
	BaseErrorRatio float64       `json:"base_error_ratio"`
	Elapsed        string        `json:"elapsed"`
	Results        []BenchResult `json:"results"`
}

// Bench measures the detector's statistical quality: for every scenario and canary share it
// runs seeded trials on simulated time, generating windows (Poisson counts, coarse latency
// histograms on herd's buckets) and feeding a Detector directly.
func Bench(cfg BenchConfig) (*BenchReport, error) {
	if cfg.Trials == 0 {
		cfg.Trials = 1000
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Minute
	}
	if cfg.RPS == 0 {
		cfg.RPS = 2000
	}
	if len(cfg.Shares) == 0 {
		cfg.Shares = []float64{0.05, 0.2}
	}
	if len(cfg.Scenarios) == 0 {
		cfg.Scenarios = BenchScenarios
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	dc := DefaultConfig()
	dc.Warmup = 0
	if cfg.Detector != nil {
		dc = *cfg.Detector
	}
	if err := dc.Validate(); err != nil {
		return nil, fmt.Errorf("cannot run detector bench: %w", err)
	}
	if cfg.Trials < 1 || cfg.Duration < dc.Window || !(cfg.RPS > 0) {
		return nil, fmt.Errorf("cannot run detector bench: want trials ≥ 1, duration ≥ one window and rps > 0")
	}
	var scs []benchScenario
	for _, name := range cfg.Scenarios {
		sc, ok := scenarioByName(name)
		if !ok {
			return nil, fmt.Errorf("cannot run detector bench: unknown scenario %q (known: %s)", name, strings.Join(BenchScenarios, ", "))
		}
		scs = append(scs, sc)
	}
	for _, s := range cfg.Shares {
		if !(s > 0 && s < 1) {
			return nil, fmt.Errorf("cannot run detector bench: canary share %g not in (0, 1)", s)
		}
	}
	began := time.Now()
	rep := &BenchReport{
		Alpha: dc.Alpha, RPS: cfg.RPS, Duration: cfg.Duration.String(), Window: dc.Window.String(),
		Warmup: dc.Warmup.String(), Trials: cfg.Trials, Seed: cfg.Seed, BaseErrorRatio: benchBaseErrors,
	}
	bins := newSimBins(latencyModel{median: benchLatencyMedian, sigma: benchLatencySigma, scale: 1})
	for _, sc := range scs {
		for _, share := range cfg.Shares {
			rep.Results = append(rep.Results, benchScenarioRun(cfg, dc, bins, sc, share))
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
}

func benchScenarioRun(cfg BenchConfig, dc Config, bins *simBins, sc benchScenario, share float64) BenchResult {
	if !sc.regression && !sc.promote {
		dc.MinExposure = cfg.Duration + time.Hour // no promotion: every trial runs the full time
	}
	dc.MaxDuration = max(dc.MaxDuration, cfg.Duration+time.Minute)
	results := make([]trialResult, cfg.Trials)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Trials {
					return
				}
				results[i] = benchTrial(cfg, dc, bins, sc, share, i)
			}
		})
	}
	wg.Wait()
	res := BenchResult{Scenario: sc.name, Share: share, Regression: sc.regression, Trials: cfg.Trials, Decisive: map[string]int{}}
	var times, passTimes []float64
	for _, r := range results {
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
	return res
}

// quantileOf returns the q-quantile of sorted xs (nearest rank).
func quantileOf(xs []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// wilsonUpper is the upper Wilson score bound of a binomial proportion.
func wilsonUpper(k, n int, z float64) float64 {
	p := float64(k) / float64(n)
	nn := float64(n)
	den := 1 + z*z/nn
	c := p + z*z/(2*nn)
	h := z * math.Sqrt(p*(1-p)/nn+z*z/(4*nn*nn))
	return min((c+h)/den, 1)
}

// groupMeans returns per-bin mean counts per window for k instances sharing perWindow
// requests, instance i having latency scale scales[i] (nil: all 1) under model m.
func groupMeans(bins *simBins, m latencyModel, perWindow float64, scales []float64) []float64 {
	if scales == nil {
		p := bins.probs(m)
		for j := range p {
			p[j] *= perWindow
		}
		return p
	}
	out := make([]float64, len(bins.idx))
	for _, s := range scales {
		mm := m
		mm.scale *= s
		for j, p := range bins.probs(mm) {
			out[j] += p * perWindow / float64(len(scales))
		}
	}
	return out
}

func benchTrial(cfg BenchConfig, dc Config, bins *simBins, sc benchScenario, share float64, idx int) trialResult {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%g", sc.name, share)
	r := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()^uint64(idx)*0x9e3779b97f4a7c15))

	winMs := dc.Window.Milliseconds()
	perWindow := cfg.RPS * dc.Window.Seconds()
	kA := benchBaselineInst
	kB := max(1, int(math.Round(share/(1-share)*benchBaselineInst)))
	if sc.spread {
		kB = 2
	}
	base := latencyModel{median: benchLatencyMedian, sigma: benchLatencySigma, scale: 1}
	canary := base
	canary.scale = sc.scale
	canary.tailFrac, canary.tailShift = sc.tailFrac, sc.tailShift

	ga, gb := newSimGroup("v1", bins), newSimGroup("v2", bins)
	ga.w.Instances, gb.w.Instances = kA, kB
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
	for st, mult := range [2]float64{1, 3} {
		a, b := base, canary
		a.scale *= mult
		b.scale *= mult
		ga.means[st] = groupMeans(bins, a, perWindow*(1-share), scalesA)
		gb.means[st] = groupMeans(bins, b, perWindow*share, scalesB)
		f := []float64{1, 20}[st]
		ga.errP[st], gb.errP[st] = min(errA*f, 1), min(errB*f, 1)
	}
	windows := int(cfg.Duration / dc.Window)
	pre := int(benchPreSeconds * time.Second / dc.Window)
	var outages [2]int
	if sc.outage {
		for i := range outages {
			outages[i] = pre + r.IntN(max(windows-int(benchOutageSeconds*time.Second/dc.Window), 1))
		}
	}
	outageLen := int(benchOutageSeconds * time.Second / dc.Window)
	phase := r.Float64() * 2 * math.Pi

	var last proto.Verdict
	det := newDetector(dc, nil, nil, func(v proto.Verdict) { last = v }, nil)
	t0 := int64(1_700_000_000_000)
	canaryStart := t0 + int64(pre)*winMs
	for k := range pre + windows {
		start := t0 + int64(k)*winMs
		load := 1 + benchLoadSwing*math.Sin(phase+2*math.Pi*float64(start-t0)/(benchLoadPeriodSecs*1000))
		st := 0
		for _, o := range outages {
			if o > 0 && k >= o && k < o+outageLen {
				st = 1
			}
		}
		det.AddWindow(ga.fill(r, bins, start, start+winMs, load, st, 0))
		if k == pre {
			_ = det.Announce(proto.Deployment{Service: "bench", Baseline: "v1", Canary: "v2", UnixMs: canaryStart})
		}
		if k < pre {
			continue
		}
		if sc.crash {
			gb.w.Instances, gb.w.InstancesStarted = 1+r.IntN(kB), 1
			det.AddWindow(gb.fill(r, bins, start, start+winMs, load*0.5, st, 0.9))
		} else {
			det.AddWindow(gb.fill(r, bins, start, start+winMs, load, st, 0))
		}
		if last.State == proto.StatePass || last.State == proto.StateRollback {
			break
		}
	}
	tr := trialResult{state: last.State, decisive: last.Evidence.Decisive, seconds: float64(last.UnixMs-canaryStart) / 1000}
	det.mu.Lock()
	if c := det.services["bench"].comps["v2"]; c != nil {
		tr.margin = c.psi0
	}
	det.mu.Unlock()
	return tr
}

// WriteTable prints the report as an aligned text table.
func (r *BenchReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "herd bench detect: α=%g, %g rps, %s trials of %s, window %s, warm-up %s, baseline errors %.1f %%, seed %d (%s)\n",
		r.Alpha, r.RPS, fmt.Sprint(r.Trials), r.Duration, r.Window, r.Warmup, 100*r.BaseErrorRatio, r.Seed, r.Elapsed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tcanary\tψ0\trollbacks\trate\t(95 % ≤)\tmedian s\tp90 s\tpasses\tpass median s\tdecided by\t")
	secs := func(n int, v float64) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v)
	}
	for _, res := range r.Results {
		margin := "-"
		if res.Margin > 0 {
			margin = fmt.Sprintf("%.2f", res.Margin)
		}
		var dec []string
		for k, v := range res.Decisive {
			dec = append(dec, fmt.Sprintf("%s:%d", k, v))
		}
		slices.Sort(dec)
		fmt.Fprintf(tw, "%s\t%g %%\t%s\t%d/%d\t%.2f %%\t%.2f %%\t%s\t%s\t%d\t%s\t%s\t\n",
			res.Scenario, 100*res.Share, margin, res.Rollbacks, res.Trials, 100*res.RollbackRate,
			100*res.RollbackRateUpper95, secs(res.Rollbacks, res.MedianSeconds), secs(res.Rollbacks, res.P90Seconds),
			res.Passes, secs(res.Passes, res.PassMedianSeconds), strings.Join(dec, " "))
	}
	return tw.Flush()
}

// WriteJSON prints the report as indented JSON.
func (r *BenchReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("cannot encode bench report: %w", err)
	}
	return nil
}
