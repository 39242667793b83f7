package main

import (
	"encoding/json"
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
	if got := formatWindow(w); !strings.Contains(got, " correction") {
		t.Errorf("got %q; want the correction marked", got)
	}
}
