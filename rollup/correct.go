package rollup

import (
	"cmp"
	"slices"
)

// correction is an open correction of a closed window of a group: the late batches for it
// that arrived since opened. Guarded by Rollup.mu until it is detached for emission.
type correction struct {
	w      *window
	opened int64 // arrival time of its first batch, unix nanos
	// ids holds the instances merged: bit 0 once counted in w.instances, bit 1 once in
	// w.partInstances. (Instance states track windows near their newest only.)
	ids map[[16]byte]uint8
}

// maxCorrections bounds the corrections open at once, over every group: a correction is a
// window, so this allows as much memory again as one open window per group.
func (r *Rollup) maxCorrections() int { return max(r.cfg.MaxGroups, 1024) }

// correctionLocked returns the open correction of group k's window starting at start,
// opening one at now if there is none; nil if there is none and no room for one.
func (r *Rollup) correctionLocked(k groupKey, start, now int64) *correction {
	for _, c := range r.corr[k] {
		if c.w.start == start {
			return c
		}
	}
	if r.ncorr >= r.maxCorrections() {
		return nil
	}
	c := &correction{w: r.newWindowLocked(start), opened: now, ids: make(map[[16]byte]uint8)}
	if r.corr == nil {
		r.corr = make(map[groupKey][]*correction)
	}
	r.corr[k] = append(r.corr[k], c)
	r.ncorr++
	return c
}

// closeCorrectionsLocked appends to r.closing the corrections open for Lateness or longer at
// now (or all of them), in order of start, then group, after what r.closing holds. The
// caller holds emitMu and mu.
func (r *Rollup) closeCorrectionsLocked(now int64, all bool) {
	if r.ncorr == 0 {
		return
	}
	from := len(r.closing)
	for k, cs := range r.corr {
		kept := cs[:0]
		for _, c := range cs {
			if all || now-c.opened >= r.lateness {
				r.closing = append(r.closing, closing{key: k, start: c.w.start, w: c.w, correction: true})
				r.ncorr--
				continue
			}
			kept = append(kept, c)
		}
		clear(cs[len(kept):])
		if len(kept) == 0 {
			delete(r.corr, k)
		} else {
			r.corr[k] = kept
		}
	}
	slices.SortFunc(r.closing[from:], func(a, b closing) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.key.service, b.key.service), cmp.Compare(a.key.version, b.key.version))
	})
}
