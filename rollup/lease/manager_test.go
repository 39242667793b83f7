package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := DefaultConfig()
	good.WorkerID = "w1"
	if err := good.Validate(); err != nil {
		t.Fatalf("default config: got %v; want nil", err)
	}
	for name, mut := range map[string]func(*Config){
		"bucket":    func(c *Config) { c.Bucket = "a.b" },
		"worker id": func(c *Config) { c.WorkerID = "a b" },
		"margin":    func(c *Config) { c.Margin = c.TTL },
		"heartbeat": func(c *Config) { c.Heartbeat = c.TTL },
		"tick":      func(c *Config) { c.Tick = 2 * c.Heartbeat },
		"replicas":  func(c *Config) { c.Replicas = 0 },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: got nil error for %+v; want one", name, c)
		}
	}
}

// leaseLog records every lease of every worker, to check the hand-over invariant.
type leaseLog struct {
	mu     sync.Mutex
	leases map[int][]*leaseRec // partition → leases in order of acquisition
}

type leaseRec struct {
	worker string
	l      *Lease
}

func (g *leaseLog) acquire(worker string) func(*Lease) {
	return func(l *Lease) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.leases == nil {
			g.leases = map[int][]*leaseRec{}
		}
		g.leases[l.Partition()] = append(g.leases[l.Partition()], &leaseRec{worker, l})
	}
}

// owners returns the current holder of every partition, by what the workers hold.
func owners(ls []*Manager) map[int][]string {
	out := map[int][]string{}
	for _, l := range ls {
		for _, p := range l.Owned() {
			out[p] = append(out[p], l.WorkerID())
		}
	}
	return out
}

// checkInvariant checks that every lease began no earlier than its predecessor's Until and
// that epochs increase.
func (g *leaseLog) checkInvariant(t *testing.T) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for p, recs := range g.leases {
		for i := 1; i < len(recs); i++ {
			prev, cur := recs[i-1].l, recs[i].l
			if cur.From().Before(prev.Until()) {
				t.Errorf("partition %d: lease of %s from %s begins before %s's lease ends %s",
					p, recs[i].worker, cur.From().Format(time.StampMilli), recs[i-1].worker, prev.Until().Format(time.StampMilli))
			}
			if cur.Epoch() <= prev.Epoch() {
				t.Errorf("partition %d: epoch %d after %d; want increasing", p, cur.Epoch(), prev.Epoch())
			}
		}
	}
}

// startManager runs a lease manager until the test ends; done is closed when Run returned.
func startManager(t *testing.T, js jetstream.JetStream, log *leaseLog, id string) (l *Manager, cancel context.CancelFunc, done chan struct{}) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.WorkerID = id
	l, err := New(cfg, nil, js, log.acquire(id), func(*Lease) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		if err := l.Run(ctx); err != nil {
			t.Errorf("lease manager of %s: %v", id, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l, cancel, done
}

func checkBalanced(ls []*Manager, parts int) error {
	own := owners(ls)
	if len(own) != parts {
		return fmt.Errorf("got %d partitions owned; want %d", len(own), parts)
	}
	for p, who := range own {
		if len(who) != 1 {
			return fmt.Errorf("partition %d held by %v; want one worker", p, who)
		}
	}
	target := (parts + len(ls) - 1) / len(ls)
	for _, l := range ls {
		if n := len(l.Owned()); n > target || n < parts-target*(len(ls)-1) {
			return fmt.Errorf("worker %s holds %d partitions; want between %d and %d", l.WorkerID(), n, parts-target*(len(ls)-1), target)
		}
	}
	return nil
}

// TestManagerBalanceFailoverAndRebalance runs lease managers against a real JetStream: three
// workers share the partitions, a crashed worker's partitions are taken over once expired, a
// joining worker gets its share and a cleanly stopping one hands over by releasing. The
// times are logged, not asserted: they depend on the machine's load (docs/BENCHMARKS.md
// reports them).
func TestManagerBalanceFailoverAndRebalance(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	log := &leaseLog{}
	parts := proto.Partitions
	w1, _, _ := startManager(t, js, log, "w1")
	w2, _, _ := startManager(t, js, log, "w2")
	w3, _, done3 := startManager(t, js, log, "w3")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error { return checkBalanced([]*Manager{w1, w2, w3}, parts) })

	// Crash w3: its leases stay in the store until they expire.
	lost := w3.Owned()
	w3.Abandon()
	<-done3
	killed := time.Now()
	checkFor(t, 15*time.Second, 10*time.Millisecond, func() error { return checkBalanced([]*Manager{w1, w2}, parts) })
	t.Logf("crashed worker's %d partitions owned again after %s", len(lost), time.Since(killed).Round(time.Millisecond))

	// A new worker joins and gets its share.
	w4, cancel4, done4 := startManager(t, js, log, "w4")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error { return checkBalanced([]*Manager{w1, w2, w4}, parts) })

	// A clean stop releases: the others claim the released partitions as free, without
	// waiting for them to expire.
	held4 := len(w4.Owned())
	freeBefore := w1.Moves()[MoveAcquiredFree] + w2.Moves()[MoveAcquiredFree]
	cancel4()
	<-done4
	stopped := time.Now()
	checkFor(t, 15*time.Second, 10*time.Millisecond, func() error { return checkBalanced([]*Manager{w1, w2}, parts) })
	t.Logf("cleanly stopped worker's partitions owned again after %s", time.Since(stopped).Round(time.Millisecond))
	if got := w4.Moves()[MoveShutdown]; got != uint64(held4) {
		t.Errorf("got %d shutdown releases of w4; want the %d partitions it held", got, held4)
	}
	if freeAfter := w1.Moves()[MoveAcquiredFree] + w2.Moves()[MoveAcquiredFree]; freeAfter == freeBefore {
		t.Errorf("got no partition acquired free after w4 stopped; want its released partitions claimed as free")
	}
	log.checkInvariant(t)
	if m := w1.Moves(); m[MoveAcquiredExpired]+w2.Moves()[MoveAcquiredExpired] < uint64(len(lost)) {
		t.Errorf("got acquired_expired w1=%d w2=%d; want at least the %d crashed partitions", m[MoveAcquiredExpired], w2.Moves()[MoveAcquiredExpired], len(lost))
	}
}

