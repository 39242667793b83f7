package rollup

import (
	"cmp"
	"math"
	"slices"
	"unsafe"

	"github.com/herd-dev/herd/proto"
)

// noSample marks an empty minimum of a clock.
const noSample = math.MaxInt64

// maxOffset bounds an arrival offset, so that arithmetic on any batch time stays in range.
const maxOffset = int64(1) << 60

// clock estimates the offset of one instance's clock from the arrival times of its batches
// (see the package doc, Clocks). It is part of the instance's state, guarded by Rollup.mu.
type clock struct {
	// minCur and minPrev are the least arrival offsets (arrival − End, nanos) of the
	// current and the previous epoch; the estimate is the lesser. noSample when empty.
	minCur, minPrev int64
	epoch           int64 // arrival time the current epoch began
	// minAt is the arrival time of the batch that last moved the estimate by more than the
	// tolerance; confirmed is set once a batch arriving at least half a window later came
	// within the tolerance of the estimate.
	minAt     int64
	confirmed bool
	// k is the correction in force, in windows: set from the estimate whenever it is
	// confirmed, kept while it is not.
	k int64
}

func newClock() clock { return clock{minCur: noSample, minPrev: noSample} }

// estimate returns the least arrival offset of the last one or two epochs, or noSample.
func (c *clock) estimate() int64 { return min(c.minCur, c.minPrev) }

// arrivalOffset returns now − end, bounded by ±maxOffset.
func arrivalOffset(now, end int64) int64 {
	switch {
	case end < now-maxOffset:
		return maxOffset
	case end > now+maxOffset:
		return -maxOffset
	}
	return now - end
}

// skewEpoch returns the length of a clock's epoch: the estimate is the least offset of the
// last one to two epochs, so an offset that grew (a clock stepped back) is followed within
// two epochs, while one delayed burst (a reconnect buffer) never lowers it.
func (r *Rollup) skewEpoch() int64 { return max(int64(5e9), 8*r.w) }

// observe records in c a batch that arrived at now, d after its End (see arrivalOffset).
func (r *Rollup) observe(c *clock, d, now int64) {
	before := c.estimate()
	if e := r.skewEpoch(); before == noSample || now-c.epoch >= e {
		if before == noSample || now-c.epoch >= 2*e {
			c.minPrev = noSample
		} else {
			c.minPrev = c.minCur
		}
		c.minCur, c.epoch = noSample, now
	}
	c.minCur = min(c.minCur, d)
	est := c.estimate()
	tol := r.w / 4
	switch {
	case before == noSample || est < before-tol || est > before+tol:
		// A first batch, one that arrived well sooner than every recent one (they were
		// delayed: a burst of buffered batches drains, each arriving sooner than the one
		// before; or the clock stepped), or the old minimum aged out: the estimate must be
		// confirmed by a later batch before it is used.
		c.minAt, c.confirmed = now, false
	case !c.confirmed && now-c.minAt >= r.w/2 && d <= est+tol:
		c.confirmed = true
	}
	if c.confirmed {
		c.k = r.windowsFor(est, c.k)
	}
}

// windowsFor returns the correction, in windows, for the estimate est when k is in force:
// est rounded to whole windows, except that k is kept while est stays within 5/8 of a window
// of k windows (so an offset near a half window does not flip batches between neighbouring
// windows); 0 if the correction would exceed MaxSkew.
func (r *Rollup) windowsFor(est, k int64) int64 {
	if r.maxSkew <= 0 || est == noSample {
		return 0
	}
	band := r.w/2 + r.w/8
	if e := est - k*r.w; e < -band || e > band {
		k = floorDiv(est+r.w/2, r.w)
	}
	if k*r.w > r.maxSkew || -k*r.w > r.maxSkew {
		return 0
	}
	return k
}

// correctionFor returns the correction, in nanoseconds, of a batch that arrived d after its
// End, for an instance with clock c: c's correction in force, but never so large that the
// batch would end more than half a window after it arrived (no batch is measured after it
// arrives: that bound alone corrects an instance whose clock is ahead, from its first batch
// on), within ±MaxSkew rounded down to whole windows.
func (r *Rollup) correctionFor(c *clock, d int64) int64 {
	if r.maxSkew <= 0 {
		return 0
	}
	kb := r.maxSkew / r.w
	k := min(c.k, floorDiv(d+r.w/2, r.w))
	return max(min(k, kb), -kb) * r.w
}

// holds reports whether a batch that arrived d after its End, of an instance with clock c,
// waits for the instance's next batch: c's estimate is not confirmed and, confirmed, would
// correct the batch differently than now. One arrival cannot tell a clock that is behind
// from a batch that was delayed (in a reconnect buffer, say); the next one can.
func (r *Rollup) holds(c *clock, d int64) bool {
	if c.confirmed || r.maxSkew <= 0 {
		return false
	}
	cand := clock{k: r.windowsFor(c.estimate(), c.k)}
	return r.correctionFor(&cand, d) != r.correctionFor(c, d)
}

// heldBatch is a batch waiting for its instance's next arrival (see Rollup.holds).
type heldBatch struct {
	b     proto.Batch // a copy; its slices are owned by the heldBatch
	at    int64       // arrival time
	bytes int         // memory of the copy, counted in Rollup.heldBytes
}

