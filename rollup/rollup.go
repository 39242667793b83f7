// Package rollup merges the batches of many agent instances into closed windows per group
// (service, version): aligned tumbling windows, deduplicated on (instance, sequence), with
// late, future, lost and refused input counted by reason.
//
// # Windows
//
// A batch covering [Start, End) belongs to the window [s, s+W) with s = floor((End+c-1)/W)·W,
// where c is its instance's clock correction (0 for a clock that is right; see Clocks), so a
// batch aligned at t lands in [t-W, t). A window closes once now ≥ its end + lateness, or
// earlier, with Config.CloseComplete, once it is complete: every instance expected in it (one
// whose previous batch said its next would end there) has sent its batch, and Settle passed
// since its end and its last batch (see complete.go). Run does that on a timer aligned to
// those instants and when a batch completes a window, Advance does it for a given time and
// Flush closes everything. A batch for a closed window is merged into a correction of it if the
// window ended less than CorrectionHorizon ago (see Corrections), and refused as "late"
// otherwise: lost, and counted. A batch ending (corrected) more than MaxFuture ahead of the
// local clock is refused as "future".
//
// Windows of a group are emitted in time order, one per window interval, from the first
// interval with a batch until InstanceTTL after the last interval with one: an interval
// without batches in that span is emitted as an empty window (Instances 0, no series), so
// consumers see a group whose instances are all gone instead of silence. After that the group
// is forgotten and emits nothing until its next batch.
//
// # Clocks
//
// Agents stamp batches with their own clocks. For each instance the rollup keeps the least
// arrival offset (arrival − End) of its batches over the last 5 to 10 s (8 to 16 windows if
// that is longer): transit only adds to an offset, so the least is the instance's clock
// offset plus the fastest transit, and batches delayed in transit — a reconnect buffer
// flushed after an outage — never lower it. That offset rounded to whole windows is the
// instance's correction c, kept while the offset stays within 5/8 of a window of it (so an
// offset near half a window does not flip batches between neighbouring windows), and put in
// force only once confirmed: by a batch that arrives at least half a window after the one
// that set the least offset, within a quarter window of it. A burst of buffered batches,
// each arriving sooner after its end than the one before, restarts the confirmation with
// every batch, so it is never taken for an offset. While unconfirmed, the correction in
// force stays, except that no batch is placed to end more than half a window after it
// arrived (nothing is measured after it arrives: that bound alone corrects a clock that is
// ahead, from its first batch). A batch that the estimate, confirmed, would place elsewhere
// than the correction in force — the first batch of an instance whose clock seems behind —
// is held (copied; at most 16 MiB in all) until the instance's next batch tells a clock
// behind from a delay, or for max(Lateness, 1.5·W), then placed. An offset beyond ±MaxSkew
// is not corrected (a clock that is ahead is corrected by MaxSkew at most, rounded down to
// whole windows); MaxSkew 0 turns all of this off. Merged batches placed with a correction
// are counted in herd_rollup_batches_skew_corrected_total.
//
// # Corrections
//
// A batch whose window closed, arriving within CorrectionHorizon of the window's end, is
// merged into a correction of that window: a window of the same group and interval with
// proto.Window.Correction set that carries only such late data (its instance counts count
// the late batches' instances), opened by the first late batch and emitted on the first
// Advance Lateness after that, after the windows closing then. Later late data makes a
// further correction. The window's full data is the window plus its corrections. Corrections
// are counted in herd_rollup_corrections_emitted_total (not as windows) and their batches in
// herd_rollup_batches_corrected_total as well as merged. At most max(MaxGroups, 1024) are
// open at once; a late batch beyond that is refused as "too_many_corrections".
//
// # Merging
//
// Counters sum; gauges give mean (Value), Sum, Min, Max and Count (samples merged, which is the
// number of reporting instances when agents send one batch per window); histograms merge
// exactly and carry their quantiles. Window.Instances counts distinct instances merged,
// InstancesStarted the instances first seen in that window and InstancesStopped the final
// batches merged into it.
//
// A sample is refused, counted by reason in herd_rollup_series_refused_total, and the rest of
// its batch merged, when it would take a sum of the window beyond MaxSum ("overflow": every
// window stays finite and encodable), a histogram side beyond proto.MaxBuckets
// ("bad_histogram"), or the window's histograms beyond Config.MaxWindowBuckets buckets
// ("too_many_buckets"), besides the series limits. Recycled windows and a group's series
// table give back the memory an outlier made them hold.
//
// # Warm-up and halves
//
// With Config.Warmup > 0 each window also merges the series named in Config.SplitSeries of
// warm batches only (End − InstanceStart ≥ Warmup) into two halves chosen by
// proto.BucketOf(instance id) into proto.NumBuckets buckets, and publishes them as
// Window.Buckets, their merges by proto.HalfOf as Window.Halves and their merge as
// Window.Warm, with Window.BucketInstances, Window.HalfInstances and Window.WarmInstances. Warm leaves out every
// instance's first seconds; the halves give consumers an A/A comparison within one group.
// A warm sample of a split series costs one more merge (into its bucket); Halves and Warm
// are built at close. A window whose buckets would hold more than MaxBucketCells entries
// (many label sets of the split series) is published without them, counted in
// herd_rollup_window_buckets_omitted_total.
//
// # Dedup and loss
//
// Every sequence number of an instance, from the first to the newest this worker saw, is
// accounted exactly once: merged (into a window or a correction), refused by reason (late,
// future, …), skipped outside a partition's span (Partitioned), or lost; redeliveries are
// counted as "duplicate" on top. A batch held for its instance's next arrival is accounted
// when it is placed. A batch whose sequence number was already seen, or that
// lies more than 64 behind the instance's newest, is refused as "duplicate". A missing
// sequence number is counted lost when it can no longer arrive: when it falls 64 sequence
// numbers behind the newest, or when the instance's state is dropped (expired after
// InstanceTTL, evicted by MaxInstances, or replaced by a restart with a new InstanceStart).
// A batch that fills a gap before then is merged (or refused as late) and never counted lost.
// Batches dropped after an instance's last one are not detectable; a final batch ends that
// uncertainty. A final batch marks the instance stopped at once: it no longer counts as a
// live instance, and its state stays as a tombstone that refuses redeliveries until it
// expires.
//
// # Admission
//
// The groups are bounded in number (Config.MaxGroups), per service (MaxVersionsPerService)
// and in series per service (MaxSeriesPerService). A new group that finds its service or the
// table full takes the place of an idle group, one without a batch for a few seconds and
// without an open window; only without one is its batch refused, as "too_many_versions" or
// "too_many_groups". So a flood of group subjects cannot keep a new real group out.
//
// # Concurrency
//
// One mutex guards the groups and instance states; Add holds it for one batch. Closing holds
// it only to detach the due windows: building the results (histogram copies, quantiles) and
// calling Emit happen outside it, so a slow consumer delays the next close, never Add.
//
// # Partitions and self-metrics
//
// A Rollup merges whatever it is given. `herd rollup` workers split the groups by partition
// (proto.PartitionOf): Partitioned runs one Rollup per partition this worker owns under a
// Lease (package rollup/lease) and publishes only the windows of the lease's span.
//
// The caller owns the metrics.Set: NewMetrics registers every herd_rollup_* family in it once,
// and every Rollup built with those Metrics, one or one per partition, counts into the same
// counters and adds its changes of size to the same gauges. A single Rollup and a
// Partitioned export the same families.
package rollup

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/herd-dev/herd/proto"
)

