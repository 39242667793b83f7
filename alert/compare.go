package alert

import (
	"cmp"
	"math"
	"time"

	"github.com/herd-dev/herd/proto"
)

// maxThresholds bounds the latency thresholds of a comparison (quantiles plus the SLO).
const maxThresholds = 9

// minRefCount is the least number of baseline latency observations to freeze thresholds from.
const minRefCount = 50

// passCheckEvery is how many window pairs pass between two pass checks (each costs one
// confidence-sequence evaluation per test).
const passCheckEvery = 4

// burstBlockMs is the block of time by which the errors test's e-process bounds its
// evidence (EProcess.UpdateBlock): each alternative's allowance to rise grows by burstLogCap
// a block, up to capBlocks (2) blocks' worth. A burst of errors on one instance for 2 s
// touches at most three blocks and lifts the evidence by at most (2+2)·burstLogCap = 4.2,
// short of a rollback by the errors test at its default weight (ln(1/(0.7·α·0.5)) = 5.66),
// whereas a regression keeps adding and reaches the threshold within five blocks of its onset
// however strong it is, and however long a healthy stretch before it piled up evidence
// against it.
const (
	burstBlockMs = 1000
	burstLogCap  = 1.05
)

// record is what a comparison keeps of one group's window until the partner window arrives.
// The tests compare like with like: warm instances with warm (n, e, hn, slow), young
// instances (those the rollup leaves out of Warm, and a canary's whole latency during its
// cold start) with young (yn, ye, yhn, yslow).
type record struct {
	startMs, endMs int64
	n, e           float64 // requests and errors
	hn             float64 // latency observations
	slow           [maxThresholds]float64
	yn, ye, yhn    float64 // the same of the young instances
	yslow          [maxThresholds]float64
	hist           proto.Histogram // latency histogram, kept when the DKW test runs
	hasHist        bool
}

// countTest is one e-process test on counts (errors, or requests slower than a threshold).
type countTest struct {
	name      string
	latency   bool
	slowIdx   int     // index into record.slow for latency tests
	bucket    int     // frozen threshold bucket index (latency)
	threshold float64 // frozen threshold in seconds (latency)
	quantile  float64 // baseline quantile the threshold was frozen at; 0 for the SLO
	logW      float64 // ln of the normalised weight
	weight    float64
	// psi0 is the test's margin, set from the baseline's measured dispersion sigma
	// (measured) or the assumed instance spread (see dispersion.go).
	psi0     float64
	sigma    float64
	measured bool
	ep       EProcess
	cs       ConfSeq
	nA, nB   float64
	eA, eB   float64
}

// comparison is the state of one canary against its baseline. The Detector's mutex guards it.
type comparison struct {
	service, baseline, canary string
	set                       *settings
	announced                 bool

	createdMs int64 // announcement or inference time
	// deployedMs is the deployment's start, which identifies it (and its decision ids): the
	// announcement's UnixMs, or the canary's first window when inferred; 0 when announced
	// without UnixMs, and the canary's first window in this comparison stands in.
	deployedMs    int64
	firstCanaryMs int64 // start of the first canary window seen; 0 before
	startMs       int64 // first window start the tests use: firstCanaryMs + warm-up
	final         bool

	// Latency thresholds, frozen from the baseline's reference before the tests start.
	thresholds []threshold
	frozen     bool

	testsReady bool
	psi0       float64
	tests      []*countTest
	dkw        *dkwTest
	dkwLogW    float64
	dkwWeight  float64
	logTh      float64 // ln(1/α)

	// Pairing: windows waiting for their partner, oldest first.
	pendA, pendB []*record
	free         []*record

	// Lattice logs of the last π of each stratum (warm, young), shared by the tests of one
	// window.
	logsPi [2]float64
	logs   [2][csN]float64

	windows         int
	firstMs, lastMs int64

	// lastCanaryEndMs is the end of the canary's newest window with an instance reporting.
	lastCanaryEndMs int64
	// gone pairs the canary's empty windows with the baseline's (guard_canary_gone).
	gone          goneGuard
	lastTrafficMs int64
	// The baseline's newest window end, and the start of its current run of live windows
	// without a gap (0: its newest window was not live), for the no-traffic guard.
	lastBaselineEndMs, baselineServingMs int64
	canaryInstances, baselineInstances   int
	noTraffic                            bool // inconclusive for lack of canary traffic
	// ceiling is the error-ceiling guard's test (ceiling.go).
	ceiling ceilingGuard

	verdict proto.Verdict
	life    lifecycle // watch and live evidence (lifecycle.go, live.go)
	// disp is the baseline's measured dispersion the tests were built from, or nil.
	disp *dispersion
	// latencyCold is set unless the baseline's young instances are known to be as fast as its
	// warm ones: the canary then gets the fixed cold start and latency is compared young with
	// young, warm with warm; otherwise whole. errorsCold likewise unless they are known to err
	// no more (dispersion.go, "Learning the cold start").
	latencyCold, errorsCold bool

	edges *edgeComparison // outbound edges (edges.go); nil until a window is paired
}

