package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

func doJSON(t *testing.T, method, url string, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: cannot decode %s: %v", method, url, data, err)
		}
	}
	return resp.StatusCode
}

func TestAPI(t *testing.T) {
	t.Parallel()
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newTestDeliverer(t, Config{Webhooks: []string{srv.URL + "/hook"}, WebhookSecrets: []string{testSecret}}, nil)
	startRun(t, d)
	api := httptest.NewServer(d.HTTPHandler())
	defer api.Close()

	v1, v2 := testVerdict(proto.StateRollback), testVerdict(proto.StateRollback)
	v2.Service = "payments"
	for _, v := range []proto.Verdict{v1, v2} {
		if err := d.Decide(v); err != nil {
			t.Fatal(err)
		}
		waitStatus(t, d, v.DecisionID, "delivered")
	}

	var list struct{ Decisions []record }
	if code := doJSON(t, "GET", api.URL+"/api/v1/decisions?service=checkout", "", &list); code != 200 {
		t.Fatalf("list: got %d; want 200", code)
	}
	if len(list.Decisions) != 1 || list.Decisions[0].ID != v1.DecisionID {
		t.Fatalf("list ?service=checkout: got %d decisions; want only %s", len(list.Decisions), v1.DecisionID)
	}
	got := list.Decisions[0]
	if got.Verdict.Evidence.Tests[0].CSHigh != 5.4 || got.Targets[0].State != stateDone {
		t.Errorf("got evidence %+v targets %+v; want the verdict's evidence and a done target", got.Verdict.Evidence, got.Targets)
	}
	if code := doJSON(t, "GET", api.URL+"/api/v1/decisions?limit=x", "", nil); code != 400 {
		t.Errorf("bad limit: got %d; want 400", code)
	}
	if code := doJSON(t, "GET", api.URL+"/api/v1/decisions", "", &list); code != 200 || len(list.Decisions) != 2 {
		t.Errorf("list: got %d with %d decisions; want 200 with 2", code, len(list.Decisions))
	}

	// Redeliver starts a new round; the receiver sees the same webhook-id again.
	var rec record
	if code := doJSON(t, "POST", api.URL+"/api/v1/decisions/"+v1.DecisionID+"/redeliver", "", &rec); code != 202 {
		t.Fatalf("redeliver: got %d; want 202", code)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var dl struct {
			Status     string
			Deliveries []proto.Delivery
		}
		doJSON(t, "GET", api.URL+"/api/v1/decisions/"+v1.DecisionID+"/deliveries", "", &dl)
		if dl.Status != "delivered" || len(dl.Deliveries) != 2 {
			return fmt.Errorf("got status %q with %d rows; want delivered with 2", dl.Status, len(dl.Deliveries))
		}
		if dl.Deliveries[1].Attempt != 2 || dl.Deliveries[1].Outcome != outcomeDone {
			return fmt.Errorf("got second row %+v; want attempt 2 done", dl.Deliveries[1])
		}
		return nil
	})
	n := 0
	for _, r := range rc.requests() {
		if r.header.Get("webhook-id") == v1.DecisionID {
			n++
		}
	}
	if n != 2 {
		t.Errorf("got %d webhooks for the redelivered decision; want 2", n)
	}

	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/api/v1/decisions/nope", 404},
		{"GET", "/api/v1/decisions/nope/deliveries", 404},
		{"POST", "/api/v1/decisions/nope/redeliver", 404},
		{"POST", "/api/v1/decisions/" + v1.DecisionID + "/redeliver?target=webhook:elsewhere", 404},
	} {
		var e apiErr
		code := doJSON(t, c.method, api.URL+c.path, "", &e)
		if code != c.want || e.Error == "" {
			t.Errorf("%s %s: got %d %q; want %d with an error", c.method, c.path, code, e.Error, c.want)
		}
	}
	if code := doJSON(t, "DELETE", api.URL+"/api/v1/decisions/"+v1.DecisionID, "", nil); code != 405 {
		t.Errorf("DELETE: got %d; want 405", code)
	}
	resp, _ := http.Get(api.URL + "/api/v1/decisions")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") {
		t.Errorf("API output holds the webhook secret")
	}
}

