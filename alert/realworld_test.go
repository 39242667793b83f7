package alert

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// TestStudentT checks the Cornish–Fisher quantiles against tabulated ones.
func TestStudentT(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		nu   int
		a    float64
		want float64
	}{
		{15, 0.001, 3.733}, {5, 0.01, 3.365}, {30, 0.005, 2.750}, {10, 0.0005, 4.587}, {0, 0.001, 3.090},
	} {
		if got := luckQuantile(tc.nu, tc.a); math.Abs(got-tc.want)/tc.want > 0.01 {
			t.Errorf("t quantile at 1−%g, ν=%d: got %.3f; want %.3f ± 1 %%", tc.a, tc.nu, got, tc.want)
		}
	}
}

// drawBuckets simulates the baseline's buckets over a span: 20 instances hashed into the
// buckets, each with error ratio p·exp(σ·Z), serving perInst requests.
func drawBuckets(r *rand.Rand, sigma, p, perInst float64) []bucketCount {
	var bs [proto.NumBuckets]bucketCount
	for range 20 {
		b := &bs[r.IntN(proto.NumBuckets)]
		b.n += perInst
		b.e += traffic.Poisson(r, perInst*p*math.Exp(sigma*r.NormFloat64()))
		b.k++
	}
	var out []bucketCount
	for _, b := range bs {
		if b.k > 0 {
			out = append(out, b)
		}
	}
	return out
}

// TestOverdispersionMeasuresSpread: the estimate of the spread between instances is near 0
// without spread and near σ with it, and the margin it sets covers a one-instance canary's
// luck at σ = 0.5 in (nearly) every draw.
func TestOverdispersionMeasuresSpread(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	for _, sigma := range []float64{0, 0.3, 0.5} {
		var sum float64
		covered, trials := 0, 400
		for range trials {
			v, nu, ok := overdispersion(drawBuckets(r, sigma, 0.005, 30_000))
			if !ok {
				t.Fatalf("σ=%g: no estimate from %d-instance buckets", sigma, 20)
			}
			sum += math.Sqrt(v)
			// A fresh canary instance: is its luck within the margin?
			luck := math.Exp(sigma*r.NormFloat64()) / math.Exp(sigma*r.NormFloat64()/math.Sqrt(20))
			if luck <= luckMargin(math.Sqrt(v), nu, 0.002, 20, 1) {
				covered++
			}
		}
		mean := sum / float64(trials)
		if math.Abs(mean-sigma) > 0.1+0.2*sigma {
			t.Errorf("σ=%g: mean estimate got %.3f; want within %.2f of it", sigma, mean, 0.1+0.2*sigma)
		}
		if rate := 1 - float64(covered)/float64(trials); rate > 0.01 {
			t.Errorf("σ=%g: canary luck beyond the margin in %.1f %% of draws; want ≤ 1 %% (level 0.2 %%)", sigma, 100*rate)
		}
	}
}

// TestCeilingGuardNeedsEvidence: at low traffic a second of 10 requests with 5 errors (the
// old ceiling fired on it) is no evidence that the canary's error ratio is above 50 %, a crash
// loop's 45 errors of 50 are, and a late block needs more than the first (its α is smaller).
func TestCeilingGuardNeedsEvidence(t *testing.T) {
	t.Parallel()
	fires := func(block int64, n, e float64) bool {
		g := ceilingGuard{}
		g.add(block*1000, 0, n, e)
		return g.fired(0.5, 0.01)
	}
	if fires(0, 10, 5) || fires(0, 10, 8) {
		t.Errorf("5 or 8 errors of 10 requests: fired; want no rollback on so little")
	}
	if !fires(0, 50, 45) {
		t.Errorf("45 errors of 50 requests in the first second: did not fire; want a rollback")
	}
	if !fires(0, 30, 29) || fires(1000, 30, 29) {
		t.Errorf("29 of 30: want a rollback in the first second and none in the 1001st")
	}
	if got := logE(1, 10, 10); got != math.Inf(-1) {
		t.Errorf("ceiling 100 %%: got ln E %v; want -Inf (no ratio is above it)", got)
	}
	// A crash loop starting late in a block is caught across the block's end.
	// 11 of 11 is too little in either block alone, 22 of 22 across both is not.
	var g ceilingGuard
	g.add(0, 0, 0, 0)
	g.add(750, 0, 11, 11)
	if g.fired(0.5, 0.01) {
		t.Errorf("11 of 11 in the first block: fired; want no rollback yet")
	}
	g.add(1000, 0, 11, 11)
	if !g.fired(0.5, 0.01) || g.firedN != 22 {
		t.Errorf("11 of 11 on both sides of a block boundary: got fired on %v requests; want a rollback on the 22", g.firedN)
	}
}

