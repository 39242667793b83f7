package alert

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Judging a canary by its edges. Beside its own RED a canary is compared with its baseline
// on each outbound edge (proto.SeriesEdgeCalls, …) both groups' windows carry:
//
//   - fan-out: calls on the edge per inbound request (retry storms, N+1 calls);
//   - the edge's error ratio (calls that failed per call);
//   - the edge's latency: calls slower than the baseline edge's frozen p90, per call.
//
// Each is the same conditional-binomial mixture e-process as the RED tests (calls per
// request are Poisson counts per request, which the conditional binomial fits), with the
// comparison's margin ψ0 (raised for few instances like the RED tests'). The e-processes of
// the edges join the RED average with fixed weights: when the first compared window pair
// carries edges, edgeWeight of the average is set aside for maxEdgeSlots edges of 3 tests
// each, and the RED tests keep 1−edgeWeight. An edge takes a slot at the first pair after
// the baseline was seen calling it (a data-dependent start of a process that is 1 until
// then keeps the average a supermartingale under the null); a slot not taken counts as
// e-value 1. So the average is still compared once with 1/α, and α holds over RED and edges
// together.
//
// An edge the baseline never called is a new dependency: it is reported in the evidence, not
// by itself a rollback.
const (
	// edgeWeight is the share of the average the edges' tests get when windows carry edges.
	edgeWeight = 0.25
	// maxEdgeSlots bounds the edges judged per comparison; further edges are reported
	// unjudged (evidence name edge_unjudged).
	maxEdgeSlots = 8
	// edgeTestsPerSlot: fan-out, errors, latency, and the callee's errors on the caller's
	// requests (blast radius).
	edgeTestsPerSlot = 4
	// maxEdgesPerWindow bounds the edges read from one window (the rollup's per-group series
	// limit bounds them first).
	maxEdgesPerWindow = 512
	// maxEdgePending bounds the windows waiting for their partner, per side.
	maxEdgePending = 64
	// maxNewDeps bounds the new dependencies reported.
	maxNewDeps = 16
	// edgeQuantile is the baseline edge latency quantile the latency test's threshold is
	// frozen at.
	edgeQuantile = 0.9
)

// edgeCounts is one edge's values in one window.
type edgeCounts struct {
	calls, errors float64
	latency       proto.Histogram
}

// edgeRecord is one group's window as the edge tests read it.
type edgeRecord struct {
	startMs, endMs int64
	requests       float64
	edges          map[proto.EdgeKey]*edgeCounts
}

// edgeTest is a count test of an edge with its last pairs' counts, which sentences quote
// (the test's totals mix in the windows before a regression began).
type edgeTest struct {
	countTest
	recent [recentPairs][4]float64 // nA, nB, eA, eB
	pos    int
	// since counts the pairs since the e-value was last at most 1 (up to recentPairs): the
	// pairs its evidence comes from, which sentences quote.
	since int
}

// recentPairs is how many of the last window pairs sentences quote rates over.
const recentPairs = 8

// recentRates returns the baseline's and the canary's event rates over the pairs the
// evidence comes from (see since), and how many pairs that is.
func (t *edgeTest) recentRates() (a, b float64, pairs int) {
	var s [4]float64
	pairs = max(t.since, 1)
	for k := 1; k <= pairs; k++ {
		r := &t.recent[(t.pos-k+recentPairs)%recentPairs]
		for i := range s {
			s[i] += r[i]
		}
	}
	if s[0] > 0 {
		a = s[2] / s[0]
	}
	if s[1] > 0 {
		b = s[3] / s[1]
	}
	return a, b, pairs
}

// edgeJudge holds the tests of one judged edge.
type edgeJudge struct {
	key                  proto.EdgeKey
	fanout, errors, slow edgeTest
	// blast compares the callee's errors on requests from the canary with those from the
	// baseline, read from the callee's own windows (proto.SeriesInboundRequests by caller).
	blast  edgeTest
	ref    proto.Histogram // baseline latency until the threshold freezes
	frozen bool
}

