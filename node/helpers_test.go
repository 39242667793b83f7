package node

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// runNode builds cfg's node and runs it until stop or the test's end. stop cancels Run and
// returns its error; it may be called more than once. An error of a Run the test did not stop
// itself is dropped: startNode reports it.
func runNode(t *testing.T, cfg Config, log *slog.Logger) (n *Node, stop func() error) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() { _ = stop() })
	return n, stop
}

// waitReady waits until n serves.
func waitReady(t *testing.T, n *Node) {
	t.Helper()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !n.ready.Load() {
			return errorf("node not ready")
		}
		return nil
	})
}

// startNode runs cfg's node until the test ends, failing the test if Run fails, and waits
// until it is ready.
func startNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	n, stop := runNode(t, cfg, testLogger(t))
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitReady(t, n)
	return n
}

// startRoles runs a node with the given roles until the test ends (see startNode).
func startRoles(t *testing.T, cfg Config, roles Roles) *Node {
	t.Helper()
	cfg.Roles = roles
	return startNode(t, cfg)
}

// heavySlot lets one heavy real-time test (a NATS cluster with workers and a fleet, the group
// flood, or a test of placement by arrival time: skewed clocks, a restart) run at a time,
// beside the package's light parallel tests: two at once on two cores starve the lease
// renewals (a lost lease loses windows by design, see rollup/lease), and batches delayed by a
// starved process are placed by the rollup's clock heuristics as if their clocks were off.
var heavySlot sync.Mutex

// oneHeavy waits for the heavy slot and holds it until the test and all its cleanups (the
// cluster's shutdown included) are done.
func oneHeavy(t *testing.T) {
	t.Helper()
	heavySlot.Lock()
	t.Cleanup(heavySlot.Unlock) // registered first, so it runs last
}
