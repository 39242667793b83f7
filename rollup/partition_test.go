package rollup

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/proto"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

// testLease returns a held lease of partition 0 from from, expiring at until.
func testLease(from, until time.Time) *Lease {
	l := &Lease{Partition: 0, Epoch: 1, From: from, done: make(chan struct{})}
	l.until.Store(until.UnixNano())
	return l
}

// fanout is a Source for tests: every batch published goes to every running source, as NATS
// delivers a partition subject to every subscriber.
type fanout struct {
	mu   sync.Mutex
	adds map[int]func(*proto.Batch)
	next int
}

func (f *fanout) source(ctx context.Context, _ int, add func(*proto.Batch)) error {
	f.mu.Lock()
	if f.adds == nil {
		f.adds = map[int]func(*proto.Batch){}
	}
	id := f.next
	f.next++
	f.adds[id] = add
	f.mu.Unlock()
	<-ctx.Done()
	f.mu.Lock()
	delete(f.adds, id)
	f.mu.Unlock()
	return nil
}

func (f *fanout) publish(b *proto.Batch) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, add := range f.adds {
		add(b)
	}
}

// spanSink records who emitted which window.
type spanSink struct {
	mu    sync.Mutex
	by    map[int64][]string // window start (ms) → emitters
	total float64            // requests over all windows
}

func (s *spanSink) emitter(name string) Emit {
	return func(w *proto.Window) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.by == nil {
			s.by = map[int64][]string{}
		}
		s.by[w.StartMs] = append(s.by[w.StartMs], name)
		if r := find(w, "requests"); r != nil {
			s.total += r.Value
		}
	}
}

// TestPartitionedHandOverExact hands a partition from one owner to another while both
// receive every batch (as two subscribers of the partition subject do): every window is
// published once, by the owner whose span holds it, and nothing is lost or counted twice.
func TestPartitionedHandOverExact(t *testing.T) {
	for _, tc := range []struct {
		releaseAt, delay time.Duration // release instant after t0; acquisition after that
		gap              uint64        // window intervals between the two spans
	}{
		{1600 * time.Millisecond, 0, 0},
		{1749 * time.Millisecond, 0, 0},
		{1750 * time.Millisecond, 0, 0},
		{1740 * time.Millisecond, 20 * time.Millisecond, 1}, // the acquisition crosses a window boundary
	} {
		releaseAt := tc.releaseAt
		t.Run(fmt.Sprint(releaseAt, "+", tc.delay), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := DefaultConfig()
				src := &fanout{}
				out := &spanSink{}
				a, err := NewPartitioned(cfg, src.source, out.emitter("a"), nil)
				if err != nil {
					t.Fatal(err)
				}
				b, err := NewPartitioned(cfg, src.source, out.emitter("b"), nil)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go a.Run(ctx)
				go b.Run(ctx)

				t0 := time.Now().Truncate(time.Second).Add(time.Second)
				time.Sleep(time.Until(t0))
				la := testLease(t0, t0.Add(time.Hour))
				a.Acquire(la)
				synctest.Wait()
				var lb *Lease
				sent := 0.0
				for i := 1; i <= 16; i++ { // 4 s of batches, one per window, 2 instances
					next := t0.Add(time.Duration(i) * win)
					if rel := t0.Add(releaseAt); lb == nil && !rel.After(next) {
						time.Sleep(time.Until(rel))
						la.end(time.Now())
						lb = testLease(la.Until().Add(tc.delay), la.Until().Add(time.Hour))
						lb.Previous = la.Until()
						b.Acquire(lb)
						synctest.Wait()
					}
					time.Sleep(time.Until(next))
					for n := range 2 {
						src.publish(batch(n, uint64(i), time.Now(), counter("requests", 10)))
						sent += 10
					}
				}
				// Batches after the hand-over are never seen by a; b's windows close.
				time.Sleep(2 * time.Second)
				lb.end(time.Now())
				time.Sleep(2 * time.Second)
				synctest.Wait()
				if got := a.Running() + b.Running(); got != 0 {
					t.Fatalf("got %d partitions still running; want 0", got)
				}

				out.mu.Lock()
				defer out.mu.Unlock()
				for start, who := range out.by {
					if len(who) != 1 {
						t.Errorf("window %d published by %v; want exactly one owner", start, who)
					}
				}
				gap := b.Stats().GapWindows
				if gap != tc.gap {
					t.Errorf("got %d gap windows; want %d", gap, tc.gap)
				}
				// Each window interval holds 2 batches of 10 requests.
				if want := sent - 20*float64(gap); out.total != want {
					t.Errorf("got %v requests in windows; sent %v with %d windows in the gap; want %v", out.total, sent, gap, want)
				}
				if out.total > sent {
					t.Errorf("got %v requests in windows; sent only %v", out.total, sent)
				}
				ast, bst := a.Stats(), b.Stats()
				if ast.Skipped[SkipAfterSpan] == 0 || bst.Skipped[SkipBeforeSpan] == 0 {
					t.Errorf("got skipped a=%v b=%v; want both owners to skip the other's windows during the overlap", ast.Skipped, bst.Skipped)
				}
				t.Logf("release at +%s: sent %v, published %v in %d windows, gap windows %d, a %v, b %v",
					releaseAt, sent, out.total, len(out.by), gap, ast.Skipped, bst.Skipped)
			})
		})
	}
}

