package alert

// The simulated windows of the detector's own tests. herd's simulator, package sim, generates
// the same windows for the detector benchmark, but it imports alert, so alert's internal tests
// cannot import it: this is their copy, kept as it was so that their seeded draws do not move.

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/herd-dev/herd/proto"
)

// poisson draws a Poisson(lam) variate: inversion for small means, Hörmann's PTRS
// transformed rejection (exact) for lam ≥ 10.
func poisson(r *rand.Rand, lam float64) float64 {
	if !(lam > 0) {
		return 0
	}
	if lam < 10 {
		// Inversion by sequential search.
		p := math.Exp(-lam)
		s, k := p, 0.0
		u := r.Float64()
		for u > s && k < 1000 {
			k++
			p *= lam / k
			s += p
		}
		return k
	}
	slam, loglam := math.Sqrt(lam), math.Log(lam)
	b := 0.931 + 2.53*slam
	a := -0.059 + 0.02483*b
	invAlpha := 1.1239 + 1.1328/(b-3.4)
	vr := 0.9277 - 3.6224/(b-2)
	for {
		u := r.Float64() - 0.5
		v := r.Float64()
		us := 0.5 - math.Abs(u)
		k := math.Floor((2*a/us+b)*u + lam + 0.43)
		if us >= 0.07 && v <= vr {
			return k
		}
		if k < 0 || (us < 0.013 && v > us) {
			continue
		}
		lg, _ := math.Lgamma(k + 1)
		if math.Log(v)+math.Log(invAlpha)-math.Log(a/(us*us)+b) <= -lam+k*loglam-lg {
			return k
		}
	}
}

// latencyModel is the simulated latency distribution: log-normal with the given median and
// log-sd, scaled by scale, with a fraction tailFrac of requests delayed by tailShift seconds.
type latencyModel struct {
	median, sigma, scale, tailFrac, tailShift float64
}

func (m latencyModel) cdf(x float64) float64 {
	f := func(y float64) float64 {
		if y <= 0 {
			return 0
		}
		return 0.5 * math.Erfc(-math.Log(y/(m.median*m.scale))/(m.sigma*math.Sqrt2))
	}
	return (1-m.tailFrac)*f(x) + m.tailFrac*f(x-m.tailShift)
}

// simBins are the coarse latency bins of the simulation: bin j holds [edge_j, edge_j+1) and
// its counts go to herd bucket index idx_j, so thresholds frozen at bucket edges are exact.
type simBins struct {
	edges []float64 // lower edges (herd bucket lower bounds), ascending; bin 0 is [0, edges[0])
	idx   []int     // bucket index per bin (len(edges)+1)
	lo    int       // lowest index
	width int       // dense histogram width
}

func newSimBins(base latencyModel) *simBins {
	var vs []float64
	z := []float64{-2.5, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.28, 1.64, 2, 2.33, 2.58, 3.09, 3.7}
	for _, zz := range z {
		vs = append(vs, base.median*math.Exp(base.sigma*zz))
	}
	vs = append(vs, 0.3, 0.35, 0.4, 0.5, 0.7, 1, 2)
	b := &simBins{}
	seen := map[int]bool{}
	for _, v := range vs {
		i := proto.BucketIndex(v)
		if !seen[i] {
			seen[i] = true
			b.idx = append(b.idx, i)
		}
	}
	slices.Sort(b.idx)
	for _, i := range b.idx {
		b.edges = append(b.edges, proto.BucketLower(i))
	}
	// Bin 0 (below the first edge) goes to the bucket just below it.
	b.idx = append([]int{b.idx[0] - 1}, b.idx...)
	b.lo = b.idx[0]
	b.width = b.idx[len(b.idx)-1] - b.lo + 1
	return b
}

// probs returns the bin probabilities of m.
func (b *simBins) probs(m latencyModel) []float64 {
	p := make([]float64, len(b.idx))
	prev := 0.0
	for j, e := range b.edges {
		c := m.cdf(e)
		p[j] = c - prev
		prev = c
	}
	p[len(p)-1] = 1 - prev
	return p
}

// simGroup generates one group's windows.
type simGroup struct {
	w     proto.Window
	hist  proto.Histogram
	means [2][]float64 // per-bin mean requests per window at load 1: [normal, outage]
	errP  [2]float64   // error probability: [normal, outage]
}

func newSimGroup(version string, bins *simBins) *simGroup {
	g := &simGroup{}
	g.w = proto.Window{Service: "bench", Version: version, Series: []proto.WindowSeries{
		{Name: proto.SeriesRequests, Kind: proto.KindCounter},
		{Name: proto.SeriesErrors, Kind: proto.KindCounter},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram},
	}}
	g.hist.Positive.Offset = int32(bins.lo)
	g.hist.Positive.Counts = make([]uint64, bins.width)
	g.w.Series[2].Hist = &g.hist
	return g
}

// fill draws one window: load scales the means; st selects normal (0) or outage (1);
// errFrac, when > 0, replaces the error probability (crash loops).
func (g *simGroup) fill(r *rand.Rand, bins *simBins, startMs, endMs int64, load float64, st int, errFrac float64) *proto.Window {
	clear(g.hist.Positive.Counts)
	var n uint64
	var sum float64
	for j, mean := range g.means[st] {
		c := uint64(poisson(r, mean*load))
		if c == 0 {
			continue
		}
		i := bins.idx[j]
		g.hist.Positive.Counts[i-bins.lo] += c
		n += c
		sum += float64(c) * proto.BucketValue(i)
	}
	g.hist.Count, g.hist.Sum = n, sum
	p := g.errP[st]
	if errFrac > 0 {
		p = errFrac
	}
	e := min(poisson(r, float64(n)*p), float64(n))
	g.w.StartMs, g.w.EndMs, g.w.ClosedMs = startMs, endMs, endMs
	g.w.Series[0].Value = float64(n)
	g.w.Series[1].Value = e
	g.w.Series[2].Count, g.w.Series[2].Sum = n, sum
	return &g.w
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
