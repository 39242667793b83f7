package web

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// TestVerdictUpdatesReplace: updates of a pending comparison replace it in the history, a
// state change is added, and the API stamps ages.
func TestVerdictUpdatesReplace(t *testing.T) {
	t.Parallel()
	ts := startServer(t, testConfig())
	started := time.Now().Add(-time.Minute).UnixMilli()
	pending := proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StatePending,
		UnixMs: started, StartedMs: started, Sentence: "comparing"}
	ts.srv.SetVerdict(pending)
	for i := range 5 {
		u := pending
		u.Update = true
		u.Sentence = fmt.Sprintf("comparing, update %d", i)
		u.Evidence.Effects = []proto.Effect{{Test: "errors", Metric: "errors", Unit: proto.UnitRatio, Canary: 0.02, Baseline: 0.01, Text: "errors 2.00 % vs 1.00 %"}}
		ts.srv.SetVerdict(u)
	}
	rb := pending
	rb.State, rb.UnixMs, rb.DecisionID, rb.Sentence = proto.StateRollback, started+30_000, "d1", "errors 2.1× baseline"
	rb.Delivery = &proto.DeliveryState{Status: "delivered"} // forged: the Server fills it
	ts.srv.SetVerdict(rb)
	waitApplied(t, ts, 7)
	var one ServiceSummary
	if code := get(t, ts.http.URL+"/api/v1/services/checkout", "", &one); code != 200 {
		t.Fatalf("GET service: got %d; want 200", code)
	}
	if len(one.History) != 2 || one.History[0].Sentence != "comparing, update 4" || one.History[1].State != proto.StateRollback {
		t.Fatalf("history: got %+v; want the last update of the pending verdict and the rollback", one.History)
	}
	if got := one.History[0].Evidence.Effects; len(got) != 1 || got[0].Text != "errors 2.00 % vs 1.00 %" {
		t.Fatalf("effects: got %+v", got)
	}
	if v := one.Verdicts[0]; v.State != proto.StateRollback || v.Delivery != nil || v.AgeMs < 29_000 {
		t.Fatalf("latest: got %s, delivery %+v, age %d ms; want rollback, no delivery state, age ≥ 29 s", v.State, v.Delivery, v.AgeMs)
	}
	if got := ts.srv.m.verdictUpdates.Get(); got != 5 {
		t.Fatalf("herd_web_verdict_updates_total: got %d; want 5", got)
	}
}

// decisionsFake is a mutable set of decisions.
type decisionsFake struct {
	mu sync.Mutex // Guards ds.
	ds map[string]proto.Decision
}

func (f *decisionsFake) set(d proto.Decision) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ds[d.ID] = d
}

func (f *decisionsFake) lookup(id string) (proto.Decision, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.ds[id]
	return d, ok
}

func (f *decisionsFake) list() []proto.Decision {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []proto.Decision
	for _, d := range f.ds {
		out = append(out, d)
	}
	return out
}

// TestVerdictDeliveryState: a verdict's delivery state is joined when it arrives and
// follows the decision's delivery, from the lookup or from the decisions list.
func TestVerdictDeliveryState(t *testing.T) {
	t.Parallel()
	for _, byID := range []bool{true, false} {
		t.Run(fmt.Sprintf("lookup=%v", byID), func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, testConfig())
			f := &decisionsFake{ds: map[string]proto.Decision{}}
			if byID {
				ts.srv.SetDecisionLookup(f.lookup)
			} else {
				ts.srv.SetDecisions(f.list)
			}
			now := time.Now().UnixMilli()
			v := proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback,
				UnixMs: now, StartedMs: now - 8000, DecisionID: "d1", Sentence: "errors 2.1× baseline"}
			f.set(proto.Decision{ID: "d1", Verdict: v, Status: "delivering"})
			ts.srv.SetVerdict(v)
			status := func(want string) *proto.DeliveryState {
				t.Helper()
				var got *proto.DeliveryState
				checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
					var out struct{ Verdicts []proto.Verdict }
					get(t, ts.http.URL+"/api/v1/verdicts", "", &out)
					if len(out.Verdicts) != 1 || out.Verdicts[0].Delivery == nil || out.Verdicts[0].Delivery.Status != want {
						return fmt.Errorf("got verdicts %+v; want delivery %s", out.Verdicts, want)
					}
					got = out.Verdicts[0].Delivery
					return nil
				})
				return got
			}
			status("delivering")
			f.set(proto.Decision{ID: "d1", Verdict: v, Status: "delivered", Deliveries: []proto.Delivery{
				{DecisionID: "d1", Target: "webhook:http://a/hook", Attempt: 1, Status: 503, Outcome: "retry", UnixMs: now + 10},
				{DecisionID: "d1", Target: "webhook:http://a/hook", Attempt: 2, Status: 204, Outcome: "done", UnixMs: now + 300},
				{DecisionID: "d1", Target: "argo:prod/checkout", Attempt: 1, Outcome: "done", UnixMs: now + 20},
			}})
			st := status("delivered")
			want := []proto.TargetAnswer{
				{Target: "webhook:http://a/hook", Outcome: "done", HTTPStatus: 204, Attempts: 2, UnixMs: now + 300},
				{Target: "argo:prod/checkout", Outcome: "done", Attempts: 1, UnixMs: now + 20},
			}
			if fmt.Sprint(st.Targets) != fmt.Sprint(want) {
				t.Fatalf("targets: got %+v; want %+v", st.Targets, want)
			}
		})
	}
}