// TestPartitionedLostLeaseStopsPublishing: a worker whose lease ended without its knowing it
// (it cannot renew, so Until stops moving) publishes nothing past Until, even though its
// rollup keeps closing windows.
func TestPartitionedLostLeaseStopsPublishing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fanout{}
		out := &spanSink{}
		a, err := NewPartitioned(DefaultConfig(), src.source, out.emitter("a"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go a.Run(ctx)
		t0 := time.Now().Truncate(time.Second).Add(time.Second)
		time.Sleep(time.Until(t0))
		until := t0.Add(time.Second) // last renewal: the lease is held till t0+1s at most
		a.Acquire(testLease(t0, until))
		synctest.Wait()
		for i := 1; i <= 12; i++ {
			time.Sleep(time.Until(t0.Add(time.Duration(i) * win)))
			src.publish(batch(1, uint64(i), time.Now(), counter("requests", 1)))
		}
		time.Sleep(2 * time.Second)
		cancel()
		synctest.Wait()
		out.mu.Lock()
		defer out.mu.Unlock()
		for start := range out.by {
			if !time.UnixMilli(start).Before(until) {
				t.Errorf("window starting %s published; want none at or after the lease's Until %s", time.UnixMilli(start).Sub(t0), until.Sub(t0))
			}
		}
		if len(out.by) != 4 { // windows t0, t0+250ms, t0+500ms and t0+750ms start before Until
			t.Errorf("got %d windows; want 4 (those starting before Until)", len(out.by))
		}
		if a.Stats().WindowsDiscarded == 0 {
			t.Errorf("got no discarded windows; want the windows past Until discarded")
		}
	})
}

// TestPartitionedSpans checks that Spans reports each running partition's span on the window
// grid from the moment Acquire returns, and a lease that ended until its windows closed.
func TestPartitionedSpans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		pr, err := NewPartitioned(cfg, (&fanout{}).source, (&spanSink{}).emitter("a"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go pr.Run(ctx)
		t0 := time.Now().Truncate(time.Second).Add(time.Second)
		time.Sleep(time.Until(t0))
		if got := pr.Spans(); len(got) != 0 {
			t.Fatalf("got spans %v before any Acquire; want none", got)
		}
		a := testLease(t0.Add(100*time.Millisecond), t0.Add(time.Second+10*time.Millisecond))
		b := testLease(t0.Add(win), t0.Add(2*time.Second))
		b.Partition = 3
		pr.Acquire(b)
		pr.Acquire(a)
		want := []Span{
			{Partition: 0, From: t0.Add(win), Until: t0.Add(time.Second + win), Held: true},
			{Partition: 3, From: t0.Add(win), Until: t0.Add(2 * time.Second), Held: true},
		}
		checkSpans := func(want []Span) {
			t.Helper()
			got := pr.Spans()
			if len(got) != len(want) {
				t.Fatalf("got spans %v; want %v", got, want)
			}
			for i := range got {
				if got[i].Partition != want[i].Partition || !got[i].From.Equal(want[i].From) || !got[i].Until.Equal(want[i].Until) || got[i].Held != want[i].Held {
					t.Errorf("got span %+v; want %+v", got[i], want[i])
				}
			}
		}
		checkSpans(want)

		time.Sleep(600 * time.Millisecond)
		a.end(time.Now()) // t0+600ms: the span ends at the next boundary
		want[0].Until, want[0].Held = t0.Add(3*win), false
		checkSpans(want)

		// The ended lease's partition stops once its last window closed.
		time.Sleep(time.Until(t0.Add(3*win + cfg.Lateness + time.Millisecond)))
		synctest.Wait()
		checkSpans(want[1:])
	})
}

func TestLeaseConfigValidate(t *testing.T) {
	good := DefaultLeaseConfig()
	good.WorkerID = "w1"
	if err := good.Validate(); err != nil {
		t.Fatalf("default config: got %v; want nil", err)
	}
	for name, mut := range map[string]func(*LeaseConfig){
		"bucket":    func(c *LeaseConfig) { c.Bucket = "a.b" },
		"worker id": func(c *LeaseConfig) { c.WorkerID = "a b" },
		"margin":    func(c *LeaseConfig) { c.Margin = c.TTL },
		"heartbeat": func(c *LeaseConfig) { c.Heartbeat = c.TTL },
		"tick":      func(c *LeaseConfig) { c.Tick = 2 * c.Heartbeat },
		"replicas":  func(c *LeaseConfig) { c.Replicas = 0 },
		"parts":     func(c *LeaseConfig) { c.Partitions = 0 },
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
		g.leases[l.Partition] = append(g.leases[l.Partition], &leaseRec{worker, l})
	}
}

