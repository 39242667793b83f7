package web

import (
	"fmt"
	"math"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

func edgeWindow(service, version string, endMs int64, requests float64, calls map[string]float64) *proto.Window {
	w := &proto.Window{Service: service, Version: version, StartMs: endMs - 250, EndMs: endMs,
		Series: []proto.WindowSeries{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: requests}}}
	for callee, n := range calls {
		w.Series = append(w.Series, proto.WindowSeries{Name: proto.SeriesEdgeCalls, Kind: proto.KindCounter, Value: n,
			Labels: proto.EdgeLabels(proto.EdgeKey{Callee: callee})})
	}
	return w
}

// TestFlowGraphRates: a group's edges decay with its requests when its windows stop naming
// them, so calls per request stay what they were; the edge bound is counted.
func TestFlowGraphRates(t *testing.T) {
	set := metrics.NewSet()
	g := newFlowGraph(set)
	end := int64(1_700_000_000_000)
	for range 40 {
		end += 250
		g.addWindow(edgeWindow("checkout", "1.5.0", end, 100, map[string]float64{"payments": 500}), 100, 0)
	}
	gr := g.groups[[2]string{"checkout", "1.5.0"}]
	if got := gr.edges[proto.EdgeKey{Callee: "payments"}].perSec / gr.rate.perSec; math.Abs(got-5) > 0.01 {
		t.Fatalf("calls per request: got %.3f; want 5", got)
	}
	for range 8 {
		end += 250
		g.addWindow(edgeWindow("checkout", "1.5.0", end, 0, nil), 0, 0)
	}
	e := gr.edges[proto.EdgeKey{Callee: "payments"}]
	if e.perSec > 0.5*2000 || math.Abs(e.perSec/gr.rate.perSec-5) > 0.01 {
		t.Errorf("after the group stopped: %.0f calls/s at %.3f per request; want decayed, still 5 per request", e.perSec, e.perSec/gr.rate.perSec)
	}
	calls := map[string]float64{}
	for i := range maxGraphEdges + 10 {
		calls[fmt.Sprintf("c%d", i)] = 1
	}
	g.addWindow(edgeWindow("flood", "1", end, 1, calls), 1, 0)
	if got := g.refused.Get(); got != 11 { // the bound counts checkout's edge too
		t.Errorf("refused edges: got %d; want 11", got)
	}
}
