package node

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
)

// TestRestartKeepsHistoryAndDecisions rolls a crash-looping canary back, restarts serve on
// the same data directory, and checks that the dashboard's history and the detector's
// verdict come back from JetStream while the decision is not delivered again.
func TestRestartKeepsHistoryAndDecisions(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs a fleet in real time")
	}
	var hooks atomic.Int32
	var mu sync.Mutex
	var ids []string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooks.Add(1)
		mu.Lock()
		ids = append(ids, r.Header.Get("webhook-id"))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()

	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", dir, "127.0.0.1:0"
	cfg.Deliver.Webhooks = []string{recv.URL + "/hook"}
	cfg.Deliver.WebhookSecrets = []string{"test-secret"}
	start := func() (*Node, func() error) {
		s, stop := runNode(t, cfg, testLogger(t))
		waitReady(t, s)
		return s, stop
	}

	s1, stop1 := start()
	pc, err := bus.Connect(bus.Client{URLs: s1.NATSURL()}, "test-fleet", nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	fl := steadyFleet(t, pc.Publish, 3, testGroup("checkout", "1.4.2", 10), testGroup("checkout", "1.5.0", 3))
	if err := s1.Announce(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"}); err != nil {
		t.Fatal(err)
	}
	fctx, fstop := context.WithCancel(context.Background())
	fdone := make(chan error, 1)
	go func() { fdone <- fl.Run(fctx, time.Time{}) }()
	// Let both groups report, then make the canary crash-loop.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if windowsOf(t, s1.HTTPURL(), "checkout") < 8 {
			return errorf("fewer than 8 windows of checkout yet")
		}
		return nil
	})
	fl.Group("checkout", "1.5.0").SetCrash(true)
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if hooks.Load() < 1 {
			return errorf("no rollback webhook yet")
		}
		return nil
	})
	fstop()
	if err := <-fdone; err != nil {
		t.Fatal(err)
	}
	pc.Close()
	var decided proto.Verdict
	for _, v := range s1.det.Verdicts() {
		if v.State == proto.StateRollback {
			decided = v
		}
	}
	if decided.DecisionID == "" {
		t.Fatal("the detector holds no rollback verdict")
	}
	histBefore := windowsOf(t, s1.HTTPURL(), "checkout")
	if err := stop1(); err != nil {
		t.Fatalf("first serve: %v", err)
	}

	// Restart on the same data directory.
	s2, stop2 := start()
	defer stop2()
	var after proto.Verdict
	for _, v := range s2.det.Verdicts() {
		if v.Canary == "1.5.0" {
			after = v
		}
	}
	if after.State != proto.StateRollback || after.DecisionID != decided.DecisionID {
		t.Errorf("after restart the detector holds %s %q; want rollback %q", after.State, after.DecisionID, decided.DecisionID)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if got := windowsOf(t, s2.HTTPURL(), "checkout"); got < histBefore/2 {
			return errorf("dashboard holds %d windows of checkout after restart; had %d before", got, histBefore)
		}
		return nil
	})
	// The replayed rollback reached delivery (which knows it is done) before serve became
	// ready; the decision list proves delivery has loaded it.
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, d := range s2.dl.Decisions() {
			if d.ID == decided.DecisionID && d.Status == "delivered" {
				return nil
			}
		}
		return errorf("delivery does not list decision %s as delivered", decided.DecisionID)
	})
	if n := hooks.Load(); n != 1 {
		mu.Lock()
		t.Errorf("the receiver got %d webhooks (%v); want exactly 1", n, ids)
		mu.Unlock()
	}
}

// windowsOf sums the windows the dashboard API holds for a service's groups.
func windowsOf(t *testing.T, base, service string) int {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/services/" + service)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0
	}
	var body struct {
		Groups []struct {
			Windows int `json:"windows"`
		} `json:"groups"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("cannot decode /api/v1/services/%s: %v", service, err)
	}
	n := 0
	for _, g := range body.Groups {
		n += g.Windows
	}
	return n
}
