package proto

import (
	"reflect"
	"strings"
	"testing"
)

// testWindow returns a window with every kind of series, labels, warm series and halves.
func testWindow() *Window {
	var h Histogram
	for i := range 50 {
		h.Observe(float64(i+1)/1000, 2)
	}
	lat := WindowSeries{Name: SeriesLatency, Kind: KindHistogram, Hist: &h}
	lat.SetQuantiles()
	req := WindowSeries{Name: SeriesRequests, Kind: KindCounter, Value: 400}
	errs := WindowSeries{Name: SeriesErrors, Labels: Labels{{Name: "code", Value: "503"}, {Name: "path", Value: "/pay"}}, Kind: KindCounter, Value: 3}
	inflight := WindowSeries{Name: "inflight", Kind: KindGauge, Value: 7, Sum: 21, Min: 2, Max: 11, Count: 3}
	return &Window{
		Service: "checkout", Version: "1.4.2", StartMs: 1_700_000_000_000, EndMs: 1_700_000_000_250,
		Instances: 3, InstancesStarted: 1, InstancesStopped: 0, ClosedMs: 1_700_000_000_760,
		Series: []WindowSeries{errs, inflight, lat, req}, WarmupMs: 5000, SplitSeries: []string{SeriesRequests},
		WarmInstances: 2, Warm: []WindowSeries{req}, Halves: [2][]WindowSeries{{req}, {req}}, HalfInstances: [2]int{1, 1},
	}
}

func testVerdict() *Verdict {
	return &Verdict{
		Service: "checkout", Baseline: "1.4.1", Canary: "1.4.2", State: StateRollback,
		UnixMs: 1_700_000_007_800, StartedMs: 1_700_000_000_000, DecisionID: "2f1c7bb4-5d0e-4d47-9a55-0c8f6c1f1d2a",
		Sentence: "errors 3.1× baseline, 99 % CS [1.8, 5.4], decided after 7.8 s",
		Evidence: Evidence{Alpha: 0.01, EValue: 142.5, Threshold: 100, Decisive: "errors",
			Tests: []TestEvidence{{Name: "errors", EValue: 142.5, Weight: 1, BaselineN: 296400, BaselineE: 1482,
				CanaryN: 15600, CanaryE: 242, Effect: 3.1, CSLow: 1.8, CSHigh: 5.4}},
			Windows: 31, FirstMs: 1_700_000_000_000, LastMs: 1_700_000_007_750, CanaryInstances: 2, BaselineInstances: 38},
	}
}

func TestWindowJSONRoundTrip(t *testing.T) {
	t.Parallel()
	w := testWindow()
	data, err := MarshalWindow(w)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalWindow(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w) {
		t.Errorf("got %+v; want %+v", got, w)
	}
	for _, bad := range []string{
		`{"service": "Checkout", "version": "1"}`,
		`{"service": "checkout", "version": ""}`,
		`{"service": "checkout", "version": "1", "series": [{"name": "x", "kind": "histogram", "hist": {"count": 2, "sum": 1}}]}`,
		`{"service": "checkout", "version": "1", "series": [{"name": "x", "hist": {"count": 1, "positive": {"offset": 2147483647, "counts": [1]}}}]}`,
		`{"service": "checkout", "version": "1", "series": [{"name": "x", "kind": "counter", "labels": []}]}`,
		`{"service": "checkout", "version": "1", "series": [{"name": "x"}]}`,
		`{"service": "checkout", "version": "1", "halves": [[], [{"name": "x"}]]}`,
		`[]`, ``,
	} {
		if _, err := UnmarshalWindow([]byte(bad)); err == nil || !strings.HasPrefix(err.Error(), "cannot decode window") {
			t.Errorf("UnmarshalWindow(%s): got %v; want a 'cannot decode window' error", bad, err)
		}
	}
}

func TestVerdictJSONRoundTrip(t *testing.T) {
	t.Parallel()
	v := testVerdict()
	data, err := MarshalVerdict(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalVerdict(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, v) {
		t.Errorf("got %+v; want %+v", got, v)
	}
	for _, bad := range []string{`{"service": "a b"}`, `{"service": 1}`, `null`} {
		if _, err := UnmarshalVerdict([]byte(bad)); err == nil {
			t.Errorf("UnmarshalVerdict(%s): got nil error", bad)
		}
	}
}

func TestDeploymentJSON(t *testing.T) {
	t.Parallel()
	d := &Deployment{Service: "checkout", Baseline: "1.4.1", Canary: "1.4.2", UnixMs: 1_700_000_000_000}
	data, err := MarshalDeployment(d)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"service":"checkout","baseline":"1.4.1","canary":"1.4.2","unix_ms":1700000000000}`; string(data) != want {
		t.Errorf("got %s; want %s", data, want)
	}
	got, err := UnmarshalDeployment(data)
	if err != nil || *got != *d {
		t.Fatalf("got %+v, %v; want %+v", got, err, d)
	}
	if got, err := UnmarshalDeployment([]byte(`{"service":"checkout","baseline":"1","canary":"2","by":"ci"}`)); err != nil || got.UnixMs != 0 {
		t.Errorf("unknown field, no time: got %+v, %v; want accepted with UnixMs 0", got, err)
	}
	huge := `{"service":"checkout","baseline":"1","canary":"2","x":"` + strings.Repeat("y", MaxDeploymentBytes) + `"}`
	for _, c := range []struct{ name, data, want string }{
		{"not json", `{"service":`, "cannot decode deployment"},
		{"bad service", `{"service":"Check Out","baseline":"1","canary":"2"}`, "bad deployment"},
		{"no canary", `{"service":"checkout","baseline":"1"}`, "bad deployment canary"},
		{"same versions", `{"service":"checkout","baseline":"1","canary":"1"}`, "both"},
		{"too large", huge, "exceed the limit"},
	} {
		if _, err := UnmarshalDeployment([]byte(c.data)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error containing %q", c.name, err, c.want)
		}
	}
}