// Emit receives each closed window, in time order per group, from one goroutine at a time
// (the one calling Run, Advance or Flush). The window is the receiver's to keep but must be
// treated as read-only: label slices are shared between windows of the same series. Emit
// should not block for long: Add is not blocked by it, but closing the next windows is.
type Emit func(*proto.Window)

// Rollup merges batches into windows. Add may be called concurrently with Run, Advance and
// Flush (the intended use is one intake goroutine calling Add). A Rollup holds no resources
// beyond memory, so it has no Close: stop Run, then Flush.
type Rollup struct {
	cfg    Config
	emit   Emit
	logger *slog.Logger
	m      *Metrics

	// Config in nanoseconds.
	w, lateness, maxFuture, ttl, warmup, maxSkew, horizon int64
	// split is the warm aggregate's description; splitAll: every series is split.
	split    split
	splitAll bool

	// now is the clock; tests and benchmarks replace it.
	now func() time.Time
	// span, if set, says why a batch whose (corrected) window starts at start is not this
	// Rollup's to merge, or "": Partitioned sets it to its lease's span before the first Add.
	span func(start int64) (skip string)

	// emitMu serializes closing and emitting so windows reach Emit in order. It is taken
	// before mu and held while results are built and Emit runs; mu is held only to detach
	// the closed windows and to recycle them, so Add waits for neither.
	emitMu sync.Mutex
	// closing is the reused list of windows being closed. Guarded by emitMu.
	closing []closing

	// mu guards the fields below.
	mu sync.Mutex
	// closedBefore: every window ending at or before it is closed (unix nanos).
	closedBefore int64
	groups       map[groupKey]*group
	insts        *simplelru.LRU[[16]byte, *instance]
	live         int // instances not stopped
	series       int // series over all groups
	key          []byte
	freeWindows  []*window
	freeBytes    int // w.bytes() summed over freeWindows
	freeInsts    []*instance
	// dropReason labels the next LRU eviction callback (forgot* constants).
	dropReason string
	lastSweep  int64 // unix nanos of the last series sweep
	adm        admission
	// held are the batches waiting for their instance's next arrival, by instance id, and
	// heldBytes their memory (see clock.go).
	held      map[[16]byte]*heldBatch
	heldBytes int
	// heldQ is the held batches in order of arrival, and batches released since (see
	// releaseDueLocked); its length is bounded by the batches held within holdFor.
	heldQ []*heldBatch
	// corr are the open corrections by group, ncorr their number (see correct.go).
	corr  map[groupKey][]*correction
	ncorr int
	// heldBy counts the held batches by group: a group with one closes no window early.
	heldBy map[groupKey]int
	// reopen holds, for the groups dropped after closing intervals early, where their next
	// interval starts, until closedBefore passes it (within Lateness): at most the groups
	// dropped in that time, and an idle group is not evicted while it holds MaxGroups.
	reopen map[groupKey]int64
	// recheck is when a complete window settles (0: none); Run wakes then.
	recheck int64

	// early is Config.CloseComplete, settle Config.Settle in nanos; wake tells Run that a
	// window may have become complete (see complete.go).
	early  bool
	settle int64
	wake   chan struct{}
}

