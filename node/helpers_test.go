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
//   - the heavy lanes: the heavy real-time tests (a NATS cluster with workers and a fleet, a
//     test of placement by arrival time: skewed clocks, a restart; the group flood) run one at
//     a time in each lane of heavyLanes, in order, the lanes side by side. There is one lane:
//     two clusters at once on two cores, beside the other packages, starve the lease renewals
//     and the bucket's elections (one took over 15 s to own every partition again), and a
//     cluster beside a placement test misplaced the latter's batches (a starved process's
//     batches are placed by the rollup's clock heuristics as if their clocks were off). The
//     lane starts with the CPU-bound flood, paced by the intake, while the other packages'
//     test binaries are still being compiled and linked; the tests of placement by arrival
//     time come last, when the machine is quietest.
//   - lightSlots: lightParallel tests beside them, at most this many at a time. They wait
//     most of the time, but more of them at once starve the heavy tests all the same (two
//     light tests beside a heavy one starved web's live demo in the packages beside).
var lightSlots = make(chan struct{}, 1)

// heavyLanes lists the heavy tests lane by lane, in the order each lane runs them (a test not
// listed runs last in the first lane).
var heavyLanes = [][]string{
	{"TestGroupFloodLeavesNewServiceExact", "TestFailoverWorkerCrashDuringBadCanary", "TestRollupWorkersOnCluster", "TestFailoverNATSNodeLoss",
		"TestServeRestartCorrectionsExact", "TestSkewedAgentClocksExact"},
}

// heavyAlone lists the heavy tests that run with no other heavy test, before the lanes: none
// while there is one lane.
var heavyAlone []string

// heavyPlace returns the lane and the rank in it of test name (lane −1: alone).
func heavyPlace(name string) (lane, rank int) {
	if slices.Contains(heavyAlone, name) {
		return -1, 0
	}
	offset := 0
	for l, tests := range heavyLanes {
		if r := slices.Index(tests, name); r >= 0 {
			if perftest.Enabled() {
				return 0, offset + r
			}
			return l, r
		}
		offset += len(tests)
	}
	return 0, offset
}

// heavy is the state of the lanes. They open heavyGather after the first heavy test asks, so
// that the heavy tests resumed at once by go test (a few milliseconds apart) all wait, and the
// first of each lane goes first.
var heavy struct {
	mu      sync.Mutex
	cond    *sync.Cond
	asked   bool // a heavy test asked: the lanes open heavyGather later
	open    bool
	busy    map[int]bool   // lane → a test runs in it
	waiting map[[2]int]int // (lane, rank) → tests waiting
}

// heavyGather is how long the lanes wait, after the first heavy test asks, for the others to
// ask too.
const heavyGather = 300 * time.Millisecond

func init() {
	heavy.cond = sync.NewCond(&heavy.mu)
	heavy.busy = map[int]bool{}
	heavy.waiting = map[[2]int]int{}
}

// heavyParallel marks t parallel, waits for its turn in its lane and holds the lane until the
// test and all its cleanups (the cluster's shutdown included) are done.
func heavyParallel(t *testing.T) {
	t.Helper()
	t.Parallel()
	lane, rank := heavyPlace(t.Name())
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
	key := [2]int{lane, rank}
	heavy.waiting[key]++
	for !heavy.open || !heavyMayRun(lane, rank) {
		heavy.cond.Wait()
	}
	if heavy.waiting[key]--; heavy.waiting[key] == 0 {
		delete(heavy.waiting, key)
	}
	heavy.busy[lane] = true
	heavy.mu.Unlock()
	t.Cleanup(func() { // registered first, so it runs last
		heavy.mu.Lock()
		delete(heavy.busy, lane)
		heavy.mu.Unlock()
		heavy.cond.Broadcast()
	})
}

// heavyMayRun reports whether the test at (lane, rank) may start: a test alone once no heavy
// test runs; another once no test runs alone or waits to, none runs in its lane and none
// before it in its lane waits. heavy.mu must be held.
func heavyMayRun(lane, rank int) bool {
	if lane < 0 {
		return len(heavy.busy) == 0
	}
	if heavy.busy[-1] || heavy.busy[lane] {
		return false
	}
	for k := range heavy.waiting {
		if k[0] < 0 || (k[0] == lane && k[1] < rank) {
			return false
		}
	}
	return true
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
