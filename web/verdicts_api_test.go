package web

import (
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// TestVerdictsFilter checks GET /api/v1/verdicts' service and canary filters, the state a
// deploy tool's gate reads, and the wait for a final verdict.
func TestVerdictsFilter(t *testing.T) {
	t.Parallel()
	ts := startServer(t, testConfig())
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback, UnixMs: 2})
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "6f9c7d8e1", State: proto.StatePending, UnixMs: 3})
	ts.srv.SetVerdict(proto.Verdict{Service: "search", Baseline: "2.0.1", Canary: "1.5.0", State: proto.StatePass, UnixMs: 4})
	waitApplied(t, ts, 3)
	base := ts.http.URL + "/api/v1/verdicts"
	for _, c := range []struct {
		query   string
		n       int
		state   string
		canary0 string
	}{
		{"", 3, "", ""},
		{"?service=checkout", 2, "", ""},
		{"?canary=1.5.0", 2, "", "1.5.0"}, // two services: no one state
		{"?service=checkout&canary=1.5.0", 1, "rollback", "1.5.0"},
		{"?service=checkout&canary=6f9c7d8e1", 1, "pending", "6f9c7d8e1"},
		{"?service=checkout&canary=7a1e2", 0, "none", ""},
		{"?service=nope", 0, "", ""},
	} {
		var got verdictsResponse
		if code := get(t, base+c.query, "", &got); code != 200 {
			t.Fatalf("%s: got %d; want 200", c.query, code)
		}
		if len(got.Verdicts) != c.n {
			t.Errorf("%s: got %d verdicts; want %d", c.query, len(got.Verdicts), c.n)
		}
		if got.State != c.state {
			t.Errorf("%s: got state %q; want %q", c.query, got.State, c.state)
		}
		if c.canary0 != "" && (len(got.Verdicts) == 0 || got.Verdicts[0].Canary != c.canary0) {
			t.Errorf("%s: got %+v; want canary %s first", c.query, got.Verdicts, c.canary0)
		}
	}
	for _, bad := range []string{"?service=checkout&canary=1.5.0&wait=x", "?service=checkout&wait=1s", "?canary=1.5.0&wait=1s", "?service=checkout&canary=1.5.0&wait=1h"} {
		if code := get(t, base+bad, "", nil); code != 400 {
			t.Errorf("%s: got %d; want 400", bad, code)
		}
	}
	// A waiting request returns once the pending canary's verdict is final.
	done := make(chan verdictsResponse, 1)
	go func() {
		var got verdictsResponse
		get(t, base+"?service=checkout&canary=6f9c7d8e1&wait=1m", "", &got)
		done <- got
	}()
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "6f9c7d8e1", State: proto.StateRollback, UnixMs: 5})
	select {
	case got := <-done:
		if got.State != "rollback" {
			t.Errorf("waited: got state %q; want rollback", got.State)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting request did not return after the verdict became final")
	}
	// A wait that runs out answers with the pending state.
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "7a1e2", State: proto.StatePending, UnixMs: 6})
	waitApplied(t, ts, 5)
	var got verdictsResponse
	if code := get(t, base+"?service=checkout&canary=7a1e2&wait=300ms", "", &got); code != 200 || got.State != "pending" {
		t.Errorf("wait ran out: got %d %q; want 200 pending", code, got.State)
	}
}