// edgeComparison is the edge part of a comparison. The Detector's mutex guards it.
type edgeComparison struct {
	weight       float64 // edgeWeight, or 0 when the first pair carried no edges
	decided      bool    // weight was set at the first pair
	pendA, pendB []*edgeRecord
	judges       []*edgeJudge
	baseSeen     map[proto.EdgeKey]bool // the baseline called it in a compared window
	newDeps      map[proto.EdgeKey]*[2]float64
	unjudged     map[proto.EdgeKey]bool // bounded by maxNewDeps
}

// readEdges reads a window's edges into r, and its requests as the service's signals sig
// define them.
func readEdges(w *proto.Window, r *edgeRecord, sig *signals.Definition) {
	r.startMs, r.endMs = w.StartMs, w.EndMs
	r.requests, _ = sig.Requests.Sum(w.Series)
	if r.edges == nil {
		r.edges = map[proto.EdgeKey]*edgeCounts{}
	}
	for i := range w.Series {
		s := &w.Series[i]
		k, ok := proto.EdgeOf(s.Name, s.Labels)
		if !ok {
			continue
		}
		ec := r.edges[k]
		if ec == nil {
			if len(r.edges) >= maxEdgesPerWindow {
				continue
			}
			ec = &edgeCounts{}
			r.edges[k] = ec
		}
		switch {
		case s.Name == proto.SeriesEdgeCalls && s.Kind == proto.KindCounter && s.Value >= 0:
			ec.calls += s.Value
		case s.Name == proto.SeriesEdgeErrors && s.Kind == proto.KindCounter && s.Value >= 0:
			ec.errors += s.Value
		case s.Name == proto.SeriesEdgeLatency && s.Kind == proto.KindHistogram && s.Hist != nil:
			ec.latency.Merge(s.Hist)
		}
	}
}

// edgeWindow pairs a window's edges with its partner's by start and, when both are there,
// updates the edge tests. The caller holds the Detector's lock.
func (c *comparison) edgeWindow(w *proto.Window, isBaseline bool, sig *signals.Definition) {
	if c.edges == nil {
		c.edges = &edgeComparison{baseSeen: map[proto.EdgeKey]bool{}, newDeps: map[proto.EdgeKey]*[2]float64{},
			unjudged: map[proto.EdgeKey]bool{}}
	}
	e := c.edges
	r := &edgeRecord{}
	readEdges(w, r, sig)
	mine, other := &e.pendB, &e.pendA
	if isBaseline {
		mine, other = &e.pendA, &e.pendB
	}
	for i, p := range *other {
		if p.startMs == r.startMs {
			*other = slices.Delete(*other, i, i+1)
			a, b := p, r
			if isBaseline {
				a, b = r, p
			}
			c.edgePair(a, b)
			cut := r.startMs - 8*(r.endMs-r.startMs)
			for _, q := range []*[]*edgeRecord{&e.pendA, &e.pendB} {
				for len(*q) > 0 && (*q)[0].startMs < cut {
					*q = slices.Delete(*q, 0, 1)
				}
			}
			return
		}
	}
	if len(*mine) >= maxEdgePending {
		*mine = slices.Delete(*mine, 0, 1)
	}
	*mine = append(*mine, r)
}

