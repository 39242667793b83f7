package node

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/perftest"
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
//   - the heavy slots: heavyCap() units shared by the heavy real-time tests (a NATS cluster with
//     workers and a fleet, the group flood, or a test of placement by arrival time: skewed
//     clocks, a restart), taken in heavyOrder. A test of a cluster or of placement takes one
//     unit: each uses about a quarter of a core under the race detector, and two of them side
//     by side leave the lease renewals and the arrival times alone. The flood takes them all:
//     it is CPU-bound for most of its run, and beside it renewals starve (a lost lease loses
//     windows by design, see rollup/lease) and batches delayed by a starved process are placed
//     by the rollup's clock heuristics as if their clocks were off.
//   - lightSlots: lightParallel tests beside them, at most this many at a time. They wait
//     most of the time (about a quarter of a core each), but more of them at once starve the
//     heavy tests all the same.
var lightSlots = make(chan struct{}, 3)

// heavyCap returns the number of heavy units: 2, or 1 under make perf, which measures each
// heavy test alone. heavyExclusive lists the tests that take them all.
func heavyCap() int {
	if perftest.Enabled() {
		return 1
	}
	return 2
}

var heavyExclusive = []string{"TestGroupFloodLeavesNewServiceExact"}

// heavyOrder is the order in which waiting heavy tests take heavy units (tests not listed go
// last): the CPU-bound flood, paced by the intake, first, while the other packages' test
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

// heavy are the heavy units: a waiting test takes its units once they are free and no test
// before it in heavyOrder waits. They open heavyGather after the first heavy test asks, so
// that the heavy tests resumed at once by go test (a few milliseconds apart) all wait, and the
// first in order goes first.
var heavy struct {
	mu      sync.Mutex
	cond    *sync.Cond
	asked   bool // a heavy test asked: the units open heavyGather later
	open    bool
	used    int         // units held
	waiting map[int]int // rank → tests of that rank waiting
}

// heavyGather is how long the heavy units wait, after the first heavy test asks for one, for
// the others to ask too.
const heavyGather = 300 * time.Millisecond

func init() {
	heavy.cond = sync.NewCond(&heavy.mu)
	heavy.waiting = map[int]int{}
}

// heavyParallel marks t parallel, waits for its heavy units and holds them until the test
// and all its cleanups (the cluster's shutdown included) are done.
func heavyParallel(t *testing.T) {
	t.Helper()
	t.Parallel()
	rank := slices.Index(heavyOrder, t.Name())
	if rank < 0 {
		rank = len(heavyOrder)
	}
	units := 1
	if slices.Contains(heavyExclusive, t.Name()) {
		units = heavyCap()
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
	for !heavy.open || heavy.used+units > heavyCap() || heavyWaitingBefore(rank) {
		heavy.cond.Wait()
	}
	if heavy.waiting[rank]--; heavy.waiting[rank] == 0 {
		delete(heavy.waiting, rank)
	}
	heavy.used += units
	heavy.mu.Unlock()
	heavy.cond.Broadcast() // the next in order may fit beside this one
	t.Cleanup(func() {     // registered first, so it runs last
		heavy.mu.Lock()
		heavy.used -= units
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
