package graph

import (
	"testing"
	"time"

	"github.com/herd-dev/herd/sim"
)

func TestBenchServices(t *testing.T) {
	t.Parallel()
	g, err := New(BenchConfig(1))
	if err != nil {
		t.Fatal(err)
	}
	svcs := g.BenchServices()
	callers := 0
	for _, s := range g.Services {
		if len(g.Calls[s.Name]) > 0 {
			callers++
		}
	}
	if len(svcs) != callers || callers < 25 {
		t.Fatalf("got %d bench services of %d callers; want all of them, at least 25", len(svcs), callers)
	}
	for i, s := range svcs {
		if i > 0 && svcs[i-1].Name >= s.Name || s.RPS <= 0 || s.Instances < 1 || len(s.Calls) == 0 {
			t.Errorf("bench service %d: %+v; want sorted names, a rate, instances and calls", i, s)
		}
	}
}

// TestBenchDetectGraph runs a few short trials of every graph scenario: A/A stays quiet, the
// regressions are found on the regressed edge's tests.
func TestBenchDetectGraph(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs simulated trials")
	}
	rep, err := BenchDetect(BenchConfig(1), sim.GraphDetectConfig{Detect: sim.DetectConfig{Trials: 8, Duration: 2 * time.Minute, Workers: 2, Shares: []float64{0.2}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(sim.GraphScenarios) {
		t.Fatalf("got %d results; want one per scenario", len(rep.Results))
	}
	for _, r := range rep.Results {
		t.Logf("%s: %d/%d rollbacks, median %.2f s, decided by %v", r.Scenario, r.Rollbacks, r.Trials, r.MedianSeconds, r.Decisive)
		switch r.Scenario {
		case "graph-aa":
			if r.Rollbacks > 1 {
				t.Errorf("graph-aa: got %d/8 rollbacks; want ≤ 1", r.Rollbacks)
			}
		case "graph-fanout-x5":
			if r.Rollbacks != 8 || r.Decisive["edge_fanout"] != 8 {
				t.Errorf("graph-fanout-x5: got %d/8 rollbacks by %v; want 8 by edge_fanout", r.Rollbacks, r.Decisive)
			}
		case "graph-downstream-x3":
			if r.Rollbacks < 4 || r.Decisive["edge_errors"]+r.Decisive["edge_blast"] != r.Rollbacks {
				t.Errorf("graph-downstream-x3: got %d/8 rollbacks by %v; want most, by edge_errors or edge_blast", r.Rollbacks, r.Decisive)
			}
		}
	}
	if _, err := BenchDetect(BenchConfig(1), sim.GraphDetectConfig{Scenarios: []string{"aa"}}); err == nil {
		t.Error("BenchDetect with an unknown scenario: got no error")
	}
}