// owners returns the current holder of every partition, by what the workers hold.
func owners(ls []*Leases) map[int][]string {
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
			if cur.From.Before(prev.Until()) {
				t.Errorf("partition %d: lease of %s from %s begins before %s's lease ends %s",
					p, recs[i].worker, cur.From.Format(time.StampMilli), recs[i-1].worker, prev.Until().Format(time.StampMilli))
			}
			if cur.Epoch <= prev.Epoch {
				t.Errorf("partition %d: epoch %d after %d; want increasing", p, cur.Epoch, prev.Epoch)
			}
		}
	}
}

// startLeases runs a lease manager until the test ends; done is closed when Run returned.
func startLeases(t *testing.T, js jetstream.JetStream, log *leaseLog, id string) (l *Leases, cancel context.CancelFunc, done chan struct{}) {
	t.Helper()
	cfg := DefaultLeaseConfig()
	cfg.WorkerID = id
	l, err := NewLeases(cfg, js, log.acquire(id), func(*Lease) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		if err := l.Run(ctx); err != nil {
			t.Errorf("leases of %s: %v", id, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l, cancel, done
}

func checkBalanced(ls []*Leases, parts int) error {
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

// TestLeasesBalanceFailoverAndRebalance runs lease managers against a real JetStream: three
// workers share the partitions, a crashed worker's partitions are owned again within 2 s, a
// joining worker gets its share and a cleanly stopping one hands over at once.
func TestLeasesBalanceFailoverAndRebalance(t *testing.T) {
	s, err := embednats.Start(embednats.Config{Port: -1, JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(s)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	log := &leaseLog{}
	parts := DefaultLeaseConfig().Partitions
	w1, _, _ := startLeases(t, js, log, "w1")
	w2, _, _ := startLeases(t, js, log, "w2")
	w3, _, done3 := startLeases(t, js, log, "w3")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error { return checkBalanced([]*Leases{w1, w2, w3}, parts) })

	// Crash w3: its leases stay in the store until they expire.
	lost := w3.Owned()
	w3.Abandon()
	<-done3
	killed := time.Now()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error { return checkBalanced([]*Leases{w1, w2}, parts) })
	took := time.Since(killed)
	t.Logf("crashed worker's %d partitions owned again after %s", len(lost), took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("takeover took %s; want ≤ 2s", took)
	}

	// A new worker joins and gets its share.
	w4, cancel4, done4 := startLeases(t, js, log, "w4")
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error { return checkBalanced([]*Leases{w1, w2, w4}, parts) })

	// A clean stop releases: the others own everything again well before a TTL.
	cancel4()
	<-done4
	stopped := time.Now()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error { return checkBalanced([]*Leases{w1, w2}, parts) })
	handover := time.Since(stopped)
	t.Logf("cleanly stopped worker's partitions owned again after %s", handover.Round(time.Millisecond))
	if ttl := DefaultLeaseConfig().TTL; handover >= ttl {
		t.Errorf("clean hand-over took %s; want less than the TTL %s", handover, ttl)
	}
	log.checkInvariant(t)
	if m := w1.Moves(); m[MoveAcquiredExpired]+w2.Moves()[MoveAcquiredExpired] < uint64(len(lost)) {
		t.Errorf("got acquired_expired w1=%d w2=%d; want at least the %d crashed partitions", m[MoveAcquiredExpired], w2.Moves()[MoveAcquiredExpired], len(lost))
	}
	if got := w4.Moves()[MoveShutdown]; got == 0 {
		t.Errorf("got %d shutdown releases of w4; want its partitions", got)
	}
}

// BenchmarkPartitionedAdd measures the span check plus merge of one batch.
func BenchmarkPartitionedAdd(b *testing.B) {
	pr, err := NewPartitioned(DefaultConfig(), func(ctx context.Context, _ int, _ func(*proto.Batch)) error {
		<-ctx.Done()
		return nil
	}, func(*proto.Window) {}, nil)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	pt := &partition{lease: testLease(now, now.Add(time.Hour)), fromCut: 0}
	pt.roll, _ = New(DefaultConfig(), func(*proto.Window) {}, nil)
	bt := batch(1, 0, now, counter("requests", 1))
	b.ReportAllocs()
	for i := range b.N {
		bt.Seq = uint64(i)
		pr.add(pt, bt)
	}
}

// TestInParallelBounded checks that inParallel runs every op, at most maxInFlight at once,
// and returns only after all of them returned.
func TestInParallelBounded(t *testing.T) {
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
