package alert

// The lifecycle of a comparison after its tests start: live evidence updates while pending,
// the watch after a pass ("promoted, watching") with its own α, and its end.

import (
	"fmt"
	"math"
	"time"

	"github.com/herd-dev/herd/proto"
)

// watchSegment is the length of the watch's segments. The tests restart afresh at each
// segment with α_watch/K (K the number of segments of the watch), so that the evidence for
// a late regression never has to climb out of the deficit a long good run leaves, and the
// union bound keeps the watch's false-rollback rate within α_watch.
const watchSegment = 5 * time.Minute

// lifecycle is a comparison's state beyond its tests. The Detector's mutex guards it.
type lifecycle struct {
	live liveEvidence
	// emittedMs is the window time of the last live evidence update.
	emittedMs int64
	// watching: the canary passed and the comparison goes on; watch is what the verdicts
	// publish of it, segments the number of segments of the watch and segEndMs the end of
	// the current one.
	watching bool
	watch    proto.Watch
	segments int
	segEndMs int64
	// passSentence is the pass verdict's sentence without its watch clause.
	passSentence string
	// baselineLiveEndMs is the end of the baseline's newest live window (instances and
	// requests), which tells when it retired.
	baselineLiveEndMs int64
}

// finishLocked publishes a final verdict (pass or rollback, or an inconclusive end) and
// stops the comparison, or, for a pass with a watch, keeps it watching.
func (d *Detector) finishLocked(c *comparison, state proto.State, nowMs int64, decisive string, ev proto.Evidence, sentence string) {
	if ev.Effects == nil {
		ev.Effects = c.effects(&ev)
	}
	wasWatching := c.life.watching
	watch := state == proto.StatePass && c.set.watch > 0 && !wasWatching
	if wasWatching {
		sentence = fmt.Sprintf("regressed %s after the pass: %s",
			minutes(time.Duration(max(nowMs-c.life.watch.PassMs, 0))*time.Millisecond), sentence)
	}
	if watch {
		c.life.passSentence = sentence
		sentence += "; " + c.watchClause()
	}
	v := c.setState(state, nowMs, decisive, ev, clipSentence(sentence))
	if state == proto.StatePass || state == proto.StateRollback {
		v.DecidedAfterMs = c.elapsed(nowMs).Milliseconds()
	}
	switch {
	case wasWatching:
		c.life.watching = false
		c.life.watch.Active, c.life.watch.EndedMs, c.life.watch.Reason = false, nowMs, proto.WatchRegression
		w := c.life.watch
		v.Watch = &w
		d.m.watching.Add(-1)
	case watch:
		d.startWatchLocked(c, nowMs)
		w := c.life.watch
		v.Watch = &w
	}
	c.verdict = v
	d.emitLocked(v)
	c.final = true
	if g := d.services[c.service].groups[c.canary]; g != nil {
		g.judged, g.judgedBaseline, g.judgedUntilMs = true, c.baseline, c.judgedUntilMs()
	}
	if !wasWatching {
		d.m.comparisonsActive.Add(-1)
	}
	if !watch {
		c.pendA, c.pendB, c.free = nil, nil, nil
	}
}

// watchClause says how the comparison watches after a pass.
func (c *comparison) watchClause() string {
	return fmt.Sprintf("promoted, watching for %s (α %g) or until the baseline stops serving", minutes(c.set.watch), c.watchAlpha())
}

// watchAlpha is the watch's α.
func (c *comparison) watchAlpha() float64 {
	if c.set.watchAlpha > 0 {
		return c.set.watchAlpha
	}
	return c.set.alpha
}

// startWatchLocked starts the watch of a comparison that passed at nowMs.
func (d *Detector) startWatchLocked(c *comparison, nowMs int64) {
	c.life.watching = true
	c.life.watch = proto.Watch{Active: true, PassMs: nowMs, UntilMs: nowMs + c.set.watch.Milliseconds(), Alpha: c.watchAlpha()}
	c.life.segments = max(int(math.Ceil(float64(c.set.watch)/float64(watchSegment))), 1)
	c.life.emittedMs = nowMs
	d.m.watching.Add(1)
	c.restartWatchTests(nowMs)
}

// restartWatchTests starts the tests afresh for a segment of the watch beginning at nowMs,
// at level α_watch/K: the count tests' e-processes and the distribution test.
func (c *comparison) restartWatchTests(nowMs int64) {
	c.initTests(c.disp)
	a := c.life.watch.Alpha / float64(c.life.segments)
	c.logTh = math.Log(1 / a)
	if c.dkw != nil {
		c.dkw.alpha = a * c.dkwWeight
	}
	c.life.segEndMs = nowMs + watchSegment.Milliseconds()
	c.life.live.restartTotal()
}