// threshold is a frozen latency threshold.
type threshold struct {
	name     string
	bucket   int
	seconds  float64
	quantile float64
}

func newComparison(service, baseline, canary string, set *settings, createdMs int64, announced bool) *comparison {
	c := &comparison{
		service: service, baseline: baseline, canary: canary, set: set,
		createdMs: createdMs, announced: announced, logsPi: [2]float64{-1, -1},
	}
	c.verdict = proto.Verdict{
		Service: service, Baseline: baseline, Canary: canary,
		State: proto.StatePending, UnixMs: createdMs, StartedMs: createdMs,
		Evidence: proto.Evidence{Alpha: set.alpha, Threshold: 1 / (alphaTests * set.alpha), EValue: 1},
	}
	return c
}

// freeze sets the latency thresholds from the baseline's reference histogram. It reports
// false when the reference holds too few observations.
func (c *comparison) freeze(ref *proto.Histogram) bool {
	if ref == nil || ref.Positive.Total() < minRefCount {
		return false
	}
	c.thresholds = c.thresholds[:0]
	add := func(name string, bucket int, q float64) {
		for _, t := range c.thresholds {
			if t.bucket == bucket {
				return // two quantiles in one bucket: one test
			}
		}
		c.thresholds = append(c.thresholds, threshold{name: name, bucket: bucket, seconds: proto.BucketLower(bucket), quantile: q})
	}
	for _, q := range c.set.quantiles {
		v := ref.Quantile(q)
		if !(v > 0) {
			continue
		}
		// Slow means "above the bucket holding the quantile": at or above the next edge.
		add(quantileName(q), proto.BucketIndex(v)+1, q)
	}
	if slo := c.set.sloSeconds; slo > 0 {
		i := proto.BucketIndex(slo)
		if proto.BucketLower(i) < slo*(1-1e-12) {
			i++
		}
		add("latency_slo", i, 0)
	}
	c.frozen = true
	return true
}