// TestCeilingGuardFalseAlarms: 50 rps, a canary of 1 instance beside 4 serving 10 requests a
// second at the baseline's 10 % errors for 20 minutes never fires in 150 comparisons.
func TestCeilingGuardFalseAlarms(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(5, 6))
	fired := 0
	for range 150 {
		var g ceilingGuard
		for k := range int64(4 * 1200) {
			n := traffic.Poisson(r, 2.5)
			e := traffic.Poisson(r, 0.25)
			g.add(k*250, 0, n, e)
			if g.fired(0.5, 0.01) {
				fired++
				break
			}
		}
	}
	if fired > 0 {
		t.Errorf("A/A at 10 %% errors, low traffic: the ceiling fired in %d of 150 comparisons; want 0 (α·%g)", fired, alphaGuard)
	}
}

// TestEProcessBlockCap: a first block's evidence counts at most the saved allowance,
// capBlocks·ln C per alternative (less next to ψ0), and the next block adds at most ln C.
func TestEProcessBlockCap(t *testing.T) {
	t.Parallel()
	p := NewEProcess(1)
	p.SetBlockCap(burstLogCap)
	// A burst: 80 canary errors of 100 with a 5 % canary, across two windows of one block.
	p.UpdateBlock(1, 950, 50, 10, 40)
	p.UpdateBlock(1, 950, 50, 10, 40)
	var want float64
	for j, g := range grid {
		want += gridWeights[j] * math.Exp(capBlocks*min(burstLogCap, capEvents*math.Log(g)))
	}
	if got := math.Exp(p.LogE()); math.Abs(got-want) > 1e-9*want {
		t.Fatalf("after a burst in one block: got E %.6f; want the capped %.6f", got, want)
	}
	// The next block adds its own (capped) evidence on top.
	p.UpdateBlock(2, 950, 50, 10, 40)
	if got := p.LogE(); got <= math.Log(want) || got > (capBlocks+1)*burstLogCap {
		t.Fatalf("after a second burst block: got ln E %.3f; want in (%.3f, %.3f]", got, math.Log(want), (capBlocks+1)*burstLogCap)
	}
}

// coldCanary deploys a canary of 2 instances beside 10 whose latency is 2× the baseline's for
// its first 30 s (5 s warming, 25 s warm but still cold), then `after` times it, and returns
// the fleet after 90 s of canary.
func coldCanary(t *testing.T, cfg Config, after float64) *splitFleet {
	t.Helper()
	f := newSplitFleet(t, cfg)
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 20, 0.005, [2]int{0, 0})
	scale := func(g *traffic.WindowGroup, s float64) {
		g.Means[traffic.Normal] = f.bins.Means(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: s}, 20, nil)
	}
	for _, g := range []*traffic.WindowGroup{f.b.half[0], f.b.half[1], f.b.warming} {
		scale(g, 2)
	}
	f.b.warmingInst = 2
	f.step(4*40, false)
	f.announce()
	f.step(4*5, true)
	f.b.warmingInst, f.b.inst = 0, [2]int{1, 1}
	f.step(4*25, true)
	scale(f.b.half[0], after)
	scale(f.b.half[1], after)
	f.step(4*60, true)
	return f
}