// edgePair updates the edge tests with one pair: a the baseline's window, b the canary's.
func (c *comparison) edgePair(a, b *edgeRecord) {
	e := c.edges
	if !e.decided {
		e.decided = true
		if len(a.edges) > 0 || len(b.edges) > 0 {
			e.weight = edgeWeight
		}
	}
	if e.weight == 0 {
		return
	}
	w := e.weight / maxEdgeSlots / edgeTestsPerSlot
	var zero edgeCounts
	for _, j := range e.judges {
		ea, eb := a.edges[j.key], b.edges[j.key]
		if ea == nil {
			ea = &zero
		}
		if eb == nil {
			eb = &zero
		}
		c.edgeUpdate(&j.fanout, a.requests, b.requests, ea.calls, eb.calls)
		c.edgeUpdate(&j.errors, ea.calls, eb.calls, ea.errors, eb.errors)
		if j.frozen {
			c.edgeUpdate(&j.slow, float64(ea.latency.Count), float64(eb.latency.Count),
				float64(ea.latency.CountAtOrAbove(j.slow.bucket)), float64(eb.latency.CountAtOrAbove(j.slow.bucket)))
		} else {
			j.ref.Merge(&ea.latency)
			if j.ref.Positive.Total() >= minRefCount {
				if v := j.ref.Quantile(edgeQuantile); v > 0 {
					j.slow.bucket = proto.BucketIndex(v) + 1
					j.slow.threshold = proto.BucketLower(j.slow.bucket)
					j.frozen = true
				}
			}
		}
	}
	// Edges the baseline called in this pair take a free slot from the next pair on; the
	// canary's edges the baseline never called are new dependencies.
	for k, ea := range a.edges {
		if ea.calls > 0 && !e.baseSeen[k] {
			if len(e.baseSeen) >= maxEdgesPerWindow {
				continue
			}
			e.baseSeen[k] = true
			delete(e.newDeps, k)
			if len(e.judges) < maxEdgeSlots {
				j := &edgeJudge{key: k}
				for _, t := range []*countTest{&j.fanout.countTest, &j.errors.countTest, &j.slow.countTest, &j.blast.countTest} {
					t.weight, t.logW = w, math.Log(w)
					t.ep.init(c.psi0)
				}
				j.fanout.name, j.errors.name, j.slow.name = "edge_fanout "+k.String(), "edge_errors "+k.String(), "edge_latency "+k.String()
				j.blast.name = "edge_blast " + k.String()
				j.slow.latency, j.slow.quantile = true, edgeQuantile
				j.ref.Merge(&ea.latency)
				e.judges = append(e.judges, j)
			} else if len(e.unjudged) < maxNewDeps {
				e.unjudged[k] = true
			}
		}
	}
	for k, eb := range b.edges {
		if eb.calls > 0 && !e.baseSeen[k] && a.edges[k] == nil {
			nd := e.newDeps[k]
			if nd == nil {
				if len(e.newDeps) >= maxNewDeps {
					continue
				}
				nd = &[2]float64{}
				e.newDeps[k] = nd
			}
			nd[0] += eb.calls
			nd[1] += eb.errors
		}
	}
}

// edgeUpdate adds one window's counts to a test.
func (c *comparison) edgeUpdate(et *edgeTest, nA, nB, eA, eB float64) {
	et.recent[et.pos] = [4]float64{nA, nB, eA, eB}
	et.pos = (et.pos + 1) % recentPairs
	t := &et.countTest
	if !t.add(nA, nB, eA, eB) {
		return
	}
	if t.ep.LogE() <= 0 {
		et.since = 0
	} else {
		et.since = min(et.since+1, recentPairs)
	}
	var logs [csN]float64
	latticeLogs(nB/(nA+nB), &logs)
	t.cs.Update(eA+eB, eB, &logs)
}

// edgeTests returns the edge tests in slot order.
func (e *edgeComparison) tests() []*countTest {
	out := make([]*countTest, 0, edgeTestsPerSlot*len(e.judges))
	for _, j := range e.judges {
		out = append(out, &j.fanout.countTest, &j.errors.countTest)
		if j.frozen {
			out = append(out, &j.slow.countTest)
		}
		if j.blast.nA+j.blast.nB > 0 {
			out = append(out, &j.blast.countTest)
		}
	}
	return out
}

// withEdges returns ln of the average over the RED tests (whose own average is redLogAvg)
// and the edge tests, and ln of the edges' part alone.
func (c *comparison) withEdges(redLogAvg float64) (logAvg, edgeLog float64) {
	e := c.edges
	if e == nil || e.weight == 0 {
		return redLogAvg, math.Inf(-1)
	}
	terms := []float64{}
	used := 0.0
	for _, t := range e.tests() {
		terms = append(terms, t.logW+t.ep.LogE())
		used += t.weight
	}
	if rest := e.weight - used; rest > 1e-12 {
		terms = append(terms, math.Log(rest)) // slots and tests not started: e-value 1
	}
	edgeLog = logSumExp(terms)
	return logSumExp([]float64{math.Log(1-e.weight) + redLogAvg, edgeLog}), edgeLog
}

