package rollup

// Completeness: closing a window once every batch expected in it has arrived.
//
// Every batch merged tells when its instance's next batch will end: one interval (End −
// Start) after it. That end, corrected by the instance's clock like the batch, names the
// window the next batch is expected in, and the group counts it there (expect.want). The
// instance's next batch fulfils the expectation if it is merged into that window while it
// is open (expect.got), and cancels it if it lands in a later window or in a correction (the
// instance skipped a boundary, or is slow: its batch for the window is no longer coming before
// the window closes). A final batch expects nothing; an instance stopped, forgotten or
// replaced by a new incarnation cancels what it expected.
//
// A window of a group is complete once it ended, got ≥ want, no batch of the group is held
// for its instance's clock, and Settle passed since the window's end and since the last batch
// merged into it. New instances are expected by nobody: their first batches normally arrive
// in the same burst as everyone else's, and Settle lets that burst end. An instance that died
// without a final batch keeps its window waiting, but for that window only: its full
// lateness, after which it expects nothing more. A batch that arrives after its window closed
// early is merged into a correction (or refused as late beyond CorrectionHorizon), exactly as
// a batch that arrives after the lateness ran out.

// expect counts the batches expected in, and received for, one window of a group.
type expect struct {
	idx       int64 // window index (start / window)
	want, got int32
}

// findExpect returns the expectations of window index idx, or nil.
func (g *group) findExpect(idx int64) *expect {
	for i := len(g.exp) - 1; i >= 0; i-- {
		if e := &g.exp[i]; e.idx == idx {
			return e
		} else if e.idx < idx {
			return nil
		}
	}
	return nil
}

// expectAt returns the expectations of window index idx, adding them if needed.
func (g *group) expectAt(idx int64) *expect {
	i := len(g.exp)
	for i > 0 && g.exp[i-1].idx >= idx {
		if g.exp[i-1].idx == idx {
			return &g.exp[i-1]
		}
		i--
	}
	g.exp = append(g.exp, expect{})
	copy(g.exp[i+1:], g.exp[i:])
	g.exp[i] = expect{idx: idx}
	return &g.exp[i]
}

// trimExpect drops the expectations of windows that closed (start before g.next).
func (g *group) trimExpect(w int64) {
	n := 0
	for n < len(g.exp) && g.exp[n].idx*w < g.next {
		n++
	}
	if n > 0 {
		g.exp = append(g.exp[:0], g.exp[n:]...)
	}
}

// maxExpectAhead bounds how many windows ahead an expectation may lie: an instance whose
// interval is longer than that is expected nowhere (its windows close by lateness).
const maxExpectAhead = 64

// expectLocked records, for completeness, the batch of in merged into group g's window
// index idx (into a correction of it if corrected), which ended (corrected) at end after an
// interval of iv; final: the instance's last batch.
func (r *Rollup) expectLocked(in *instance, g *group, idx, end, iv int64, final, corrected bool, now int64) {
	if !r.early {
		return
	}
	if in.expG != nil {
		if idx < in.expIdx && in.expG == g {
			return // an older batch, reordered: the expectation stands
		}
		if e := in.expG.findExpect(in.expIdx); e != nil {
			if in.expG == g && in.expIdx == idx && !corrected {
				e.got++
			} else {
				e.want--
			}
			r.checkCompleteLocked(in.expG, e, now)
		}
		in.expG = nil
	}
	if final || iv <= 0 {
		return
	}
	next := floorDiv(end+iv-1, r.w)
	if next*r.w < g.next || next-idx > maxExpectAhead {
		return
	}
	g.expectAt(next).want++
	in.expG, in.expIdx = g, next
}

// cancelExpectLocked withdraws what in expected: it stopped or is forgotten.
func (r *Rollup) cancelExpectLocked(in *instance, now int64) {
	if in.expG == nil {
		return
	}
	if e := in.expG.findExpect(in.expIdx); e != nil {
		e.want--
		r.checkCompleteLocked(in.expG, e, now)
	}
	in.expG = nil
}

// checkCompleteLocked wakes Run when e's window of g has ended and got what it expected.
func (r *Rollup) checkCompleteLocked(g *group, e *expect, now int64) {
	if e.got >= e.want && e.idx*r.w == g.next && now >= g.next+r.w {
		r.signalLocked()
	}
}

// mergedLateLocked wakes Run after a batch was merged into g's window index idx after the
// window's end while the window has what it expected: Run then closes it Settle after this
// batch, rather than at the next window's end.
func (r *Rollup) mergedLateLocked(g *group, idx, now int64) {
	if !r.early || now < (idx+1)*r.w {
		return
	}
	if e := g.findExpect(idx); e == nil || e.got >= e.want {
		r.signalLocked()
	}
}

// signalLocked wakes Run, unless a wake-up is pending already.
func (r *Rollup) signalLocked() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// closeCompleteLocked appends to r.closing, in time order per group, the complete windows
// of every group (see above) at now, and returns the earliest time a window that is
// complete but not yet settled becomes due (0 if none). The caller holds emitMu and mu.
func (r *Rollup) closeCompleteLocked(now int64) (recheck int64) {
	if !r.early {
		return 0
	}
	for _, g := range r.groups {
		if len(g.windows) == 0 && g.next+r.w > g.lastData+r.ttl {
			continue // silent: nothing to close until its next batch
		}
		if r.heldBy[g.key] > 0 {
			continue
		}
		for {
			end := g.next + r.w
			if now < end+r.settle {
				break
			}
			if e := g.findExpect(g.next / r.w); e != nil && e.got < e.want {
				break
			}
			if w := g.findWindow(g.next); w != nil && now < w.lastAdd+r.settle {
				if recheck == 0 || w.lastAdd+r.settle < recheck {
					recheck = w.lastAdd + r.settle
				}
				break
			}
			n := len(r.closing)
			r.closeGroupLocked(g, end)
			r.m.closedEarly.Add(len(r.closing) - n)
		}
	}
	return recheck
}
