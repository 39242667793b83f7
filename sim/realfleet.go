package sim

import (
	"math"
	"math/rand/v2"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// realInstance is one simulated instance.
type realInstance struct {
	bucket    int
	startSec  float64 // simulated seconds since t0 when it (re)started
	errRate   float64 // its error ratio when warm and not bursting
	normal    []float64
	cold      []float64 // bin probabilities when cold (nil: same as normal)
	burstTill float64   // end of its current burst, seconds since t0
	burstErr  float64
	shares    [3]float64 // endpoint shares (endpoint-mix scenario)
}

// realGroup generates one group's windows from its instances.
type realGroup struct {
	service, version string
	inst             []*realInstance
	perInstRPS       float64
	bins             *traffic.Bins
	// Per partition (bucket×2 + young): bin means and error mean of the current window.
	means [2 * proto.NumBuckets][]float64
	errs  [2 * proto.NumBuckets]float64
	// Per partition drawn counts.
	counts [2 * proto.NumBuckets][]uint64
	n, e   [2 * proto.NumBuckets]float64
	// The published window and its series, reused (the detector keeps none of it).
	w          proto.Window
	sets       [numSets]seriesSet
	buckets    [proto.NumBuckets][]proto.WindowSeries
	bucketInst [proto.NumBuckets]int
	values     []float64 // proto.BucketValue of each dense index from bins.Lo()
	// noBuckets leaves Buckets out of the windows (the canary's: nothing reads them);
	// coarse draws the instances by half only and leaves Buckets out too (the baseline's
	// during a comparison: the margins were set from the history before it; this saves
	// most of the simulation's draws).
	noBuckets, coarse bool
}

func newRealGroup(service, version string, bins *traffic.Bins) *realGroup {
	g := &realGroup{service: service, version: version, bins: bins}
	for p := range g.means {
		g.means[p] = make([]float64, bins.Len())
		g.counts[p] = make([]uint64, bins.Len())
	}
	return g
}

// fill draws the window [startSec, startSec+width) at the given load and returns it.
func (g *realGroup) fill(r *rand.Rand, t0ms int64, startSec, width, load float64, sc *realScenario) *proto.Window {
	for p := range g.means {
		clear(g.means[p])
		g.errs[p] = 0
	}
	instances, warm := 0, 0
	var bucketInst [proto.NumBuckets]int
	started := 0
	for _, in := range g.inst {
		age := startSec + width - in.startSec
		if age <= 0 {
			continue
		}
		instances++
		if age <= width {
			started++
		}
		bucket := in.bucket
		if g.coarse {
			bucket -= bucket % (proto.NumBuckets / 2) // halves only
		}
		// As the rollup merges an agent's 250 ms batches: the instance's traffic while it was
		// younger than the rollup's warm-up goes to its young partition, the rest to its warm
		// one (each drawn cold or not at its middle's age).
		from := max(startSec, in.startSec)
		warmAt := in.startSec + realRollupWarmupSecs
		if age >= realRollupWarmupSecs {
			warm++
			bucketInst[in.bucket]++
		}
		er := in.errRate
		if sc.bursts {
			if in.burstTill <= startSec && r.Float64() < width*sc.burstPerSec {
				in.burstTill, in.burstErr = startSec+realBurstSecs, 0.2+0.4*r.Float64()
			}
			if in.burstTill > startSec {
				er = in.burstErr
			}
		}
		for _, seg := range [2][2]float64{{from, min(warmAt, startSec+width)}, {max(from, warmAt), startSec + width}} {
			if seg[1] <= seg[0] {
				continue
			}
			p := 2 * bucket
			if seg[0] < warmAt {
				p++ // young
			}
			rate := g.perInstRPS * (seg[1] - seg[0]) * load
			probs := in.normal
			if in.cold != nil && (seg[0]+seg[1])/2-in.startSec < sc.coldSecs {
				probs = in.cold
			}
			for j, q := range probs {
				g.means[p][j] += rate * q
			}
			g.errs[p] += rate * min(er, 1)
		}
	}
	for p := range g.means {
		g.n[p], g.e[p] = 0, 0
		clear(g.counts[p])
		for j, m := range g.means[p] {
			if m > 0 {
				c := uint64(traffic.Poisson(r, m))
				g.counts[p][j] = c
				g.n[p] += float64(c)
			}
		}
		if g.errs[p] > 0 && g.n[p] > 0 {
			g.e[p] = binomial(r, g.n[p], g.errs[p]/sumOf(g.means[p]))
		}
	}
	startMs := t0ms + int64(math.Round(startSec*1000))
	endMs := t0ms + int64(math.Round((startSec+width)*1000))
	// Buckets hold the warm partitions, halves the sums of buckets, Warm the sum of halves,
	// Series Warm plus the young partitions.
	for b := range proto.NumBuckets {
		g.set(setBucket0+b, nil, 2*b)
	}
	g.set(setHalf0, g.sets[setBucket0:setBucket0+proto.NumBuckets/2])
	g.set(setHalf0+1, g.sets[setBucket0+proto.NumBuckets/2:setBucket0+proto.NumBuckets])
	g.set(setWarm, g.sets[setHalf0:setHalf0+2])
	young := make([]int, 0, proto.NumBuckets)
	for b := range proto.NumBuckets {
		young = append(young, 2*b+1)
	}
	g.set(setAll, g.sets[setWarm:setWarm+1], young...)
	w := &g.w
	*w = proto.Window{
		Service: g.service, Version: g.version, StartMs: startMs, EndMs: endMs, ClosedMs: endMs,
		Instances: instances, InstancesStarted: started,
		WarmupMs: realRollupWarmupSecs * 1000, SplitSeries: splitAll, WarmInstances: warm,
		Series: g.sets[setAll].ss[:], Warm: g.sets[setWarm].ss[:],
		Buckets: g.buckets[:], BucketInstances: g.bucketInst[:],
	}
	for h := range 2 {
		w.Halves[h] = g.sets[setHalf0+h].ss[:]
	}
	for b := range proto.NumBuckets {
		w.HalfInstances[b/(proto.NumBuckets/2)] += bucketInst[b]
		g.bucketInst[b] = bucketInst[b]
		g.buckets[b] = g.sets[setBucket0+b].ss[:]
	}
	if g.noBuckets || g.coarse {
		w.Buckets, w.BucketInstances = nil, nil
	}
	return w
}

var splitAll = []string{"*"}

// Indexes of realGroup.sets.
const (
	setAll = iota
	setWarm
	setHalf0
	setBucket0 = setHalf0 + 2
	numSets    = setBucket0 + proto.NumBuckets
)

// seriesSet is one published RED triple of a window, reused from window to window.
type seriesSet struct {
	ss     [3]proto.WindowSeries
	h      proto.Histogram
	n, e   float64
	counts []uint64 // dense, from bins.Lo()
}

// set fills sets[i] with the sum of the sets from and the partitions parts.
func (g *realGroup) set(i int, from []seriesSet, parts ...int) {
	st := &g.sets[i]
	b := g.bins
	lo := b.Lo()
	if st.counts == nil {
		st.counts = make([]uint64, b.Width())
	}
	clear(st.counts)
	st.n, st.e = 0, 0
	for k := range from {
		f := &from[k]
		st.n += f.n
		st.e += f.e
		for j, c := range f.counts {
			st.counts[j] += c
		}
	}
	for _, p := range parts {
		if g.n[p] == 0 && g.e[p] == 0 {
			continue
		}
		st.n += g.n[p]
		st.e += g.e[p]
		for j, c := range g.counts[p] {
			st.counts[b.Index(j)-lo] += c
		}
	}
	if g.values == nil {
		g.values = make([]float64, b.Width())
		for j := range g.values {
			g.values[j] = proto.BucketValue(lo + j)
		}
	}
	var sum float64
	for j, c := range st.counts {
		if c > 0 {
			sum += float64(c) * g.values[j]
		}
	}
	st.h = proto.Histogram{Count: uint64(st.n), Sum: sum, Positive: proto.Buckets{Offset: int32(lo), Counts: st.counts}}
	st.ss = [3]proto.WindowSeries{
		{Name: proto.SeriesErrors, Kind: proto.KindCounter, Value: st.e},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: &st.h, Count: uint64(st.n), Sum: sum},
		{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: st.n},
	}
}