// maxFree bounds the recycled windows and instance states kept; maxFreeBytes bounds the
// memory of the recycled windows (their accumulators and bucket arrays).
const (
	maxFree      = 4096
	maxFreeBytes = 32 << 20
)

// New returns a Rollup handing closed windows to emit and counting into m (see NewMetrics;
// nil counts into a private set, for tests and one-shot tools). It starts nothing: call Run
// (or drive Advance) to close windows. logger should carry component=rollup; nil discards
// logs.
func New(cfg Config, m *Metrics, emit Emit, logger *slog.Logger) (*Rollup, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create rollup: %w", err)
	}
	if emit == nil {
		return nil, errors.New("cannot create rollup: emit function is nil")
	}
	if m == nil {
		m = NewMetrics(metrics.NewSet())
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Rollup{
		cfg:        cfg,
		emit:       emit,
		logger:     logger,
		m:          m,
		w:          int64(cfg.Window),
		lateness:   int64(cfg.Lateness),
		maxFuture:  int64(cfg.MaxFuture),
		ttl:        int64(cfg.InstanceTTL),
		warmup:     int64(cfg.Warmup),
		maxSkew:    int64(cfg.MaxSkew),
		horizon:    int64(cfg.CorrectionHorizon),
		now:        time.Now,
		groups:     make(map[groupKey]*group),
		dropReason: forgotEvicted,
		adm:        newAdmission(cfg),
		early:      cfg.CloseComplete,
		settle:     int64(cfg.Settle),
		wake:       make(chan struct{}, 1),
	}
	if cfg.Warmup > 0 {
		names, _ := cfg.splitNames() // checked by Validate
		r.split = split{warmupMs: cfg.Warmup.Milliseconds(), names: names}
		r.splitAll = names[0] == "*"
	}
	insts, err := simplelru.NewLRU(cfg.MaxInstances, r.onDropLocked)
	if err != nil {
		return nil, fmt.Errorf("cannot create rollup instance cache: %w", err)
	}
	r.insts = insts
	return r, nil
}

// Stats returns a snapshot of the counters and sizes of r's Metrics: r's own, unless other
// Rollups share them.
func (r *Rollup) Stats() Stats { return r.m.stats() }

