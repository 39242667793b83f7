package alert

import (
	"fmt"
	"time"

	"github.com/herd-dev/herd/proto"
)

// errNotNew refuses a deployment whose canary is not a new version.
var errNotNew = fmt.Errorf("%w: a canary must be a new version", proto.ErrDeploymentRefused)

// Announce registers a deployment: Canary is compared with Baseline from dep.UnixMs (from now
// when it is 0). It refuses a canary that is the service's established version or the
// baseline of a running comparison (see CheckDeployment), counted with reason not_new.
//
// A deployment is identified by (service, baseline, canary, UnixMs), and so is its decision
// (see proto.Verdict.DecisionID): announcing a deployment that is being judged, or that was
// judged already (a start no later than its verdict), changes nothing and returns nil, so a
// repeated announcement never produces a second decision. A new deployment of a canary whose
// comparison is final (a later start), or one with another baseline, restarts its
// comparison.
func (d *Detector) Announce(dep proto.Deployment) error {
	d.m.announcements.Inc()
	if err := dep.Validate(); err != nil {
		d.m.badAnnouncement.Inc()
		return fmt.Errorf("cannot announce deployment: %w", err)
	}
	created := dep.UnixMs
	if created == 0 {
		created = time.Now().UnixMilli()
	}
	d.mu.Lock()
	defer d.unlockAndEmit()
	s := d.serviceLocked(dep.Service)
	if c := s.comps[dep.Canary]; c != nil && !c.final && c.baseline == dep.Baseline {
		c.announced = true
		return nil
	}
	if d.judgedLocked(s, dep.Baseline, dep.Canary, created) {
		d.m.judgedAnnouncement.Inc()
		d.logger.Info("deployment judged already", "service", s.name, "baseline", dep.Baseline,
			"canary", dep.Canary, "unix_ms", created)
		return nil
	}
	if err := d.notNewLocked(s, dep.Canary); err != nil {
		d.m.notNewCanary.Inc()
		return fmt.Errorf("cannot announce deployment of %s: %w", dep.Service, err)
	}
	d.startLocked(s, dep.Baseline, dep.Canary, created, true).deployedMs = dep.UnixMs
	return nil
}

// CheckDeployment returns the error Announce would return for dep, without counting or
// starting anything: an invalid deployment, or a canary that is not a new version. An
// announcement endpoint may call it to refuse a deployment before publishing it.
func (d *Detector) CheckDeployment(dep proto.Deployment) error {
	if err := dep.Validate(); err != nil {
		return fmt.Errorf("cannot announce deployment: %w", err)
	}
	created := dep.UnixMs
	if created == 0 {
		created = time.Now().UnixMilli()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.services[dep.Service]
	if s == nil {
		return nil
	}
	if c := s.comps[dep.Canary]; c != nil && !c.final && c.baseline == dep.Baseline {
		return nil
	}
	if d.judgedLocked(s, dep.Baseline, dep.Canary, created) {
		return nil
	}
	if err := d.notNewLocked(s, dep.Canary); err != nil {
		return fmt.Errorf("cannot announce deployment of %s: %w", dep.Service, err)
	}
	return nil
}

// judgedLocked reports whether the deployment of canary against baseline started at
// createdMs is one a final comparison judged: the comparison's, while Verdicts keeps it,
// or the one recorded on the canary's group, while the detector remembers the group.
func (d *Detector) judgedLocked(s *service, baseline, canary string, createdMs int64) bool {
	if c := s.comps[canary]; c != nil && c.final && c.baseline == baseline && createdMs <= c.judgedUntilMs() {
		return true
	}
	g := s.groups[canary]
	return g != nil && g.judged && g.judgedBaseline == baseline && createdMs <= g.judgedUntilMs
}

// notNewLocked says why version v of s cannot be a canary, or returns nil: it is the baseline
// of a running comparison, or the service's established version (see establishedLocked).
func (d *Detector) notNewLocked(s *service, v string) error {
	for _, c := range s.comps {
		if !c.final && c.baseline == v {
			return fmt.Errorf("%s is the baseline of the running comparison of canary %s: %w", v, c.canary, errNotNew)
		}
	}
	if g := d.establishedLocked(s); g != nil && g.version == v {
		return fmt.Errorf("%s is the established version of %s: %w", v, s.name, errNotNew)
	}
	return nil
}

// establishedLocked returns the version s runs as its established one (production), or nil:
// of the groups that have served live traffic (instances > 0 and requests > 0) for at least
// EstablishAfter since they first reported and are not the canary of a running comparison,
// among those whose last live window is within 10 s of the service's newest live window, the
// one with the most requests per live window. It reads live windows only, so a fleet-wide
// stall, missing windows or a whole service stopping leave it as it was.
func (d *Detector) establishedLocked(s *service) *group {
	est := d.cfg.EstablishAfter.Milliseconds()
	var newest int64
	for _, g := range s.groups {
		newest = max(newest, g.lastLiveMs)
	}
	var best *group
	for _, g := range s.groups {
		if g.lastLiveMs == 0 || g.lastLiveMs-g.firstMs < est || g.lastLiveMs < newest-activeWithin.Milliseconds() {
			continue
		}
		if c := s.comps[g.version]; c != nil && !c.final {
			continue // a canary being judged is not established yet
		}
		if best == nil || g.liveN > best.liveN || g.liveN == best.liveN && g.firstMs < best.firstMs {
			best = g
		}
	}
	return best
}

// inferLocked starts a comparison when g is a new version beside an established one.
func (d *Detector) inferLocked(s *service, g *group, nowMs int64) {
	if g.judged {
		return
	}
	for _, c := range s.comps {
		if c.baseline == g.version && !c.final {
			return // g is a baseline already
		}
	}
	est := d.cfg.EstablishAfter.Milliseconds()
	var base *group
	var baseN float64
	for _, o := range s.groups {
		if o == g || o.firstMs+est > g.firstMs || o.lastEndMs < nowMs-activeWithin.Milliseconds() {
			continue
		}
		if c := s.comps[o.version]; c != nil && !c.final {
			continue // a pending canary is no baseline
		}
		n, _ := o.recent(maxGuardWindows)
		if base == nil || n > baseN {
			base, baseN = o, n
		}
	}
	if base == nil {
		return
	}
	d.startLocked(s, base.version, g.version, g.firstMs, false).deployedMs = g.firstMs
}

// startLocked creates a comparison and publishes its pending verdict.
func (d *Detector) startLocked(s *service, baseline, canary string, createdMs int64, announced bool) *comparison {
	if old := s.comps[canary]; old != nil && !old.final {
		d.m.comparisonsActive.Add(-1)
	}
	d.supersedeLocked(s.comps[canary], createdMs)
	c := newComparison(s.name, baseline, canary, &s.set, createdMs, announced)
	if b := s.groups[baseline]; b != nil {
		c.freeze(b.reference())
	}
	s.comps[canary] = c
	d.m.comparisonsActive.Add(1)
	d.logger.Info("comparison started", "service", s.name, "baseline", baseline, "canary", canary, "announced", announced)
	c.verdict.Sentence = c.pendingSentence()
	d.emitLocked(c.verdict)
	return c
}
