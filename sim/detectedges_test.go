package sim

import (
	"testing"
	"time"
)

func TestBenchDetectEdges(t *testing.T) {
	t.Parallel()
	rep, err := BenchDetect(DetectConfig{Trials: 10, Duration: time.Minute, Workers: 2,
		Scenarios: []string{"edges-aa", "edges-fanout-x5", "edges-downstream-x3"}})
	if err != nil {
		t.Fatalf("BenchDetect: got %v; want no error", err)
	}
	for _, r := range rep.Results {
		t.Logf("%s at %g: %d/%d rollbacks, median %.2f s, decided by %v", r.Scenario, r.Share, r.Rollbacks, r.Trials, r.MedianSeconds, r.Decisive)
		switch r.Scenario {
		case "edges-aa":
			if r.Rollbacks > 1 {
				t.Errorf("edges-aa at %g: got %d/10 rollbacks; want ≤ 1", r.Share, r.Rollbacks)
			}
		case "edges-fanout-x5":
			if r.Rollbacks != 10 || r.Decisive["edge_fanout payments"] != 10 || r.P90Seconds > 3 {
				t.Errorf("edges-fanout-x5 at %g: got %d/10 rollbacks by %v, p90 %.2f s; want 10/10 by edge_fanout payments within 3 s",
					r.Share, r.Rollbacks, r.Decisive, r.P90Seconds)
			}
		case "edges-downstream-x3":
			if r.Rollbacks != 10 || r.Decisive["edge_errors payments"] != 10 {
				t.Errorf("edges-downstream-x3 at %g: got %d/10 rollbacks by %v; want 10/10 by edge_errors payments", r.Share, r.Rollbacks, r.Decisive)
			}
		}
	}
}
