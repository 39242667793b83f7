package sim

import (
	"math/rand/v2"
	"slices"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// Request-flow scenarios of BenchDetect: the bench service calls three dependencies (the
// shape of a mid-tier service of a generated graph: 1, 3 and 0.3 calls per request, error
// ratios 0.5–2 %, latencies a few ms); the canary's RED stays the baseline's.
//
//   - edges-aa: A/A with edges, canary instances spread as in aa-spread, bursts as in
//     aa-outage (both versions' calls fail 20× and slow down 3× for 15 s, twice);
//   - edges-fanout-x2, edges-fanout-x5: the canary calls the first dependency 2× / 5× as
//     often per request;
//   - edges-downstream-x3: the canary's calls to the first dependency fail 3× as often.

// benchEdgeSpecs are the bench service's dependencies.
var benchEdgeSpecs = []struct {
	callee     string
	perRequest float64
	errRatio   float64
	median     float64 // seconds
}{
	{"payments", 1, 0.02, 0.012},
	{"inventory", 3, 0.005, 0.004},
	{"audit", 0.3, 0.01, 0.002},
}

// edgeScenario is how a flow scenario's canary calls its first dependency.
type edgeScenario struct {
	on        bool
	fanout    float64 // calls-per-request multiplier
	errFactor float64 // call error-ratio multiplier
}

// edgeScenarioByName sets s for a request-flow scenario; false if name is not one.
func edgeScenarioByName(name string, s *detectScenario) bool {
	s.edge = edgeScenario{on: true, fanout: 1, errFactor: 1}
	switch name {
	case "edges-aa":
		s.regression, s.spread, s.outage = false, true, true
	case "edges-fanout-x2":
		s.edge.fanout = 2
	case "edges-fanout-x5":
		s.edge.fanout = 5
	case "edges-downstream-x3":
		s.edge.errFactor = 3
	default:
		s.edge = edgeScenario{}
		return false
	}
	return true
}

// benchEdges generates the edge series of one version's windows: a window group per edge
// whose "requests" are the calls.
type benchEdges struct {
	groups []*traffic.WindowGroup
}

// newBenchEdges builds the edges of a version serving perWindow requests per window; canary
// applies the scenario's regression to the first edge.
func newBenchEdges(sc detectScenario, version string, perWindow float64, canary bool) *benchEdges {
	if !sc.edge.on {
		return nil
	}
	e := &benchEdges{}
	for i, spec := range benchEdgeSpecs {
		m := traffic.LatencyModel{Median: spec.median, Sigma: 0.4, Scale: 1}
		b := traffic.NewBins(m)
		g := traffic.NewWindowGroup(spec.callee, version, b)
		k, errRatio := spec.perRequest, spec.errRatio
		if canary && i == 0 {
			k *= sc.edge.fanout
			errRatio = min(errRatio*sc.edge.errFactor, 1)
		}
		slow := m
		slow.Scale = 3
		g.Means[traffic.Normal] = b.Means(m, perWindow*k, nil)
		g.Means[traffic.Outage] = b.Means(slow, perWindow*k, nil)
		g.ErrorRate[traffic.Normal], g.ErrorRate[traffic.Outage] = errRatio, min(errRatio*20, 1)
		e.groups = append(e.groups, g)
	}
	return e
}

// decorate returns w with the edges' series of the same interval added, their calls drawn
// in proportion to the window's requests (expected: its mean requests at load 1). The
// result shares the edge groups' histograms until their next decorate.
func (e *benchEdges) decorate(r *rand.Rand, w *proto.Window, expected float64, st traffic.Regime) *proto.Window {
	if e == nil {
		return w
	}
	out := *w
	out.Series = slices.Clone(w.Series)
	load := w.Find(proto.SeriesRequests).Value / max(expected, 1)
	for i, g := range e.groups {
		ew := g.Fill(r, w.StartMs, w.EndMs, load, st, 0)
		ls := proto.EdgeLabels(proto.EdgeKey{Callee: benchEdgeSpecs[i].callee})
		lat := ew.Series[2]
		lat.Name, lat.Labels = proto.SeriesEdgeLatency, ls
		out.Series = append(out.Series,
			proto.WindowSeries{Name: proto.SeriesEdgeCalls, Labels: ls, Kind: proto.KindCounter, Value: ew.Series[0].Value},
			proto.WindowSeries{Name: proto.SeriesEdgeErrors, Labels: ls, Kind: proto.KindCounter, Value: ew.Series[1].Value},
			lat)
	}
	return &out
}