// initTests builds the tests at the first compared window, freezing each count test's
// margin from the baseline's measured dispersion (disp, nil when unknown) or, without
// instance buckets, from the assumed instance spread, and the instance counts.
func (c *comparison) initTests(disp *dispersion) {
	c.disp = disp // a watch after a pass restarts the tests from it (lifecycle.go)
	s := c.set
	c.latencyCold, c.errorsCold = true, false
	if disp != nil {
		edges := make([]int, len(c.thresholds))
		for i, th := range c.thresholds {
			edges[i] = th.bucket
		}
		c.latencyCold, c.errorsCold = disp.coldStart(edges)
	}
	if s.coldStart == 0 {
		// The service declares no cold start (policy cold_start "0s"): latency is compared
		// whole from the first window, as when the baseline shows none.
		c.latencyCold = false
	}
	w := s.weights
	lat := w.Latency
	if len(c.thresholds) == 0 {
		lat = 0
	}
	dkw := w.DKW
	if len(c.thresholds) == 0 {
		dkw = 0
	}
	total := w.Errors + lat + dkw
	if total <= 0 { // only latency weights but no latency data: errors decide alone
		w.Errors, total = 1, 1
	}
	c.tests = c.tests[:0]
	if w.Errors > 0 {
		t := &countTest{name: "errors", weight: w.Errors / total}
		c.tests = append(c.tests, t)
	}
	if lat > 0 {
		for j, th := range c.thresholds {
			t := &countTest{name: th.name, latency: true, slowIdx: j, bucket: th.bucket,
				threshold: th.seconds, quantile: th.quantile, weight: lat / total / float64(len(c.thresholds))}
			c.tests = append(c.tests, t)
		}
	}
	kA, kB := max(c.baselineInstances, 1), max(c.canaryInstances, 1)
	var scratch []bucketCount
	c.psi0 = 0
	for _, t := range c.tests {
		t.psi0, t.sigma, t.measured = s.margin, s.spread, false
		if s.spread > 0 {
			t.psi0 = max(s.margin, math.Exp(3*s.spread*math.Sqrt(1/float64(kB)+1/float64(kA))))
		}
		if disp != nil {
			pick := func(b *bucketStats) (float64, float64) { return b.n, b.e }
			if t.latency {
				bucket := t.bucket
				pick = func(b *bucketStats) (float64, float64) {
					return float64(b.hist.Count), float64(b.hist.CountAtOrAbove(bucket))
				}
			}
			scratch = disp.counts(pick, scratch[:0])
			if v, nu, ok := overdispersion(scratch); ok {
				t.sigma, t.measured = math.Sqrt(v), true
				t.psi0 = max(s.margin, luckMargin(t.sigma, nu, alphaLuck*s.alpha*t.weight, kA, kB))
			}
		}
		t.ep.init(t.psi0)
		if !t.latency {
			// Bursts are of errors (retry storms); a latency test's evidence is not bounded
			// per block, so a strong latency regression is caught within a second or two.
			t.ep.SetBlockCap(burstLogCap)
		}
		t.logW = math.Log(t.weight)
		if t.name == "errors" || c.psi0 == 0 {
			c.psi0 = t.psi0
		}
	}
	if dkw > 0 {
		c.dkwWeight = dkw / total
		c.dkwLogW = math.Log(c.dkwWeight)
		margin := s.dkwMargin
		if disp != nil {
			if sd, nu, ok := disp.cdfDispersion(); ok {
				q := luckQuantile(nu, alphaLuck*s.alpha*c.dkwWeight)
				margin = max(margin, q*sd*math.Sqrt(1/float64(kB)+1/float64(kA)))
			}
		}
		// Band level α·w makes the flag alone reach the threshold: w·(1/(α·w)) = 1/α.
		c.dkw = &dkwTest{alpha: alphaTests * s.alpha * c.dkwWeight, margin: margin}
	}
	c.logTh = math.Log(1 / (alphaTests * s.alpha))
	c.testsReady = true
}

// newRecord returns a record from the free list or a new one.
func (c *comparison) newRecord() *record {
	if n := len(c.free); n > 0 {
		r := c.free[n-1]
		c.free = c.free[:n-1]
		return r
	}
	return &record{}
}

func (c *comparison) release(r *record) {
	if len(c.free) < 8 {
		c.free = append(c.free, r)
	}
}

// fill sets r from a window's extracted values: x of every instance, tx of the warm ones
// (x itself when the window carries no warm split). Errors and latency are compared whole (x)
// when the baseline's young instances are known to be like its warm ones (errorsCold,
// latencyCold unset); a split signal puts the warm instances' counts in
// the warm stratum and the rest in the young one. cold puts the whole latency of the window
// with the young instances (a canary in its cold start).
func (c *comparison) fill(r *record, w *proto.Window, x, tx *extract, cold bool) {
	r.startMs, r.endMs = w.StartMs, w.EndMs
	split := tx != x
	ex := x
	if c.errorsCold {
		ex = tx
	}
	r.n, r.e = ex.requests, ex.errors
	r.yn, r.ye = 0, 0
	if split && c.errorsCold {
		r.yn, r.ye = max(x.requests-tx.requests, 0), max(x.errors-tx.errors, 0)
	}
	lx := x
	if c.latencyCold {
		lx = tx
	}
	r.hn, r.yhn, r.hasHist = 0, 0, false
	clear(r.slow[:])
	clear(r.yslow[:])
	switch {
	case cold:
		if x.hasLatency {
			r.yhn = float64(x.latency.Count)
			for j, th := range c.thresholds {
				r.yslow[j] = float64(x.latency.CountAtOrAbove(th.bucket))
			}
		}
	case lx.hasLatency:
		r.hn = float64(lx.latency.Count)
		for j, th := range c.thresholds {
			r.slow[j] = float64(lx.latency.CountAtOrAbove(th.bucket))
		}
		if c.dkw != nil {
			r.hist.CopyFrom(&lx.latency)
			r.hasHist = true
		}
	}
	if lx != x && !cold && x.hasLatency {
		r.yhn = max(float64(x.latency.Count)-r.hn, 0)
		for j, th := range c.thresholds {
			r.yslow[j] = max(float64(x.latency.CountAtOrAbove(th.bucket))-r.slow[j], 0)
		}
	}
}

