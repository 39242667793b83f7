package otlp

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/herd-dev/herd/proto"
)

// work is the reused memory of one Export call.
type work struct {
	res     Result
	reasons []string
	// times are the timestamps of the resource being converted, one pass each; with
	// filter set, a pass converts only the points of timestamp only.
	times   []int64
	filter  bool
	only    int64
	groups  []resources
	index   map[*instance]int
	edgeIdx map[string]int // edge series of the batch being built: index in batch.Series
	key     []byte
	labels  []proto.Label
	staged  []staged
	batch   proto.Batch
	enc     proto.Encoder
	buf     []byte
	exp     expHist
	expPrev expHist
	expD    expHist
	expl    explicitHist
	explD   explicitHist
}

// resources are the resources of one request that name one instance.
type resources struct {
	in  *instance
	rms []pmetric.ResourceMetrics
}

// staged is one converted data point waiting for its batch. An entry whose series has no
// kind is a marker of a point that changed nothing (a zero delta): its batch is still sent,
// as an agent sends one every interval, so the rollup sees the instance report.
type staged struct {
	t, start int64
	s        proto.Series
	// edge marks a point of an edge series, which other points of the batch may add to;
	// extra one of the entries beyond the first that one client point makes (calls, errors).
	edge, extra bool
}

// accept counts a converted point of s at ts (start: its start time) into st, the entry just
// taken by next, and reports send. Unless send, st stays a marker: the batch of ts is sent,
// without the series (a zero delta, or a first cumulative point that only sets the base).
func (w *work) accept(st *staged, s *series, kind proto.Kind, ts, start int64, send bool) bool {
	s.lastT = ts
	w.res.Accepted++
	st.t, st.start = ts, start
	if send {
		st.s.Name, st.s.Labels, st.s.Kind = s.name, s.labels, kind
	}
	return send
}

// next returns a cleared staged entry at the end of w.staged, reusing memory.
func (w *work) next() *staged {
	if len(w.staged) < cap(w.staged) {
		w.staged = w.staged[:len(w.staged)+1]
	} else {
		w.staged = append(w.staged, staged{})
	}
	st := &w.staged[len(w.staged)-1]
	st.t, st.start, st.edge, st.extra = 0, 0, false, false
	st.s.Name, st.s.Labels, st.s.Kind, st.s.Value = "", nil, 0, 0
	return st
}

// convert turns an instance's resources' points into batches and publishes them.
func (r *Receiver) convert(w *work, in *instance, rms []pmetric.ResourceMetrics) {
	in.mu.Lock()
	defer in.mu.Unlock()
	w.staged = w.staged[:0]
	// Points are converted in timestamp order, so that a request holding several exports
	// of the instance yields each series' deltas in order. The common request has one
	// timestamp and takes one pass.
	w.times = w.times[:0]
	for _, rm := range rms {
		w.times = timestamps(w.times, rm.ScopeMetrics())
	}
	slices.Sort(w.times)
	w.times = slices.Compact(w.times)
	if len(w.times) > maxPasses {
		w.times = w.times[:maxPasses]
		w.times[maxPasses-1] = math.MaxInt64 // stands for every later timestamp
	}
	w.filter = len(w.times) > 1
	for _, ts := range w.times {
		w.only = ts
		for _, rm := range rms {
			sms := rm.ScopeMetrics()
			for i := 0; i < sms.Len(); i++ {
				ms := sms.At(i).Metrics()
				for j := 0; j < ms.Len(); j++ {
					r.metric(w, in, ms.At(j))
				}
			}
		}
	}
	w.filter = false
	in.known = true
	r.emit(w, in)
}

// maxPasses bounds the distinct timestamps of one instance's points converted in order;
// points of later timestamps are converted in the last pass, in the order they come.
const maxPasses = 64

