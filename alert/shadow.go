package alert

// Shadow A/A comparisons.
//
// While a group is the baseline of a comparison and its windows carry Halves (the rollup
// splits the warm instances in two by a hash of the instance id), the detector runs a shadow
// comparison of half 0 (as baseline) against half 1 (as canary) with the service's tests,
// weights, α, margin rule, minimum exposure and maximum duration. Both halves run the same
// version under the same load, so every shadow rollback is a false alarm: the ratio of
// shadow rollbacks to concluded shadow comparisons is the observed false-rollback rate of
// the method on this service's real traffic, which α bounds only if the model holds
// (independent requests, instances alike up to the margin).
//
// A shadow concludes like a comparison (rollback, pass, or max duration) and the next window
// starts a new one. It never publishes a verdict or a decision: it only counts. A shadow that
// has not concluded when its group stops being a baseline (or a window without halves
// arrives) is abandoned and not counted in the ratio, because counting it as "no rollback"
// would bias the ratio low.

import (
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/proto"
)

// shadowMetrics are one service's shadow A/A metrics. They are unregistered when the
// service is forgotten.
type shadowMetrics struct {
	comparisons, rollbacks *metrics.Counter
	ratio                  *metrics.Gauge
	names                  [3]string
}

// shadowMetricsLocked returns the shadow metrics of s, registering them.
func (d *Detector) shadowMetricsLocked(s *service) *shadowMetrics {
	if s.shadow == nil {
		l := `{service="` + s.name + `"}` // a valid service token needs no escaping
		m := &shadowMetrics{names: [3]string{
			"herd_detector_shadow_comparisons_total" + l,
			"herd_detector_shadow_rollbacks_total" + l,
			"herd_detector_shadow_rollback_ratio" + l,
		}}
		m.comparisons = d.set.GetOrCreateCounter(m.names[0])
		m.rollbacks = d.set.GetOrCreateCounter(m.names[1])
		m.ratio = d.set.GetOrCreateGauge(m.names[2], nil)
		s.shadow = m
	}
	return s.shadow
}

// unregisterShadowLocked removes the shadow metrics of a service being forgotten.
func (d *Detector) unregisterShadowLocked(s *service) {
	if s.shadow == nil {
		return
	}
	for _, n := range s.shadow.names {
		d.set.UnregisterMetric(n)
	}
	s.shadow = nil
}

// ShadowStats are the shadow A/A counts of one service (see Detector.ShadowStats).
type ShadowStats struct {
	// Comparisons counts concluded shadow comparisons; Rollbacks those that rolled back.
	Comparisons, Rollbacks uint64
}

// ShadowStats returns the shadow A/A counts of a service since the detector began tracking
// it (zero when it has had no shadow comparison).
func (d *Detector) ShadowStats(service string) ShadowStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.services[service]
	if s == nil || s.shadow == nil {
		return ShadowStats{}
	}
	return ShadowStats{Comparisons: s.shadow.comparisons.Get(), Rollbacks: s.shadow.rollbacks.Get()}
}

// shadowWindowLocked feeds the halves of a window of g, a baseline, to g's shadow comparison.
func (d *Detector) shadowWindowLocked(s *service, g *group, w *proto.Window) {
	sh := g.shadow
	if sh == nil {
		sh = newComparison(s.name, g.version, g.version, &s.set, w.StartMs, false)
		sh.firstCanaryMs, sh.startMs = w.StartMs, w.StartMs
		g.shadow = sh
		d.shadowMetricsLocked(s)
	}
	if !sh.testsReady {
		if w.HalfInstances[0] == 0 || w.HalfInstances[1] == 0 {
			return // the margin is frozen from both halves' instance counts
		}
		sh.baselineInstances, sh.canaryInstances = w.HalfInstances[0], w.HalfInstances[1]
		sh.freeze(g.reference())
		sh.initTests(&g.disp)
	}
	for h := range d.xh {
		d.xh[h].read(s.choice.Definition(), w.Halves[h])
	}
	a, b := sh.newRecord(), sh.newRecord()
	sh.fill(a, w, &d.xh[0], &d.xh[0], false)
	sh.fill(b, w, &d.xh[1], &d.xh[1], false)
	logAvg := sh.update(a, b)
	sh.release(a)
	sh.release(b)

	set := sh.set
	fired := logAvg >= sh.logTh
	concluded := fired ||
		time.Duration(w.EndMs-sh.createdMs)*time.Millisecond >= set.maxDuration ||
		time.Duration(w.EndMs-sh.startMs)*time.Millisecond >= set.minExposure && sh.windows%passCheckEvery == 0 && sh.passes()
	if !concluded {
		return
	}
	m := d.shadowMetricsLocked(s)
	m.comparisons.Inc()
	if fired {
		m.rollbacks.Inc()
		d.logger.Info("shadow A/A comparison rolled back (a false alarm; no verdict)", "service", s.name,
			"group", g.version, "test", sh.decisive(), "after", after(time.Duration(w.EndMs-sh.startMs)*time.Millisecond),
			"instances_half0", sh.baselineInstances, "instances_half1", sh.canaryInstances)
	}
	m.ratio.Set(float64(m.rollbacks.Get()) / float64(m.comparisons.Get()))
	g.shadow = nil // the next window starts a new shadow comparison
}
