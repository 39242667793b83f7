package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// jsServer is a nats-server with JetStream whose store directory outlives it.
type jsServer struct {
	s  *server.Server
	nc *nats.Conn
	kv *KVStore
}

func startJS(t *testing.T, dir string) *jsServer {
	t.Helper()
	s := natstest.RunServer(t, natstest.Options{JetStream: true, StoreDir: dir})
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := OpenKVStore(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &jsServer{s: s, nc: nc, kv: kv}
}

// stop drains the connection and stops the server before the test ends.
func (j *jsServer) stop() {
	j.nc.Drain()
	natstest.Shutdown(j.s)
}

func waitStatus(t *testing.T, d *Deliverer, id, want string) proto.Decision {
	t.Helper()
	var dec proto.Decision
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		dec, _ = d.Decision(id)
		if dec.Status != want {
			return fmt.Errorf("decision %s: got status %q; want %q", id, dec.Status, want)
		}
		return nil
	})
	return dec
}

func TestRestartResumesWebhookDelivery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rc := &recorder{statuses: []int{503}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	cfg := Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}}
	v := testVerdict(proto.StateRollback)

	// First life: the receiver keeps failing; stop after two attempts.
	js := startJS(t, dir)
	d := newTestDeliverer(t, cfg, js.kv)
	stop := startRun(t, d)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if dec, _ := d.Decision(v.DecisionID); len(dec.Deliveries) < 2 {
			return fmt.Errorf("got %d rows; want at least 2", len(dec.Deliveries))
		}
		return nil
	})
	stop()
	before, _ := d.Decision(v.DecisionID)
	js.stop()
	if before.Status != "delivering" {
		t.Fatalf("before restart: got status %q; want delivering", before.Status)
	}

	// Second life, on a new server over the same store: the delivery resumes and completes.
	rc.setStatuses(200)
	js = startJS(t, dir)
	d = newTestDeliverer(t, cfg, js.kv)
	stop = startRun(t, d)
	after := waitStatus(t, d, v.DecisionID, "delivered")
	stop()
	js.stop()
	if got, want := len(after.Deliveries), len(before.Deliveries)+1; got != want {
		t.Errorf("got %d rows; want %d (the log survives the restart)", got, want)
	}
	last := after.Deliveries[len(after.Deliveries)-1]
	if last.Attempt != len(before.Deliveries)+1 || last.Outcome != outcomeDone {
		t.Errorf("got last row %+v; want attempt %d done", last, len(before.Deliveries)+1)
	}
	reqs := rc.requests()
	if len(reqs) != 1 || reqs[0].header.Get("webhook-id") != v.DecisionID {
		t.Fatalf("after restart: got %d requests; want 1 with webhook-id %s", len(reqs), v.DecisionID)
	}

	// Third life: the finished delivery is not sent again; a new decision still is.
	rc.setStatuses(200)
	js = startJS(t, dir)
	d = newTestDeliverer(t, cfg, js.kv)
	startRun(t, d)
	v2 := testVerdict(proto.StateRollback)
	if err := d.Decide(v2); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, v2.DecisionID, "delivered")
	if dec, ok := d.Decision(v.DecisionID); !ok || dec.Status != "delivered" {
		t.Errorf("old decision after restart: got %q, %v; want delivered, true", dec.Status, ok)
	}
	reqs = rc.requests()
	if len(reqs) != 1 || reqs[0].header.Get("webhook-id") != v2.DecisionID {
		t.Errorf("got %d requests; want only the new decision's", len(reqs))
	}
}

