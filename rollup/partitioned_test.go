package rollup

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

// fakeLease is a Lease the test ends by hand.
type fakeLease struct {
	partition      int
	from, previous time.Time
	until          atomic.Int64
	done           chan struct{}
	once           sync.Once
}

// testLease returns a held lease of partition 0 from from, expiring at until.
func testLease(from, until time.Time) *fakeLease {
	l := &fakeLease{from: from, done: make(chan struct{})}
	l.until.Store(until.UnixNano())
	return l
}

func (l *fakeLease) Partition() int        { return l.partition }
func (l *fakeLease) From() time.Time       { return l.from }
func (l *fakeLease) Previous() time.Time   { return l.previous }
func (l *fakeLease) Until() time.Time      { return time.Unix(0, l.until.Load()) }
func (l *fakeLease) Done() <-chan struct{} { return l.done }

// end ends the lease at until, as a release or a loss does.
func (l *fakeLease) end(until time.Time) {
	l.once.Do(func() {
		l.until.Store(until.UnixNano())
		close(l.done)
	})
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
	t.Parallel()
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
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				cfg := DefaultConfig()
				src := &fanout{}
				out := &spanSink{}
				a, err := NewPartitioned(cfg, nil, src.source, out.emitter("a"), nil)
				if err != nil {
					t.Fatal(err)
				}
				b, err := NewPartitioned(cfg, nil, src.source, out.emitter("b"), nil)
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
				var lb *fakeLease
				sent := 0.0
				for i := 1; i <= 16; i++ { // 4 s of batches, one per window, 2 instances
					next := t0.Add(time.Duration(i) * win)
					if rel := t0.Add(releaseAt); lb == nil && !rel.After(next) {
						time.Sleep(time.Until(rel))
						la.end(time.Now())
						lb = testLease(la.Until().Add(tc.delay), la.Until().Add(time.Hour))
						lb.previous = la.Until()
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
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		src := &fanout{}
		out := &spanSink{}
		a, err := NewPartitioned(DefaultConfig(), nil, src.source, out.emitter("a"), nil)
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
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		pr, err := NewPartitioned(cfg, nil, (&fanout{}).source, (&spanSink{}).emitter("a"), nil)
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
		b.partition = 3
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

// BenchmarkPartitionedAdd measures the span check plus merge of one batch.
func BenchmarkPartitionedAdd(b *testing.B) {
	pr, err := NewPartitioned(DefaultConfig(), nil, func(ctx context.Context, _ int, _ func(*proto.Batch)) error {
		<-ctx.Done()
		return nil
	}, func(*proto.Window) {}, nil)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	pt := &partition{lease: testLease(now, now.Add(time.Hour)), fromCut: 0, w: int64(win)}
	pt.roll, _ = New(DefaultConfig(), pr.m, func(*proto.Window) {}, nil)
	pt.roll.span = pt.span
	bt := batch(1, 0, now, counter("requests", 1))
	b.ReportAllocs()
	for i := range b.N {
		bt.Seq = uint64(i)
		pt.roll.Add(bt)
	}
}

// twoPartitions runs, inside a synctest bubble until the test ends, a Partitioned of cfg
// counting into one Metrics and fed by a fanout source, with two partitions acquired (0 and
// 3) one window ago.
func twoPartitions(t *testing.T, cfg Config) (pr *Partitioned, src *fanout, a, b *fakeLease) {
	t.Helper()
	src = &fanout{}
	pr, err := NewPartitioned(cfg, NewMetrics(metrics.NewSet()), src.source, func(*proto.Window) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go pr.Run(ctx)
	t0 := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(t0))
	a = testLease(t0, t0.Add(time.Hour))
	b = testLease(t0, t0.Add(time.Hour))
	b.partition = 3
	pr.Acquire(a)
	pr.Acquire(b)
	synctest.Wait()
	time.Sleep(win)
	return pr, src, a, b
}

// TestPartitionedSharedMetrics checks that the rollups of every partition count into the
// Metrics the Partitioned was built with, so that the size gauges sum over the running
// partitions and drop back to zero once they stopped, while the counters keep their totals.
func TestPartitionedSharedMetrics(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		pr, src, a, b := twoPartitions(t, DefaultConfig())
		// The test source hands every batch to both partitions.
		src.publish(batch(1, 1, time.Now(), counter("requests", 1), counter("errors", 0)))
		src.publish(batch(2, 1, time.Now(), counter("requests", 1)))
		st := pr.Stats()
		if st.Batches != 4 || st.BatchesMerged != 4 || st.Groups != 2 || st.Instances != 4 || st.Series != 4 {
			t.Errorf("got batches %d, merged %d, groups %d, instances %d, series %d; want 4, 4, 2, 4, 4",
				st.Batches, st.BatchesMerged, st.Groups, st.Instances, st.Series)
		}
		a.end(time.Now())
		b.end(time.Now())
		time.Sleep(2 * time.Second) // the spans' windows close; the partitions stop
		synctest.Wait()
		if n := pr.Running(); n != 0 {
			t.Fatalf("got %d partitions running; want 0", n)
		}
		st = pr.Stats()
		if st.Batches != 4 || st.WindowsEmitted == 0 || st.Groups != 0 || st.Instances != 0 || st.Series != 0 {
			t.Errorf("after the partitions stopped: got batches %d, windows %d, groups %d, instances %d, series %d; want 4, > 0, 0, 0, 0",
				st.Batches, st.WindowsEmitted, st.Groups, st.Instances, st.Series)
		}
	})
}

// TestPartitionedGroupsBoundedPerWorker floods two partitions of one worker with groups: the
// worker holds at most MaxGroups groups in all, not MaxGroups in each partition.
func TestPartitionedGroupsBoundedPerWorker(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MaxGroups = 5
		pr, src, a, b := twoPartitions(t, cfg)
		// The test source hands every batch to both partitions: 4 services make 8 groups
		// wanted, 4 in each partition.
		for i := range 4 {
			src.publish(groupBatch(fmt.Sprintf("svc-%d", i), "1", 10+i, 0, time.Now(), counter(proto.SeriesRequests, 1)))
		}
		st := pr.Stats()
		if st.Groups != cfg.MaxGroups || st.RefusedBy[ReasonTooManyGroups] != uint64(8-cfg.MaxGroups) {
			t.Errorf("got %d groups, %d refused too_many_groups; want %d, %d (MaxGroups over the worker)",
				st.Groups, st.RefusedBy[ReasonTooManyGroups], cfg.MaxGroups, 8-cfg.MaxGroups)
		}
		a.end(time.Now())
		b.end(time.Now())
		time.Sleep(2 * time.Second)
		synctest.Wait()
	})
}
