package node

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
)

// TestSeparateRolesAndTwoDetectors runs ingest, two detectors and a web node as separate
// stacks on one NATS: a crash-looping canary is rolled back with exactly one webhook, and
// the web node shows the windows, the verdict and the decision.
func TestSeparateRolesAndTwoDetectors(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs a fleet in real time")
	}
	var hooks atomic.Int32
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooks.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()

	base := DefaultConfig()
	base.NATSListen, base.HTTPListen, base.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	ingest := startRoles(t, base, Roles{Ingest: true})

	remote := base
	remote.NATS.URLs = ingest.NATSURL()
	remote.Deliver.Webhooks = []string{recv.URL}
	remote.Deliver.WebhookSecrets = []string{"s3cret"}
	d1 := startRoles(t, remote, Roles{Detect: true})
	d2 := startRoles(t, remote, Roles{Detect: true})
	w := startRoles(t, remote, Roles{Web: true})

	pc, err := bus.Connect(bus.Client{URLs: ingest.NATSURL()}, "test-fleet", nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fl := steadyFleet(t, pc.Publish, 5, testGroup("checkout", "1.4.2", 10), testGroup("checkout", "1.5.0", 3))
	// The announcement goes through the web node's API, as a deploy tool would send it.
	resp, err := http.Post(w.HTTPURL()+"/api/v1/deployments", "application/json",
		strings.NewReader(`{"service":"checkout","baseline":"1.4.2","canary":"1.5.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST /api/v1/deployments: got %s; want 2xx", resp.Status)
	}
	fctx, fstop := context.WithCancel(context.Background())
	var fwg sync.WaitGroup
	fwg.Go(func() { _ = fl.Run(fctx, time.Time{}) })
	defer func() { fstop(); fwg.Wait() }()

	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := windowsOf(t, w.HTTPURL(), "checkout"); n < 8 {
			return errorf("web node holds %d windows of checkout; want ≥ 8", n)
		}
		return nil
	})
	fl.Group("checkout", "1.5.0").SetCrash(true)
	var id string
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, d := range []*Node{d1, d2} {
			var got string
			for _, v := range d.det.Verdicts() {
				if v.State == proto.StateRollback {
					got = v.DecisionID
				}
			}
			if got == "" {
				return errorf("a detector has no rollback yet")
			}
			if id != "" && got != id {
				t.Fatalf("the detectors decided %s and %s; want one decision id", id, got)
			}
			id = got
		}
		return nil
	})
	// Both detectors handed the decision to delivery: one created it in the shared store and
	// delivered it, the other found it there (first writer wins) and stood back.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if hooks.Load() < 1 {
			return errorf("no webhook yet")
		}
		owners, losers := 0, uint64(0)
		for _, d := range []*Node{d1, d2} {
			if _, ok := d.dl.Decision(id); ok {
				owners++
			}
			losers += d.metrics.GetOrCreateCounter(`herd_deliver_decisions_refused_total{reason="exists"}`).Get()
		}
		if owners != 1 || losers != 1 {
			return errorf("%d deliverers own decision %s and %d found it taken; want 1 and 1", owners, id, losers)
		}
		return nil
	})
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(w.HTTPURL() + "/api/v1/dashboard/decisions")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body struct {
			Decisions []proto.Decision `json:"decisions"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		for _, d := range body.Decisions {
			if d.ID == id {
				return nil
			}
		}
		return errorf("web node lists %d decisions, not %s", len(body.Decisions), id)
	})
	if n := hooks.Load(); n != 1 {
		t.Errorf("two detectors sent %d webhooks for one decision; want 1", n)
	}
}
