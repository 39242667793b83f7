package rollup

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Run closes windows until ctx is done, on a timer aligned to the instants windows become
// due (window end + lateness), counting ticks it could not keep. With Config.CloseComplete it
// also wakes Settle after every window end, when a batch completes a window, and when a
// complete window settles, to close complete windows early. It returns nil once ctx is done
// and its timer is stopped; it does not flush (call Flush after stopping intake).
func (r *Rollup) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	now := r.now().UnixNano()
	due := r.nextDue(now)
	var recheck, last int64
	// A completed window wakes Run at once, but Advance runs at most every minGap: with many
	// groups completing one after another, the windows that completed meanwhile close together.
	minGap := max(r.settle/4, int64(time.Millisecond))
	for {
		at := due
		if r.early {
			at = min(at, r.nextSettled(now))
			if recheck > now {
				at = min(at, recheck)
			}
		}
		timer.Reset(time.Duration(at - now))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.wake:
			timer.Stop()
			if t := r.now().UnixNano(); t < last+minGap {
				now, recheck = t, last+minGap
				continue
			}
		}
		last = r.now().UnixNano()
		r.Advance(time.Unix(0, last))
		r.mu.Lock()
		recheck = r.recheck
		r.mu.Unlock()
		// A slow Emit or a late timer skips due instants; the next Advance closes their
		// windows too, late, and the skipped ticks are counted.
		now = r.now().UnixNano()
		if now >= due {
			next := r.nextDue(now)
			if skipped := (next-due)/r.w - 1; skipped > 0 {
				r.m.ticksMissed.Add(int(skipped))
			}
			due = next
		}
	}
}

// nextSettled returns the first instant after now that lies Settle after a window end.
func (r *Rollup) nextSettled(now int64) int64 {
	return (floorDiv(now-r.settle, r.w)+1)*r.w + r.settle
}

// nextDue returns the first instant after now at which a window becomes due.
func (r *Rollup) nextDue(now int64) int64 {
	return (floorDiv(now-r.lateness, r.w)+1)*r.w + r.lateness
}

// Advance places the batches held too long for their instance's next arrival (see the
// package doc, Clocks), then closes and emits every window due at now (end + lateness ≤ now)
// and, with Config.CloseComplete, every window complete at now (see complete.go), in time
// order per group, including the empty windows of recently active groups, then the corrections
// open for Lateness; and it forgets instances silent for InstanceTTL. Run calls it; tests and
// one-shot tools may call it directly.
func (r *Rollup) Advance(now time.Time) {
	r.emitMu.Lock()
	defer r.emitMu.Unlock()
	nowNs := now.UnixNano()
	r.mu.Lock()
	r.releaseDueLocked(nowNs, false)
	cb := floorDiv(nowNs-r.lateness, r.w) * r.w
	r.closeLocked(max(cb, r.closedBefore))
	r.recheck = r.closeCompleteLocked(nowNs)
	r.sortClosing()
	r.closeCorrectionsLocked(nowNs, false)
	r.expireLocked(nowNs)
	r.mu.Unlock()
	r.emitClosing(nowNs)
}

// Flush places every held batch, then closes and emits every open window and correction now,
// whatever its time; batches for those windows are late afterwards (corrections, within the
// horizon). Call it on shutdown after intake stopped, so the last windows are not lost.
func (r *Rollup) Flush() {
	r.emitMu.Lock()
	defer r.emitMu.Unlock()
	nowNs := r.now().UnixNano()
	r.mu.Lock()
	r.releaseDueLocked(nowNs, true)
	to := r.closedBefore
	for _, g := range r.groups {
		if n := len(g.windows); n > 0 {
			to = max(to, g.windows[n-1].start+r.w)
		}
	}
	r.closeLocked(to)
	r.closeCorrectionsLocked(nowNs, true)
	r.mu.Unlock()
	n := len(r.closing)
	r.emitClosing(nowNs)
	r.logger.Info("flushed open windows", "windows", n)
}

