package graph_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/node"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/graph"
)

// TestEdgesExactUnderChurn runs a churning graph fleet through a real node (embedded NATS,
// intake, rollup) beside a hostile caller that names 100,000 distinct callees, and checks
// that the windows' edge totals equal what the fleet called, exactly, and that the flood
// was bounded by the rollup's per-group series limit and counted.
func TestEdgesExactUnderChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a fleet for several seconds")
	}
	cfg := node.DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), "127.0.0.1:0"
	cfg.Name = "edges-exact"
	n, err := node.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- n.Run(ctx) }()
	defer func() {
		stop()
		<-runErr
	}()
	select {
	case <-n.Ready():
	case err := <-runErr:
		t.Fatalf("node stopped before ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("node not ready after 20 s")
	}
	nc, err := nats.Connect(n.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var mu sync.Mutex
	got := sim.EdgeSums{}
	windows := 0
	sub, err := nc.Subscribe(proto.SubjectRollupAll, func(m *nats.Msg) {
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			t.Errorf("bad window on %s: %v", m.Subject, err)
			return
		}
		mu.Lock()
		got.AddWindow(w)
		windows++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	g, err := graph.New(graph.Config{Services: 12, EntryRPS: 400, RPSPerInstance: 40, MaxInstances: 4, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	f, err := sim.NewFleet(sim.FleetConfig{Groups: g.Groups("1.0.0", 0.01, 20*time.Millisecond, 100*time.Millisecond),
		Calls: g.Calls, LifetimeMin: 500 * time.Millisecond, LifetimeMax: 2 * time.Second, Seed: 9, Publish: nc.Publish})
	if err != nil {
		t.Fatal(err)
	}
	// The hostile caller: 25 instances of one group, each registering 4,000 edges of its own
	// callees straight on the client (past the Edges recorder's bound), 100,000 in all.
	const floodCallees, perClient = 100_000, 4_000
	var flood []*ingest.Client
	for i := range floodCallees / perClient {
		c, err := ingest.NewClient(ingest.ClientConfig{Service: "flood", Version: "6.6.6", MaxSeries: proto.MaxSeries,
			Publish: nc.Publish, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		for j := range perClient {
			k := proto.EdgeKey{Callee: fmt.Sprintf("callee-%d", i*perClient+j)}
			c.Counter(proto.SeriesEdgeCalls, proto.EdgeLabels(k)...).Inc()
		}
		flood = append(flood, c)
	}
	fctx, fstop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := f.Run(fctx, time.Now().Add(4*time.Second)); err != nil {
			t.Error(err)
		}
	})
	// The flood publishes once, mid-run.
	checkfor.Within(t, 5*time.Second, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if windows < 5 {
			return errors.New("fewer than 5 windows yet")
		}
		return nil
	})
	for _, c := range flood {
		if err := c.Flush(time.Now(), true); err != nil {
			t.Errorf("flood flush: %v", err)
		}
	}
	wg.Wait()
	fstop()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := f.EdgeTotals()
	if len(want) < g.Edges() {
		t.Fatalf("the fleet called %d edges; want all %d of the graph", len(want), g.Edges())
	}
	checkfor.Within(t, 10*time.Second, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for id, w := range want {
			if got[id] != w {
				return fmt.Errorf("%s/%s → %s: windows hold %+v; the fleet called %+v", id.Service, id.Version, id.Edge, got[id], w)
			}
		}
		return nil
	})
	var calls, floodEdges uint64
	var nWindows int
	mu.Lock()
	nWindows = windows
	for id, w := range want {
		calls += w.Calls
		_ = id
	}
	for id := range got {
		if id.Service == "flood" {
			floodEdges++
		}
	}
	mu.Unlock()
	// Every flood batch reaches the rollup; all but the limit's worth of its series are refused.
	wantRefused := uint64(floodCallees - cfg.Rollup.MaxSeriesPerGroup)
	var refused uint64
	checkfor.Within(t, 10*time.Second, 50*time.Millisecond, func() error {
		if refused = n.Rollup().Stats().SeriesRefused[rollup.ReasonTooManySeries]; refused < wantRefused {
			return fmt.Errorf("series refused as too_many_series: got %d; want at least %d (batches refused: %v)",
				refused, wantRefused, n.Rollup().Stats().RefusedBy)
		}
		return nil
	})
	t.Logf("%d edges, %d calls exact over %d windows; flood: %d edges kept, %d series refused (too_many_series)",
		len(want), calls, nWindows, floodEdges, refused)
	if floodEdges == 0 || floodEdges > uint64(cfg.Rollup.MaxSeriesPerGroup) {
		t.Errorf("flood edges in windows: got %d; want 1 to %d (the per-group series limit)", floodEdges, cfg.Rollup.MaxSeriesPerGroup)
	}
}
