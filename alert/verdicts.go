package alert

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Tick applies the time-based rules at wall-clock time now: an announced canary that never
// reports, comparisons past their maximum duration, and the forgetting of idle groups and
// old final verdicts.
func (d *Detector) Tick(now time.Time) {
	nowMs := now.UnixMilli()
	d.mu.Lock()
	defer d.unlockAndEmit()
	for name, s := range d.services {
		for v, c := range s.comps {
			switch {
			case c.life.watching:
				if nowMs >= c.life.watch.UntilMs {
					d.endWatchLocked(c, nowMs, proto.WatchTime)
				} else {
					d.retiredLocked(c, nowMs)
				}
			case c.final:
				if time.Duration(nowMs-c.verdict.UnixMs)*time.Millisecond > finalRetention {
					delete(s.comps, v)
				}
			case time.Duration(nowMs-c.createdMs)*time.Millisecond >= c.set.maxDuration:
				d.expireLocked(c, nowMs)
			case c.firstCanaryMs == 0 && c.verdict.State == proto.StatePending &&
				time.Duration(nowMs-c.createdMs)*time.Millisecond >= d.cfg.NoCanaryAfter:
				ev := c.evidence("guard_no_canary")
				sentence := fmt.Sprintf("canary %s has sent no window for %s since the deployment: cannot judge",
					c.canary, after(time.Duration(nowMs-c.createdMs)*time.Millisecond))
				d.emitLocked(c.setState(proto.StateInconclusive, nowMs, "guard_no_canary", ev, sentence))
			}
		}
		for _, g := range s.groups {
			if time.Duration(nowMs-g.lastEndMs)*time.Millisecond > groupIdle {
				d.dropGroupLocked(g, groupExpired)
			}
		}
		if len(s.groups) == 0 && len(s.comps) == 0 {
			d.unregisterShadowLocked(s)
			delete(d.services, name)
		}
	}
}

// Run calls Tick every 100 ms until ctx is done, then returns nil.
func (d *Detector) Run(ctx context.Context) error {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			d.Tick(now)
		}
	}
}

// Verdicts returns the current verdict of every comparison (pending ones included, final
// ones for an hour), ordered by service and canary. The slice is the caller's.
func (d *Detector) Verdicts() []proto.Verdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []proto.Verdict
	for _, s := range d.services {
		for _, c := range s.comps {
			out = append(out, c.verdict)
		}
	}
	slices.SortFunc(out, func(a, b proto.Verdict) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Canary, b.Canary))
	})
	return out
}

// Latest returns the current verdict of service's newest comparison: the one started last
// (of equal starts, the greatest canary version), final verdicts included for an hour like
// Verdicts. It reports false when the service has none. Flagger's hooks ask it.
func (d *Detector) Latest(service string) (proto.Verdict, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.services[service]
	if s == nil {
		return proto.Verdict{}, false
	}
	var best *comparison
	for _, c := range s.comps {
		if best == nil || cmp.Or(cmp.Compare(c.verdict.StartedMs, best.verdict.StartedMs), cmp.Compare(c.canary, best.canary)) > 0 {
			best = c
		}
	}
	if best == nil {
		return proto.Verdict{}, false
	}
	return best.verdict, true
}
