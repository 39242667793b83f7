package deliver

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
)

// TestReannouncementDeliversOnce: the detector rolls a deployment back and delivery sends it;
// announcing the same deployment again (same UnixMs), to the same detector or to a restarted
// one replaying the history, sends nothing more; a new deployment of the same versions is a
// new decision, sent once.
func TestReannouncementDeliversOnce(t *testing.T) {
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newTestDeliverer(t, Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}}, nil)
	startRun(t, d)

	var history []any // what the history stream would replay: windows and deployments
	newDetector := func() *alert.Detector {
		det, err := alert.NewWithPolicy(alert.DefaultConfig(), nil, nil, func(v proto.Verdict) {
			if v.State == proto.StateRollback || v.State == proto.StatePass {
				if err := d.Decide(v); err != nil {
					t.Errorf("Decide: got %v; want nil", err)
				}
			}
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return det
	}
	det := newDetector()
	feed := func(x any) {
		history = append(history, x)
		switch x := x.(type) {
		case *proto.Window:
			det.AddWindow(x)
		case proto.Deployment:
			if err := det.Announce(x); err != nil {
				t.Fatalf("Announce: got %v; want nil", err)
			}
		}
	}
	ms := int64(1_767_225_600_000)
	window := func(version string, errors float64) *proto.Window {
		return &proto.Window{Service: "checkout", Version: version, StartMs: ms, EndMs: ms + 250, ClosedMs: ms + 250, Instances: 2,
			Series: []proto.WindowSeries{
				{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 100},
				{Name: proto.SeriesErrors, Kind: proto.KindCounter, Value: errors},
			}}
	}
	step := func(n int, canary bool) {
		for range n {
			feed(window("1.4.1", 0))
			if canary {
				feed(window("1.4.2", 100)) // crash loop: every request fails
			}
			ms += 250
		}
	}
	delivered := func(want int) []capturedRequest {
		t.Helper()
		checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			for _, dec := range d.Decisions() {
				if dec.Status != "delivered" {
					return fmt.Errorf("decision %s: got status %q; want delivered", dec.ID, dec.Status)
				}
			}
			if n := len(d.Decisions()); n != want {
				return fmt.Errorf("got %d decisions; want %d", n, want)
			}
			return nil
		})
		return rc.requests()
	}

	step(40, false)
	dep := proto.Deployment{Service: "checkout", Baseline: "1.4.1", Canary: "1.4.2", UnixMs: ms}
	feed(dep)
	step(4, true)
	first := delivered(1)
	if len(first) != 1 {
		t.Fatalf("after the rollback: got %d webhook requests; want 1", len(first))
	}
	feed(dep) // the deploy tool announces again
	step(8, true)

	// A restarted detector replays the history, announcement included.
	det = newDetector()
	replay := history
	history = nil
	for _, x := range replay {
		feed(x)
	}
	step(8, true)
	if n := d.set.GetOrCreateCounter(`herd_deliver_decisions_refused_total{reason="duplicate"}`).Get(); n != 1 {
		t.Errorf("decisions refused as known: got %d; want 1 (the replayed rollback)", n)
	}

	next := dep
	next.UnixMs = ms
	feed(next) // a new deployment of the same versions
	step(4, true)
	reqs := delivered(2)
	if len(reqs) != 2 {
		t.Fatalf("after a new deployment: got %d webhook requests; want 2 (one per deployment)", len(reqs))
	}
	if a, b := reqs[0].header.Get("webhook-id"), reqs[1].header.Get("webhook-id"); a == b {
		t.Errorf("webhook ids: got %s twice; want one per deployment", a)
	}
}