// TestDetectorColdStartIsNotARegression: a canary 2× slower for its first 30 s and normal
// after is not rolled back; one that stays 2× slower is, after the cold start, by latency.
func TestDetectorColdStartIsNotARegression(t *testing.T) {
	t.Parallel()
	f := coldCanary(t, testConfig(), 1)
	if got := f.states(); len(got) != 1 || got[0] != proto.StatePending {
		t.Fatalf("2× slower for its first 30 s only: got verdicts %v (%s); want [pending]", got, f.last().Sentence)
	}
	g := coldCanary(t, testConfig(), 2)
	v := g.last()
	if dec := v.Evidence.Decisive; v.State != proto.StateRollback || dec != "dkw" && !strings.HasPrefix(dec, "latency_") {
		t.Fatalf("2× slower for good: got %s by %q (%s); want a rollback by a latency test", v.State, dec, v.Sentence)
	}
	if v.UnixMs < v.StartedMs+30_000 {
		t.Fatalf("2× slower for good: decided %d ms after the canary started; want after its 30 s cold start", v.UnixMs-v.StartedMs)
	}
}

// TestDetectorColdStartZeroDeclaresNone: a service whose policy says it has no cold start
// (cold_start 0) has its canary's latency compared whole from the first window, so the same
// canary 2× slower for its first 30 s is rolled back within seconds of its start.
func TestDetectorColdStartZeroDeclaresNone(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.ColdStart = 0
	v := coldCanary(t, cfg, 1).last()
	if dec := v.Evidence.Decisive; v.State != proto.StateRollback || dec != "dkw" && !strings.HasPrefix(dec, "latency_") {
		t.Fatalf("cold_start 0, canary 2× slower for 30 s: got %s by %q (%s); want a rollback by latency", v.State, dec, v.Sentence)
	}
	if v.UnixMs > v.StartedMs+5_000 {
		t.Fatalf("cold_start 0: decided %d ms after the canary started; want within its 5 s instance warm-up", v.UnixMs-v.StartedMs)
	}
}

// youngFleet runs a baseline of 10 warm and 2 young instances (it churns) and a canary of 2
// warm and 1 young, the young ones of each with the given error ratios, for 60 s of canary.
func youngFleet(t *testing.T, baseYoungErr, canaryYoungErr float64) *splitFleet {
	t.Helper()
	f := newSplitFleet(t, testConfig())
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.b = f.group("v2", 40, 0.005, [2]int{1, 1})
	f.a.warming.ErrorRate[traffic.Normal], f.a.warmingInst = baseYoungErr, 2
	f.b.warming.ErrorRate[traffic.Normal], f.b.warmingInst = canaryYoungErr, 1
	f.step(4*40, false)
	f.announce()
	f.step(4*60, true)
	return f
}

// TestDetectorComparesYoungWithYoung: young instances that fail while they start are no
// regression when the baseline's young instances fail alike; a canary whose young instances
// fail far more than the baseline's young ones is rolled back by the errors test.
func TestDetectorComparesYoungWithYoung(t *testing.T) {
	t.Parallel()
	f := youngFleet(t, 0.2, 0.2)
	if v := f.last(); v.State == proto.StateRollback {
		t.Fatalf("young instances of both at 20 %% errors: got a rollback (%s); want none", v.Sentence)
	}
	g := youngFleet(t, 0.005, 0.2)
	if v := g.last(); v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
		t.Fatalf("young canary instances at 20 %% errors, the baseline's at 0.5 %%: got %s by %q (%s); want a rollback by errors",
			v.State, v.Evidence.Decisive, v.Sentence)
	}
}