func TestFlaggerHooks(t *testing.T) {
	t.Parallel()
	d := newTestDeliverer(t, Config{Targets: Targets{Flagger: []FlaggerCanary{
		{Namespace: "shop", Name: "checkout-canary", Service: "checkout"},
	}}}, nil)
	verdicts := map[string]proto.Verdict{
		"checkout": testVerdict(proto.StateRollback),
		"payments": func() proto.Verdict { v := testVerdict(proto.StatePass); v.Service = "payments"; return v }(),
		"search":   func() proto.Verdict { v := testVerdict(proto.StatePending); v.Service = "search"; return v }(),
	}
	srv := httptest.NewServer(d.FlaggerHandler(func(s string) (proto.Verdict, bool) {
		v, ok := verdicts[s]
		return v, ok
	}, nil))
	t.Cleanup(srv.Close)

	// Payloads as Flagger sends them (name, namespace, phase, type, metadata), without the
	// checksum, whose revisions TestFlaggerRevisions checks.
	payload := func(name, typ string, meta string) string {
		return `{"name":"` + name + `","namespace":"shop","phase":"Progressing","type":"` +
			typ + `","metadata":{` + meta + `}}`
	}
	for _, c := range []struct {
		name, hook, body string
		want             int
	}{
		{"mapped rollback", "rollback", payload("checkout-canary", "rollback", ""), 200},
		{"mapped, promotion refused", "confirm-promotion", payload("checkout-canary", "confirm-promotion", ""), 403},
		{"by metadata, pass", "confirm-promotion", payload("pay", "confirm-promotion", `"service":"payments"`), 200},
		{"by metadata, no rollback", "rollback", payload("pay", "rollback", `"service":"payments"`), 403},
		{"by name, pending", "rollback", payload("search", "rollback", ""), 403},
		{"by name, pending promotion", "confirm-promotion", payload("search", "confirm-promotion", ""), 403},
		{"other canary version", "rollback", payload("checkout-canary", "rollback", `"canary":"1.4.3"`), 403},
		{"same canary version", "rollback", payload("checkout-canary", "rollback", `"canary":"1.4.2"`), 200},
		{"no verdict", "rollback", payload("unknown", "rollback", ""), 403},
		{"not a service name", "rollback", payload("Checkout.Canary", "rollback", ""), 403},
		{"bad json", "rollback", `{"name":`, 400},
		{"no name", "rollback", `{"namespace":"shop"}`, 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var a flaggerAnswer
			code := doJSON(t, "POST", srv.URL+"/api/v1/flagger/"+c.hook, c.body, &a)
			if code != c.want {
				t.Errorf("got %d (%s); want %d", code, a.Reason, c.want)
			}
			if a.Reason == "" && code != 200 {
				t.Errorf("got no reason for %d", code)
			}
		})
	}
}

func TestFileStoreResumes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rc := &recorder{statuses: []int{500}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	cfg := Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}}
	fs, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDeliverer(t, cfg, fs)
	stop := startRun(t, d)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := len(rc.requests()); n < 1 {
			return fmt.Errorf("got %d requests; want 1", n)
		}
		return nil
	})
	stop()
	rc.setStatuses(200)
	fs, err = NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	d = newTestDeliverer(t, cfg, fs)
	startRun(t, d)
	waitStatus(t, d, v.DecisionID, "delivered")
	if n := len(rc.requests()); n != 1 {
		t.Errorf("got %d requests after restart; want 1", n)
	}
}

