package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
)

// TestTailMarksCorrections: `herd tail` prints corrections like windows, marked, so that
// totals (scripts/check-exact.py) add them; ordinary windows carry no mark.
func TestTailMarksCorrections(t *testing.T) {
	t.Parallel()
	w := &proto.Window{Service: "checkout", Version: "1.4.2", StartMs: 1000, EndMs: 1250, Instances: 2,
		Series: []proto.WindowSeries{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 7}}}
	plain, err := json.Marshal(toTail(w))
	if err != nil {
		t.Fatal(err)
	}
	w.Correction = true
	corr, err := json.Marshal(toTail(w))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain), "correction") || !strings.Contains(string(corr), `"correction":true`) {
		t.Errorf("got %s and %s; want the mark on the correction only", plain, corr)
	}
	if got := formatWindow(w, nil); !strings.Contains(got, " correction") {
		t.Errorf("got %q; want the correction marked", got)
	}
}

// TestTailReadsSignals: `herd tail` reads a window's signals with the definition the
// detector and the dashboard read: the profile detected from the series, or the policy's.
func TestTailReadsSignals(t *testing.T) {
	t.Parallel()
	h := &proto.Histogram{}
	h.Observe(0.02, 100)
	w := &proto.Window{Service: "shop", Version: "1", StartMs: 1000, EndMs: 1250, Instances: 1,
		Series: []proto.WindowSeries{
			{Name: "http_request_duration_seconds", Kind: proto.KindHistogram, Hist: h},
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 96},
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "502"}}, Kind: proto.KindCounter, Value: 4},
		}}
	sr, err := newSignalReader("")
	if err != nil {
		t.Fatal(err)
	}
	sig := sr.read(w)
	if sig.Profile != "prometheus" || sig.Requests != 100 || sig.Errors != 4 || !(sig.P50 > 0.019 && sig.P50 < 0.021) {
		t.Fatalf("got %+v; want the prometheus profile, 100 requests, 4 errors, p50 20ms", sig)
	}
	if got := formatWindow(w, sig); !strings.Contains(got, " [prometheus req=100 err=4 p50=") {
		t.Errorf("got %q; want the signals summarized", got)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("services:\n  shop:\n    errors: http_requests_total{code=\"502\"}\n    requests: http_requests_total{code=\"200\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if sr, err = newSignalReader(path); err != nil {
		t.Fatal(err)
	}
	if sig := sr.read(w); sig.Profile != "policy" || sig.Requests != 96 || sig.Errors != 4 {
		t.Fatalf("with a policy: got %+v; want the policy's selectors (96 requests, 4 errors)", sig)
	}
	if _, err := newSignalReader(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("a missing policy file: got no error")
	}
}
