package alert

import (
	"time"

	"github.com/herd-dev/herd/proto"
)

// Admission of groups.
//
// The detector's group table is bounded like the rollup's: Config.MaxGroups groups in all,
// Config.MaxVersionsPerService per service. A window with instances of a new group that finds
// its service or the table full takes the place of an evictable group: one no window with
// instances arrived for in evictIdle (oneShotIdle if it has had at most one such window, what
// a flood of subjects sends), that no comparison of its service names as canary or baseline
// (final comparisons included, while they are kept) and that is no judged canary, so neither
// a running comparison nor the memory of a judgement makes room. Without one, or for an
// empty window (no instance), the window is dropped and counted, as too_many_versions or
// too_many_groups. A group with a comparison of its own (an announced canary) is admitted
// beyond its service's quota.
//
// Evicted groups lose their history (first window, reference latency, live traffic): should
// the version report again, it is a new group, as after the ten minutes an idle group is
// kept otherwise.

// evictIdle is how long no window with instances must have arrived for a group before it
// may be evicted for a new one: eight windows of 250 ms, longer than a window's lateness.
// oneShotIdle is that time for a group that has had at most one window with instances: two
// windows, after which a real group has sent its next.
const (
	evictIdle   = 2 * time.Second
	oneShotIdle = 500 * time.Millisecond
)

// maxEvictScan bounds the groups looked at from the table's least recently active end for one
// eviction.
const maxEvictScan = 16

// Reasons a group is forgotten (label reason of herd_detector_groups_forgotten_total).
const (
	groupExpired = "expired" // no window for groupIdle
	groupEvicted = "evicted" // idle and not compared, forgotten to make room for a new group
)

// admitLocked returns the group of w, new, first evicting a group if the service's versions or
// the table are full, or nil after counting why w is dropped. It creates the service if
// needed. now is the wall clock (unix ms).
func (d *Detector) admitLocked(w *proto.Window, now int64) (*service, *group) {
	s := d.services[w.Service]
	evict := w.Instances > 0 // an empty window makes no room
	if s != nil && len(s.groups) >= d.cfg.MaxVersionsPerService && s.comps[w.Version] == nil && !(evict && d.evictVersionLocked(s, now)) {
		d.m.tooManyVersions.Inc()
		return nil, nil
	}
	if d.groups >= d.cfg.MaxGroups && !(evict && d.evictIdleLocked(now)) {
		d.m.tooManyGroups.Inc()
		return nil, nil
	}
	s = d.serviceLocked(w.Service) // again: an eviction may have removed it
	g := &group{version: w.Version, firstMs: w.StartMs, refCurStartMs: w.StartMs, svc: s, activeAt: now}
	g.inAll = d.lru.PushFront(g)
	s.groups[w.Version] = g
	d.groups++
	return s, g
}

// touchLocked records that a window with instances of g arrived at now.
func (d *Detector) touchLocked(g *group, now int64) {
	g.activeAt = now
	g.live = min(g.live+1, 2)
	d.lru.MoveToFront(g.inAll)
}

// idle reports whether g has been idle long enough at now to be evicted.
func (g *group) idle(now int64) bool {
	idle := time.Duration(now-g.activeAt) * time.Millisecond
	return idle >= evictIdle || g.live <= 1 && idle >= oneShotIdle
}

// evictable reports whether g may be evicted for a new group at now.
func (s *service) evictable(g *group, now int64) bool { return g.idle(now) && !s.keeps(g) }

// keeps reports whether g is kept however idle: a comparison of s names it as canary or
// baseline, or it is a judged canary.
func (s *service) keeps(g *group) bool {
	if g.judged || s.comps[g.version] != nil {
		return true
	}
	for _, c := range s.comps {
		if c.baseline == g.version {
			return true
		}
	}
	return false
}

// evictVersionLocked evicts the evictable group of s that has been idle longest, and reports
// whether there was one.
func (d *Detector) evictVersionLocked(s *service, now int64) bool {
	var old *group
	for _, g := range s.groups {
		if s.evictable(g, now) && (old == nil || g.activeAt < old.activeAt) {
			old = g
		}
	}
	if old == nil {
		return false
	}
	d.dropGroupLocked(old, groupEvicted)
	return true
}

// evictIdleLocked evicts the evictable group that has been idle longest among the table's
// least recently active ones, and reports whether there was one. Kept groups met on the way
// go to the front of the list, out of the way of the next evictions.
func (d *Detector) evictIdleLocked(now int64) bool {
	e := d.lru.Back()
	for range maxEvictScan {
		if e == nil {
			return false
		}
		g := e.Value.(*group)
		if time.Duration(now-g.activeAt)*time.Millisecond < oneShotIdle {
			return false // the others were active more recently still
		}
		prev := e.Prev()
		switch {
		case g.svc.keeps(g):
			d.lru.MoveToFront(e)
		case g.idle(now):
			d.dropGroupLocked(g, groupEvicted)
			return true
		}
		e = prev
	}
	return false
}

// dropGroupLocked forgets g, for reason (groupExpired, groupEvicted), and its service if
// nothing else is left of it.
func (d *Detector) dropGroupLocked(g *group, reason string) {
	s := g.svc
	delete(s.groups, g.version)
	d.lru.Remove(g.inAll)
	d.groups--
	d.m.groupsForgotten[reason].Inc()
	if len(s.groups) == 0 && len(s.comps) == 0 {
		d.unregisterShadowLocked(s)
		delete(d.services, s.name)
	}
}
