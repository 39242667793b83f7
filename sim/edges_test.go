package sim

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// TestFleetInbound runs a churning caller in two versions beside its callee for 10 s of fake
// time: the callee's inbound series split by caller group, with what still waits in the
// inbox, equal the calls each caller group made, exactly, and the calls the canary's edge
// fails more show in the callee's errors on the canary's requests; a callee behind retries sees
// every attempt.
func TestFleetInbound(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var dec proto.Decoder
		var b proto.Batch
		inbound := map[[3]string][2]uint64{} // callee, caller, caller version → requests, errors
		publish := func(_ string, data []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if err := dec.Decode(data, &b); err != nil {
				t.Errorf("decode: %v", err)
				return nil
			}
			for i := range b.Series {
				s := &b.Series[i]
				svc, ver, ok := proto.CallerOf(s.Name, s.Labels)
				if !ok {
					continue
				}
				k := [3]string{b.Service, svc, ver}
				v := inbound[k]
				if s.Name == proto.SeriesInboundRequests {
					v[0] += uint64(s.Value)
				} else {
					v[1] += uint64(s.Value)
				}
				inbound[k] = v
			}
			return nil
		}
		lat := func(g Group) Group {
			g.LatencyMedian, g.LatencyP99 = 10*time.Millisecond, 50*time.Millisecond
			return g
		}
		f, err := NewFleet(FleetConfig{
			Groups: []Group{
				lat(Group{Service: "checkout", Version: "1.4.2", Instances: 6, RPS: 40}),
				lat(Group{Service: "checkout", Version: "1.5.0", Instances: 2, RPS: 40}),
				lat(Group{Service: "payments", Version: "7.1.0", Instances: 3, RPS: 100}),
				lat(Group{Service: "ledger", Version: "2.0.0", Instances: 1, RPS: 200}),
			},
			Calls: map[string][]Edge{"checkout": {
				{Callee: "payments", PerRequest: 1, ErrorRate: 0.01, LatencyMedian: time.Millisecond, LatencyP99: 5 * time.Millisecond},
				{Callee: "ledger", PerRequest: 2, ErrorRate: 0.2, Retries: 2, LatencyMedian: time.Millisecond, LatencyP99: 5 * time.Millisecond},
				{Callee: "audit", PerRequest: 0.5, ErrorRate: 0.01, LatencyMedian: time.Millisecond, LatencyP99: 5 * time.Millisecond},
			}},
			LifetimeMin: time.Second, LifetimeMax: 3 * time.Second, Interval: 250 * time.Millisecond, Seed: 1, Shards: 3, Publish: publish,
		})
		if err != nil {
			t.Fatal(err)
		}
		f.Group("checkout", "1.5.0").SetEdgeErrorRate("payments", 0.1)
		if err := f.Run(t.Context(), time.Now().Add(10*time.Second)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		pending := f.pendingCalls()
		edges := f.EdgeTotals()
		for _, v := range []string{"1.4.2", "1.5.0"} {
			k := [3]string{"payments", "checkout", v}
			called := edges[EdgeID{"checkout", v, proto.EdgeKey{Callee: "payments"}}]
			got, left := inbound[k], pending[k]
			if got[0]+left[0] != called.Calls || got[1]+left[1] != called.Errors {
				t.Errorf("payments from checkout %s: recorded %v + waiting %v; want the %d calls, %d failed, checkout made", v, got, left, called.Calls, called.Errors)
			}
			if got[0] < called.Calls*9/10 {
				t.Errorf("payments from checkout %s: recorded %d of %d calls; want most", v, got[0], called.Calls)
			}
		}
		// The rates: 1 % of the baseline's calls fail, 10 % of the canary's.
		a, c := inbound[[3]string{"payments", "checkout", "1.4.2"}], inbound[[3]string{"payments", "checkout", "1.5.0"}]
		if ra, rc := float64(a[1])/float64(a[0]), float64(c[1])/float64(c[0]); ra > 0.02 || rc < 0.07 || rc > 0.13 {
			t.Errorf("payments' error ratio on checkout's calls: baseline %.3f, canary %.3f; want ≈ 0.01 and 0.1", ra, rc)
		}
		// Retried attempts: ledger sees every attempt, checkout's edge one call per call. Each
		// call that did not fail had exactly one attempt that did not fail.
		for _, v := range []string{"1.4.2", "1.5.0"} {
			k := [3]string{"ledger", "checkout", v}
			called := edges[EdgeID{"checkout", v, proto.EdgeKey{Callee: "ledger"}}]
			got, left := inbound[k], pending[k]
			ok, failed := got[0]+left[0]-got[1]-left[1], got[1]+left[1]
			if ok != called.Calls-called.Errors || failed < called.Calls/5 || failed > called.Calls/3 {
				t.Errorf("ledger from checkout %s: %d attempts ok, %d failed; want %d ok (the calls that did not fail) and ≈ 25 %% of %d calls failed",
					v, ok, failed, called.Calls-called.Errors, called.Calls)
			}
			if r := float64(called.Errors) / float64(called.Calls); r > 0.02 {
				t.Errorf("checkout %s → ledger: %.3f of calls fail; want ≈ 0.008 (three attempts at 0.2)", v, r)
			}
		}
		// A callee the fleet does not simulate (audit) has no inbox; nothing else is recorded.
		if len(pending) != 4 || len(inbound) != 4 {
			t.Errorf("inboxes %v, inbound %v; want payments' and ledger's two caller groups only", pending, inbound)
		}
	})
}
