package traffic

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/herd-dev/herd/proto"
)

// Bins are the coarse latency bins of simulated windows: bin j holds the latencies in
// [edge_j, edge_j+1) and its counts go to one herd histogram bucket, whose lower bound is
// edge_j, so that thresholds frozen at bucket edges see exact counts. Bins are read-only once
// built and safe for concurrent use.
type Bins struct {
	edges []float64 // lower edges (herd bucket lower bounds), ascending; bin 0 is [0, edges[0])
	idx   []int     // bucket index per bin (len(edges)+1)
	lo    int       // lowest index
	width int       // dense histogram width
}

// NewBins returns bins fine around the body and the tail of base (from 2.5 log-sds below its
// median to 3.7 above), plus fixed edges from 0.3 s to 2 s for slow tails.
func NewBins(base LatencyModel) *Bins {
	var vs []float64
	z := []float64{-2.5, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.28, 1.64, 2, 2.33, 2.58, 3.09, 3.7}
	for _, zz := range z {
		vs = append(vs, base.Median*math.Exp(base.Sigma*zz))
	}
	vs = append(vs, 0.3, 0.35, 0.4, 0.5, 0.7, 1, 2)
	b := &Bins{}
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

// Lo returns the lowest herd bucket index of the bins; Width the dense width from it that
// holds every bin's bucket.
func (b *Bins) Lo() int { return b.lo }

// Width returns the dense histogram width of the bins (see Lo).
func (b *Bins) Width() int { return b.width }

// Index returns the herd bucket index of bin j.
func (b *Bins) Index(j int) int { return b.idx[j] }

// Len returns the number of bins.
func (b *Bins) Len() int { return len(b.idx) }

// Probs returns the probability of each bin under m, in a new slice of b.Len() that sums to 1.
func (b *Bins) Probs(m LatencyModel) []float64 {
	p := make([]float64, len(b.idx))
	prev := 0.0
	for j, e := range b.edges {
		c := m.CDF(e)
		p[j] = c - prev
		prev = c
	}
	p[len(p)-1] = 1 - prev
	return p
}

// Means returns the mean request count per bin and window, in a new slice, of instances
// sharing perWindow requests per window evenly under model m: with scales nil they all
// follow m; otherwise there are len(scales) instances and instance i has its latency
// multiplied by scales[i].
func (b *Bins) Means(m LatencyModel, perWindow float64, scales []float64) []float64 {
	if scales == nil {
		p := b.Probs(m)
		for j := range p {
			p[j] *= perWindow
		}
		return p
	}
	out := make([]float64, len(b.idx))
	for _, s := range scales {
		mm := m
		mm.Scale *= s
		for j, p := range b.Probs(mm) {
			out[j] += p * perWindow / float64(len(scales))
		}
	}
	return out
}

// Regime selects which of a WindowGroup's traffic settings a window is drawn with.
type Regime int

const (
	// Normal is the group's ordinary traffic.
	Normal Regime = iota
	// Outage is the traffic during an outage that hits the whole service.
	Outage
)

// WindowGroup generates one group's closed windows of the RED triple (requests and errors
// counters, latency histogram) as the rollup would publish them. Set Means and ErrorRate for
// each Regime used before calling Fill.
//
// A WindowGroup reuses one window: the window Fill returns is valid until the next Fill, and
// the caller must not keep or modify it. It is not safe for concurrent use.
type WindowGroup struct {
	// Service and Version name the group in every window.
	Service, Version string
	// Instances and InstancesStarted are copied into every window.
	Instances, InstancesStarted int
	// Means are the mean request counts per bin and window at load 1, per regime: each one
	// has an entry per bin of the group's Bins, as Bins.Means returns them.
	Means [2][]float64
	// ErrorRate is the probability that a request fails, per regime.
	ErrorRate [2]float64

	bins *Bins
	w    proto.Window
	hist proto.Histogram
}

// NewWindowGroup returns a group of service and version whose windows count latencies in b.
func NewWindowGroup(service, version string, b *Bins) *WindowGroup {
	g := &WindowGroup{Service: service, Version: version, bins: b}
	g.w.Series = []proto.WindowSeries{
		{Name: proto.SeriesRequests, Kind: proto.KindCounter},
		{Name: proto.SeriesErrors, Kind: proto.KindCounter},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram},
	}
	g.hist.Positive.Offset = int32(b.lo)
	g.hist.Positive.Counts = make([]uint64, b.width)
	g.w.Series[2].Hist = &g.hist
	return g
}

// Fill draws the group's window [startMs, endMs) from r: a Poisson count per latency bin,
// with means g.Means[reg] multiplied by load, and Poisson errors among those requests (at most
// all of them) with rate g.ErrorRate[reg]. errFrac, when positive, replaces that error rate
// (a crash loop). The window is closed at endMs.
func (g *WindowGroup) Fill(r *rand.Rand, startMs, endMs int64, load float64, reg Regime, errFrac float64) *proto.Window {
	b := g.bins
	clear(g.hist.Positive.Counts)
	var n uint64
	var sum float64
	for j, mean := range g.Means[reg] {
		c := uint64(Poisson(r, mean*load))
		if c == 0 {
			continue
		}
		i := b.idx[j]
		g.hist.Positive.Counts[i-b.lo] += c
		n += c
		sum += float64(c) * proto.BucketValue(i)
	}
	g.hist.Count, g.hist.Sum = n, sum
	p := g.ErrorRate[reg]
	if errFrac > 0 {
		p = errFrac
	}
	e := min(Poisson(r, float64(n)*p), float64(n))
	g.w.Service, g.w.Version = g.Service, g.Version
	g.w.Instances, g.w.InstancesStarted = g.Instances, g.InstancesStarted
	g.w.StartMs, g.w.EndMs, g.w.ClosedMs = startMs, endMs, endMs
	g.w.Series[0].Value = float64(n)
	g.w.Series[1].Value = e
	g.w.Series[2].Count, g.w.Series[2].Sum = n, sum
	return &g.w
}