// timestamps appends the timestamps of a resource's points to dst, skipping repeats of the
// last one.
func timestamps(dst []int64, sms pmetric.ScopeMetricsSlice) []int64 {
	add := func(ts pcommon.Timestamp) {
		t := int64(ts)
		if len(dst) > 0 && dst[len(dst)-1] == t {
			return
		}
		dst = append(dst, t)
	}
	for i := 0; i < sms.Len(); i++ {
		ms := sms.At(i).Metrics()
		for j := 0; j < ms.Len(); j++ {
			m := ms.At(j)
			switch m.Type() {
			case pmetric.MetricTypeGauge:
				for k := 0; k < m.Gauge().DataPoints().Len(); k++ {
					add(m.Gauge().DataPoints().At(k).Timestamp())
				}
			case pmetric.MetricTypeSum:
				for k := 0; k < m.Sum().DataPoints().Len(); k++ {
					add(m.Sum().DataPoints().At(k).Timestamp())
				}
			case pmetric.MetricTypeHistogram:
				for k := 0; k < m.Histogram().DataPoints().Len(); k++ {
					add(m.Histogram().DataPoints().At(k).Timestamp())
				}
			case pmetric.MetricTypeExponentialHistogram:
				for k := 0; k < m.ExponentialHistogram().DataPoints().Len(); k++ {
					add(m.ExponentialHistogram().DataPoints().At(k).Timestamp())
				}
			default:
				add(0) // refused whole, once
			}
		}
	}
	return dst
}

// skip reports whether a point of timestamp ts belongs to another pass than w.only.
func (w *work) skip(ts int64) bool {
	if !w.filter {
		return false
	}
	if w.only == math.MaxInt64 {
		return ts <= w.times[maxPasses-2]
	}
	return ts != w.only
}

// metric converts one metric's points (those of the current pass).
func (r *Receiver) metric(w *work, in *instance, m pmetric.Metric) {
	name := m.Name()
	if name == "" || len(name) > proto.MaxStringBytes || !utf8.ValidString(name) {
		r.refuseMetric(w, ReasonBadAttributes, pointsOf(m), in.service, fmt.Errorf("metric name %q is empty, longer than %d bytes or not UTF-8", clip(name), proto.MaxStringBytes))
		return
	}
	switch m.Type() {
	case pmetric.MetricTypeGauge:
		dps := m.Gauge().DataPoints()
		for i := 0; i < dps.Len(); i++ {
			r.number(w, in, name, dps.At(i), proto.KindGauge, false)
		}
	case pmetric.MetricTypeSum:
		s := m.Sum()
		cum := s.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
		kind := proto.KindCounter
		if !s.IsMonotonic() {
			if !cum {
				r.refuseMetric(w, ReasonUnsupportedType, s.DataPoints().Len(), in.service, fmt.Errorf("%s is a non-monotonic delta sum", clip(name)))
				return
			}
			kind, cum = proto.KindGauge, false
		} else if s.AggregationTemporality() == pmetric.AggregationTemporalityUnspecified {
			r.refuseMetric(w, ReasonUnsupportedType, s.DataPoints().Len(), in.service, fmt.Errorf("%s has no aggregation temporality", clip(name)))
			return
		}
		dps := s.DataPoints()
		for i := 0; i < dps.Len(); i++ {
			r.number(w, in, name, dps.At(i), kind, cum)
		}
	case pmetric.MetricTypeHistogram:
		h := m.Histogram()
		cum := h.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
		if !cum && h.AggregationTemporality() != pmetric.AggregationTemporalityDelta {
			r.refuseMetric(w, ReasonUnsupportedType, h.DataPoints().Len(), in.service, fmt.Errorf("%s has no aggregation temporality", clip(name)))
			return
		}
		dps := h.DataPoints()
		src := r.edgeSources[name]
		for i := 0; i < dps.Len(); i++ {
			r.explicit(w, in, name, m.Unit(), src, dps.At(i), cum)
		}
	case pmetric.MetricTypeExponentialHistogram:
		h := m.ExponentialHistogram()
		cum := h.AggregationTemporality() == pmetric.AggregationTemporalityCumulative
		if !cum && h.AggregationTemporality() != pmetric.AggregationTemporalityDelta {
			r.refuseMetric(w, ReasonUnsupportedType, h.DataPoints().Len(), in.service, fmt.Errorf("%s has no aggregation temporality", clip(name)))
			return
		}
		dps := h.DataPoints()
		src := r.edgeSources[name]
		for i := 0; i < dps.Len(); i++ {
			r.exponential(w, in, name, m.Unit(), src, dps.At(i), cum)
		}
	case pmetric.MetricTypeSummary:
		r.refuseMetric(w, ReasonUnsupportedType, m.Summary().DataPoints().Len(), in.service, fmt.Errorf("%s is a summary: send a histogram", clip(name)))
	}
}