// latticeFor returns the lattice logs for π of a stratum (0 warm, 1 young), computing them
// when π changed.
func (c *comparison) latticeFor(stratum int, pi float64) *[csN]float64 {
	if pi != c.logsPi[stratum] {
		latticeLogs(pi, &c.logs[stratum])
		c.logsPi[stratum] = pi
	}
	return &c.logs[stratum]
}

// update adds one window pair to the tests and returns ln of the weighted average e-value.
func (c *comparison) update(a, b *record) float64 {
	c.windows++
	if c.firstMs == 0 {
		c.firstMs = a.startMs
	}
	c.lastMs = max(c.lastMs, b.endMs)
	block := a.startMs / burstBlockMs
	for _, t := range c.tests {
		var st [2][4]float64 // per stratum: nA, nB, eA, eB
		if t.latency {
			st[0] = [4]float64{a.hn, b.hn, a.slow[t.slowIdx], b.slow[t.slowIdx]}
			st[1] = [4]float64{a.yhn, b.yhn, a.yslow[t.slowIdx], b.yslow[t.slowIdx]}
		} else {
			st[0] = [4]float64{a.n, b.n, a.e, b.e}
			st[1] = [4]float64{a.yn, b.yn, a.ye, b.ye}
		}
		for i, v := range st {
			nA, nB, eA, eB := v[0], v[1], v[2], v[3]
			if !(nA > 0 && nB > 0) {
				continue // a stratum one side lacks compares nothing
			}
			t.nA += nA
			t.nB += nB
			t.eA += eA
			t.eB += eB
			if eA+eB == 0 {
				continue
			}
			t.ep.UpdateBlock(block, nA, nB, eA, eB)
			t.cs.Update(eA+eB, eB, c.latticeFor(i, nB/(nA+nB)))
		}
	}
	if c.dkw != nil && a.hasHist && b.hasHist {
		// Only pairs: a baseline window without its canary partner (a canary in its cold
		// start) would shift the baseline's CDF alone under load or outages.
		c.dkw.add(&a.hist, &b.hist)
		c.dkw.check()
	}
	return c.logAverage()
}

// logAverage returns ln Σ_i w_i·E_i over the tests.
func (c *comparison) logAverage() float64 {
	var terms [maxThresholds + 2]float64
	k := 0
	for _, t := range c.tests {
		terms[k] = t.logW + t.ep.LogE()
		k++
	}
	if c.dkw != nil && c.dkw.flagged {
		terms[k] = c.dkwLogW + math.Log(1/c.dkw.alpha)
		k++
	}
	return logSumExp(terms[:k])
}

// decisive returns the name of the test contributing most to the average.
func (c *comparison) decisive() string {
	if c.dkw != nil && c.dkw.flagged {
		return "dkw"
	}
	best, name := math.Inf(-1), ""
	for _, t := range c.tests {
		if v := t.logW + t.ep.LogE(); v > best {
			best, name = v, t.name
		}
	}
	return name
}

// acceptMargin is the accept margin with the comparison's margin ψ0 (the errors test's).
func (c *comparison) acceptMargin() float64 { return max(c.set.accept, c.psi0) }

// acceptMarginOf is the ratio the confidence sequence of t must lie below for a pass.
func (c *comparison) acceptMarginOf(t *countTest) float64 { return max(c.set.accept, t.psi0) }

// passes reports whether every count test's confidence sequence lies below the accept
// margin. A test without any event in either group has nothing to compare and does not block.
func (c *comparison) passes() bool {
	if len(c.tests) == 0 {
		return false
	}
	var served bool
	for _, t := range c.tests {
		if !t.latency && t.nB > 0 {
			served = true
		}
		if t.eA+t.eB == 0 {
			continue
		}
		_, hi, ok := t.cs.Bounds(c.set.alpha)
		if !ok || hi >= c.acceptMarginOf(t) {
			return false
		}
	}
	return served
}