// newRealInstances draws k instances of a group.
func newRealInstances(r *rand.Rand, sc *realScenario, bins *traffic.Bins, k int, canary bool, startSec float64) []*realInstance {
	out := make([]*realInstance, k)
	for i := range out {
		in := &realInstance{bucket: r.IntN(proto.NumBuckets), startSec: startSec}
		scale := math.Exp(sc.latSpread * r.NormFloat64())
		errMult := math.Exp(sc.errSpread * r.NormFloat64())
		model := func(f float64) []float64 {
			m := traffic.LatencyModel{Median: benchLatencyMedian, Sigma: benchLatencySigma, Scale: scale * f}
			if canary {
				m.TailFrac, m.TailShift = sc.tailFrac, sc.tailShift
			}
			if !sc.mix {
				return bins.Probs(m)
			}
			return mixProbs(bins, in.mixShares(r, sc), m)
		}
		in.normal = model(1)
		if sc.coldFactor > 0 {
			in.cold = model(sc.coldFactor)
		}
		base := sc.baseErr
		if sc.mix {
			base = 0
			for e, ep := range realEndpoints {
				base += in.shares[e] * ep.errs
			}
		}
		in.errRate = base * errMult
		if canary {
			in.errRate *= sc.errFactor
		}
		out[i] = in
	}
	return out
}

// mixShares draws the instance's endpoint shares once.
func (in *realInstance) mixShares(r *rand.Rand, _ *realScenario) [3]float64 {
	if in.shares[0] > 0 {
		return in.shares
	}
	var sum float64
	for e, ep := range realEndpoints {
		in.shares[e] = ep.share * math.Exp(0.2*r.NormFloat64())
		sum += in.shares[e]
	}
	for e := range in.shares {
		in.shares[e] /= sum
	}
	return in.shares
}

// mixProbs returns the bin probabilities of the endpoint mix with the given shares, each
// endpoint log-normal around its median with m's sigma, scale and tail.
func mixProbs(bins *traffic.Bins, shares [3]float64, m traffic.LatencyModel) []float64 {
	out := make([]float64, bins.Len())
	for e, ep := range realEndpoints {
		mm := m
		mm.Median = ep.median
		for j, p := range bins.Probs(mm) {
			out[j] += shares[e] * p
		}
	}
	return out
}
