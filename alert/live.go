package alert

// Live evidence: what a comparison says in its metrics' own units while it runs and when it
// decides — "errors 2.19 % vs 1.06 % (×2.1, last 30 s; ×1.5 since start)", "p99 410 ms vs
// 180 ms" — and how far it is from a decision. It reads the tests' outputs (counts and
// confidence sequences) and keeps only what they do not: the windows' values over the
// recent span and since the tests started.

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/herd-dev/herd/proto"
)

// The recent span of the evidence: liveSlots slots of liveSlotMs of window time.
const (
	liveSlotMs = 5_000
	liveSlots  = 6
	recentMs   = liveSlotMs * liveSlots
)

// maxSentenceBytes bounds a verdict's sentence (the dashboard refuses longer ones).
const maxSentenceBytes = 2000

// liveSide sums one group's windows.
type liveSide struct {
	n, e float64
	lat  proto.Histogram
}

func (s *liveSide) reset() {
	s.n, s.e = 0, 0
	s.lat.Reset()
}

func (s *liveSide) add(n, e float64, h *proto.Histogram) {
	s.n += n
	s.e += e
	if h != nil {
		s.lat.Merge(h)
	}
}

// liveSlot sums the windows that start in one slot of liveSlotMs.
type liveSlot struct {
	epoch int64       // window start / liveSlotMs; 0: never used
	side  [2]liveSide // baseline, canary
}

// liveEvidence holds the windows' values a comparison's tests compared (after warm-up), by
// slot for the recent span and in total since the tests started.
type liveEvidence struct {
	slots  [liveSlots]liveSlot
	total  [2]liveSide
	newest int64 // newest slot epoch
	// firstMs and lastMs bound the windows added; totalMs is the start of the first window
	// in total (which a restart of the tests in a watch resets).
	firstMs, lastMs, totalMs int64
	// ra and rb are scratch for the recent sums, kept to reuse their histograms' memory.
	ra, rb liveSide
}

// restartTotal empties the totals: they follow the tests, which a watch restarts.
func (l *liveEvidence) restartTotal() {
	l.total[0].reset()
	l.total[1].reset()
	l.totalMs = 0
}

// add adds a window's values (x) of the baseline or the canary; latency only when the
// comparison has latency tests.
func (l *liveEvidence) add(isBaseline bool, w *proto.Window, x *extract, latency bool) {
	i := 1
	if isBaseline {
		i = 0
	}
	var h *proto.Histogram
	if latency && x.hasLatency {
		h = &x.latency
	}
	epoch := w.StartMs / liveSlotMs
	if epoch < l.newest-liveSlots+1 {
		return // older than the recent span: a late window, left out of both
	}
	sl := &l.slots[epoch%liveSlots]
	if sl.epoch != epoch {
		sl.epoch = epoch
		sl.side[0].reset()
		sl.side[1].reset()
	}
	sl.side[i].add(x.requests, x.errors, h)
	l.total[i].add(x.requests, x.errors, h)
	l.newest = max(l.newest, epoch)
	if l.firstMs == 0 || w.StartMs < l.firstMs {
		l.firstMs = w.StartMs
	}
	if l.totalMs == 0 || w.StartMs < l.totalMs {
		l.totalMs = w.StartMs
	}
	l.lastMs = max(l.lastMs, w.EndMs)
}

// recent sums the slots of the recent span into a (baseline) and b (canary).
func (l *liveEvidence) recent(a, b *liveSide) {
	a.reset()
	b.reset()
	for k := range l.slots {
		sl := &l.slots[k]
		if sl.epoch == 0 || sl.epoch <= l.newest-liveSlots {
			continue
		}
		a.add(sl.side[0].n, sl.side[0].e, &sl.side[0].lat)
		b.add(sl.side[1].n, sl.side[1].e, &sl.side[1].lat)
	}
}

