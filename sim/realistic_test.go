package sim

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestBenchRealisticSmall runs a few trials of a realistic null and of a regression: the
// regression is rolled back in every trial, after the oracle, and the report says so.
func TestBenchRealisticSmall(t *testing.T) {
	t.Parallel()
	cfg := RealisticConfig{Trials: 4, Duration: time.Minute, Scenarios: []string{"null-cold-2x", "errors-x3-5%"}, Workers: 2}
	rep, err := BenchRealistic(cfg)
	if err != nil {
		t.Fatalf("BenchRealistic: got %v; want no error", err)
	}
	if len(rep.Results) != 2 || rep.Suite != "realistic" {
		t.Fatalf("results: got %d of suite %q; want 2 of the realistic suite", len(rep.Results), rep.Suite)
	}
	cold, x3 := rep.Results[0], rep.Results[1]
	if cold.Rollbacks != 0 {
		t.Errorf("null-cold-2x: got %d/4 rollbacks; want none (a cold start is no regression)", cold.Rollbacks)
	}
	if x3.Rollbacks != 4 || x3.OracleDecided != 4 || !(x3.OracleMedianSeconds > 0 && x3.OracleMedianSeconds <= x3.MedianSeconds) {
		t.Errorf("errors-x3-5%%: got %d/4 rollbacks in median %.2f s, oracle %d/4 in %.2f s; want 4/4 each, the oracle no slower",
			x3.Rollbacks, x3.MedianSeconds, x3.OracleDecided, x3.OracleMedianSeconds)
	}
	var tbl bytes.Buffer
	if err := rep.WriteTable(&tbl); err != nil || !strings.Contains(tbl.String(), "oracle median s") {
		t.Fatalf("WriteTable: got %v and %q; want a table with the oracle column", err, tbl.String())
	}
	cfg.Workers = 1
	again, err := BenchRealistic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rep.Results {
		if !reflect.DeepEqual(rep.Results[i], again.Results[i]) {
			t.Errorf("one worker: got %+v; want the same as two: %+v", again.Results[i], rep.Results[i])
		}
	}
	if _, err := BenchRealistic(RealisticConfig{Scenarios: []string{"nope"}}); err == nil {
		t.Errorf("unknown scenario: got no error; want one")
	}
}