// TestInParallelBounded checks that inParallel runs every op, at most maxInFlight at once,
// and returns only after all of them returned.
func TestInParallelBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n = 2*maxInFlight + 3
		var mu sync.Mutex
		var inFlight, peak int
		done := make([]bool, n)
		start := time.Now()
		inParallel(n, func(i int) {
			mu.Lock()
			inFlight++
			peak = max(peak, inFlight)
			mu.Unlock()
			time.Sleep(100 * time.Millisecond) // one replicated write
			mu.Lock()
			inFlight--
			done[i] = true
			mu.Unlock()
		})
		if got, want := time.Since(start), 300*time.Millisecond; got != want {
			t.Errorf("got %d ops done after %s; want %s (3 rounds of %d)", n, got, want, maxInFlight)
		}
		if peak != maxInFlight {
			t.Errorf("got %d ops in flight at most; want %d", peak, maxInFlight)
		}
		for i, d := range done {
			if !d {
				t.Errorf("op %d did not run; want every op run before inParallel returns", i)
			}
		}
	})
}

// TestRunWithoutJetStream checks that Run gives up at once on a server without JetStream,
// a configuration error no retry fixes, and that New registered the self-metrics in the
// set it was given.
func TestRunWithoutJetStream(t *testing.T) {
	t.Parallel()
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t, natstest.Options{})))
	if err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	m, err := New(DefaultConfig(), set, js, func(*Lease) {}, func(*Lease) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = m.Run(ctx)
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		t.Fatalf("got %v; want jetstream.ErrJetStreamNotEnabled", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Run returned only when ctx ended; want at once")
	}
	var b strings.Builder
	set.WritePrometheus(&b)
	for _, want := range []string{
		`herd_rollup_lease_kv_errors_total 1`,
		`herd_rollup_partition_moves_total{reason="acquired_free"} 0`,
		`herd_rollup_partitions_owned 0`,
		`herd_rollup_workers_live 0`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("metrics: missing %q in\n%s", want, b.String())
		}
	}
}

// TestAbandonWhileBinding checks that Abandon stops a Run still waiting for JetStream, and
// that Run then returns nil, as after a crash.
func TestAbandonWhileBinding(t *testing.T) {
	t.Parallel()
	// One node of a three-node cluster: JetStream never answers.
	opts, err := embednats.ClusterOptions(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServerOptions(t, opts[0])))
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(DefaultConfig(), nil, js, func(*Lease) {}, func(*Lease) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m.kvErrors.Get() == 0 {
			return errors.New("no failed attempt to create the bucket yet")
		}
		return nil
	})
	m.Abandon()
	if err := <-done; err != nil {
		t.Errorf("got %v after Abandon; want nil", err)
	}
}