// refuseMetric refuses a whole metric's points, in the first pass only.
func (r *Receiver) refuseMetric(w *work, reason string, n int, service string, err error) {
	if w.filter && w.only != w.times[0] {
		return
	}
	r.refuse(w, reason, n, service, err)
}

// point looks up (creating) the state of a point's series and checks its kind and order.
// It returns nil after counting a refusal.
//
// src, when set, is the client convention whose points become edges: a new series gets its
// edge from its attributes and the metric's unit.
func (r *Receiver) point(w *work, in *instance, name string, attrs pcommon.Map, ts int64, kind proto.Kind, cum bool, src *edgeSource, unit string) *series {
	if ts <= 0 {
		r.refuse(w, ReasonBadTimestamp, 1, in.service, fmt.Errorf("a point of %s has no timestamp", clip(name)))
		return nil
	}
	labels, err := w.labelsOf(attrs)
	if err != nil {
		r.refuse(w, ReasonBadAttributes, 1, in.service, fmt.Errorf("a point of %s: %w", clip(name), err))
		return nil
	}
	k := append(w.key[:0], name...)
	for _, l := range labels {
		k = append(k, 0xff)
		k = append(k, l.Name...)
		k = append(k, 0xfe)
		k = append(k, l.Value...)
	}
	w.key = k
	s, ok := in.series[string(k)]
	if !ok {
		if len(in.series) >= r.cfg.MaxSeriesPerInstance {
			r.refuse(w, ReasonTooManySeries, 1, in.service, fmt.Errorf("an instance of %s/%s has %d series (-otlp.max-series-per-instance)", in.service, in.version, r.cfg.MaxSeriesPerInstance))
			return nil
		}
		if r.nSeries.Add(1) > int64(r.cfg.MaxSeries) {
			r.nSeries.Add(-1)
			r.refuse(w, ReasonTooManySeries, 1, in.service, fmt.Errorf("the receiver keeps %d series (-otlp.max-series)", r.cfg.MaxSeries))
			return nil
		}
		s = &series{name: name, labels: slices.Clone(labels), kind: kind, cum: cum}
		if src != nil {
			s.edge = r.edgeOf(in, src, unit, attrs)
		}
		in.series[string(k)] = s
	}
	if s.kind != kind || s.cum != cum {
		r.refuse(w, ReasonKindConflict, 1, in.service, fmt.Errorf("series %s changed its kind or temporality", clip(proto.SeriesString(name, labels))))
		return nil
	}
	if ts < s.lastT {
		r.refuse(w, ReasonOutOfOrder, 1, in.service, fmt.Errorf("a point of %s is older than the previous one", clip(proto.SeriesString(name, labels))))
		return nil
	}
	return s
}

