package deliver

import (
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

// MaxFlaggerRevisions bounds the Flagger canaries whose current revision (checksum) the hook
// endpoints remember. Past it the canary seen longest ago is forgotten and counted in
// herd_deliver_flagger_revisions_total{event="evicted"}; its next hook call is treated as a
// new revision (a fresh comparison: slower, never stale).
const MaxFlaggerRevisions = 4096

// RestartFunc starts a new comparison of a deployment (the node announces it); it reports
// why it cannot, e.g. when the canary version is the established one.
type RestartFunc func(proto.Deployment) error

// revisions remembers, per Flagger canary (namespace/name), the checksum of its current
// revision and the earliest comparison start that belongs to it: a verdict of a comparison
// started earlier is the previous revision's and is never answered for this one.
type revisions struct {
	mu      sync.Mutex // Guards m.
	m       map[string]revision
	evicted *metrics.Counter
}

type revision struct {
	checksum string
	floorMs  int64 // comparisons started before this belong to an earlier revision
	seenMs   int64
}

// floor returns the comparison-start floor of the canary's revision checksum and whether the
// checksum is new. For a new checksum: when the service's latest comparison is still pending
// it counts for the new revision (floor = its start); otherwise (a final verdict, or none) the
// floor is now, and fresh reports that a new comparison must start.
func (rv *revisions) floor(canary, checksum string, v proto.Verdict, ok bool, nowMs int64) (floorMs int64, fresh bool) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if r, seen := rv.m[canary]; seen && r.checksum == checksum {
		r.seenMs = nowMs
		rv.m[canary] = r
		return r.floorMs, false
	}
	if len(rv.m) >= MaxFlaggerRevisions {
		rv.evictLocked()
	}
	r := revision{checksum: checksum, floorMs: nowMs, seenMs: nowMs}
	if ok && v.State == proto.StatePending {
		r.floorMs = v.StartedMs
	}
	rv.m[canary] = r
	return r.floorMs, r.floorMs == nowMs
}

// forget drops the canary's revision, so that its next call starts over (a restart that
// failed).
func (rv *revisions) forget(canary string) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	delete(rv.m, canary)
}

func (rv *revisions) evictLocked() {
	var oldest string
	var at int64
	for k, r := range rv.m {
		if oldest == "" || r.seenMs < at {
			oldest, at = k, r.seenMs
		}
	}
	delete(rv.m, oldest)
	rv.evicted.Inc()
}

// checkRevision applies Flagger's checksum to the verdict v (ok: there is one) of service for
// the canary ns/name: it returns the reason the verdict does not answer for this revision,
// or "" when it does. A new revision whose service has no pending comparison gets a new
// comparison through restart (the baseline and canary of the service's latest verdict, from
// now on).
func (d *Deliverer) checkRevision(rv *revisions, restart RestartFunc, canary, checksum, service string, v proto.Verdict, ok bool) string {
	now := time.Now().UnixMilli()
	floorMs, fresh := rv.floor(canary, checksum, v, ok, now)
	if fresh {
		d.counter(`herd_deliver_flagger_revisions_total{event="new"}`).Inc()
		if ok && restart != nil {
			dep := proto.Deployment{Service: service, Baseline: v.Baseline, Canary: v.Canary, UnixMs: now}
			if err := restart(dep); err != nil {
				rv.forget(canary)
				d.counter(`herd_deliver_flagger_revisions_total{event="restart_refused"}`).Inc()
				d.log.Warn("cannot start a new comparison for a new Flagger revision", "canary", canary, "checksum", checksum, "service", service, "err", err)
				return "new revision " + checksum + ": herd cannot compare it afresh (" + err.Error() + "); give each revision its own version (e.g. the pod-template-hash)"
			}
			d.counter(`herd_deliver_flagger_revisions_total{event="restarted"}`).Inc()
			d.log.Info("new Flagger revision: comparing afresh", "canary", canary, "checksum", checksum, "service", service, "baseline", v.Baseline, "version", v.Canary)
		}
	}
	if !ok {
		return ""
	}
	if v.StartedMs < floorMs {
		return "herd's verdict is about an earlier revision than " + checksum + "; a new comparison is running"
	}
	return ""
}