// TestEProcessBlockCapWinsBackAHealthyStretch: the evidence against a regression that a
// healthy stretch at high traffic piled up is won back at the windows' own rate, as without
// a cap, and only the evidence above it is bounded per block: a strong regression after a
// healthy stretch is caught at most ⌈(th+ln(1/w_min))/ln C⌉ + 2 blocks after an uncapped e-process would
// have climbed out of the stretch's deficit. A burst after the same stretch still adds at
// most its blocks' caps.
func TestEProcessBlockCapWinsBackAHealthyStretch(t *testing.T) {
	t.Parallel()
	healthy := func(capped bool) (*EProcess, int64) {
		p := NewEProcess(1.3)
		if capped {
			p.SetBlockCap(burstLogCap)
		}
		// 30 s at 5,000 rps, 40 % canary, 1 % errors in both.
		var b int64
		for ; b < 30; b++ {
			p.UpdateBlock(b, 3000, 2000, 30, 20)
		}
		return p, b
	}
	th := math.Log(1 / (alphaTests * 0.01 * 0.5)) // the errors test at its default weight
	// blocksTo returns how many blocks of errors ×3 take p from b to ln E ≥ level.
	blocksTo := func(p *EProcess, b int64, level float64) int {
		n := 0
		for p.LogE() < level && n < 100 {
			p.UpdateBlock(b, 3000, 2000, 30, 60)
			b++
			n++
		}
		return n
	}
	u, b := healthy(false)
	if got := u.LogE(); got > -8 {
		t.Fatalf("after a healthy stretch: got ln E %.2f; want well below 0", got)
	}
	climb := blocksTo(u, b, 0)
	p, b := healthy(true)
	blocks := blocksTo(p, b, th)
	// Once out of the deficit each block adds at most ln C to every alternative (after the
	// saved allowance); one
	// alternative's grid weight costs up to ln(1/0.08), and the block in which it climbs out
	// counts partly.
	if want := climb + int(math.Ceil((th-math.Log(0.08))/burstLogCap)) + 2; blocks > want {
		t.Fatalf("errors ×3 after 30 healthy blocks: reached ln E %.2f after %d blocks; want ≤ %d (uncapped: out of the deficit after %d)",
			p.LogE(), blocks, want, climb)
	}
	q, b := healthy(true)
	for range 3 { // a 2 s burst touches at most three 1 s blocks
		q.UpdateBlock(b, 3000, 2000, 30, 400)
		b++
	}
	q.UpdateBlock(b, 3000, 2000, 30, 20)
	if got := q.LogE(); got > (capBlocks+2)*burstLogCap || got >= th {
		t.Fatalf("a 2 s burst after a healthy stretch: got ln E %.2f; want ≤ %.2f, below the threshold %.2f", got, (capBlocks+2)*burstLogCap, th)
	}
}

// learningFleet runs a baseline of 10 warm instances and 2 young ones (it churns) whose
// latency is youngScale times the warm ones', then a canary of 2 instances 2× slower than
// the baseline for good; it returns the fleet after 20 s of canary.
func learningFleet(t *testing.T, youngScale float64) *splitFleet {
	t.Helper()
	f := newSplitFleet(t, testConfig())
	f.a = f.group("v1", 200, 0.005, [2]int{5, 5})
	f.a.warming.Means[traffic.Normal] = f.bins.Means(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: youngScale}, 200, nil)
	f.a.warmingInst = 2
	f.b = f.group("v2", 20, 0.005, [2]int{0, 0})
	for _, g := range []*traffic.WindowGroup{f.b.half[0], f.b.half[1], f.b.warming} {
		g.Means[traffic.Normal] = f.bins.Means(traffic.LatencyModel{Median: 0.05, Sigma: 0.5, Scale: 2}, 20, nil)
	}
	f.b.warmingInst = 2
	f.step(4*40, false)
	f.announce()
	f.step(4*5, true)
	f.b.warmingInst, f.b.inst = 0, [2]int{1, 1}
	f.step(4*15, true)
	return f
}

// TestDetectorLearnsTheColdStart: when the baseline's young instances are as fast as its
// warm ones the service has no cold start to wait out, and a canary slower from its first
// window is rolled back within seconds; when they are slower, the fixed cold start applies
// and the same canary is not judged on latency in its first 30 s.
func TestDetectorLearnsTheColdStart(t *testing.T) {
	t.Parallel()
	f := learningFleet(t, 1)
	v := f.last()
	if dec := v.Evidence.Decisive; v.State != proto.StateRollback || dec != "dkw" && !strings.HasPrefix(dec, "latency_") {
		t.Fatalf("no cold start in the baseline, canary 2× slower: got %s by %q (%s); want a rollback by latency", v.State, dec, v.Sentence)
	}
	if v.UnixMs > v.StartedMs+10_000 {
		t.Fatalf("no cold start in the baseline: decided %d ms after the canary started; want within 10 s", v.UnixMs-v.StartedMs)
	}
	g := learningFleet(t, 2)
	if got := g.states(); len(got) != 1 || got[0] != proto.StatePending {
		t.Fatalf("the baseline's young instances 2× slower, canary 2× slower for 20 s: got verdicts %v (%s); want [pending] (cold start)", got, g.last().Sentence)
	}
}