// effects says each count test's evidence in its metric's units (see proto.Effect), taking
// the tests' confidence sequences from ev (c.evidence's); nil before the tests start.
func (c *comparison) effects(ev *proto.Evidence) []proto.Effect {
	if !c.testsReady || c.life.live.lastMs == 0 {
		return nil
	}
	l := &c.life.live
	ra, rb := &l.ra, &l.rb
	l.recent(ra, rb)
	span := min(int64(recentMs), l.lastMs-l.firstMs)
	alpha := c.set.alpha
	var out []proto.Effect
	for _, t := range c.tests {
		e := proto.Effect{Test: t.name, RecentMs: span, SinceMs: l.lastMs - l.totalMs, Level: 1 - alpha}
		switch {
		case !t.latency:
			e.Metric, e.Unit = "errors", proto.UnitRatio
			e.Baseline, e.Canary = share(ra.e, ra.n), share(rb.e, rb.n)
			e.BaselineSinceStart, e.CanarySinceStart = share(l.total[0].e, l.total[0].n), share(l.total[1].e, l.total[1].n)
			e.Low, e.High = shareInterval(t, ev)
		case t.quantile > 0:
			e.Metric, e.Unit = "p"+strconv.FormatFloat(t.quantile*100, 'f', -1, 64), proto.UnitSeconds
			e.Baseline, e.Canary = quantileOf(&ra.lat, t.quantile), quantileOf(&rb.lat, t.quantile)
			e.BaselineSinceStart, e.CanarySinceStart = quantileOf(&l.total[0].lat, t.quantile), quantileOf(&l.total[1].lat, t.quantile)
			e.Low, e.High = quantileInterval(&l.total[1].lat, t.quantile, alpha)
		default:
			e.Metric, e.Unit = "slower than "+seconds(t.threshold), proto.UnitRatio
			above := func(s *liveSide) float64 { return share(float64(s.lat.CountAtOrAbove(t.bucket)), float64(s.lat.Count)) }
			e.Baseline, e.Canary = above(ra), above(rb)
			e.BaselineSinceStart, e.CanarySinceStart = above(&l.total[0]), above(&l.total[1])
			e.Low, e.High = shareInterval(t, ev)
		}
		if e.Baseline == 0 && e.Canary == 0 && e.BaselineSinceStart == 0 && e.CanarySinceStart == 0 {
			continue // no data for this test yet
		}
		e.Ratio, e.RatioSinceStart = quotient(e.Canary, e.Baseline), quotient(e.CanarySinceStart, e.BaselineSinceStart)
		e.Text = effectText(&e, c.life.watching)
		out = append(out, e)
	}
	return out
}

// shareInterval is a count test's confidence sequence for the canary/baseline ratio ψ (as
// ev reports it), times the baseline's share of events: an interval for the canary's share
// in the same unit. Zero without events.
func shareInterval(t *countTest, ev *proto.Evidence) (lo, hi float64) {
	te := testEvidence(ev, t.name)
	if te == nil || t.eA+t.eB == 0 || t.nA <= 0 || !(te.CSHigh > te.CSLow) {
		return 0, 0 // no events, or no confidence sequence yet (evidence reports the effect for both)
	}
	base := t.eA / t.nA
	return min(te.CSLow*base, 1), min(te.CSHigh*base, 1)
}

// testEvidence returns the evidence of the named test, or nil.
func testEvidence(ev *proto.Evidence, name string) *proto.TestEvidence {
	for i := range ev.Tests {
		if ev.Tests[i].Name == name {
			return &ev.Tests[i]
		}
	}
	return nil
}

// quantileInterval bounds quantile q of the canary's latency from its observations h: the
// observations whose ranks are q ± z·√(q(1−q)/n), z the normal quantile of 1−α/2 (the
// order-statistics interval). Zero when h holds too few observations for the upper rank.
func quantileInterval(h *proto.Histogram, q, alpha float64) (lo, hi float64) {
	n := float64(h.Count)
	if n < 2 {
		return 0, 0
	}
	z := math.Sqrt2 * math.Erfinv(1-alpha)
	d := z * math.Sqrt(q*(1-q)/n)
	if q+d >= 1 {
		return 0, 0
	}
	return quantileOf(h, max(q-d, 0)), quantileOf(h, q+d)
}

// share is e/n, 0 when n is 0.
func share(e, n float64) float64 {
	if !(n > 0) {
		return 0
	}
	return e / n
}

// quotient is a/b, 0 when b is 0.
func quotient(a, b float64) float64 {
	if !(b > 0) {
		return 0
	}
	return a / b
}