// releaseSizes subtracts r's groups, live instances and series from the shared size gauges
// and forgets them, for a Rollup that is dropped (the rollup of a partition that ended).
// The caller has stopped Run and Add.
func (r *Rollup) releaseSizes() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m.groups.Add(-int64(len(r.groups)))
	r.m.instances.Add(-int64(r.live))
	r.m.series.Add(-int64(r.series))
	clear(r.groups)
	r.releaseAdmissionLocked()
	r.live, r.series = 0, 0
}

// Add merges b into its group's window, or counts why it cannot. b is used only during the
// call. Add never blocks on Emit.
func (r *Rollup) Add(b *proto.Batch) {
	now := r.now().UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m.batches.Inc()

	in, known := r.insts.Get(b.Instance)
	if known {
		in.lastSeen = now
		if in.service != b.Service || in.version != b.Version {
			r.refuseLocked(ReasonInstanceConflict)
			return
		}
		if in.start != b.InstanceStart {
			// Same id, new incarnation: settle the old one and start over.
			r.dropReason = forgotRestarted
			r.insts.Remove(b.Instance)
			r.dropReason = forgotEvicted
			in, known = nil, false
		} else if in.dup(b.Seq) {
			r.refuseLocked(ReasonDuplicate)
			return
		}
	}

	// The instance's clock: this arrival is a sample of its offset, and it settles a batch
	// held for it before b is placed.
	d := arrivalOffset(now, b.End)
	clk := newClock()
	if known {
		clk = in.clk
	}
	r.observe(&clk, d, now)
	if known {
		in.clk = clk
		if in.held {
			if h := r.held[b.Instance]; h != nil {
				r.releaseLocked(h, now)
			}
			in.held = false
		}
	}
	if r.holds(&clk, d) && !b.Final && (in == nil || !in.stopped) && r.canHoldLocked(b) {
		if in == nil {
			in = r.newInstanceLocked(b, floorDiv(b.End-1, r.w), now)
		} else {
			r.m.lost.Add(int(in.mark(b.Seq)))
		}
		in.clk = clk
		r.holdLocked(in, b, now)
		return
	}
	if in = r.placeLocked(in, false, b, r.correctionFor(&clk, d), now, now); in != nil && !known {
		in.clk = clk
	}
}