// evidence fills the verdict's evidence from the tests.
func (c *comparison) evidence(decisive string) proto.Evidence {
	ev := proto.Evidence{
		Alpha: c.set.alpha, Threshold: 1 / (alphaTests * c.set.alpha), EValue: 1, Decisive: decisive,
		Windows: c.windows, FirstMs: c.firstMs, LastMs: c.lastMs,
		CanaryInstances: c.canaryInstances, BaselineInstances: c.baselineInstances,
	}
	if !c.testsReady {
		return ev
	}
	ev.Margin = c.psi0
	ev.EValue = math.Exp(min(c.logAverage(), maxLogE))
	for _, t := range c.tests {
		te := proto.TestEvidence{
			Name: t.name, EValue: math.Exp(t.ep.LogE()), Weight: t.weight,
			ThresholdSeconds: t.threshold,
			BaselineN:        uint64(t.nA), BaselineE: uint64(t.eA),
			CanaryN: uint64(t.nB), CanaryE: uint64(t.eB),
			Effect: rateRatio(t.nA, t.nB, t.eA, t.eB),
			Margin: t.psi0, Dispersion: t.sigma, DispersionMeasured: t.measured,
		}
		if lo, hi, ok := t.cs.Bounds(c.set.alpha); ok {
			te.CSLow, te.CSHigh = lo, hi
		} else {
			te.CSLow, te.CSHigh = te.Effect, te.Effect
		}
		if t.nA > 0 && t.nB > 0 {
			te.BaselineRatio, te.CanaryRatio = t.eA/t.nA, t.eB/t.nB
			te.CanaryRatioLow, te.CanaryRatioHigh = min(te.BaselineRatio*te.CSLow, 1), min(te.BaselineRatio*te.CSHigh, 1)
		}
		ev.Tests = append(ev.Tests, te)
	}
	if d := c.dkw; d != nil {
		te := proto.TestEvidence{
			Name: "dkw", Weight: c.dkwWeight, ThresholdSeconds: d.edgeSeconds,
			BaselineN: d.a.Count, CanaryN: d.b.Count, Effect: max(d.gap, 0),
			CSLow: max(d.gap-d.band, 0), CSHigh: min(d.gap+d.band, 1),
		}
		if d.flagged {
			te.EValue = 1 / d.alpha
		}
		ev.Tests = append(ev.Tests, te)
	}
	return ev
}

// test returns the count test with the given name, or nil.
func (c *comparison) test(name string) *countTest {
	for _, t := range c.tests {
		if t.name == name {
			return t
		}
	}
	return nil
}

// setState records a state change and returns the verdict to publish.
func (c *comparison) setState(state proto.State, unixMs int64, decisive string, ev proto.Evidence, sentence string) proto.Verdict {
	v := proto.Verdict{
		Service: c.service, Baseline: c.baseline, Canary: c.canary, State: state,
		UnixMs: unixMs, StartedMs: c.createdMs, Sentence: sentence, Evidence: ev,
	}
	v.Evidence.Decisive = decisive
	if state == proto.StatePass || state == proto.StateRollback {
		v.DecisionID = decisionID(c.service, c.baseline, c.canary, cmp.Or(c.deployedMs, c.firstCanaryMs, c.createdMs), state)
		c.final = true
	}
	c.verdict = v
	return v
}

// judgedUntilMs bounds the start of the deployment a final comparison judged: its creation,
// or its verdict if that came first (a window that began before the announcement). An
// announcement of the same canary and baseline starting no later is that deployment again.
func (c *comparison) judgedUntilMs() int64 { return max(c.createdMs, c.verdict.UnixMs) }

// sumRing sums the last k entries of a ring ending at pos.
func sumRing(ns, es *[maxGuardWindows]float64, pos, k int) (n, e float64) {
	for i := range min(k, maxGuardWindows) {
		j := (pos - i + maxGuardWindows) % maxGuardWindows
		n += ns[j]
		e += es[j]
	}
	return n, e
}

// elapsed is the time since the canary started (its first window, else the creation).
func (c *comparison) elapsed(unixMs int64) time.Duration {
	from := c.createdMs
	if c.firstCanaryMs != 0 {
		from = c.firstCanaryMs
	}
	return time.Duration(max(unixMs-from, 0)) * time.Millisecond
}

// add counts one window pair into t's totals and, when both sides have requests and either
// has errors, into its e-process; it reports whether it did.
func (t *countTest) add(nA, nB, eA, eB float64) bool {
	t.nA += nA
	t.nB += nB
	t.eA += eA
	t.eB += eB
	if !(nA > 0 && nB > 0 && eA+eB > 0) {
		return false
	}
	t.ep.Update(nA, nB, eA, eB)
	return true
}