// watchLocked applies the watch's rules after a compared window pair at window time nowMs:
// the watch time's end, the next segment, the live evidence.
func (d *Detector) watchLocked(c *comparison, nowMs int64) {
	if nowMs >= c.life.watch.UntilMs {
		d.endWatchLocked(c, nowMs, proto.WatchTime)
		return
	}
	if nowMs >= c.life.segEndMs {
		c.restartWatchTests(nowMs)
	}
	d.liveUpdateLocked(c, nowMs)
}

// retiredLocked ends c's watch when its baseline has served no live window for
// NoTrafficAfter at time nowMs, and reports whether it did.
func (d *Detector) retiredLocked(c *comparison, nowMs int64) bool {
	if !c.life.watching {
		return false
	}
	last := max(c.life.baselineLiveEndMs, c.life.watch.PassMs)
	if time.Duration(nowMs-last)*time.Millisecond < d.cfg.NoTrafficAfter {
		return false
	}
	d.endWatchLocked(c, nowMs, proto.WatchBaselineRetired)
	return true
}

// endWatchLocked ends c's watch at nowMs for reason and publishes the pass again with the
// watch's end (an update: no new decision).
func (d *Detector) endWatchLocked(c *comparison, nowMs int64, reason string) {
	if !c.life.watching {
		return
	}
	c.life.watching = false
	c.life.watch.Active, c.life.watch.EndedMs, c.life.watch.Reason = false, nowMs, reason
	d.m.watching.Add(-1)
	w := c.life.watch
	watched := minutes(time.Duration(max(nowMs-w.PassMs, 0)) * time.Millisecond)
	var why string
	switch reason {
	case proto.WatchTime:
		why = "the watch time ended"
	case proto.WatchBaselineRetired:
		why = "the baseline stopped serving"
	case proto.WatchSuperseded:
		why = "a newer deployment of the canary took over"
	default:
		why = reason
	}
	v := c.verdict
	v.Update, v.Watch = true, &w
	v.Evidence = c.evidence("")
	v.Evidence.Effects = c.effects(&v.Evidence)
	v.Sentence = clipSentence(fmt.Sprintf("%s; promoted, watched %s without regression until %s", c.life.passSentence, watched, why))
	c.verdict = v
	d.emitLocked(v)
	c.pendA, c.pendB, c.free = nil, nil, nil
}

// watchEvidenceEvery is how many times EvidenceEvery a watching comparison waits between
// two live evidence updates: a watch runs for long, and every update is a message on
// herd.verdict and in the history stream.
const watchEvidenceEvery = 10

// liveUpdateLocked republishes a pending or watching comparison's verdict with its live
// evidence, at most once per EvidenceEvery of window time (watchEvidenceEvery times that
// while watching).
func (d *Detector) liveUpdateLocked(c *comparison, nowMs int64) {
	every := d.cfg.EvidenceEvery.Milliseconds()
	if c.life.watching {
		every *= watchEvidenceEvery
	}
	if every <= 0 || nowMs-c.life.emittedMs < every {
		return
	}
	if c.verdict.State != proto.StatePending && !c.life.watching {
		return
	}
	c.life.emittedMs = nowMs
	v := c.verdict
	v.Update = true
	v.Evidence = c.evidence("")
	v.Evidence.Effects = c.effects(&v.Evidence)
	v.Evidence.Progress = c.progress(&v.Evidence, nowMs)
	head := "pending" // the comparison's start said what is compared (pendingSentence)
	if c.life.watching {
		w := c.life.watch
		v.Watch = &w
		head = fmt.Sprintf("promoted, watching (passed %s ago)", minutes(time.Duration(max(nowMs-w.PassMs, 0))*time.Millisecond))
	}
	sentence := head
	if e := c.leadingEffect(v.Evidence.Effects, ""); e != nil {
		sentence += ": " + e.Text
	}
	if p := v.Evidence.Progress; p != nil {
		sentence += "; " + p.Text
	}
	v.Sentence = clipSentence(sentence)
	c.verdict = v
	d.emitLocked(v)
}

// supersedeLocked ends the watch of a comparison that a new one of the same canary replaces.
func (d *Detector) supersedeLocked(old *comparison, nowMs int64) {
	if old != nil && old.life.watching {
		d.endWatchLocked(old, nowMs, proto.WatchSuperseded)
	}
}
