package node

import (
	"context"
	"log/slog"
	"slices"
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

// The package's parallel tests take one of two kinds of slot, so that the CPU they use
// together does not grow with `go test -parallel` (make test runs this package by a go test of
// its own with a high -parallel, beside the others):
//
//   - the heavy slot: one heavy real-time test at a time (a NATS cluster with workers and a
//     fleet, the group flood, or a test of placement by arrival time: skewed clocks, a
//     restart). Two at once on two cores starve the lease renewals (a lost lease loses
//     windows by design, see rollup/lease), and batches delayed by a starved process are
//     placed by the rollup's clock heuristics as if their clocks were off.
//   - lightSlots: lightParallel tests beside it, at most this many at a time. They wait
//     most of the time, but more of them at once starve the heavy test all the same.
var lightSlots = make(chan struct{}, 1)

// heavyOrder is the order in which waiting heavy tests take the heavy slot (tests not listed
// go last): the CPU-bound flood, paced by the intake, first, while the other packages' test
// binaries are still being linked; the tests of placement by arrival time last, when the
// machine is quietest.
var heavyOrder = []string{
	"TestGroupFloodLeavesNewServiceExact",
	"TestFailoverWorkerCrashDuringBadCanary",
	"TestRollupWorkersOnCluster",
	"TestFailoverNATSNodeLoss",
	"TestServeRestartCorrectionsExact",
	"TestSkewedAgentClocksExact",
}

// heavy is the heavy slot: held by one test, handed to the waiting test first in heavyOrder.
// It opens heavyGather after the first heavy test asks for it, so that the heavy tests
// resumed at once by go test (a few milliseconds apart) all wait, and the first in order goes
// first.
var heavy struct {
	mu      sync.Mutex
	cond    *sync.Cond
	asked   bool // a heavy test asked: the slot opens heavyGather later
	open    bool
	busy    bool
	waiting map[int]int // rank → tests of that rank waiting
}

// heavyGather is how long the heavy slot waits, after the first heavy test asks for it, for
// the others to ask too.
const heavyGather = 300 * time.Millisecond

func init() {
	heavy.cond = sync.NewCond(&heavy.mu)
	heavy.waiting = map[int]int{}
}

// heavyParallel marks t parallel, waits for the heavy slot and holds it until the test and
// all its cleanups (the cluster's shutdown included) are done.
func heavyParallel(t *testing.T) {
	t.Helper()
	t.Parallel()
	rank := slices.Index(heavyOrder, t.Name())
	if rank < 0 {
		rank = len(heavyOrder)
	}
	heavy.mu.Lock()
	if !heavy.asked {
		heavy.asked = true
		time.AfterFunc(heavyGather, func() {
			heavy.mu.Lock()
			heavy.open = true
			heavy.mu.Unlock()
			heavy.cond.Broadcast()
		})
	}
	heavy.waiting[rank]++
	for !heavy.open || heavy.busy || heavyWaitingBefore(rank) {
		heavy.cond.Wait()
	}
	if heavy.waiting[rank]--; heavy.waiting[rank] == 0 {
		delete(heavy.waiting, rank)
	}
	heavy.busy = true
	heavy.mu.Unlock()
	t.Cleanup(func() { // registered first, so it runs last
		heavy.mu.Lock()
		heavy.busy = false
		heavy.mu.Unlock()
		heavy.cond.Broadcast()
	})
}

// heavyWaitingBefore reports whether a test ranked before rank waits for the heavy slot.
// heavy.mu must be held.
func heavyWaitingBefore(rank int) bool {
	for r := range heavy.waiting {
		if r < rank {
			return true
		}
	}
	return false
}

// lightParallel marks t parallel and waits for a light slot, held until the test and all its
// cleanups are done.
//
// A test holding a slot must not need another parallel slot of go test's before it ends (a
// parallel subtest does): the tests waiting for our slots may hold all of go test's. So a
// test with parallel subtests calls t.Parallel only, and each subtest takes its own slot.
func lightParallel(t *testing.T) {
	t.Helper()
	t.Parallel()
	lightSlots <- struct{}{}
	t.Cleanup(func() { <-lightSlots })
}