// edgeDecisive returns the edge test contributing most to the average, or nil.
func (c *comparison) edgeDecisive() (*edgeJudge, *edgeTest) {
	if c.edges == nil {
		return nil, nil
	}
	var bj *edgeJudge
	var bt *edgeTest
	best := math.Inf(-1)
	for _, j := range c.edges.judges {
		for _, t := range []*edgeTest{&j.fanout, &j.errors, &j.slow, &j.blast} {
			if v := t.logW + t.ep.LogE(); t.weight > 0 && v > best {
				best, bj, bt = v, j, t
			}
		}
	}
	return bj, bt
}

// edgesPass reports whether no edge test's confidence sequence reaches the accept margin.
func (c *comparison) edgesPass() bool {
	if c.edges == nil {
		return true
	}
	for _, t := range c.edges.tests() {
		if t.eA+t.eB == 0 {
			continue
		}
		if _, hi, ok := t.cs.Bounds(c.set.alpha); !ok || hi >= c.acceptMargin() {
			return false
		}
	}
	return true
}

// edgeEvidence adds the edge tests and the new dependencies to ev, and sets its e-value to
// the combined average's.
func (c *comparison) edgeEvidence(ev proto.Evidence, logAvg float64) proto.Evidence {
	e := c.edges
	if e == nil || e.weight == 0 {
		return ev
	}
	ev.EValue = math.Exp(min(logAvg, maxLogE))
	for _, t := range e.tests() {
		te := proto.TestEvidence{
			Name: t.name, EValue: math.Exp(t.ep.LogE()), Weight: t.weight, ThresholdSeconds: t.threshold,
			BaselineN: uint64(t.nA), BaselineE: uint64(t.eA), CanaryN: uint64(t.nB), CanaryE: uint64(t.eB),
			Effect: rateRatio(t.nA, t.nB, t.eA, t.eB),
		}
		if lo, hi, ok := t.cs.Bounds(c.set.alpha); ok {
			te.CSLow, te.CSHigh = lo, hi
		} else {
			te.CSLow, te.CSHigh = te.Effect, te.Effect
		}
		ev.Tests = append(ev.Tests, te)
	}
	for _, k := range sortedKeys(e.newDeps) {
		nd := e.newDeps[k]
		ev.Tests = append(ev.Tests, proto.TestEvidence{Name: "edge_new " + k.String(), EValue: 1,
			CanaryN: uint64(nd[0]), CanaryE: uint64(nd[1])})
	}
	for _, k := range sortedKeys(e.unjudged) {
		ev.Tests = append(ev.Tests, proto.TestEvidence{Name: "edge_unjudged " + k.String(), EValue: 1})
	}
	return ev
}

func sortedKeys[V any](m map[proto.EdgeKey]V) []proto.EdgeKey {
	ks := make([]proto.EdgeKey, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b proto.EdgeKey) int { return strings.Compare(a.String(), b.String()) })
	return ks
}

// edgeRollback returns the rollback evidence and sentence when an edge test is decisive for a
// combined average at or above the threshold, naming the edge: "checkout 1.5.0 → payments:
// 5.1 calls per request vs 1.0".
func (c *comparison) edgeRollback(logAvg float64, redLogAvg float64, elapsed time.Duration) (proto.Evidence, string, bool) {
	if c.edges == nil || c.edges.weight == 0 {
		return proto.Evidence{}, "", false
	}
	_, edgeLog := c.withEdges(redLogAvg)
	if edgeLog <= math.Log(1-c.edges.weight)+redLogAvg {
		return proto.Evidence{}, "", false
	}
	j, t := c.edgeDecisive()
	if t == nil {
		return proto.Evidence{}, "", false
	}
	ev := c.edgeEvidence(c.evidence(t.name), logAvg)
	ev.Decisive = t.name
	return ev, c.edgeSentence(j, t, ev.EValue, elapsed), true
}

