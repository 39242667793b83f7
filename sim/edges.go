package sim

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// Edge is one outbound dependency of a simulated group: every request of the group calls
// Callee PerRequest times on average (the integer part always, the fraction by chance), each
// call failing with probability ErrorRate after a log-normal latency.
type Edge struct {
	Callee     string
	PerRequest float64
	ErrorRate  float64
	// Latency is log-normal with this median and 99th percentile (0 < median ≤ p99).
	LatencyMedian, LatencyP99 time.Duration
}

// validate checks an edge's spec.
func (e *Edge) validate() error {
	if err := proto.ValidService(e.Callee); err != nil {
		return err
	}
	if !(e.PerRequest >= 0) || e.PerRequest > 1000 {
		return fmt.Errorf("edge to %s: %g calls per request is not in [0, 1000]", e.Callee, e.PerRequest)
	}
	if !(e.ErrorRate >= 0 && e.ErrorRate <= 1) {
		return fmt.Errorf("edge to %s: error rate %g is not in [0, 1]", e.Callee, e.ErrorRate)
	}
	if e.LatencyMedian <= 0 || e.LatencyP99 < e.LatencyMedian {
		return fmt.Errorf("edge to %s: latency median %s and p99 %s must satisfy 0 < median ≤ p99", e.Callee, e.LatencyMedian, e.LatencyP99)
	}
	return nil
}

// edgeKnobs are a group's edges (its service's calls) and their live knobs, in one order.
type edgeKnobs struct {
	spec   []Edge
	fanout []atomic.Uint64 // calls-per-request factor, float64 bits
	errPPM []atomic.Int64  // error rate, parts per million
}

func (k *edgeKnobs) init(edges []Edge) error {
	for i := range edges {
		if err := edges[i].validate(); err != nil {
			return err
		}
	}
	k.spec = edges
	k.fanout = make([]atomic.Uint64, len(edges))
	k.errPPM = make([]atomic.Int64, len(edges))
	for i, e := range edges {
		k.fanout[i].Store(math.Float64bits(1))
		k.errPPM[i].Store(int64(math.Round(e.ErrorRate * 1e6)))
	}
	return nil
}

// edgeIndex returns the index of the group's edge to callee, or -1.
func (g *GroupState) edgeIndex(callee string) int {
	for i := range g.edges.spec {
		if g.edges.spec[i].Callee == callee {
			return i
		}
	}
	return -1
}

// Calls returns the group's outbound edges as configured. The slice is shared: do not modify.
func (g *GroupState) Calls() []Edge { return g.edges.spec }

// SetFanout multiplies the calls per request of the group's edge to callee by f (1 is the
// configured rate); it reports false when the group has no such edge or f is not a finite
// number ≥ 0.
func (g *GroupState) SetFanout(callee string, f float64) bool {
	i := g.edgeIndex(callee)
	if i < 0 || !(f >= 0) || math.IsInf(f, 1) {
		return false
	}
	g.edges.fanout[i].Store(math.Float64bits(f))
	return true
}

// SetEdgeErrorRate sets the failure probability of the group's calls to callee, clamped to
// [0, 1]; it reports false when the group has no such edge.
func (g *GroupState) SetEdgeErrorRate(callee string, r float64) bool {
	i := g.edgeIndex(callee)
	if i < 0 {
		return false
	}
	if !(r > 0) {
		r = 0
	}
	g.edges.errPPM[i].Store(int64(math.Round(min(r, 1) * 1e6)))
	return true
}

// EdgeErrorRate returns the failure probability of the group's calls to callee (0 if none).
func (g *GroupState) EdgeErrorRate(callee string) float64 {
	if i := g.edgeIndex(callee); i >= 0 {
		return float64(g.edges.errPPM[i].Load()) / 1e6
	}
	return 0
}

// withCalls returns observe extended with the calls every request makes along the group's
// edges, recorded on in's edge instruments.
func withCalls(in *instance, rng *rand.Rand, observe func(time.Duration, bool)) func(time.Duration, bool) {
	g := in.g
	type live struct {
		callee string
		k, err float64
		m      traffic.LatencyModel
	}
	es := make([]live, len(g.edges.spec))
	for i, e := range g.edges.spec {
		es[i] = live{callee: e.Callee, k: e.PerRequest * math.Float64frombits(g.edges.fanout[i].Load()),
			err: float64(g.edges.errPPM[i].Load()) / 1e6, m: traffic.LogNormal(e.LatencyMedian, e.LatencyP99, 1)}
	}
	return func(d time.Duration, failed bool) {
		observe(d, failed)
		for _, e := range es {
			n := int(e.k)
			if rng.Float64() < e.k-float64(n) {
				n++
			}
			for range n {
				lat := time.Duration(e.m.Draw(rng) * float64(time.Second))
				in.edges.Observe(e.callee, "", lat, rng.Float64() < e.err)
			}
		}
	}
}

// newEdges returns the edge recorder of an instance of g, or nil when g calls nothing.
func newEdges(g *GroupState, c *ingest.Client) *ingest.Edges {
	if len(g.edges.spec) == 0 {
		return nil
	}
	return c.Edges(ingest.EdgeConfig{})
}

// EdgeID names one edge of one group.
type EdgeID struct {
	Service, Version string
	Edge             proto.EdgeKey
}

// EdgeTotals is what was called on one edge, exactly.
type EdgeTotals struct {
	Calls        uint64 `json:"calls"`
	Errors       uint64 `json:"errors"`
	LatencyCount uint64 `json:"latency_count"`
}

// EdgeSums totals edges by group and edge: a Fleet's from the batches it published
// (Fleet.EdgeTotals), a reader's from closed windows (AddWindow). Over an exact pipeline the
// two are equal.
type EdgeSums map[EdgeID]EdgeTotals

// AddWindow adds the edge series of a closed window.
func (s EdgeSums) AddWindow(w *proto.Window) {
	for i := range w.Series {
		ws := &w.Series[i]
		s.add(w.Service, w.Version, ws.Name, ws.Labels, ws.Value, ws.Count)
	}
}

// addBatch adds the edge series of a published batch.
func (s EdgeSums) addBatch(b *proto.Batch) {
	for i := range b.Series {
		bs := &b.Series[i]
		s.add(b.Service, b.Version, bs.Name, bs.Labels, bs.Value, bs.Hist.Count)
	}
}

// add adds one series if it is an edge series.
func (s EdgeSums) add(service, version, name string, labels []proto.Label, value float64, observations uint64) {
	k, ok := proto.EdgeOf(name, labels)
	if !ok {
		return
	}
	id := EdgeID{service, version, k}
	et := s[id]
	switch name {
	case proto.SeriesEdgeCalls:
		et.Calls += uint64(value)
	case proto.SeriesEdgeErrors:
		et.Errors += uint64(value)
	case proto.SeriesEdgeLatency:
		et.LatencyCount += observations
	}
	s[id] = et
}

// EdgeTotals returns the exact totals of every edge the fleet's published batches carried.
// The map is the caller's.
func (f *Fleet) EdgeTotals() EdgeSums {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.edgeSums)
}