// gate is a Spinnaker Gate that counts webhook triggers per decision.
type gate struct {
	mu      sync.Mutex
	posts   map[string]int
	status  []int
	n       int
	block   chan struct{} // if set, a trigger waits for it (or for the client to give up)
	arrived chan struct{}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/webhooks/webhook/herd-rollback" ||
		r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Idempotency-Key") != "" {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
		return
	}
	var p SpinnakerPayload
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.Parameters["decision_id"] != p.DecisionID {
		http.Error(w, "bad payload", http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	g.posts[p.DecisionID]++
	status := http.StatusOK
	if len(g.status) > 0 {
		status = g.status[min(g.n, len(g.status)-1)]
	}
	g.n++
	block := g.block
	g.mu.Unlock()
	if block != nil {
		g.arrived <- struct{}{}
		select {
		case <-block:
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(status)
}

func (g *gate) count(id string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.posts[id]
}

func spinnakerConfig(url string) Config {
	return Config{Targets: Targets{Spinnaker: []SpinnakerTarget{{
		Gate: url, Source: "herd-rollback", Parameters: map[string]string{"env": "prod"},
	}}}}
}

func TestSpinnakerNeverTwice(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := &gate{posts: map[string]int{}}
	srv := httptest.NewServer(g)
	defer srv.Close()
	cfg := spinnakerConfig(srv.URL)
	v := testVerdict(proto.StateRollback)

	js := startJS(t, dir)
	d := newTestDeliverer(t, cfg, js.kv)
	stop := startRun(t, d)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, v.DecisionID, "delivered")
	if err := d.Decide(v); err != nil { // the detector repeats itself
		t.Fatal(err)
	}
	if err := d.Redeliver(v.DecisionID, "spinnaker:herd-rollback"); !errors.Is(err, ErrNotResendable) {
		t.Errorf("Redeliver: got %v; want ErrNotResendable", err)
	}
	stop()
	js.stop()

	js = startJS(t, dir)
	d = newTestDeliverer(t, cfg, js.kv)
	startRun(t, d)
	waitStatus(t, d, v.DecisionID, "delivered")
	if err := d.Redeliver(v.DecisionID, ""); !errors.Is(err, ErrNothingToDo) {
		t.Errorf("Redeliver all: got %v; want ErrNothingToDo", err)
	}
	api := httptest.NewServer(d.HTTPHandler())
	defer api.Close()
	resp, err := http.Post(api.URL+"/api/v1/decisions/"+v.DecisionID+"/redeliver?target=spinnaker:herd-rollback", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("API redeliver: got %d; want 409", resp.StatusCode)
	}
	// A second decision round-trips, so the first would have been resent by now if ever.
	v2 := testVerdict(proto.StateRollback)
	if err := d.Decide(v2); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, v2.DecisionID, "delivered")
	if got := g.count(v.DecisionID); got != 1 {
		t.Errorf("got %d triggers for the decision; want 1", got)
	}
}

func TestSpinnakerStopMidSendIsNotResent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := &gate{posts: map[string]int{}, block: make(chan struct{}), arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(g)
	defer srv.Close()
	defer close(g.block)
	cfg := spinnakerConfig(srv.URL)
	v := testVerdict(proto.StateRollback)

	js := startJS(t, dir)
	d := newTestDeliverer(t, cfg, js.kv)
	stop := startRun(t, d)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	<-g.arrived // Gate has the trigger; herd stops before the answer
	stop()
	js.stop()

	js = startJS(t, dir)
	d = newTestDeliverer(t, cfg, js.kv)
	startRun(t, d)
	dec := waitStatus(t, d, v.DecisionID, "unknown")
	if last := dec.Deliveries[len(dec.Deliveries)-1]; last.Outcome != outcomeUnknown {
		t.Errorf("got last outcome %q; want unknown", last.Outcome)
	}
	if got := g.count(v.DecisionID); got != 1 {
		t.Errorf("got %d triggers; want 1", got)
	}
}

func TestSpinnakerCrashWhileSendingIsNotResent(t *testing.T) {
	t.Parallel()
	g := &gate{posts: map[string]int{}}
	srv := httptest.NewServer(g)
	defer srv.Close()
	cfg := spinnakerConfig(srv.URL)
	v := testVerdict(proto.StateRollback)
	js := startJS(t, t.TempDir())

	// What a herd that died right after marking the send leaves in the store.
	rec := record{Decision: proto.Decision{ID: v.DecisionID, Verdict: v, CreatedMs: v.UnixMs, Status: "delivering"},
		Targets: []TargetState{{Target: "spinnaker:herd-rollback", Kind: KindSpinnaker, State: stateSending}}}
	data, _ := json.Marshal(rec)
	if _, err := js.kv.Create(context.Background(), v.DecisionID, data); err != nil {
		t.Fatal(err)
	}
	d := newTestDeliverer(t, cfg, js.kv)
	startRun(t, d)
	waitStatus(t, d, v.DecisionID, "unknown")
	if got := g.count(v.DecisionID); got != 0 {
		t.Errorf("got %d triggers; want 0", got)
	}
}

func TestSpinnakerRetriesOnlyWhenSurelyNotStarted(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		status []int
		posts  int
		want   string
	}{
		{[]int{503, 200}, 2, "delivered"},
		{[]int{429, 200}, 2, "delivered"},
		{[]int{500, 200}, 1, "unknown"},
		{[]int{502, 200}, 1, "unknown"},
		{[]int{400}, 1, "failed"},
	} {
		t.Run(fmt.Sprint(c.status[0]), func(t *testing.T) {
			t.Parallel()
			g := &gate{posts: map[string]int{}, status: c.status}
			srv := httptest.NewServer(g)
			defer srv.Close()
			d := newTestDeliverer(t, spinnakerConfig(srv.URL), nil)
			startRun(t, d)
			v := testVerdict(proto.StateRollback)
			if err := d.Decide(v); err != nil {
				t.Fatal(err)
			}
			waitStatus(t, d, v.DecisionID, c.want)
			if got := g.count(v.DecisionID); got != c.posts {
				t.Errorf("got %d triggers; want %d", got, c.posts)
			}
		})
	}
}