// TestLeasesSurviveBlockedRun blocks a worker's Run goroutine (its claims, callbacks and
// watch) for a whole TTL, longer than a lease lasts after its last renewal (TTL − Margin):
// had renewals run on Run's goroutine, every lease would have expired. The renewer keeps
// renewing, so the worker keeps every lease it still holds and nobody takes one over.
func TestLeasesSurviveBlockedRun(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	log := &leaseLog{}
	cfg := DefaultConfig()
	block := cfg.TTL
	var once sync.Once
	blocked, unblocked := make(chan struct{}), make(chan struct{})
	// w1's first release (rebalancing when w3 joins) blocks its Run goroutine.
	cfg.WorkerID = "w1"
	w1, err := New(cfg, nil, js, log.acquire("w1"), func(*Lease) {
		once.Do(func() {
			close(blocked)
			time.Sleep(block) // the starved work loop
			close(unblocked)
		})
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w1.Run(ctx); err != nil {
			t.Errorf("lease manager of w1: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	w2, _, _ := startManager(t, js, log, "w2")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error { return checkBalanced([]*Manager{w1, w2}, proto.Partitions) })

	w3, _, _ := startManager(t, js, log, "w3")
	<-blocked
	kept := w1.Owned()
	<-unblocked
	s0 := w1.steps.Load()
	// Let Run's goroutine run a few steps: under the old design it would now find every
	// deadline passed and lose the leases.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if err := checkBalanced([]*Manager{w1, w2, w3}, proto.Partitions); err != nil {
			return err
		}
		if !slices.Equal(w1.Owned(), kept) {
			return fmt.Errorf("w1 holds %v; want the %v it held when its Run goroutine blocked", w1.Owned(), kept)
		}
		if w1.steps.Load() < s0+3 {
			return errors.New("w1's Run has not stepped three times since the block")
		}
		return nil
	})
	for _, m := range []*Manager{w1, w2, w3} {
		mv := m.Moves()
		if mv[MoveLostExpired]+mv[MoveLostTaken]+mv[MoveAcquiredExpired] != 0 {
			t.Errorf("worker %s: moves %v; want no lease lost or taken over while w1's Run was blocked %s", m.WorkerID(), mv, block)
		}
	}
	log.checkInvariant(t)
	t.Logf("w1's Run blocked %s: renewals late %d, longest gap between renewals %s", block, w1.RenewLate(), w1.RenewGapMax().Round(time.Millisecond))
}

// TestExpiryWaitsForRenewalInFlight checks the owner's expiry rule: at its deadline a lease is
// given up unless a renewal is still in flight, which is waited for until TTL past the
// deadline.
func TestExpiryWaitsForRenewalInFlight(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.WorkerID = "w1"
	var released []int
	m, err := New(cfg, nil, struct{ jetstream.JetStream }{}, func(*Lease) {}, func(l *Lease) { released = append(released, l.Partition()) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.claimAfter = now.Add(time.Hour) // no claims: this test has no KV store
	hold := func(p int, deadline time.Time, renewing bool) *Lease {
		ls := &Lease{partition: p, epoch: 1, done: make(chan struct{}), rev: 1, sent: deadline.Add(cfg.Margin - cfg.TTL), deadline: deadline}
		ls.until.Store(deadline.UnixNano())
		ls.renewing.Store(renewing)
		m.owned[p] = ls
		return ls
	}
	hold(1, now.Add(2*time.Second), false)            // before its deadline
	inFlight := hold(2, now.Add(-time.Second), true)  // past it, a renewal in flight
	hold(3, now.Add(-time.Second), false)             // past it, nothing in flight
	hold(4, now.Add(-cfg.TTL-time.Millisecond), true) // in flight, but TTL past the deadline
	m.step(context.Background(), now)
	if !slices.Equal(released, []int{3, 4}) {
		t.Errorf("got leases %v given up; want [3 4]", released)
	}
	if got := m.Moves()[MoveLostExpired]; got != 2 {
		t.Errorf("got %d lost_expired; want 2", got)
	}
	// The renewal is applied late: the lease goes on with the new deadline.
	sent := now.Add(-500 * time.Millisecond)
	wall, deadline := m.expiry(sent)
	inFlight.renewing.Store(false)
	if gap := inFlight.renewed(2, sent, wall, deadline); gap <= 0 {
		t.Errorf("got gap %s since the previous renewal; want it positive", gap)
	}
	m.step(context.Background(), now.Add(time.Second))
	if inFlight.Released() || !slices.Equal(m.Owned(), []int{1, 2}) {
		t.Errorf("after the late renewal: owned %v, lease 2 released %v; want [1 2] held", m.Owned(), inFlight.Released())
	}
}
