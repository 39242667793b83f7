package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(&testWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// testStack starts an all-in-one stack on random ports. stop stops it and returns run's
// error; it is idempotent and also runs when the test ends.
func testStack(t *testing.T) (s *Node, stop func() error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), "127.0.0.1:0"
	s, stop = runNode(t, cfg, testLogger(t))
	waitReady(t, s) // the NATS port opens before ready
	return s, stop
}

// windowSums totals what windows carried per group.
type windowSums struct {
	mu      sync.Mutex
	byGroup map[[2]string]*sim.Totals
	delays  []time.Duration // receive time minus window end
}

// collectWindows totals the windows published on subject (proto.SubjectRollupAll, or one
// service's herd.rollup.<service>.>) and records their delays.
func collectWindows(t *testing.T, url, subject string) *windowSums {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ws := &windowSums{byGroup: map[[2]string]*sim.Totals{}}
	_, err = nc.Subscribe(subject, func(m *nats.Msg) {
		got := time.Now()
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			t.Errorf("bad window on %s: %v", m.Subject, err)
			return
		}
		ws.mu.Lock()
		defer ws.mu.Unlock()
		ws.delays = append(ws.delays, got.Sub(time.UnixMilli(w.EndMs)))
		k := [2]string{w.Service, w.Version}
		tot := ws.byGroup[k]
		if tot == nil {
			tot = &sim.Totals{Service: w.Service, Version: w.Version}
			ws.byGroup[k] = tot
		}
		tot.AddWindow(w)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ws
}

// TestExactUnderChurn runs a churning fleet through NATS, intake and rollup and checks that
// the windows' totals equal what the fleet published, exactly.
func TestExactUnderChurn(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs a fleet for several seconds")
	}
	s, stop := testStack(t)
	ws := collectWindows(t, s.NATSURL(), proto.SubjectRollupAll)

	nc, err := nats.Connect(s.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	f := churnFleet(t, nc.Publish, 7, sim.SpreadConfig{Services: []string{"checkout", "search"}, Instances: 200, CanaryShare: 0.2},
		500*time.Millisecond, 2*time.Second)
	if err := f.Run(context.Background(), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Stopping serve drains the intake and flushes every open window.
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	want := f.Totals()
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		for _, w := range want {
			got := ws.byGroup[[2]string{w.Service, w.Version}]
			if got == nil {
				return errorf("no windows for %s/%s", w.Service, w.Version)
			}
			if got.Requests != w.Requests || got.Errors != w.Errors || got.LatencyCount != w.LatencyCount {
				return errorf("%s/%s: windows hold requests=%d errors=%d latency_count=%d; sim published %d %d %d",
					w.Service, w.Version, got.Requests, got.Errors, got.LatencyCount, w.Requests, w.Errors, w.LatencyCount)
			}
		}
		return nil
	})
	ws.mu.Lock()
	p50, p99 := percentile(ws.delays, 0.50), percentile(ws.delays, 0.99)
	n := len(ws.delays)
	ws.mu.Unlock()
	// A window closes at end + lateness (500 ms) at the latest; it must be on herd.rollup.>
	// within 100 ms more. A complete window closes early: the median within 100 ms of its end.
	perftest.Within(t, fmt.Sprintf("window end → herd.rollup.> p99 over %d windows", n), p99, 850*time.Millisecond)
	perftest.Within(t, fmt.Sprintf("window end → herd.rollup.> p50 over %d windows", n), p50, 100*time.Millisecond)
	for _, w := range want {
		if w.InstancesStarted < uint64(100/len(want)) || w.InstancesStopped != w.InstancesStarted || w.BatchesUnsent != 0 {
			t.Errorf("%s/%s: started %d stopped %d unsent %d; want churn, every instance stopped, nothing unsent",
				w.Service, w.Version, w.InstancesStarted, w.InstancesStopped, w.BatchesUnsent)
		}
		got := ws.byGroup[[2]string{w.Service, w.Version}]
		if got.InstancesStopped != w.InstancesStopped {
			t.Errorf("%s/%s: windows saw %d instances stop; sim stopped %d", w.Service, w.Version, got.InstancesStopped, w.InstancesStopped)
		}
		t.Logf("%s/%s: requests=%d errors=%d latency_count=%d instances started=%d", w.Service, w.Version,
			w.Requests, w.Errors, w.LatencyCount, w.InstancesStarted)
	}
}
