package rollup

import (
	"container/list"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Admission of groups.
//
// The group table is bounded three ways, so that a flood of group subjects cannot take the
// room of a new real group: Config.MaxGroups bounds the table, Config.MaxVersionsPerService a
// service's groups in it, and Config.MaxSeriesPerService the series of all of a service's
// groups together. When a new group finds its service's versions or the table full, an idle
// group (of the service, or of the table) is evicted to make room, the one that has gone
// longest without a batch among the oldest few: a group is idle when it holds no open window
// and has had no batch for idleAfter, or had a single batch ever (one-shot, what a flood of
// subjects sends). Evicting it loses no data, only the empty windows it would still have
// emitted and its series table. Only when no group is idle is the new group refused:
// "too_many_versions" for a service at its quota, which is how a publisher flooding one
// service with versions is refused first while a new service still gets in, and
// "too_many_groups" for a full table.
//
// A flood of distinct services, each sending a batch, fills the table with one-shot groups
// that are idle once their window closed (lateness and a window after their batch) and are
// evicted for new ones; groups that send more are idle two seconds (at the defaults) after
// their last batch. A new real group is refused only while MaxGroups groups are younger than
// that: at the defaults, a flood of more than ~13,000 one-shot groups, or ~5,000 groups of
// several batches, per second.

// Reasons a group is forgotten (label reason of herd_rollup_groups_forgotten_total).
const (
	// groupExpired: no batch for Config.InstanceTTL, its empty windows emitted.
	groupExpired = "expired"
	// groupEvicted: idle, forgotten early to make room for a new group of a full table or
	// of a service at its version quota.
	groupEvicted = "evicted"
)

var groupReasons = []string{groupExpired, groupEvicted}

// maxEvictScan bounds the groups looked at for one eviction, from the end of a list in order
// of last batch, where the idle ones are.
const maxEvictScan = 16

// groupLogBurst bounds the group lifecycle lines (appeared, expired, evicted) logged per
// groupLogEvery; the lines beyond it are counted and reported with the next logged one.
// warnEvery spaces the warnings of a full table, of a service at its version quota and of
// refused series: under a flood groups come and go all the time.
const (
	groupLogBurst = 20
	groupLogEvery = 10 * time.Second
	warnEvery     = int64(10 * time.Second)
)

// serviceState is the admission bookkeeping of one service's groups. Guarded by Rollup.mu.
type serviceState struct {
	// groups holds the service's groups (values *group), most recently merged first.
	groups list.List
	// series counts the series of all its groups (Config.MaxSeriesPerService).
	series int
	// When the last warning of its version quota was logged (unix nanos; see warnEvery), and
	// the refusals since.
	versionsWarned  int64
	versionsRefused int
}

// admission is a Rollup's group admission state. Guarded by Rollup.mu.
type admission struct {
	services map[string]*serviceState
	// lru holds every group (values *group), most recently merged first.
	lru list.List
	// idleAfter is how long a group must have had no batch to be evicted (unix nanos).
	idleAfter int64

	// When the last warnings of a full table and of series refused were logged, and the
	// refusals since.
	groupsWarned, seriesWarned   int64
	groupsRefused, seriesRefused int
	// Group lifecycle log limiting: logged lines in the span starting at logSpan, and the
	// lines suppressed since the last logged one.
	logSpan          int64
	logged, suppress int
}

// groupIdleAfter returns how long a group must have had no batch before it may be evicted for
// a new one: twice the lateness and four windows (2 s at the defaults), well past the close of
// the window of its last batch.
func groupIdleAfter(cfg Config) time.Duration { return 2*cfg.Lateness + 4*cfg.Window }

func newAdmission(cfg Config) admission {
	return admission{services: make(map[string]*serviceState), idleAfter: int64(groupIdleAfter(cfg))}
}

// admitLocked returns a new group for k, first evicting an idle group if the service's
// versions or the table are full, or the reason k is refused.
func (r *Rollup) admitLocked(k groupKey, now int64) (*group, string) {
	a := &r.adm
	if svc := a.services[k.service]; svc != nil && svc.groups.Len() >= r.cfg.MaxVersionsPerService {
		if !r.evictIdleLocked(&svc.groups, now) {
			if svc.versionsRefused++; now-svc.versionsWarned >= warnEvery {
				r.logger.Warn("refusing new versions of a service: quota reached, none idle", "service", k.service,
					"limit", r.cfg.MaxVersionsPerService, "version", k.version, "refused_since_last_warning", svc.versionsRefused)
				svc.versionsWarned, svc.versionsRefused = now, 0
			}
			return nil, ReasonTooManyVersions
		}
	}
	// The bound is over every Rollup counting into r.m: a worker's partitions share it, so
	// a flood spread over many partitions cannot hold MaxGroups groups in each.
	if r.m.groups.Load() >= int64(r.cfg.MaxGroups) && !r.evictIdleLocked(&a.lru, now) {
		if a.groupsRefused++; now-a.groupsWarned >= warnEvery {
			r.logger.Warn("refusing new groups: limit reached, none idle", "limit", r.cfg.MaxGroups,
				"service", k.service, "version", k.version, "refused_since_last_warning", a.groupsRefused)
			a.groupsWarned, a.groupsRefused = now, 0
		}
		return nil, ReasonTooManyGroups
	}
	svc := a.services[k.service] // again: an eviction may have removed it
	if svc == nil {
		svc = new(serviceState)
		a.services[k.service] = svc
	}
	g := newGroup(k, max(r.closedBefore, r.reopen[k]))
	g.svc = svc
	g.lastBatch = now
	g.batches = 0
	g.inAll = a.lru.PushFront(g)
	g.inService = svc.groups.PushFront(g)
	r.groups[k] = g
	r.m.groups.Add(1)
	r.logGroupLocked(now, "group appeared", k)
	return g, ""
}

// touchLocked records a batch merged into g at now.
func (r *Rollup) touchLocked(g *group, now int64) {
	g.lastBatch = now
	g.batches = min(g.batches+1, 2)
	r.adm.lru.MoveToFront(g.inAll)
	g.svc.groups.MoveToFront(g.inService)
}

// evictIdleLocked evicts the idle group that has gone longest without a batch among the
// oldest groups of l (in order of last batch, newest first), and reports whether there was
// one.
func (r *Rollup) evictIdleLocked(l *list.List, now int64) bool {
	e := l.Back()
	for range maxEvictScan {
		if e == nil {
			return false
		}
		if g := e.Value.(*group); r.idle(g, now) {
			r.dropGroupLocked(g, groupEvicted)
			return true
		}
		e = e.Prev()
	}
	return false
}

// idle reports whether g may be evicted at now: it holds no open window or correction and has
// had no batch for idleAfter, or a single batch ever.
func (r *Rollup) idle(g *group, now int64) bool {
	return len(g.windows) == 0 && len(r.corr[g.key]) == 0 && (g.next <= r.closedBefore || len(r.reopen) < r.cfg.MaxGroups) && (g.batches <= 1 || now-g.lastBatch >= r.adm.idleAfter)
}

// dropGroupLocked forgets g, for reason (groupExpired, groupEvicted). It must hold no open
// window.
func (r *Rollup) dropGroupLocked(g *group, reason string) {
	if len(g.windows) > 0 {
		panic("BUG: rollup: dropping a group with open windows")
	}
	a := &r.adm
	delete(r.groups, g.key)
	if g.next > r.closedBefore {
		// Its intervals up to g.next closed early: made anew, it must not reopen them.
		if r.reopen == nil {
			r.reopen = make(map[groupKey]int64)
		}
		r.reopen[g.key] = g.next
	}
	a.lru.Remove(g.inAll)
	svc := g.svc
	svc.groups.Remove(g.inService)
	svc.series -= len(g.ids)
	if svc.groups.Len() == 0 {
		delete(a.services, g.key.service)
	}
	r.series -= len(g.ids)
	r.m.groups.Add(-1)
	r.m.series.Add(-int64(len(g.ids)))
	r.m.groupsForgotten[reason].Inc()
	if reason == groupExpired {
		r.logGroupLocked(r.now().UnixNano(), "group expired", g.key)
	} else {
		r.logGroupLocked(r.now().UnixNano(), "group evicted: idle, and room was needed", g.key)
	}
}

// forgetSeriesLocked accounts for n series of g deleted by the series sweep.
func (r *Rollup) forgetSeriesLocked(g *group, n int) {
	r.series -= n
	r.m.series.Add(-int64(n))
	g.svc.series -= n
}

// seriesRefusalLocked returns why a new series s of g cannot be added at now ("" if it can),
// and logs a warning at most every warnEvery.
func (r *Rollup) seriesRefusalLocked(g *group, s *proto.Series, now int64) string {
	var reason, msg string
	var limit int
	switch {
	case len(g.ids) >= r.cfg.MaxSeriesPerGroup:
		reason, msg, limit = ReasonTooManySeries, "refusing new series: group limit reached", r.cfg.MaxSeriesPerGroup
	case g.svc.series >= r.cfg.MaxSeriesPerService:
		reason, msg, limit = ReasonTooManyServiceSeries, "refusing new series: service limit reached", r.cfg.MaxSeriesPerService
	default:
		return ""
	}
	a := &r.adm
	if a.seriesRefused++; now-a.seriesWarned >= warnEvery {
		r.logger.Warn(msg, "service", g.key.service, "version", g.key.version, "limit", limit,
			"series", s.String(), "refused_since_last_warning", a.seriesRefused)
		a.seriesWarned, a.seriesRefused = now, 0
	}
	return reason
}

// addedSeriesLocked accounts for a series added to g.
func (r *Rollup) addedSeriesLocked(g *group) {
	r.series++
	g.svc.series++
	r.m.series.Add(1)
}

// releaseAdmissionLocked forgets every group's admission state (see releaseSizes).
func (r *Rollup) releaseAdmissionLocked() {
	r.adm.lru.Init()
	clear(r.adm.services)
}

// logGroupLocked logs a group lifecycle line, at most groupLogBurst per groupLogEvery: a
// flood of groups must not flood the log.
func (r *Rollup) logGroupLocked(now int64, msg string, k groupKey) {
	a := &r.adm
	if now-a.logSpan >= int64(groupLogEvery) {
		a.logSpan, a.logged = now, 0
	}
	if a.logged >= groupLogBurst {
		a.suppress++
		return
	}
	a.logged++
	if a.suppress > 0 {
		r.logger.Info(msg, "service", k.service, "version", k.version, "groups", len(r.groups),
			"suppressed_group_lines", a.suppress)
		a.suppress = 0
		return
	}
	r.logger.Info(msg, "service", k.service, "version", k.version)
}