// placeLocked merges b, which arrived at at, shifted by corr (its instance's clock
// correction), into its window, or into a correction of it if that window closed (or was due
// when b arrived) within the correction horizon, or counts why it cannot. in is the
// instance's state, nil for an instance not known yet (whose state placeLocked creates,
// unless the batch is refused for its group) or, with orphan set, for a held batch whose
// instance's state is gone (none is created). It returns the state.
func (r *Rollup) placeLocked(in *instance, orphan bool, b *proto.Batch, corr, at, now int64) *instance {
	end := b.End + corr
	start := floorDiv(end-1, r.w) * r.w
	if r.span != nil {
		if skip := r.span(start); skip != "" {
			if in != nil {
				r.m.lost.Add(int(in.mark(b.Seq)))
			}
			r.m.skipped[skip].Inc()
			return in
		}
	}
	gk := groupKey{b.Service, b.Version}
	g := r.groups[gk]
	// Closed: before closedBefore, due when b arrived, or closed early in its group (or in
	// the group's previous incarnation, whose next interval reopen keeps; see admitLocked).
	late := start < r.closedBefore || start+r.w+r.lateness <= at || (g != nil && start < g.next) ||
		(g == nil && start < r.reopen[gk])
	var refuse string
	switch {
	case end > at+r.maxFuture:
		refuse = ReasonFuture
	case late && (r.horizon == 0 || start+r.w+r.horizon <= at):
		refuse = ReasonLate
	}
	idx := start / r.w
	if refuse != "" {
		if in == nil && !orphan {
			// Keep state even for a refused first batch: it settles which sequence numbers
			// count as lost and makes a redelivery a duplicate.
			in = r.newInstanceLocked(b, idx, now)
			r.refuseArrivedLocked(nil, b, refuse)
			if b.Final {
				r.stopLocked(in)
			}
			return in
		}
		r.refuseArrivedLocked(in, b, refuse)
		return in
	}

	if g == nil {
		var reason string
		if g, reason = r.admitLocked(gk, now); g == nil {
			r.refuseArrivedLocked(in, b, reason)
			return in
		}
	}
	var c *correction
	if late {
		if c = r.correctionLocked(gk, start, now); c == nil {
			r.refuseArrivedLocked(in, b, ReasonTooManyCorrections)
			return in
		}
	}

	started := false
	switch {
	case in != nil:
		if in.stopped && b.Seq > in.maxSeq {
			// Data after a final batch: the instance is alive after all.
			in.stopped = false
			in.unannounced = true
			r.live++
			r.m.instances.Add(1)
		}
		r.m.lost.Add(int(in.mark(b.Seq)))
		started, in.unannounced = in.unannounced, false
	case !orphan:
		in = r.newInstanceLocked(b, idx, now)
		started, in.unannounced = true, false
	}

	var w *window
	if c != nil {
		w = c.w
	} else if w = g.findWindow(start); w == nil {
		w = r.newWindowLocked(start)
		g.insertWindow(w)
	}
	// Distinct instances: a correction tracks its own; an orphan's instance is not known.
	var first bool
	switch {
	case c != nil:
		first = c.ids[b.Instance]&1 == 0
		c.ids[b.Instance] |= 1
	case in != nil:
		first = in.wins.add(idx)
	default:
		first = true
	}
	if first {
		w.instances++
	}
	if started {
		w.started++
	}
	part := -1
	if r.split.warmupMs > 0 {
		// End and InstanceStart are both the agent's stamps: their difference does not
		// depend on its clock's offset.
		if b.End-b.InstanceStart >= r.warmup {
			if in != nil {
				part = in.bucket
			} else {
				part = proto.BucketOf(b.Instance)
			}
			var firstHalf bool
			switch {
			case c != nil:
				firstHalf = c.ids[b.Instance]&2 == 0
				c.ids[b.Instance] |= 2
			case in != nil:
				firstHalf = in.warmWins.add(idx)
			default:
				firstHalf = true
			}
			if firstHalf {
				w.partInstances[part]++
			}
		} else {
			r.m.batchesWarming.Inc()
		}
	}
	r.mergeLocked(g, w, b, part, now)
	w.lastAdd = now
	r.touchLocked(g, now)
	if in != nil {
		r.expectLocked(in, g, idx, end, b.End-b.Start, b.Final, c != nil, now)
	}
	if c == nil {
		r.mergedLateLocked(g, idx, now)
	}
	r.m.batchesMerged.Inc()
	if c != nil {
		r.m.corrected.Inc()
	}
	if corr != 0 {
		r.m.skewCorrected.Inc()
	}
	if b.Final {
		w.stopped++
		if in != nil {
			r.stopLocked(in)
		}
	}
	return in
}

// mergeLocked merges the series of b into w: every series into w's accumulators and, for a
// warm batch (part ≥ 0), the split series into warm bucket part as well.
func (r *Rollup) mergeLocked(g *group, w *window, b *proto.Batch, part int, now int64) {
	merged := 0
	for i := range b.Series {
		s := &b.Series[i]
		r.key = s.Key(r.key[:0])
		id, ok := g.ids[string(r.key)]
		if !ok {
			if reason := r.seriesRefusalLocked(g, s, now); reason != "" {
				r.m.seriesRefused[reason].Inc()
				continue
			}
			id = g.addSeries(string(r.key), s, r.splits(s.Name))
			r.addedSeriesLocked(g)
		}
		info := &g.series[id]
		if info.kind != s.Kind {
			r.m.seriesRefused[ReasonKindMismatch].Inc()
			continue
		}
		a := w.acc(id, len(g.series))
		var ha *acc // the warm bucket's accumulator, if the sample goes there too
		if part >= 0 && info.split {
			ha = w.partAcc(part, id)
		}
		reason, grow := r.refusal(w, a, ha, s)
		if reason != "" {
			r.m.seriesRefused[reason].Inc()
			continue
		}
		first := a.n == 0
		held := histCap(&a.hist)
		if !a.add(s.Kind, s) {
			r.m.seriesRefused[ReasonBadHistogram].Inc()
			continue
		}
		w.held += histCap(&a.hist) - held
		w.buckets += grow
		if first {
			w.touched = append(w.touched, id)
			w.meta = append(w.meta, seriesMeta{name: info.name, labels: info.labels, kind: info.kind})
		}
		if ha != nil {
			// The warm bucket's histogram buckets are a subset of a's, which fit: this merge cannot fail.
			held := histCap(&ha.hist)
			ha.add(s.Kind, s)
			w.held += histCap(&ha.hist) - held
		}
		info.lastUsed = now
		merged++
	}
	r.m.samples.Add(merged)
}

