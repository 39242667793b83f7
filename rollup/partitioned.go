package rollup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

// Lease is the ownership of one partition as Partitioned uses it: the owner may publish the
// windows of the partition's groups that start in [From, Until), both rounded up to the
// window grid (see package rollup/lease for the protocol and why successive owners' spans
// never overlap). *lease.Lease satisfies it. Its methods must be goroutine-safe.
type Lease interface {
	// Partition returns the partition owned.
	Partition() int
	// From returns when the ownership began: no earlier than the previous owner's Until.
	From() time.Time
	// Previous returns the previous owner's Until (zero for a partition never owned).
	Previous() time.Time
	// Until returns the end of the ownership: while the lease is held, it moves forward
	// with every renewal; once Done is closed, it is final.
	Until() time.Time
	// Done is closed when the lease has ended (released or lost).
	Done() <-chan struct{}
}

// ended reports whether l has ended.
func ended(l Lease) bool {
	select {
	case <-l.Done():
		return true
	default:
		return false
	}
}

// Source delivers the batches of partition p to add until ctx is done, then stops calling
// add and returns (draining what it buffered first). cmd/herd implements it with an intake
// subscribed to proto.PartitionSubject(p).
type Source func(ctx context.Context, p int, add func(*proto.Batch)) error

// Reasons of herd_rollup_partition_batches_skipped_total: batches of a window outside this
// owner's span. The neighbouring owner normally merges them; loss shows as windows missing
// from the output and as herd_rollup_partition_gap_windows_total.
const (
	SkipBeforeSpan = "before_span" // the window starts before the lease's FromCut
	SkipAfterSpan  = "after_span"  // the window starts at or after the ended lease's UntilCut
)

// Partitioned keeps one Rollup per owned partition, each fed by a Source and publishing only
// the windows of its lease's span (see package rollup/lease). Its Acquire and Release
// methods are the callbacks of the lease manager.
type Partitioned struct {
	cfg    Config
	src    Source
	emit   Emit
	logger *slog.Logger
	w      int64    // window, nanos
	m      *Metrics // shared by every partition's Rollup

	mu    sync.Mutex // Guards the fields below.
	parts map[Lease]*partition
	base  context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
}

// partition is one owned partition.
type partition struct {
	lease   Lease
	roll    *Rollup
	fromCut int64
	w       int64 // window, nanos
}

// NewPartitioned returns a Partitioned with rollups of cfg, fed by src, publishing to emit.
// Every partition's Rollup counts into m (see NewMetrics; nil counts into a private set).
// It starts nothing until Acquire; Run must run for its lifetime. logger should carry
// component=rollup; nil discards logs.
func NewPartitioned(cfg Config, m *Metrics, src Source, emit Emit, logger *slog.Logger) (*Partitioned, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create partitioned rollup: %w", err)
	}
	if src == nil || emit == nil {
		return nil, errors.New("cannot create partitioned rollup: nil source or emit")
	}
	if m == nil {
		m = NewMetrics(metrics.NewSet())
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, stop := context.WithCancel(context.Background())
	pr := &Partitioned{
		cfg: cfg, m: m, src: src, emit: emit, logger: logger, w: int64(cfg.Window),
		parts: map[Lease]*partition{},
		base:  base,
		stop:  stop,
	}
	return pr, nil
}

// ceilTo returns ⌈a/b⌉·b for b > 0.
func ceilTo(a, b int64) int64 { return -floorDiv(-a, b) * b }

// Acquire starts the rollup and the source of a newly acquired lease. It is the lease
// manager's onAcquire callback.
func (pr *Partitioned) Acquire(l Lease) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.base.Err() != nil {
		return
	}
	pt := &partition{lease: l, fromCut: ceilTo(l.From().UnixNano(), pr.w), w: pr.w}
	roll, err := New(pr.cfg, pr.m, func(w *proto.Window) { pr.emitFiltered(pt, w) }, pr.logger.With("partition", l.Partition()))
	if err != nil {
		panic("BUG: rollup config validated but New failed: " + err.Error())
	}
	roll.span = pt.span
	// Close every window before the cut: batches for them are skipped.
	roll.Advance(time.Unix(0, pt.fromCut+int64(pr.cfg.Lateness)))
	pt.roll = roll
	if !l.Previous().IsZero() {
		if last := ceilTo(l.Previous().UnixNano(), pr.w); pt.fromCut > last {
			pr.m.gaps.Add(int((pt.fromCut - last) / pr.w))
		}
	}
	pr.parts[l] = pt
	pr.wg.Go(func() { pr.runPartition(pt) })
}

// Release is the lease manager's onRelease callback. The partition of the ended lease winds
// down by itself (it watches Lease.Done): it merges and publishes the windows of its span
// until they close, then stops.
func (pr *Partitioned) Release(Lease) {}

