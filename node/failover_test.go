package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

// failoverFleet is the fleet of the failover tests: a baseline and a canary of checkout and
// a bystander service, publishing through nc.
func failoverFleet(t *testing.T, nc *nats.Conn) *sim.Fleet {
	t.Helper()
	return steadyFleet(t, nc.Publish, 9,
		testGroup("checkout", "1.4.2", 10), testGroup("checkout", "1.5.0", 4), testGroup("search", "2.0.1", 4))
}

// TestFailoverWorkerCrashDuringBadCanary crashes the rollup worker that owns a bad canary's
// partition at the onset of the regression: the partition moves, and the detector's
// rollback still arrives within 10 s of the onset.
func TestFailoverWorkerCrashDuringBadCanary(t *testing.T) {
	heavyParallel(t)
	if testing.Short() {
		t.Skip("runs a NATS cluster and a fleet in real time")
	}
	servers := natstest.RunCluster(t, 3)
	urls := embednats.ClientURLs(servers)
	var ws []*testWorker
	for i, s := range servers {
		ws = append(ws, startTestWorker(t, s.ClientURL(), "w"+strconv.Itoa(i+1), ""))
	}
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error { return checkWorkersReady(ws, servers[0]) })

	var hookAt atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hookAt.CompareAndSwap(0, time.Now().UnixNano())
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	cfg := DefaultConfig()
	cfg.NATS.URLs, cfg.HTTPListen, cfg.DataDir = urls, "127.0.0.1:0", t.TempDir()
	cfg.Deliver.Webhooks, cfg.Deliver.WebhookSecrets = []string{recv.URL}, []string{"s3cret"}
	det := startRoles(t, cfg, Roles{Detect: true})
	wl := logWindows(t, servers[1].ClientURL())

	pub, err := nats.Connect(servers[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	fl := failoverFleet(t, pub)
	if err := det.Announce(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = fl.Run(ctx, time.Time{}) })
	defer func() { stop(); wg.Wait() }()

	// Past the detector's warm-up (5 s of canary windows), the canary regresses and its
	// partition's owner crashes.
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		wl.mu.Lock()
		defer wl.mu.Unlock()
		if n := len(wl.starts[[2]string{"checkout", "1.5.0"}]); n < 28 {
			return errorf("%d windows of the canary so far; want 28 (7 s)", n)
		}
		return nil
	})
	tok, _ := proto.EscapeVersion("1.5.0")
	part := proto.PartitionOf("checkout", tok)
	victim := -1
	for i, tw := range ws {
		for _, p := range tw.n.worker.leases.Owned() {
			if p == part {
				victim = i
			}
		}
	}
	if victim < 0 {
		t.Fatalf("no worker owns partition %d of the canary", part)
	}
	fl.Group("checkout", "1.5.0").SetErrorRate(0.1)
	onset := time.Now()
	ws[victim].n.Crash()

	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if hookAt.Load() == 0 {
			return errorf("no rollback webhook yet")
		}
		return nil
	})
	took := time.Unix(0, hookAt.Load()).Sub(onset)
	var owner string
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for i, tw := range ws {
			if i != victim && contains(tw.n.worker.leases.Owned(), part) {
				owner = tw.n.worker.leases.WorkerID()
				return nil
			}
		}
		return errorf("partition %d not owned again", part)
	})
	var decided proto.Verdict
	for _, v := range det.det.Verdicts() {
		if v.Canary == "1.5.0" {
			decided = v
		}
	}
	t.Logf("worker %s owning the canary's partition %d crashed at the onset; %s took it over; rollback webhook %s after the onset: %s (decided by %s)",
		ws[victim].n.worker.leases.WorkerID(), part, owner, took.Round(time.Millisecond), decided.Sentence, decided.Evidence.Decisive)
	if decided.State != proto.StateRollback || decided.Evidence.Decisive != "errors" {
		t.Errorf("verdict %s decided by %q; want a rollback decided by the errors test, not by a guard fooled by the missing windows", decided.State, decided.Evidence.Decisive)
	}
	perftest.Within(t, "rollback webhook after the onset with a crashed worker", took, 10*time.Second)
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// TestFailoverNATSNodeLoss shuts down one of three NATS nodes while workers, a fleet and a
// window reader are connected: everything reconnects, windows keep coming for every group,
// nothing is counted twice, and what was lost is reported.
func TestFailoverNATSNodeLoss(t *testing.T) {
	heavyParallel(t)
	if testing.Short() {
		t.Skip("runs a NATS cluster and a fleet in real time")
	}
	servers := natstest.RunCluster(t, 3)
	urls := embednats.ClientURLs(servers)
	var ws []*testWorker
	for i := range servers {
		// Every worker knows every node, and starts on its own.
		own := servers[i].ClientURL()
		ws = append(ws, startTestWorker(t, own+","+urls, "w"+strconv.Itoa(i+1), ""))
	}
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error { return checkWorkersReady(ws, servers[0]) })

	// The window reader, a web node and the fleet sit on nodes that stay; node 2 goes.
	wl := logWindows(t, servers[0].ClientURL())
	wcfg := DefaultConfig()
	wcfg.NATS.URLs, wcfg.HTTPListen, wcfg.DataDir = servers[0].ClientURL(), "127.0.0.1:0", t.TempDir()
	webNode := startRoles(t, wcfg, Roles{Web: true})
	pub, err := nats.Connect(servers[2].ClientURL()+","+servers[0].ClientURL(), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	fl := failoverFleet(t, pub)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = fl.Run(ctx, time.Now().Add(8*time.Second)) })
	defer func() { stop(); wg.Wait() }()

	time.Sleep(3 * time.Second) // let the fleet run before the node goes
	killed := time.Now()
	natstest.Shutdown(servers[2])
	wg.Wait()
	if err := pub.Flush(); err != nil {
		t.Fatalf("the fleet's connection did not come back: %v", err)
	}

	// Windows keep coming for every group after the loss; wait for the last ones to close
	// (lateness) or, if some never come, for the totals to stop changing.
	after := killed.Add(2 * time.Second).UnixMilli()
	totals := func() (sent, got uint64) {
		wl.mu.Lock()
		defer wl.mu.Unlock()
		for _, g := range fl.Totals() {
			sent += g.Requests
			if w := wl.totals[[2]string{g.Service, g.Version}]; w != nil {
				got += w.Requests
			}
		}
		return sent, got
	}
	var prev uint64
	stable := 0
	checkFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		sent, got := totals()
		if got == prev {
			stable++
		} else {
			stable, prev = 0, got
		}
		if got < sent && stable < 10 {
			return errorf("windows hold %d of %d requests and still grow", got, sent)
		}
		return nil
	})
	wl.mu.Lock()
	for _, g := range fl.Totals() {
		late := false
		for start := range wl.starts[[2]string{g.Service, g.Version}] {
			if start >= after {
				late = true
			}
		}
		if !late {
			t.Errorf("no window of %s/%s starting 2 s after the node loss", g.Service, g.Version)
		}
	}
	wl.mu.Unlock()
	wl.mu.Lock()
	defer wl.mu.Unlock()
	var sent, got uint64
	for _, g := range fl.Totals() {
		k := [2]string{g.Service, g.Version}
		w := wl.totals[k]
		if w == nil {
			t.Fatalf("no windows of %s/%s", g.Service, g.Version)
		}
		if w.Requests > g.Requests {
			t.Errorf("%s/%s: windows hold %d requests; the fleet sent %d: counted twice", g.Service, g.Version, w.Requests, g.Requests)
		}
		for start, n := range wl.starts[k] {
			if n > 1 {
				t.Errorf("%s/%s: window %d published %d times", g.Service, g.Version, start, n)
			}
		}
		sent += g.Requests
		got += w.Requests
	}
	// Batches missing from an instance's sequence are counted lost once they can no longer
	// arrive (at the latest when the stopped instance's state expires).
	var lost, gaps, discarded, skipped, refused, moves uint64
	counted := func() uint64 {
		lost, gaps, discarded, skipped, refused, moves = 0, 0, 0, 0, 0, 0
		for _, tw := range ws {
			st := tw.n.worker.parts.Stats()
			lost += st.Lost
			refused += st.Refused()
			gaps += st.GapWindows
			discarded += st.WindowsDiscarded
			for _, n := range st.Skipped {
				skipped += n
			}
			for r, n := range tw.n.worker.leases.Moves() {
				if r != "acquired_free" {
					moves += n
				}
			}
		}
		return lost + refused + skipped + discarded
	}
	counted()
	// Windows lost on their way from a worker are counted by their consumers, as gaps in a
	// group's window starts.
	missing := webNode.dec.WindowsMissing()
	var gapsSeen int
	for k, starts := range wl.starts {
		var first, last int64
		for st := range starts {
			if first == 0 || st < first {
				first = st
			}
			last = max(last, st)
		}
		if n := int((last-first)/250) + 1 - len(starts); n > 0 {
			gapsSeen += n
			t.Logf("%s/%s: %d windows missing", k[0], k[1], n)
		}
	}
	if gapsSeen > 0 && missing == 0 {
		t.Errorf("%d windows never arrived but the web node counted none missing", gapsSeen)
	}
	for _, tw := range ws {
		st := tw.n.worker.parts.Stats()
		t.Logf("worker %s: merged %d, refused %v, lost %d, skipped %v, gaps %d, discarded %d, intake %+v, moves %v", tw.n.worker.leases.WorkerID(),
			st.BatchesMerged, st.RefusedBy, st.Lost, st.Skipped, st.GapWindows, st.WindowsDiscarded, tw.n.worker.intakeMetrics.Stats(), tw.n.worker.leases.Moves())
	}
	var sentBatches uint64
	for _, g := range fl.Totals() {
		sentBatches += g.BatchesSent
	}
	t.Logf("fleet sent %d batches", sentBatches)
	t.Logf("node loss: %d of %d requests in no window (%.2f %%); %d windows missing, %d counted missing by the web node "+
		"(herd_serve_windows_missing_total); workers counted %d batches lost to sequence gaps, %d refused, %d skipped outside "+
		"a lease's span, %d window intervals without an owner, %d windows discarded, %d lease moves",
		sent-got, sent, 100*float64(sent-got)/float64(sent), gapsSeen, missing, lost, refused, skipped, gaps, discarded, moves)
}