// TestDecideCountsEveryFailure checks that each way Decide can fail is counted by reason, so
// that a caller replaying verdicts may drop the error without losing it.
func TestDecideCountsEveryFailure(t *testing.T) {
	t.Parallel()
	fs, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &failingCreate{Store: fs}
	d := newTestDeliverer(t, Config{}, st)
	for _, c := range []struct {
		name, counter string
		mod           func(*proto.Verdict)
	}{
		{"bad id", `herd_deliver_decisions_refused_total{reason="bad_id"}`, func(v *proto.Verdict) { v.DecisionID = "42" }},
		{"pending", `herd_deliver_decisions_refused_total{reason="not_final"}`, func(v *proto.Verdict) { v.State = proto.StatePending }},
		{"inconclusive", `herd_deliver_decisions_refused_total{reason="not_final"}`, func(v *proto.Verdict) { v.State = proto.StateInconclusive }},
		{"bad service", `herd_deliver_decisions_refused_total{reason="bad_service"}`, func(v *proto.Verdict) { v.Service = "Bad Service" }},
	} {
		v := testVerdict(proto.StateRollback)
		c.mod(&v)
		before := d.set.GetOrCreateCounter(c.counter).Get()
		if err := d.Decide(v); err == nil {
			t.Errorf("%s: got nil error; want a refusal", c.name)
		}
		if n := d.set.GetOrCreateCounter(c.counter).Get(); n != before+1 {
			t.Errorf("%s: %s went from %d to %d; want +1", c.name, c.counter, before, n)
		}
	}
	if got := len(d.Decisions()); got != 0 {
		t.Errorf("got %d decisions; want 0", got)
	}

	// The store fails: the decision is kept in memory, and the failure counted.
	st.fail.Store(true)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err == nil {
		t.Error("store down: got nil error; want the store's")
	}
	if n := d.set.GetOrCreateCounter(`herd_deliver_store_errors_total{reason="create"}`).Get(); n != 1 {
		t.Errorf("store down: got %d create errors; want 1", n)
	}
	if _, ok := d.Decision(v.DecisionID); !ok {
		t.Error("store down: the decision is not kept in memory")
	}
	st.fail.Store(false)

	// A verdict replayed after a restart finds its decision stored: not taken again, counted.
	v = testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	d2 := newTestDeliverer(t, Config{}, fs)
	if err := d2.Decide(v); err != nil {
		t.Errorf("replayed decision: got %v; want nil", err)
	}
	if n := d2.set.GetOrCreateCounter(`herd_deliver_decisions_refused_total{reason="exists"}`).Get(); n != 1 {
		t.Errorf("replayed decision: got %d refusals for exists; want 1", n)
	}
	if err := d.Decide(v); err != nil {
		t.Errorf("repeated decision: got %v; want nil", err)
	}
	if n := d.set.GetOrCreateCounter(`herd_deliver_decisions_refused_total{reason="duplicate"}`).Get(); n != 1 {
		t.Errorf("repeated decision: got %d refusals for duplicate; want 1", n)
	}
}

// failingCreate fails every Create while fail is set.
type failingCreate struct {
	Store
	fail atomic.Bool
}

func (s *failingCreate) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	if s.fail.Load() {
		return 0, errors.New("store unavailable")
	}
	return s.Store.Create(ctx, key, value)
}

func TestAllTargetsOneDecision(t *testing.T) {
	t.Parallel()
	rc := &recorder{}
	hook := httptest.NewServer(rc)
	defer hook.Close()
	f := &fakeArgo{t: t, rollout: rolloutJSON("1.4.2", "6f9c7", "5d8b4", false)}
	k8s := httptest.NewServer(f)
	defer k8s.Close()
	g := &gate{posts: map[string]int{}}
	gs := httptest.NewServer(g)
	defer gs.Close()
	cfg := spinnakerConfig(gs.URL)
	cfg.Webhooks = []string{hook.URL}
	cfg.WebhookSecrets = []string{testSecret}
	cfg.Targets.Argo = []ArgoTarget{argoTarget(t, k8s.URL)}
	d := newTestDeliverer(t, cfg, nil)
	startRun(t, d)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	dec := waitStatus(t, d, v.DecisionID, "delivered")
	if len(dec.Deliveries) != 3 {
		t.Errorf("got %d rows; want 3 (one per target)", len(dec.Deliveries))
	}
	if err := d.Redeliver(v.DecisionID, ""); err != nil {
		t.Fatalf("Redeliver all: %v", err)
	}
	dec = waitStatus(t, d, v.DecisionID, "delivered")
	if len(dec.Deliveries) != 5 {
		t.Errorf("got %d rows; want 5 (webhook and Argo twice, Spinnaker once)", len(dec.Deliveries))
	}
	if got := g.count(v.DecisionID); got != 1 {
		t.Errorf("got %d Spinnaker triggers; want 1", got)
	}
}