// edgeSentence says an edge test's finding in words.
func (c *comparison) edgeSentence(j *edgeJudge, t *edgeTest, e float64, elapsed time.Duration) string {
	edge := fmt.Sprintf("%s %s → %s", c.service, c.canary, j.key)
	a, b, pairs := t.recentRates()
	var what string
	switch t {
	case &j.fanout:
		what = fmt.Sprintf("%.1f calls per request vs %.1f", b, a)
	case &j.errors:
		what = fmt.Sprintf("%.1f %% of calls fail vs %.1f %%", 100*b, 100*a)
	case &j.blast:
		what = fmt.Sprintf("%s fails %.1f %% of the canary's requests vs %.1f %% of the baseline's", j.key.Callee, 100*b, 100*a)
	default:
		what = fmt.Sprintf("%.0f %% of calls slower than %s vs %.0f %%", 100*b, seconds(t.threshold), 100*a)
	}
	over := "the last window"
	if pairs > 1 {
		over = fmt.Sprintf("the last %d windows", pairs)
	}
	return fmt.Sprintf("%s: %s over %s (e-value %.3g ≥ %.3g), decided after %s",
		edge, what, over, e, 1/c.set.alpha, after(elapsed))
}

// edgesPassSentence says what the edges showed, for a pass sentence: the edges judged with
// their highest confidence bound, and the new dependencies; "" without edges.
func (c *comparison) edgesPassSentence() string {
	e := c.edges
	if e == nil || e.weight == 0 {
		return ""
	}
	var out string
	if len(e.judges) > 0 {
		worst, name := 0.0, ""
		for _, t := range e.tests() {
			if t.eA+t.eB == 0 {
				continue
			}
			if _, hi, ok := t.cs.Bounds(c.set.alpha); ok && hi > worst {
				worst, name = hi, t.name
			}
		}
		out = fmt.Sprintf("; outbound edges judged: %d", len(e.judges))
		if name != "" {
			out += fmt.Sprintf(", highest bound %s %s×", name, ratio(worst))
		}
	}
	if len(e.newDeps) > 0 {
		var parts []string
		for _, k := range sortedKeys(e.newDeps) {
			parts = append(parts, fmt.Sprintf("%s (%.0f calls)", k, e.newDeps[k][0]))
		}
		out += "; new dependencies the baseline never calls: " + strings.Join(parts, ", ")
	}
	return out
}

// inboundWindowLocked reads a callee's window for its requests and errors by caller group
// (proto.SeriesInboundRequests, …) and, for every running comparison of a caller whose
// canary and baseline both called it in this window, updates the blast-radius test of the
// edge to this callee: the callee's errors on the canary's requests against those on the
// baseline's, one conditional-binomial update per callee window. The caller holds d.mu.
func (d *Detector) inboundWindowLocked(w *proto.Window) {
	type counts struct{ n, e float64 }
	var by map[[2]string]*counts
	for i := range w.Series {
		s := &w.Series[i]
		svc, ver, ok := proto.CallerOf(s.Name, s.Labels)
		if !ok || s.Kind != proto.KindCounter || !(s.Value >= 0) || d.services[svc] == nil {
			continue
		}
		if by == nil {
			by = map[[2]string]*counts{}
		}
		c := by[[2]string{svc, ver}]
		if c == nil {
			if len(by) >= maxEdgesPerWindow {
				continue
			}
			c = &counts{}
			by[[2]string{svc, ver}] = c
		}
		if s.Name == proto.SeriesInboundRequests {
			c.n += s.Value
		} else {
			c.e += s.Value
		}
	}
	if by == nil {
		return
	}
	for k := range by {
		caller := d.services[k[0]]
		for _, c := range caller.comps {
			if c.final || c.edges == nil || c.edges.weight == 0 || c.canary != k[1] {
				continue
			}
			a, b := by[[2]string{k[0], c.baseline}], by[k]
			if a == nil {
				continue
			}
			for _, j := range c.edges.judges {
				if j.key.Callee == w.Service && j.key.Operation == "" {
					c.edgeUpdate(&j.blast, a.n, b.n, min(a.e, a.n), min(b.e, b.n))
				}
			}
		}
	}
}