// refusal returns why sample s cannot be merged into window w, into accumulator a and, if ha
// is not nil, into the warm bucket's accumulator ha; or "" and the dense histogram buckets the
// merges add to w.
func (r *Rollup) refusal(w *window, a, ha *acc, s *proto.Series) (reason string, grow int) {
	if reason := a.refusal(s.Kind, s); reason != "" {
		return reason, 0
	}
	if ha != nil {
		if reason := ha.refusal(s.Kind, s); reason != "" {
			return reason, 0
		}
	}
	if s.Kind != proto.KindHistogram {
		return "", 0
	}
	grow = a.growth(&s.Hist)
	if ha != nil {
		grow += ha.growth(&s.Hist)
	}
	if w.buckets+grow > r.cfg.MaxWindowBuckets {
		return ReasonTooManyBuckets, 0
	}
	return "", grow
}

// splits reports whether series of this name are carried by Warm, Halves and Buckets.
func (r *Rollup) splits(name string) bool {
	return r.splitAll || slices.Contains(r.split.names, name)
}

// refuseArrivedLocked refuses b after the dedup check. The batch arrived, so for a known
// instance (in non-nil) its sequence number is marked seen, never counted lost; an unknown
// instance gets no state from a refused batch.
func (r *Rollup) refuseArrivedLocked(in *instance, b *proto.Batch, reason string) {
	if in != nil {
		r.m.lost.Add(int(in.mark(b.Seq)))
		if b.Final {
			r.stopLocked(in)
		}
	}
	r.refuseLocked(reason)
}

func (r *Rollup) refuseLocked(reason string) {
	r.m.batchesRefused[reason].Inc()
}

// newInstanceLocked creates and caches the state of an instance first seen with b.
func (r *Rollup) newInstanceLocked(b *proto.Batch, idx, now int64) *instance {
	var in *instance
	if n := len(r.freeInsts); n > 0 {
		in = r.freeInsts[n-1]
		r.freeInsts = r.freeInsts[:n-1]
	} else {
		in = new(instance)
	}
	in.reset(b.Service, b.Version, b.InstanceStart, b.Seq, idx, proto.BucketOf(b.Instance), now)
	r.insts.Add(b.Instance, in) // may evict the least recently seen instance
	r.live++
	r.m.instances.Add(1)
	return in
}

// stopLocked marks in stopped after its final batch.
func (r *Rollup) stopLocked(in *instance) {
	if in.stopped {
		return
	}
	in.stopped = true
	r.cancelExpectLocked(in, r.now().UnixNano())
	r.live--
	r.m.instances.Add(-1)
	r.m.forgotten[forgotFinal].Inc()
}

// onDropLocked is the LRU's callback for every removal: it settles the instance's pending
// gaps as lost and recycles the state. r.dropReason names the cause.
func (r *Rollup) onDropLocked(_ [16]byte, in *instance) {
	r.m.lost.Add(int(in.pending()))
	r.cancelExpectLocked(in, r.now().UnixNano())
	if !in.stopped {
		r.live--
		r.m.instances.Add(-1)
		r.m.forgotten[r.dropReason].Inc()
	}
	if len(r.freeInsts) < maxFree {
		*in = instance{}
		r.freeInsts = append(r.freeInsts, in)
	}
}

func (r *Rollup) newWindowLocked(start int64) *window {
	var w *window
	if n := len(r.freeWindows); n > 0 {
		w = r.freeWindows[n-1]
		r.freeWindows[n-1] = nil
		r.freeWindows = r.freeWindows[:n-1]
		r.freeBytes -= w.bytes()
	} else {
		w = new(window)
	}
	w.start = start
	w.split = r.split
	return w
}

// recycleWindowLocked keeps the reset window w for reuse, unless the recycled windows are
// at their bounds already.
func (r *Rollup) recycleWindowLocked(w *window) {
	if b := w.bytes(); len(r.freeWindows) < maxFree && r.freeBytes+b <= maxFreeBytes {
		r.freeWindows = append(r.freeWindows, w)
		r.freeBytes += b
	}
}

// floorDiv returns ⌊a/b⌋ for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