// labelsOf turns a point's attributes into sorted labels in w.labels.
func (w *work) labelsOf(attrs pcommon.Map) ([]proto.Label, error) {
	if attrs.Len() > proto.MaxLabels {
		return nil, fmt.Errorf("%d attributes, limit %d", attrs.Len(), proto.MaxLabels)
	}
	w.labels = w.labels[:0]
	var err error
	attrs.Range(func(k string, v pcommon.Value) bool {
		switch v.Type() {
		case pcommon.ValueTypeStr, pcommon.ValueTypeInt, pcommon.ValueTypeDouble, pcommon.ValueTypeBool:
		default:
			err = fmt.Errorf("attribute %q is of type %s: only strings, numbers and booleans become labels", clip(k), v.Type())
			return false
		}
		s := v.AsString()
		if k == "" || len(k) > proto.MaxStringBytes || len(s) > proto.MaxStringBytes || !utf8.ValidString(k) || !utf8.ValidString(s) {
			err = fmt.Errorf("attribute %q is empty, longer than %d bytes or not UTF-8", clip(k), proto.MaxStringBytes)
			return false
		}
		w.labels = append(w.labels, proto.Label{Name: k, Value: s})
		return true
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(w.labels, func(a, b proto.Label) int { return strings.Compare(a.Name, b.Name) })
	return w.labels, nil
}

// firstIsDelta reports whether the first value seen of a cumulative series counts whole:
// the instance was known before (the series is new since its previous export), or the
// series started after the receiver did (no other receiver can have seen it).
func (r *Receiver) firstIsDelta(in *instance, start int64) bool {
	return in.known || start >= r.horizon
}

// number converts a gauge or sum point.
func (r *Receiver) number(w *work, in *instance, name string, dp pmetric.NumberDataPoint, kind proto.Kind, cum bool) {
	ts := int64(dp.Timestamp())
	if w.skip(ts) || dp.Flags().NoRecordedValue() {
		return
	}
	s := r.point(w, in, name, dp.Attributes(), ts, kind, cum, nil, "")
	if s == nil {
		return
	}
	v := dp.DoubleValue()
	if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
		v = float64(dp.IntValue())
	}
	if math.IsNaN(v) || math.IsInf(v, 0) || (kind == proto.KindCounter && v < 0) {
		r.refuse(w, ReasonBadValue, 1, in.service, fmt.Errorf("%s value %v", clip(proto.SeriesString(name, s.labels)), v))
		return
	}
	start := int64(dp.StartTimestamp())
	d := v
	if cum {
		switch {
		case !s.has:
			if !r.firstIsDelta(in, start) {
				d = 0
			}
		case v < s.prev || start != s.startT:
			r.m.resets.Inc()
		default:
			d = v - s.prev
		}
		s.prev, s.startT, s.has = v, start, true
	}
	if st := w.next(); w.accept(st, s, kind, ts, start, kind != proto.KindCounter || d != 0) {
		st.s.Value = d
	}
}

// explicit converts an explicit-bucket histogram point.
// src, when set, makes its points edges (edges.go); unit is the metric's unit.
func (r *Receiver) explicit(w *work, in *instance, name, unit string, src *edgeSource, dp pmetric.HistogramDataPoint, cum bool) {
	ts := int64(dp.Timestamp())
	if w.skip(ts) || dp.Flags().NoRecordedValue() {
		return
	}
	s := r.point(w, in, name, dp.Attributes(), ts, proto.KindHistogram, cum, src, unit)
	if s == nil {
		return
	}
	h := &w.expl
	h.bounds = append(h.bounds[:0], dp.ExplicitBounds().AsRaw()...)
	h.counts = append(h.counts[:0], dp.BucketCounts().AsRaw()...)
	h.sum = dp.Sum()
	if len(h.counts) == 0 && len(h.bounds) == 0 {
		h.counts = append(h.counts, dp.Count())
	}
	var total uint64
	for _, c := range h.counts {
		total += c
	}
	if total != dp.Count() || len(h.counts) != len(h.bounds)+1 {
		r.refuse(w, ReasonBadHistogram, 1, in.service, fmt.Errorf("%s: %d bucket counts for %d bounds, adding up to %d of count %d", clip(proto.SeriesString(name, s.labels)), len(h.counts), len(h.bounds), total, dp.Count()))
		return
	}
	start := int64(dp.StartTimestamp())
	d := h
	if cum {
		switch {
		case !s.has:
			if !r.firstIsDelta(in, start) {
				d = nil
			}
		case start != s.startT || !w.explD.deltaFrom(h, &s.prevX):
			r.m.resets.Inc()
		default:
			d = &w.explD
		}
	}
	st := w.next()
	unitS := 1.0
	if s.edge != nil {
		unitS = s.edge.unit
	}
	if d != nil && !d.toHerd(&st.s.Hist, unitS) {
		w.staged = w.staged[:len(w.staged)-1]
		r.refuse(w, ReasonBadHistogram, 1, in.service, fmt.Errorf("%s: bounds not increasing, or a count herd cannot place", clip(proto.SeriesString(name, s.labels))))
		return
	}
	if cum {
		s.prevX.copyFrom(h)
		s.startT, s.has = start, true
	}
	if s.edge != nil {
		r.acceptEdge(w, s, ts, start, d != nil)
		return
	}
	w.accept(st, s, proto.KindHistogram, ts, start, d != nil && st.s.Hist.Count > 0)
}

// exponential converts an exponential histogram point.
// src, when set, makes its points edges (edges.go); unit is the metric's unit.
func (r *Receiver) exponential(w *work, in *instance, name, unit string, src *edgeSource, dp pmetric.ExponentialHistogramDataPoint, cum bool) {
	ts := int64(dp.Timestamp())
	if w.skip(ts) || dp.Flags().NoRecordedValue() {
		return
	}
	s := r.point(w, in, name, dp.Attributes(), ts, proto.KindHistogram, cum, src, unit)
	if s == nil {
		return
	}
	bad := func(format string, args ...any) {
		r.refuse(w, ReasonBadHistogram, 1, in.service, fmt.Errorf("%s: "+format, append([]any{clip(proto.SeriesString(name, s.labels))}, args...)...))
	}
	h := &w.exp
	h.scale, h.zero, h.sum = dp.Scale(), dp.ZeroCount(), dp.Sum()
	if h.scale < minScale || h.scale > maxScale {
		bad("scale %d outside [%d, %d]", h.scale, minScale, maxScale)
		return
	}
	total := h.zero
	for _, side := range []struct {
		src pmetric.ExponentialHistogramDataPointBuckets
		dst *expBuckets
	}{{dp.Positive(), &h.pos}, {dp.Negative(), &h.neg}} {
		bc := side.src.BucketCounts()
		if bc.Len() > maxRawBuckets {
			bad("%d buckets, limit %d", bc.Len(), maxRawBuckets)
			return
		}
		side.dst.offset = int(side.src.Offset())
		side.dst.counts = append(side.dst.counts[:0], bc.AsRaw()...)
		for _, c := range side.dst.counts {
			total += c
		}
	}
	if total != dp.Count() {
		bad("buckets add up to %d, count is %d", total, dp.Count())
		return
	}
	start := int64(dp.StartTimestamp())
	d := h
	if cum {
		switch {
		case !s.has:
			if !r.firstIsDelta(in, start) {
				d = nil
			}
		case start != s.startT || !w.expD.deltaFrom(h, &s.prevE, &w.expPrev):
			r.m.resets.Inc()
		default:
			d = &w.expD
		}
	}
	st := w.next()
	if d != nil && !d.toHerd(&st.s.Hist) {
		w.staged = w.staged[:len(w.staged)-1]
		bad("buckets outside herd's range, or a sum that is not finite")
		return
	}
	if cum {
		s.prevE.copyFrom(h)
		s.startT, s.has = start, true
	}
	if s.edge != nil {
		if d != nil && s.edge.unit != 1 {
			toSeconds(&st.s.Hist, s.edge.unit)
		}
		r.acceptEdge(w, s, ts, start, d != nil)
		return
	}
	w.accept(st, s, proto.KindHistogram, ts, start, d != nil && st.s.Hist.Count > 0)
}

// acceptEdge makes the point of client series s just staged (its histogram, in seconds, in
// the last staged entry) its edge's latency, calls and, if its calls failed, errors. Unless
// send, the entry stays a marker (a first cumulative point that only sets the base).
func (r *Receiver) acceptEdge(w *work, s *series, ts, start int64, send bool) {
	st := &w.staged[len(w.staged)-1]
	n := st.s.Hist.Count
	if !w.accept(st, s, proto.KindHistogram, ts, start, send && n > 0) {
		return
	}
	e := s.edge
	if e.reason != "" {
		r.m.edgeOther[e.reason].Inc()
	}
	st.s.Name, st.s.Labels, st.edge = proto.SeriesEdgeLatency, e.labels, true
	for _, c := range [...]struct {
		name string
		on   bool
	}{{proto.SeriesEdgeCalls, true}, {proto.SeriesEdgeErrors, e.failed}} {
		if c.on {
			x := w.next() // may move w.staged: st is not used after this
			x.t, x.start, x.edge, x.extra = ts, start, true, true
			x.s.Name, x.s.Labels, x.s.Kind, x.s.Value = c.name, e.labels, proto.KindCounter, float64(n)
		}
	}
}
