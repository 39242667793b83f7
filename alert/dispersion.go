package alert

// Margins from the measured dispersion between instances.
//
// Instances of one version differ: their error ratios and latencies are not equal, and a
// canary of one or two instances carries their luck. Under "the canary's instances are
// drawn like the baseline's" the log event rate of an instance varies around the version's
// with some log-sd σ, so the canary/baseline ratio of a count test is off by a factor whose
// log is about N(0, σ²·(1/k_canary + 1/k_baseline)) with k the instance counts. A margin ψ0 =
// exp(t·σ̂·sqrt(1/k_B + 1/k_A)), t the Student quantile at 1 − α_luck (α_luck the test's
// share of the α budget for instance luck, see alphaLuck) with the estimate's degrees of
// freedom, covers that factor with probability ≥ 1 − α_luck (a prediction bound: the t
// quantile pays for estimating σ). The e-process against ψ0 then keeps its own α.
//
// σ is measured on the baseline's own instances: windows carry Buckets, the warm instances
// hashed into proto.NumBuckets buckets. Over the last 15–30 minutes of windows the detector
// keeps, per bucket, requests, errors and the latency histogram, and the average number of
// instances. For a count (events E_j of N_j in bucket j, p̂ = ΣE/ΣN) Pearson's statistic
// X² = Σ (E_j − N_j·p̂)²/(N_j·p̂·(1−p̂)) has expectation ν + σ²·Σ_j N_j·p̂/(k_j·(1−p̂)) with ν
// = J−1 (J buckets with data), so σ̂² = max(0, (X² − ν)/Σ_j N_j·p̂/(k_j·(1−p̂))): the
// between-bucket variance left after the counting noise, scaled to one instance. Whatever
// makes instances differ — their hardware, their endpoint mix, bursts — shows up in it.

