package web

import (
	"time"

	"github.com/herd-dev/herd/proto"
)

// Admission of groups.
//
// The dashboard's group table is bounded like the rollup's and the detector's:
// Config.MaxGroups groups in all, Config.MaxVersionsPerService per service. A window with
// instances of a new group that finds its service or the table full takes the place of an
// evictable group: one no window with instances arrived for in evictIdle (oneShotIdle if it
// has had at most one such window, what a flood of subjects sends), and that no pending
// verdict of its service names as canary or baseline (the comparison being watched keeps its
// charts). Without one, or for an empty window (no instance), the window is refused and
// counted, as too_many_versions or max_groups. Otherwise a group is forgotten after
// Config.History without a window.

// evictIdle is how long no window with instances must have arrived for a group before it may
// be evicted for a new one: eight windows of 250 ms. oneShotIdle is that time for a group
// that has had at most one window with instances: two windows, after which a real group has
// sent its next.
const (
	evictIdle   = 2 * time.Second
	oneShotIdle = 500 * time.Millisecond
)

// maxEvictScan bounds the groups looked at from the table's least recently active end for one
// eviction.
const maxEvictScan = 16

// Reasons a group is forgotten (label reason of herd_web_groups_evicted_total).
const (
	groupExpired = "expired" // no window for Config.History
	groupIdle    = "idle"    // idle and not watched, forgotten to make room for a new group
)

// admitLocked returns a new group for w, first evicting a group if the service's versions or
// the table are full, or nil after counting why w is refused.
func (s *Server) admitLocked(w *proto.Window, now time.Time) *group {
	sv := s.services[w.Service]
	evict := w.Instances > 0 // an empty window makes no room
	if sv != nil && len(sv.groups) >= s.cfg.MaxVersionsPerService && !(evict && s.evictVersionLocked(sv, now)) {
		s.m.inputsRefused[ReasonTooManyVersions].Inc()
		return nil
	}
	if s.ngroups >= s.cfg.MaxGroups && !(evict && s.evictIdleLocked(now)) {
		s.m.inputsRefused[ReasonMaxGroups].Inc()
		return nil
	}
	sv = s.serviceLocked(w.Service) // again: an eviction may have removed it
	g := &group{version: w.Version, ring: newRing(ringSize(s.cfg.History, w)), sv: sv, activeAt: now}
	g.inAll = s.lru.PushFront(g)
	sv.groups[w.Version] = g
	s.ngroups++
	return g
}

// touchLocked records that a window with instances of g arrived at now.
func (s *Server) touchLocked(g *group, now time.Time) {
	g.activeAt = now
	g.live = min(g.live+1, 2)
	s.lru.MoveToFront(g.inAll)
}

// watched reports whether the newest verdict of one of sv's comparisons is pending (or a
// pass still watching the canary) and names version as canary or baseline.
func (sv *service) watched(version string) bool {
	vs := sv.verdicts
	for i := len(vs) - 1; i >= 0; i-- {
		v := &vs[i]
		running := v.State == proto.StatePending || v.Watch != nil && v.Watch.Active
		if !running || v.Canary != version && v.Baseline != version {
			continue
		}
		newest := true
		for j := i + 1; j < len(vs) && newest; j++ {
			newest = vs[j].Canary != v.Canary || vs[j].Baseline != v.Baseline
		}
		if newest {
			return true
		}
	}
	return false
}

// idle reports whether g has been idle long enough at now to be evicted.
func (g *group) idle(now time.Time) bool {
	idle := now.Sub(g.activeAt)
	return idle >= evictIdle || g.live <= 1 && idle >= oneShotIdle
}

// evictable reports whether g may be evicted for a new group at now.
func (sv *service) evictable(g *group, now time.Time) bool {
	return g.idle(now) && !sv.watched(g.version)
}

// evictVersionLocked evicts the evictable group of sv idle longest, and reports whether there
// was one.
func (s *Server) evictVersionLocked(sv *service, now time.Time) bool {
	var old *group
	for _, g := range sv.groups {
		if sv.evictable(g, now) && (old == nil || g.activeAt.Before(old.activeAt)) {
			old = g
		}
	}
	if old == nil {
		return false
	}
	s.dropGroupLocked(old, groupIdle)
	return true
}

// evictIdleLocked evicts the evictable group idle longest among the table's least recently
// active ones, and reports whether there was one. Watched groups met on the way go to the
// front of the list, out of the way of the next evictions.
func (s *Server) evictIdleLocked(now time.Time) bool {
	e := s.lru.Back()
	for range maxEvictScan {
		if e == nil {
			return false
		}
		g := e.Value.(*group)
		if now.Sub(g.activeAt) < oneShotIdle {
			return false // the others were active more recently still
		}
		prev := e.Prev()
		switch {
		case g.sv.watched(g.version):
			s.lru.MoveToFront(e)
		case g.idle(now):
			s.dropGroupLocked(g, groupIdle)
			return true
		}
		e = prev
	}
	return false
}

// dropGroupLocked forgets g for reason (groupExpired, groupIdle). Its service stays: prune
// forgets services left without groups and recent verdicts or deployments.
func (s *Server) dropGroupLocked(g *group, reason string) {
	delete(g.sv.groups, g.version)
	s.lru.Remove(g.inAll)
	s.ngroups--
	s.m.groupsEvicted[reason].Inc()
}