func TestKVFirstWriterWins(t *testing.T) {
	t.Parallel()
	js := startJS(t, t.TempDir())
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	cfg := Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testSecret}}
	d1 := newTestDeliverer(t, cfg, js.kv)
	d2 := newTestDeliverer(t, cfg, js.kv)
	startRun(t, d1)
	startRun(t, d2)
	<-d1.loaded // else a Run starting after Decide would resume the stored decision
	<-d2.loaded
	v := testVerdict(proto.StateRollback)
	if err := d1.Decide(v); err != nil {
		t.Fatal(err)
	}
	if err := d2.Decide(v); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d1, v.DecisionID, "delivered")
	if _, ok := d2.Decision(v.DecisionID); ok {
		t.Errorf("the second detector took the decision; want it left to the first")
	}
	if got := len(rc.requests()); got != 1 {
		t.Errorf("got %d webhooks; want 1", got)
	}
}

// flakyStore fails every Update while down is set.
type flakyStore struct {
	Store
	down atomic.Bool
}

func (s *flakyStore) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if s.down.Load() {
		return 0, errors.New("store unavailable")
	}
	return s.Store.Update(ctx, key, value, rev)
}

func TestSpinnakerWaitsForTheStore(t *testing.T) {
	t.Parallel()
	g := &gate{posts: map[string]int{}}
	srv := httptest.NewServer(g)
	defer srv.Close()
	fs, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &flakyStore{Store: fs}
	d := newTestDeliverer(t, spinnakerConfig(srv.URL), st)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatal(err)
	}
	st.down.Store(true)
	startRun(t, d)
	errs := d.set.GetOrCreateCounter(`herd_deliver_store_errors_total{reason="update"}`)
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := errs.Get(); n < 2 {
			return fmt.Errorf("got %d store errors; want at least 2", n)
		}
		return nil
	})
	if got := g.count(v.DecisionID); got != 0 {
		t.Fatalf("got %d triggers while the send could not be recorded; want 0", got)
	}
	st.down.Store(false)
	waitStatus(t, d, v.DecisionID, "delivered")
	if got := g.count(v.DecisionID); got != 1 {
		t.Errorf("got %d triggers; want 1", got)
	}
}