// Bounds of the batches held: beyond either, a batch is placed at once, by its instance's
// correction in force.
const (
	maxHeldBytes = 16 << 20
	maxHeld      = 1 << 14
)

// holdFor returns how long a batch is held at most: its instance's next batch normally
// comes one interval later.
func (r *Rollup) holdFor() int64 { return max(r.lateness, r.w+r.w/2) }

// canHoldLocked reports whether b may be held within the bounds and without letting a new
// group in that could not be created.
func (r *Rollup) canHoldLocked(b *proto.Batch) bool {
	if len(r.held) >= maxHeld || r.heldBytes+batchBytes(b) > maxHeldBytes {
		return false
	}
	_, ok := r.groups[groupKey{b.Service, b.Version}]
	return ok || len(r.groups) < r.cfg.MaxGroups
}

// holdLocked keeps a copy of b, which arrived at now, until its instance's next batch (in
// Add) or until holdFor passed (in Advance). in is the instance's state.
func (r *Rollup) holdLocked(in *instance, b *proto.Batch, now int64) {
	if old := r.held[b.Instance]; old != nil {
		r.releaseLocked(old, now) // an earlier incarnation's
	}
	h := &heldBatch{at: now, bytes: batchBytes(b)}
	copyBatch(&h.b, b)
	if r.held == nil {
		r.held = make(map[[16]byte]*heldBatch)
	}
	r.held[b.Instance] = h
	r.heldQ = append(r.heldQ, h)
	r.heldBytes += h.bytes
	in.held = true
	if r.heldBy == nil {
		r.heldBy = make(map[groupKey]int)
	}
	r.heldBy[groupKey{b.Service, b.Version}]++
}

// releaseLocked places the held batch h with the correction its instance's clock gives now,
// as if it had not been held: in its window if that window is still open and was not due
// when h arrived. If the instance's state is gone (expired, evicted, replaced by a new
// incarnation), h is placed by its own stamps without instance state.
func (r *Rollup) releaseLocked(h *heldBatch, now int64) {
	delete(r.held, h.b.Instance)
	r.heldBytes -= h.bytes
	if k := (groupKey{h.b.Service, h.b.Version}); r.heldBy[k] > 1 {
		r.heldBy[k]--
	} else {
		delete(r.heldBy, k)
	}
	in, ok := r.insts.Peek(h.b.Instance)
	if !ok || !in.held || in.start != h.b.InstanceStart {
		r.placeLocked(nil, true, &h.b, 0, h.at, now)
		return
	}
	in.held = false
	r.placeLocked(in, false, &h.b, r.correctionFor(&in.clk, arrivalOffset(h.at, h.b.End)), h.at, now)
}

// releaseDueLocked releases the batches held for holdFor or longer at now, or all of them.
// r.heldQ holds them in order of arrival, with the ones released since: only its due head
// is looked at, so a check costs nothing while nothing is due.
func (r *Rollup) releaseDueLocked(now int64, all bool) {
	if len(r.held) == 0 {
		clear(r.heldQ)
		r.heldQ = r.heldQ[:0]
		return
	}
	var due []*heldBatch
	if all {
		due = make([]*heldBatch, 0, len(r.held))
		for _, h := range r.held {
			due = append(due, h)
		}
		clear(r.heldQ)
		r.heldQ = r.heldQ[:0]
	} else {
		n := 0
		for _, h := range r.heldQ {
			if r.held[h.b.Instance] == h {
				if now-h.at < r.holdFor() {
					break
				}
				due = append(due, h)
			} // else released already
			n++
		}
		clear(r.heldQ[:n])
		r.heldQ = r.heldQ[n:]
	}
	if len(due) == 0 {
		return
	}
	// In arrival order, so that what is placed does not depend on map order.
	slices.SortFunc(due, func(a, b *heldBatch) int {
		return cmp.Or(cmp.Compare(a.at, b.at), slices.Compare(a.b.Instance[:], b.b.Instance[:]))
	})
	for _, h := range due {
		r.releaseLocked(h, now)
	}
}

// batchBytes estimates the memory a copy of b holds.
func batchBytes(b *proto.Batch) int {
	n := int(unsafe.Sizeof(proto.Batch{})) + len(b.Series)*int(unsafe.Sizeof(proto.Series{}))
	for i := range b.Series {
		s := &b.Series[i]
		n += len(s.Labels)*int(unsafe.Sizeof(proto.Label{})) + 8*(len(s.Hist.Positive.Counts)+len(s.Hist.Negative.Counts))
	}
	return n
}

// copyBatch makes dst a deep copy of src (strings are immutable and shared).
func copyBatch(dst, src *proto.Batch) {
	series := dst.Series[:0]
	*dst = *src
	dst.Series = series
	for i := range src.Series {
		s := &src.Series[i]
		c := proto.Series{Name: s.Name, Kind: s.Kind, Value: s.Value}
		if len(s.Labels) > 0 {
			c.Labels = slices.Clone(s.Labels)
		}
		if s.Kind == proto.KindHistogram {
			c.Hist.CopyFrom(&s.Hist)
		}
		dst.Series = append(dst.Series, c)
	}
}