// runPartition runs a partition's rollup and source until its lease ended and its span's
// windows closed, or until Run stops.
func (pr *Partitioned) runPartition(pt *partition) {
	l := pt.lease
	ctx, cancel := context.WithCancel(pr.base)
	defer cancel()
	var wg sync.WaitGroup
	rollCtx, stopRoll := context.WithCancel(context.Background())
	wg.Go(func() { _ = pt.roll.Run(rollCtx) })
	srcCtx, stopSrc := context.WithCancel(ctx)
	srcDone := make(chan struct{})
	wg.Go(func() {
		defer close(srcDone)
		for {
			err := pr.src(srcCtx, l.Partition(), pt.roll.Add)
			if srcCtx.Err() != nil {
				return
			}
			pr.m.srcErrors.Inc()
			pr.logger.Warn("partition source stopped; restarting it", "partition", l.Partition(), "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-srcCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
	select {
	case <-l.Done():
		// Keep the span's windows until they close, then stop.
		closeAt := time.Unix(0, ceilTo(l.Until().UnixNano(), pr.w)+int64(pr.cfg.Lateness))
		t := time.NewTimer(time.Until(closeAt))
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	case <-ctx.Done():
	}
	stopSrc()
	<-srcDone
	stopRoll()
	wg.Wait()
	pt.roll.Advance(time.Now())
	pt.roll.Flush()        // what is left is outside the span (or, on Run's stop, partial)
	pt.roll.releaseSizes() // sizes count running partitions only
	pr.mu.Lock()
	delete(pr.parts, l)
	pr.mu.Unlock()
}

// span is the span filter of pt's rollup (Rollup.span): a batch is merged only if its window
// (after the clock correction of its instance) lies in the lease's span.
func (pt *partition) span(start int64) string {
	if start < pt.fromCut {
		return SkipBeforeSpan
	}
	if ended(pt.lease) && start >= ceilTo(pt.lease.Until().UnixNano(), pt.w) {
		return SkipAfterSpan
	}
	return ""
}

// emitFiltered publishes a window of pt's rollup if it lies in the lease's span.
func (pr *Partitioned) emitFiltered(pt *partition, w *proto.Window) {
	start := w.StartMs * int64(time.Millisecond)
	if start < pt.fromCut || start >= ceilTo(pt.lease.Until().UnixNano(), pr.w) {
		pr.m.discarded.Inc()
		return
	}
	pr.emit(w)
}

// Run waits until ctx is done, then stops every partition at once (a partition whose lease is
// still held flushes its open windows of the span, partial ones included) and waits for them.
// Stop the lease manager first (releasing the leases) and wait for Wait to let partitions
// wind down without loss.
func (pr *Partitioned) Run(ctx context.Context) error {
	<-ctx.Done()
	pr.mu.Lock()
	pr.stop()
	pr.mu.Unlock()
	pr.wg.Wait()
	return nil
}

// Wait waits until no partition runs (every lease ended and its windows closed), or until
// ctx is done.
func (pr *Partitioned) Wait(ctx context.Context) error {
	for {
		pr.mu.Lock()
		n := len(pr.parts)
		pr.mu.Unlock()
		if n == 0 {
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Running returns the number of partitions with a running rollup (held or winding down).
func (pr *Partitioned) Running() int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return len(pr.parts)
}

// Span is the span of windows a running partition publishes: the windows starting in
// [From, Until), the FromCut and UntilCut of package rollup/lease.
type Span struct {
	// Partition is the partition.
	Partition int
	// From is the start of the first window published: the lease's From rounded up to the
	// window grid. Batches of earlier windows are skipped (SkipBeforeSpan).
	From time.Time
	// Until is the start of the first window not published: the lease's Until rounded up.
	// While the lease is held it moves forward with every renewal.
	Until time.Time
	// Held reports whether the lease is still held; a partition whose lease ended keeps
	// running until the windows of its span closed.
	Held bool
}

// Spans returns the spans of the running partitions, sorted by partition, then From. A
// partition appears once Acquire returned for its lease.
func (pr *Partitioned) Spans() []Span {
	pr.mu.Lock()
	out := make([]Span, 0, len(pr.parts))
	for _, pt := range pr.parts {
		held := !ended(pt.lease) // before Until, which is final once the lease ended
		out = append(out, Span{
			Partition: pt.lease.Partition(),
			From:      time.Unix(0, pt.fromCut),
			Until:     time.Unix(0, ceilTo(pt.lease.Until().UnixNano(), pr.w)),
			Held:      held,
		})
	}
	pr.mu.Unlock()
	slices.SortFunc(out, func(a, b Span) int {
		if c := cmp.Compare(a.Partition, b.Partition); c != 0 {
			return c
		}
		return a.From.Compare(b.From)
	})
	return out
}

// PartitionStats are the totals of a Partitioned.
type PartitionStats struct {
	Stats            // of every partition's rollup, past and present (sizes: present only)
	Skipped          map[string]uint64
	WindowsDiscarded uint64 // windows outside a span, not published
	GapWindows       uint64 // window intervals between this worker's successive spans of a partition
}

// Stats returns the totals over all partitions, past and present: the counters of the
// Metrics it was built with.
func (pr *Partitioned) Stats() PartitionStats {
	ps := PartitionStats{Stats: pr.m.stats(), Skipped: map[string]uint64{}, WindowsDiscarded: pr.m.discarded.Get(), GapWindows: pr.m.gaps.Get()}
	for r, c := range pr.m.skipped {
		ps.Skipped[r] = c.Get()
	}
	return ps
}