import (
	"math"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// The false-rollback bound α of a comparison is shared by its parts; together they stay
// within α.
const (
	// alphaTests is the share of the tests' weighted average e-value: it rolls back at
	// 1/(alphaTests·α).
	alphaTests = 0.7
	// alphaLuck is the share of instance luck beyond the margins ψ0, split among the tests
	// by their weights.
	alphaLuck = 0.2
	// alphaGuard is the share of the error-ceiling guard.
	alphaGuard = 0.1
)

// dispersionSpanMs is the span of each half of a group's bucket statistics: the estimate
// reads the last 15–30 minutes (errors are rare: a 0.5 % error ratio at 2,000 requests a
// second gives some 200 errors a bucket in 15 minutes, enough to see a spread of 0.05).
const dispersionSpanMs = 15 * 60_000

// minDispersionBuckets is the least number of buckets with data for an estimate (3 degrees
// of freedom).
const minDispersionBuckets = 4

// bucketStats are one bucket's sums over a span.
type bucketStats struct {
	n, e    float64 // requests and errors
	hist    proto.Histogram
	instSum float64 // Σ instances over the span's windows
}

// dispersion holds a group's bucket statistics and its young-versus-warm statistics: cur
// since curStartMs, prev the span before. The Detector's mutex guards it.
type dispersion struct {
	cur, prev         [proto.NumBuckets]bucketStats
	curWins, prevWins float64
	curStartMs        int64
	coldCur, coldPrev coldStats
}

// coldStats are a span's sums of a group's windows that carry a warm split: of every
// instance and of the warm ones (the young ones are the difference).
type coldStats struct {
	an, ae, wn, we float64 // requests and errors: every instance, warm instances
	all, warm      proto.Histogram
}

func (s *coldStats) reset() {
	s.an, s.ae, s.wn, s.we = 0, 0, 0, 0
	s.all.Reset()
	s.warm.Reset()
}

// observe adds a window's buckets (read with the service's signals sig into xb) and, when
// the window carries a warm split (tx is not x), its young and warm sums (x every
// instance, tx the warm ones).
func (d *dispersion) observe(w *proto.Window, sig *signals.Definition, xb, x, tx *extract) {
	split := tx != x
	if len(w.Buckets) == 0 && !split {
		return
	}
	if w.StartMs-d.curStartMs >= dispersionSpanMs {
		d.prev, d.cur = d.cur, d.prev
		for i := range d.cur {
			b := &d.cur[i]
			b.n, b.e, b.instSum = 0, 0, 0
			b.hist.Reset()
		}
		d.prevWins, d.curWins = d.curWins, 0
		d.coldPrev, d.coldCur = d.coldCur, d.coldPrev
		d.coldCur.reset()
		d.curStartMs = w.StartMs
	}
	if split {
		c := &d.coldCur
		c.an += x.requests
		c.ae += x.errors
		c.wn += tx.requests
		c.we += tx.errors
		if x.hasLatency {
			c.all.Merge(&x.latency)
		}
		if tx.hasLatency {
			c.warm.Merge(&tx.latency)
		}
	}
	if len(w.Buckets) == 0 {
		return
	}
	d.curWins++
	for i := range min(len(w.Buckets), proto.NumBuckets) {
		x := xb
		x.read(sig, w.Buckets[i])
		b := &d.cur[i]
		b.n += x.requests
		b.e += x.errors
		b.instSum += float64(w.BucketInstances[i])
		if x.hasLatency {
			b.hist.Merge(&x.latency)
		}
	}
}

// Learning the cold start. The rollup leaves each instance's first seconds (its warm-up) out
// of Warm, so a baseline whose instances come and go shows how its young instances compare
// with its warm ones. Over the dispersion span (15–30 minutes) herd counts the young
// instances' requests above each latency threshold and their errors, and compares them with
// the warm instances': a young share above a threshold within coldTolerance of the warm
// one (its 2-sigma upper bound, with at least minColdCount young observations) at every
// threshold means the service has no latency cold start to wait out, and the canary's
// latency is compared whole from its first window (young and warm instances together, on
// both sides). Otherwise — young instances slower, or too few of them to tell — the canary
// is given the fixed cold start (-detect.cold-start, policy cold_start), during which its
// latency is compared with the baseline's young instances only. Errors likewise: compared
// whole when the baseline's young instances are known to err no more than its warm ones,
// otherwise young with young and warm with warm (a canary's errors while its instances warm
// up count only against the baseline's young instances, if any).

// coldTolerance is the ratio of a young instance's event rate to a warm one's below which
// young instances count as warm.
const coldTolerance = 1.3

// minColdCount is the least number of young latency observations or requests to learn from.
const minColdCount = 1000

// coldStart reports what the group's young instances tell about its cold start at the
// latency thresholds (bucket indices edges): latencyCold is false only when they are known
// to be as fast as the warm ones, errorsCold only when they are known to err no more.
func (d *dispersion) coldStart(edges []int) (latencyCold, errorsCold bool) {
	var all, warm proto.Histogram
	all.CopyFrom(&d.coldCur.all)
	all.Merge(&d.coldPrev.all)
	warm.CopyFrom(&d.coldCur.warm)
	warm.Merge(&d.coldPrev.warm)
	latencyCold = true
	if yc, wc := float64(all.Count)-float64(warm.Count), float64(warm.Count); yc >= minColdCount && wc >= minColdCount && len(edges) > 0 {
		latencyCold = false
		for _, b := range edges {
			we := float64(warm.CountAtOrAbove(b))
			ye := max(float64(all.CountAtOrAbove(b))-we, 0)
			if (ye+2*math.Sqrt(ye)+2)/yc > coldTolerance*we/wc {
				latencyCold = true
				break
			}
		}
	}
	an, ae := d.coldCur.an+d.coldPrev.an, d.coldCur.ae+d.coldPrev.ae
	wn, we := d.coldCur.wn+d.coldPrev.wn, d.coldCur.we+d.coldPrev.we
	if yn, ye := an-wn, max(ae-we, 0); yn >= minColdCount && wn >= minColdCount && we > 0 {
		errorsCold = (ye-2*math.Sqrt(ye))/yn > coldTolerance*we/wn
	}
	return latencyCold, errorsCold
}

// bucketCount is one bucket's data for an estimate.
type bucketCount struct{ n, e, k float64 }

// counts returns, per bucket with requests and instances, the counts chosen by pick over
// both spans and the average instance count.
func (d *dispersion) counts(pick func(b *bucketStats) (n, e float64), out []bucketCount) []bucketCount {
	wins := d.curWins + d.prevWins
	if wins == 0 {
		return out
	}
	for i := range d.cur {
		n1, e1 := pick(&d.cur[i])
		n2, e2 := pick(&d.prev[i])
		k := (d.cur[i].instSum + d.prev[i].instSum) / wins
		if n1+n2 > 0 && k > 0 {
			out = append(out, bucketCount{n: n1 + n2, e: e1 + e2, k: k})
		}
	}
	return out
}

// overdispersion returns σ̂², the estimated variance of an instance's log event rate, and
// the degrees of freedom ν of the estimate; ok is false when the buckets cannot tell (too
// few buckets, or no event at all).
func overdispersion(bs []bucketCount) (sigma2 float64, nu int, ok bool) {
	if len(bs) < minDispersionBuckets {
		return 0, 0, false
	}
	var N, E float64
	for _, b := range bs {
		N += b.n
		E += b.e
	}
	p := E / N
	if !(p > 0 && p < 1) {
		return 0, 0, false
	}
	var x2, s float64
	for _, b := range bs {
		mu := b.n * p
		d := b.e - mu
		x2 += d * d / (mu * (1 - p))
		s += mu / (b.k * (1 - p))
	}
	nu = len(bs) - 1
	return max(0, (x2-float64(nu))/s), nu, true
}

// cdfDispersion returns the largest per-instance standard deviation of the latency CDF over
// the bucket edges of the buckets' histograms (the same Pearson moment estimate on the
// counts below each edge) and the degrees of freedom; ok as for overdispersion.
func (d *dispersion) cdfDispersion() (sd float64, nu int, ok bool) {
	var hs []*proto.Histogram
	var ks []float64
	wins := d.curWins + d.prevWins
	if wins == 0 {
		return 0, 0, false
	}
	for i := range d.cur {
		k := (d.cur[i].instSum + d.prev[i].instSum) / wins
		h := new(proto.Histogram)
		h.CopyFrom(&d.cur[i].hist)
		h.Merge(&d.prev[i].hist)
		if h.Count > 0 && k > 0 {
			hs = append(hs, h)
			ks = append(ks, k)
		}
	}
	if len(hs) < minDispersionBuckets {
		return 0, 0, false
	}
	lo, hi := math.MaxInt, math.MinInt
	for _, h := range hs {
		if len(h.Positive.Counts) > 0 {
			lo = min(lo, int(h.Positive.Offset))
			hi = max(hi, int(h.Positive.Offset)+len(h.Positive.Counts))
		}
	}
	bs := make([]bucketCount, len(hs))
	below := make([]float64, len(hs))
	for j, h := range hs {
		below[j] = float64(h.Count - h.Positive.Total())
	}
	var worst float64
	for i := lo; i < hi; i++ {
		for j, h := range hs {
			bs[j] = bucketCount{n: float64(h.Count), e: below[j], k: ks[j]}
			below[j] += float64(bucketAt(&h.Positive, i))
		}
		if v, _, ok := overdispersion(bs); ok {
			// σ̂² is the variance of the log odds-like rate; on the CDF scale it is
			// F²·σ̂² (the rate below the edge is F): take the CDF's own spread.
			var N, E float64
			for _, b := range bs {
				N += b.n
				E += b.e
			}
			f := E / N
			worst = max(worst, f*math.Sqrt(v))
		}
	}
	return worst, len(hs) - 1, true
}

// luckMargin returns exp(t·σ·sqrt(1/kB + 1/kA)) with t the Student quantile at 1 − a with ν
// degrees of freedom (the normal quantile when ν is 0: σ assumed, not estimated).
func luckMargin(sigma float64, nu int, a float64, kA, kB int) float64 {
	return math.Exp(luckQuantile(nu, a) * sigma * math.Sqrt(1/float64(max(kB, 1))+1/float64(max(kA, 1))))
}

// luckQuantile returns the one-sided quantile at 1 − a: Student's t with ν degrees of
// freedom, or the normal's when ν is 0.
func luckQuantile(nu int, a float64) float64 {
	z := math.Sqrt2 * math.Erfinv(1-2*a)
	if nu <= 0 {
		return z
	}
	return studentT(z, float64(nu))
}

// studentT returns Student's t quantile with ν degrees of freedom at the probability whose
// normal quantile is z, by the Cornish–Fisher expansion (Abramowitz & Stegun 26.7.5); it errs
// by under 1 % for ν ≥ 3 at the tail probabilities herd uses, upwards (conservative) for
// smaller ν.
func studentT(z, nu float64) float64 {
	z2 := z * z
	g1 := (z2 + 1) * z / 4
	g2 := ((5*z2+16)*z2 + 3) * z / 96
	g3 := (((3*z2+19)*z2+17)*z2 - 15) * z / 384
	g4 := ((((79*z2+776)*z2+1482)*z2-1920)*z2 - 945) * z / 92160
	return z + g1/nu + g2/(nu*nu) + g3/(nu*nu*nu) + g4/(nu*nu*nu*nu)
}
