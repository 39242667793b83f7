package deliver

import (
	"errors"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

// TestFlaggerRevisions checks that the hooks are keyed by the canary's checksum: a new
// revision never gets the verdict of a comparison that started before it, and starts a new
// comparison unless one is pending.
func TestFlaggerRevisions(t *testing.T) {
	t.Parallel()
	d := newTestDeliverer(t, Config{}, nil)
	var (
		mu       sync.Mutex
		v        = testVerdict(proto.StateRollback) // the previous revision's rollback
		ok       = true
		restarts []proto.Deployment
		refuse   error
	)
	lookup := func(string) (proto.Verdict, bool) { mu.Lock(); defer mu.Unlock(); return v, ok }
	restart := func(dep proto.Deployment) error {
		mu.Lock()
		defer mu.Unlock()
		if refuse != nil {
			return refuse
		}
		restarts = append(restarts, dep)
		return nil
	}
	set := func(f func()) { mu.Lock(); defer mu.Unlock(); f() }
	srv := httptest.NewServer(d.FlaggerHandler(lookup, restart))
	t.Cleanup(srv.Close)
	hook := func(name, checksum string) (int, flaggerAnswer) {
		t.Helper()
		var a flaggerAnswer
		code := doJSON(t, "POST", srv.URL+"/api/v1/flagger/rollback",
			`{"name":"`+name+`","namespace":"shop","phase":"Progressing","checksum":"`+checksum+`","metadata":{"service":"checkout"}}`, &a)
		return code, a
	}

	before := time.Now().UnixMilli()
	// A new revision: the final verdict is the previous revision's; a new comparison starts.
	if code, a := hook("checkout", "rev-b"); code != 403 || !strings.Contains(a.Reason, "earlier revision") {
		t.Fatalf("new revision over a stale rollback: got %d %q; want 403 naming the earlier revision", code, a.Reason)
	}
	mu.Lock()
	if len(restarts) != 1 || restarts[0].Service != "checkout" || restarts[0].Baseline != "1.4.1" || restarts[0].Canary != "1.4.2" || restarts[0].UnixMs < before {
		t.Fatalf("restarts: got %+v; want one of checkout 1.4.1 → 1.4.2 from now", restarts)
	}
	startedMs := restarts[0].UnixMs
	mu.Unlock()
	// The new comparison is pending, then decides: its verdict answers for rev-b.
	set(func() { v.State, v.StartedMs, v.UnixMs = proto.StatePending, startedMs, startedMs })
	if code, _ := hook("checkout", "rev-b"); code != 403 {
		t.Errorf("pending: got %d; want 403", code)
	}
	set(func() { v.State, v.UnixMs = proto.StateRollback, startedMs+1500 })
	if code, a := hook("checkout", "rev-b"); code != 200 {
		t.Errorf("rev-b's own rollback: got %d %q; want 200", code, a.Reason)
	}
	// Another revision with the same versions does not get rev-b's rollback.
	if code, _ := hook("checkout", "rev-c"); code != 403 {
		t.Errorf("rev-c over rev-b's rollback: got %d; want 403", code)
	}
	if n := len(restarts); n != 2 {
		t.Errorf("restarts: got %d; want 2", n)
	}
	// A revision the detector cannot compare afresh (its version is the established one) is
	// told why, and tried again at its next call.
	set(func() { refuse = errors.New("1.4.2 is the established version of checkout") })
	for range 2 {
		if code, a := hook("checkout", "rev-d"); code != 403 || !strings.Contains(a.Reason, "pod-template-hash") {
			t.Errorf("refused restart: got %d %q; want 403 advising a version per revision", code, a.Reason)
		}
	}
	if got := d.counter(`herd_deliver_flagger_revisions_total{event="restart_refused"}`).Get(); got != 2 {
		t.Errorf("refused restarts: got %d; want 2", got)
	}
	// A revision first seen while the service's comparison is pending takes that comparison.
	set(func() { refuse = nil; v.State, v.StartedMs = proto.StatePending, 1000 })
	if code, _ := hook("other", "rev-x"); code != 403 {
		t.Errorf("pending at first sight: got %d; want 403", code)
	}
	set(func() { v.State = proto.StateRollback })
	if code, a := hook("other", "rev-x"); code != 200 {
		t.Errorf("the pending comparison's rollback: got %d %q; want 200", code, a.Reason)
	}
	if n := len(restarts); n != 2 {
		t.Errorf("restarts after a pending first sight: got %d; want still 2", n)
	}
}

// TestFlaggerRevisionsBounded checks that the remembered revisions stay within
// MaxFlaggerRevisions, forgetting the canary seen longest ago.
func TestFlaggerRevisionsBounded(t *testing.T) {
	rv := &revisions{m: map[string]revision{}, evicted: metrics.NewSet().NewCounter("evicted")}
	for i := range MaxFlaggerRevisions + 10 {
		rv.floor("ns/c"+strconv.Itoa(i), "sum", proto.Verdict{}, false, int64(i))
	}
	if n := len(rv.m); n != MaxFlaggerRevisions {
		t.Errorf("got %d revisions; want %d", n, MaxFlaggerRevisions)
	}
	if _, ok := rv.m["ns/c0"]; ok {
		t.Errorf("the canary seen longest ago is still remembered")
	}
	if got := rv.evicted.Get(); got != 10 {
		t.Errorf("evicted: got %d; want 10", got)
	}
}
