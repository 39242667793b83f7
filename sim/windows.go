package sim

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/herd-dev/herd/proto"
)

// bins are the coarse latency bins of simulated windows: bin j holds [edge_j, edge_j+1) and
// its counts go to herd bucket index idx_j, so thresholds frozen at bucket edges are exact.
type bins struct {
	edges []float64 // lower edges (herd bucket lower bounds), ascending; bin 0 is [0, edges[0])
	idx   []int     // bucket index per bin (len(edges)+1)
	lo    int       // lowest index
	width int       // dense histogram width
}

// newBins returns bins fine around the body and tail of base.
func newBins(base latencyModel) *bins {
	var vs []float64
	z := []float64{-2.5, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.28, 1.64, 2, 2.33, 2.58, 3.09, 3.7}
	for _, zz := range z {
		vs = append(vs, base.median*math.Exp(base.sigma*zz))
	}
	vs = append(vs, 0.3, 0.35, 0.4, 0.5, 0.7, 1, 2)
	b := &bins{}
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
func (b *bins) probs(m latencyModel) []float64 {
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

// means returns per-bin mean counts per window for k instances sharing perWindow requests,
// instance i having latency scale scales[i] (nil: all 1) under model m.
func (b *bins) means(m latencyModel, perWindow float64, scales []float64) []float64 {
	if scales == nil {
		p := b.probs(m)
		for j := range p {
			p[j] *= perWindow
		}
		return p
	}
	out := make([]float64, len(b.idx))
	for _, s := range scales {
		mm := m
		mm.scale *= s
		for j, p := range b.probs(mm) {
			out[j] += p * perWindow / float64(len(scales))
		}
	}
	return out
}

// windowGroup generates one group's closed windows of the RED triple, as the rollup would
// publish them. It reuses one window: the caller must be done with a window before the next.
type windowGroup struct {
	w     proto.Window
	hist  proto.Histogram
	means [2][]float64 // per-bin mean requests per window at load 1: [normal, outage]
	errP  [2]float64   // error probability: [normal, outage]
}

func newWindowGroup(service, version string, b *bins) *windowGroup {
	g := &windowGroup{}
	g.w = proto.Window{Service: service, Version: version, Series: []proto.WindowSeries{
		{Name: proto.SeriesRequests, Kind: proto.KindCounter},
		{Name: proto.SeriesErrors, Kind: proto.KindCounter},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram},
	}}
	g.hist.Positive.Offset = int32(b.lo)
	g.hist.Positive.Counts = make([]uint64, b.width)
	g.w.Series[2].Hist = &g.hist
	return g
}

// fill draws one window: Poisson counts per latency bin and Poisson errors. load scales the
// means; st selects normal (0) or outage (1); errFrac, when > 0, replaces the error
// probability (crash loops).
func (g *windowGroup) fill(r *rand.Rand, b *bins, startMs, endMs int64, load float64, st int, errFrac float64) *proto.Window {
	clear(g.hist.Positive.Counts)
	var n uint64
	var sum float64
	for j, mean := range g.means[st] {
		c := uint64(poisson(r, mean*load))
		if c == 0 {
			continue
		}
		i := b.idx[j]
		g.hist.Positive.Counts[i-b.lo] += c
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