// closing is a window interval being closed: an open window, or an empty interval (w nil),
// or a correction.
type closing struct {
	key        groupKey
	start      int64
	w          *window
	correction bool
}

// closeLocked detaches every window interval ending at or before cb into r.closing, in order
// of start, then group. The caller holds emitMu and mu.
func (r *Rollup) closeLocked(cb int64) {
	r.closedBefore = cb
	r.closing = r.closing[:0]
	for k, next := range r.reopen {
		if next <= cb {
			delete(r.reopen, k)
		}
	}
	for _, g := range r.groups {
		r.closeGroupLocked(g, cb)
		if len(g.windows) == 0 && g.next >= g.lastData+r.ttl && len(r.corr[g.key]) == 0 {
			r.dropGroupLocked(g, groupExpired)
		}
	}
	r.sortClosing()
}

// sortClosing orders r.closing by start, then group. The caller holds emitMu.
func (r *Rollup) sortClosing() {
	slices.SortFunc(r.closing, func(a, b closing) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.key.service, b.key.service), cmp.Compare(a.key.version, b.key.version))
	})
}

// closeGroupLocked appends g's window intervals ending at or before cb to r.closing, in
// time order.
func (r *Rollup) closeGroupLocked(g *group, cb int64) {
	for g.next < cb {
		if len(g.windows) > 0 && g.windows[0].start <= g.next {
			w := g.windows[0]
			if w.start < g.next {
				panic("BUG: rollup: open window before the next interval to close")
			}
			r.closing = append(r.closing, closing{key: g.key, start: w.start, w: w})
			g.windows = slices.Delete(g.windows, 0, 1)
			g.lastData = w.start + r.w
			g.next += r.w
			continue
		}
		if g.next+r.w <= g.lastData+r.ttl {
			r.closing = append(r.closing, closing{key: g.key, start: g.next})
			g.next += r.w
			continue
		}
		// Nothing due until the next open window (or cb): skip the silent span.
		next := cb
		if len(g.windows) > 0 && g.windows[0].start < next {
			next = g.windows[0].start
		}
		g.next = next
	}
	g.trimExpect(r.w)
}

// expireLocked forgets instances silent for InstanceTTL and, every half TTL, series unused
// for InstanceTTL.
func (r *Rollup) expireLocked(nowNs int64) {
	r.dropReason = forgotExpired
	for {
		_, in, ok := r.insts.GetOldest()
		if !ok || nowNs-in.lastSeen < r.ttl {
			break
		}
		r.insts.RemoveOldest()
	}
	r.dropReason = forgotEvicted
	if nowNs-r.lastSweep < r.ttl/2 {
		return
	}
	r.lastSweep = nowNs
	for _, g := range r.groups {
		if n := g.sweepSeries(nowNs - r.ttl); n > 0 {
			r.forgetSeriesLocked(g, n)
		}
	}
}

// emitClosing builds the results of r.closing, hands them to Emit in order and recycles the
// windows. The caller holds emitMu but not mu.
func (r *Rollup) emitClosing(closedNs int64) {
	for _, c := range r.closing {
		var out *proto.Window
		if c.correction {
			out = r.result(c.w, c.key, closedNs)
			out.Correction = true
			c.w.reset()
			r.m.corrections.Inc()
			r.emit(out)
			continue
		}
		if c.w != nil {
			out = r.result(c.w, c.key, closedNs)
			c.w.reset()
		} else {
			out = emptyResult(c.key, c.start, r.w, closedNs)
			r.m.emptyWindows.Inc()
		}
		// Flush closes windows before their end: those count as no delay.
		r.m.emitDelay.Update(float64(max(r.now().UnixMilli()-out.EndMs, 0)) / 1e3)
		r.m.windows.Inc()
		r.emit(out)
	}
	r.mu.Lock()
	for i, c := range r.closing {
		if c.w != nil {
			r.recycleWindowLocked(c.w)
		}
		r.closing[i] = closing{}
	}
	r.mu.Unlock()
	r.closing = r.closing[:0]
}
