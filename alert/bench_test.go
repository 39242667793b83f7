package alert

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestBenchSmall(t *testing.T) {
	rep, err := Bench(BenchConfig{Trials: 10, Duration: time.Minute, Scenarios: []string{"aa", "crash-loop", "errors-x10"}, Workers: 2})
	if err != nil {
		t.Fatalf("Bench: got %v; want no error", err)
	}
	if got := len(rep.Results); got != 6 {
		t.Fatalf("results: got %d; want 3 scenarios × 2 shares", got)
	}
	for _, r := range rep.Results {
		switch r.Scenario {
		case "aa":
			if r.Rollbacks > 1 {
				t.Errorf("aa at %g: got %d/10 rollbacks; want ≤ 1", r.Share, r.Rollbacks)
			}
		case "crash-loop":
			if r.Rollbacks != 10 || r.P90Seconds > 0.5 {
				t.Errorf("crash-loop at %g: got %d/10 rollbacks, p90 %.2f s; want 10/10 within 0.5 s", r.Share, r.Rollbacks, r.P90Seconds)
			}
		case "errors-x10":
			if r.Rollbacks != 10 || r.MedianSeconds > 5 {
				t.Errorf("errors-x10 at %g: got %d/10 rollbacks, median %.2f s; want 10/10, median ≤ 5 s", r.Share, r.Rollbacks, r.MedianSeconds)
			}
		}
	}
	var tbl, js bytes.Buffer
	if err := rep.WriteTable(&tbl); err != nil || !strings.Contains(tbl.String(), "crash-loop") {
		t.Fatalf("WriteTable: got %v and %q; want a table naming crash-loop", err, tbl.String())
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatalf("WriteJSON: got %v; want no error", err)
	}
	var back BenchReport
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Results) != 6 {
		t.Fatalf("JSON round trip: got %v with %d results; want 6", err, len(back.Results))
	}
	if _, err := Bench(BenchConfig{Scenarios: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Fatalf("Bench(unknown scenario): got %v; want 'unknown scenario'", err)
	}
}

func TestPoissonMoments(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, lam := range []float64{0.3, 4, 25, 400} {
		const n = 20000
		var s, s2 float64
		for range n {
			x := poisson(r, lam)
			s += x
			s2 += x * x
		}
		mean := s / n
		variance := s2/n - mean*mean
		if math.Abs(mean-lam) > 4*math.Sqrt(lam/n) || math.Abs(variance/lam-1) > 0.05 {
			t.Errorf("Poisson(%g): got mean %.3f variance %.3f; want both ≈ %g", lam, mean, variance, lam)
		}
	}
}