// quantileOf is h's quantile q, 0 for an empty histogram.
func quantileOf(h *proto.Histogram, q float64) float64 {
	v := h.Quantile(q)
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// inUnit formats a value of unit u: a ratio as a percentage, seconds as a latency.
func inUnit(v float64, u string) string {
	if u == proto.UnitSeconds {
		return seconds(v)
	}
	return percent(v)
}

// percent formats a share: 0.0219 → "2.19 %".
func percent(x float64) string {
	switch {
	case x == 0:
		return "0 %"
	case x < 0.0001:
		return strconv.FormatFloat(x*100, 'f', 4, 64) + " %"
	case x < 0.001:
		return strconv.FormatFloat(x*100, 'f', 3, 64) + " %"
	case x < 0.1:
		return strconv.FormatFloat(x*100, 'f', 2, 64) + " %"
	}
	return strconv.FormatFloat(x*100, 'f', 1, 64) + " %"
}

// times formats a canary/baseline ratio: "×2.1", "–" without a baseline value.
func times(x float64) string {
	if x == 0 {
		return "×–"
	}
	return "×" + ratio(x)
}

// lastSpan formats the recent span: "last 30 s".
func lastSpan(ms int64) string {
	return "last " + strconv.FormatFloat(float64(ms)/1000, 'f', 0, 64) + " s"
}

// effectText is e.g. "errors 2.19 % vs 1.06 % (×2.1, last 30 s; ×1.5 since start), canary
// 1.40–2.91 % (99 %)"; in a watch, whose tests restart at each segment, "since start" is
// "over the last 3.2 min".
func effectText(e *proto.Effect, watching bool) string {
	var b strings.Builder
	name := e.Metric
	if e.Unit == proto.UnitRatio && e.Metric != "errors" {
		name = "requests " + e.Metric
	}
	since := "since start"
	if watching {
		since = "over the last " + minutes(time.Duration(e.SinceMs)*time.Millisecond)
	}
	fmt.Fprintf(&b, "%s %s vs %s (%s, %s; %s %s)", name, inUnit(e.Canary, e.Unit), inUnit(e.Baseline, e.Unit),
		times(e.Ratio), lastSpan(e.RecentMs), times(e.RatioSinceStart), since)
	if e.High > 0 {
		fmt.Fprintf(&b, ", canary %s–%s (%s)", inUnit(e.Low, e.Unit), inUnit(e.High, e.Unit), level(1-e.Level))
	}
	return b.String()
}

// leadingEffect returns the effect of the named test, else of the test contributing most to
// the average e-value, or nil.
func (c *comparison) leadingEffect(effects []proto.Effect, name string) *proto.Effect {
	if name == "" {
		best := math.Inf(-1)
		for _, t := range c.tests {
			if v := t.logW + t.ep.LogE(); v > best {
				best, name = v, t.name
			}
		}
	}
	for i := range effects {
		if effects[i].Test == name {
			return &effects[i]
		}
	}
	if len(effects) > 0 {
		return &effects[0]
	}
	return nil
}

// progress says how far an undecided comparison is from a decision at window time nowMs,
// taking the tests' confidence sequences from ev; nil before the tests start.
func (c *comparison) progress(ev *proto.Evidence, nowMs int64) *proto.Progress {
	if !c.testsReady {
		return nil
	}
	logAvg := c.logAverage()
	p := &proto.Progress{AcceptMargin: c.acceptMargin()}
	if c.logTh > 0 {
		p.Rollback = min(max(logAvg/c.logTh, 0), 1)
	}
	for _, t := range c.tests {
		if te := testEvidence(ev, t.name); te != nil && t.eA+t.eB > 0 && te.CSHigh > te.CSLow {
			p.CSHigh = max(p.CSHigh, te.CSHigh)
		}
	}
	evidence := fmt.Sprintf("evidence %.0f %% of the way to a rollback (e-value %s of %s)",
		100*p.Rollback, evalue(math.Exp(min(logAvg, maxLogE))), evalue(math.Exp(c.logTh)))
	if c.life.watching {
		left := time.Duration(max(c.life.watch.UntilMs-nowMs, 0)) * time.Millisecond
		p.Text = fmt.Sprintf("%s; the watch ends in %s at the latest", evidence, minutes(left))
		return p
	}
	p.PassInMs = max(c.set.minExposure.Milliseconds()-(nowMs-c.startMs), 0)
	pass := "a pass needs every ratio's confidence sequence below " + times(p.AcceptMargin)
	if p.CSHigh > 0 {
		pass += " (now up to " + times(p.CSHigh) + ")"
	}
	if p.PassInMs > 0 {
		pass += " and " + minutes(time.Duration(p.PassInMs)*time.Millisecond) + " more"
	}
	p.Text = evidence + "; " + pass
	return p
}

// evalue formats an e-value: "2.9", "140".
func evalue(x float64) string {
	if x >= 100 {
		return strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strconv.FormatFloat(x, 'g', 2, 64)
}

// minutes formats a longer duration: "45 s", "3.2 min".
func minutes(d time.Duration) string {
	if d < time.Minute {
		return strconv.FormatFloat(d.Seconds(), 'f', 0, 64) + " s"
	}
	return strconv.FormatFloat(d.Minutes(), 'f', 1, 64) + " min"
}

// clipSentence bounds a sentence to maxSentenceBytes, cutting at a rune boundary.
func clipSentence(s string) string {
	if len(s) <= maxSentenceBytes {
		return s
	}
	cut := maxSentenceBytes - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
