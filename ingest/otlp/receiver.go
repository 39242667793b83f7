package otlp

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"google.golang.org/grpc"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
)

// maxSeriesPerBatch bounds Config.MaxSeriesPerInstance: all of an instance's series at one
// timestamp go in one batch.
const maxSeriesPerBatch = proto.MaxSeries

// maxInstanceID bounds the instance attribute's length.
const maxInstanceID = 256

// Receiver takes OTLP metrics over HTTP and gRPC and publishes them as herd batches. New
// builds it and opens its listeners; Run serves until its context ends. Export, the
// conversion both transports share, is safe for concurrent use: requests of different
// instances are converted in parallel, those of one instance one after the other.
type Receiver struct {
	cfg     Config
	publish ingest.PublishFunc
	log     *slog.Logger
	m       *recvMetrics
	// nonce makes this receiver's instance ids its own: after a restart the rollup sees
	// new instances, whose sequence numbers start again at 0.
	nonce [16]byte
	// horizon is when the receiver started (unix ns): a cumulative series that started
	// before it may have sent values to another receiver, so its first value is only a base.
	horizon int64
	now     func() time.Time
	work    sync.Pool // *work
	// edgeSources are the client conventions read as edges, by metric name (edges.go).
	edgeSources map[string]*edgeSource

	mu         sync.Mutex // Guards the fields below.
	instances  map[string]*instance
	perService map[string]int
	groups     map[string]*groupEdges // by service "\x00" version: the callees of each group
	nInstances atomic.Int64           // len(instances), for the gauge
	nSeries    atomic.Int64           // series of all instances

	httpLn, grpcLn net.Listener // nil when off
	conns          atomic.Int64 // open connections of both listeners
	httpSrv        *http.Server
	grpcSrv        *grpc.Server
}

// instance is the state of one OTLP resource: one instance of one group.
type instance struct {
	service, version, subject string
	id                        [16]byte
	edges                     *groupEdges  // the group's callees, shared by its instances
	lastSeen                  atomic.Int64 // unix ns of its last request

	mu sync.Mutex // Guards the fields below; held while a resource's points are converted and published.
	// known is set once a request of the instance was converted: a series first seen
	// after that is new since the previous export, so its whole value is a delta.
	known   bool
	start   int64 // InstanceStart of its batches
	seq     uint64
	lastEnd int64
	series  map[string]*series
}

// series is the state of one series of an instance.
type series struct {
	name   string
	labels []proto.Label
	kind   proto.Kind
	cum    bool  // cumulative temporality
	has    bool  // the fields below hold a previous value
	lastT  int64 // timestamp of the previous point
	startT int64 // start timestamp of the previous cumulative point
	prev   float64
	prevE  expHist
	prevX  explicitHist
	// edge is set for a client series whose points become edges (edges.go).
	edge *edgeOut
}

// Result is what Export did with a request's data points.
type Result struct {
	Accepted, Rejected int64
	// Message names the reasons of the first rejections, for the partial-success answer.
	Message string
}

// New builds a receiver that publishes batches with publish and counts into set (nil: a
// private Set), and opens its listeners. cfg must have passed Validate.
func New(cfg Config, set *metrics.Set, publish ingest.PublishFunc, logger *slog.Logger) (*Receiver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if publish == nil {
		return nil, errors.New("cannot create the OTLP receiver: nil publish function")
	}
	if logger == nil {
		logger = slog.Default()
	}
	r := &Receiver{
		cfg: cfg, publish: publish, log: logger, now: time.Now,
		instances: map[string]*instance{}, perService: map[string]int{}, groups: map[string]*groupEdges{},
	}
	r.horizon = r.now().UnixNano()
	r.edgeSources = sourcesFor(cfg.RPCCalleeFromAddress)
	_, _ = rand.Read(r.nonce[:])
	r.m = newRecvMetrics(set, func() float64 { return float64(r.nInstances.Load()) })
	r.work.New = func() any { return &work{index: map[*instance]int{}, edgeIdx: map[string]int{}} }
	if err := r.listen(); err != nil {
		return nil, err
	}
	return r, nil
}

// Stats returns the receiver's totals.
func (r *Receiver) Stats() Stats { return r.m.stats() }

// Export converts a request's data points into batches and publishes them, one batch per
// instance and timestamp, in timestamp order. It never keeps md.
func (r *Receiver) Export(md pmetric.Metrics) Result {
	w := r.work.Get().(*work)
	defer r.work.Put(w)
	w.res = Result{}
	w.reasons = w.reasons[:0]
	now := r.now()
	rms := md.ResourceMetrics()
	// Resources of one instance (a Collector's batch of several exports) are converted
	// together, in timestamp order.
	clear(w.index)
	w.groups = w.groups[:0]
	for i := 0; i < rms.Len(); i++ {
		rm := rms.At(i)
		inst, reason, err := r.instance(w, rm.Resource().Attributes(), now)
		if inst == nil {
			r.refuse(w, reason, countPoints(rm), "", err)
			continue
		}
		k, ok := w.index[inst]
		if !ok {
			k = len(w.groups)
			w.index[inst] = k
			w.groups = append(w.groups, resources{in: inst})
		}
		w.groups[k].rms = append(w.groups[k].rms, rm)
	}
	for i := range w.groups {
		r.convert(w, w.groups[i].in, w.groups[i].rms)
		w.groups[i] = resources{}
	}
	r.m.points.Add(int(w.res.Accepted))
	if len(w.reasons) > 0 {
		w.res.Message = "herd refused data points: " + strings.Join(w.reasons, "; ")
	}
	return w.res
}

// countPoints returns the data points of a resource.
func countPoints(rm pmetric.ResourceMetrics) int {
	n := 0
	sms := rm.ScopeMetrics()
	for i := 0; i < sms.Len(); i++ {
		ms := sms.At(i).Metrics()
		for j := 0; j < ms.Len(); j++ {
			n += pointsOf(ms.At(j))
		}
	}
	return n
}

// pointsOf returns the data points of a metric.
func pointsOf(m pmetric.Metric) int {
	switch m.Type() {
	case pmetric.MetricTypeGauge:
		return m.Gauge().DataPoints().Len()
	case pmetric.MetricTypeSum:
		return m.Sum().DataPoints().Len()
	case pmetric.MetricTypeHistogram:
		return m.Histogram().DataPoints().Len()
	case pmetric.MetricTypeExponentialHistogram:
		return m.ExponentialHistogram().DataPoints().Len()
	case pmetric.MetricTypeSummary:
		return m.Summary().DataPoints().Len()
	}
	return 0
}

// refuse counts n refused points of one reason and logs at most one line every 10 s.
func (r *Receiver) refuse(w *work, reason string, n int, service string, err error) {
	if n <= 0 {
		return
	}
	r.m.pointRefused[reason].Add(n)
	w.res.Rejected += int64(n)
	if len(w.reasons) < 4 && !slices.ContainsFunc(w.reasons, func(s string) bool { return strings.HasPrefix(s, reason+":") }) {
		w.reasons = append(w.reasons, reason+": "+err.Error())
	}
	if ok, suppressed := r.m.shouldLog(r.now()); ok {
		r.log.Warn("OTLP data points refused", "reason", reason, "points", n, "service", service, "err", err, "suppressed_since_last_log", suppressed)
	}
}

// instance returns the state of the instance a resource names, creating it, or nil and a
// refusal reason.
func (r *Receiver) instance(w *work, attrs pcommon.Map, now time.Time) (*instance, string, error) {
	svc, reason, err := r.serviceOf(attrs)
	if err != nil {
		return nil, reason, err
	}
	v, ok := attrs.Get(r.cfg.VersionKey)
	if !ok || v.AsString() == "" {
		return nil, ReasonMissingVersion, fmt.Errorf("resource of service %s has no %s attribute", svc, r.cfg.VersionKey)
	}
	version := v.AsString()
	if err := proto.ValidVersion(version); err != nil {
		return nil, ReasonBadVersion, fmt.Errorf("resource attribute %s: %w", r.cfg.VersionKey, err)
	}
	k := append(w.key[:0], svc...)
	k = append(k, 0)
	k = append(k, version...)
	k = append(k, 0)
	if id, ok := attrs.Get(r.cfg.InstanceKey); ok && id.AsString() != "" {
		s := id.AsString()
		if len(s) > maxInstanceID {
			return nil, ReasonBadAttributes, fmt.Errorf("resource attribute %s of service %s is longer than %d bytes", r.cfg.InstanceKey, svc, maxInstanceID)
		}
		k = append(k, s...)
	} else {
		k = appendAttrsHash(k, attrs)
	}
	w.key = k
	nowNs := now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	if in, ok := r.instances[string(k)]; ok {
		in.lastSeen.Store(nowNs)
		return in, "", nil
	}
	if len(r.instances) >= r.cfg.MaxInstances {
		return nil, ReasonTooManyInstances, fmt.Errorf("the receiver keeps %d instances (-otlp.max-instances)", r.cfg.MaxInstances)
	}
	if r.perService[svc] >= r.cfg.MaxInstancesPerService {
		return nil, ReasonTooManyInstances, fmt.Errorf("service %s has %d instances (-otlp.max-instances-per-service)", svc, r.cfg.MaxInstancesPerService)
	}
	subject, err := proto.InSubject(svc, version)
	if err != nil {
		return nil, ReasonBadVersion, err
	}
	in := &instance{service: svc, version: version, subject: subject, series: map[string]*series{}}
	gk := svc + "\x00" + version
	if in.edges = r.groups[gk]; in.edges == nil {
		in.edges = &groupEdges{}
		r.groups[gk] = in.edges
	}
	in.edges.refs++
	h := sha256.New()
	h.Write(r.nonce[:])
	h.Write(k)
	copy(in.id[:], h.Sum(nil))
	in.id[6] = in.id[6]&0x0f | 0x80 // a UUID of version 8 (custom), variant 10
	in.id[8] = in.id[8]&0x3f | 0x80
	in.lastSeen.Store(nowNs)
	r.instances[string(k)] = in
	r.perService[svc]++
	r.nInstances.Store(int64(len(r.instances)))
	return in, "", nil
}

// appendAttrsHash appends a hash of all of a resource's attributes: the identity of a
// resource without an instance attribute.
func appendAttrsHash(dst []byte, attrs pcommon.Map) []byte {
	kv := make([]string, 0, attrs.Len())
	attrs.Range(func(k string, v pcommon.Value) bool {
		kv = append(kv, k+"\x00"+v.AsString())
		return true
	})
	slices.Sort(kv)
	h := sha256.New()
	for _, s := range kv {
		h.Write([]byte(s))
		h.Write([]byte{0xff})
	}
	return fmt.Appendf(dst, "attrs:%x", h.Sum(nil)[:16])
}

// serviceOf returns the herd service a resource names: its service attribute lower-cased,
// with every character that a service token cannot hold ('.', ' ', '/', ':' …) made '-'.
func (r *Receiver) serviceOf(attrs pcommon.Map) (string, string, error) {
	v, ok := attrs.Get(r.cfg.ServiceKey)
	name := ""
	if ok {
		name = v.AsString()
	}
	if name == "" || strings.HasPrefix(name, "unknown_service") {
		return "", ReasonMissingService, fmt.Errorf("resource has no %s attribute (set OTEL_SERVICE_NAME)", r.cfg.ServiceKey)
	}
	if len(name) > proto.MaxServiceLen || !utf8.ValidString(name) {
		return "", ReasonBadService, fmt.Errorf("resource attribute %s %q is longer than %d bytes or not UTF-8", r.cfg.ServiceKey, clip(name), proto.MaxServiceLen)
	}
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	svc := string(b)
	if err := proto.ValidService(svc); err != nil {
		return "", ReasonBadService, fmt.Errorf("resource attribute %s %q: %w", r.cfg.ServiceKey, clip(name), err)
	}
	return svc, "", nil
}

func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// sweep forgets the instances not seen for InstanceTTL.
func (r *Receiver) sweep(now time.Time) {
	cut := now.Add(-r.cfg.InstanceTTL).UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, in := range r.instances {
		if in.lastSeen.Load() < cut {
			in.mu.Lock() // a request still converting finishes first
			r.nSeries.Add(-int64(len(in.series)))
			in.mu.Unlock()
			delete(r.instances, k)
			if r.perService[in.service]--; r.perService[in.service] <= 0 {
				delete(r.perService, in.service)
			}
			if in.edges.refs--; in.edges.refs <= 0 {
				delete(r.groups, in.service+"\x00"+in.version)
			}
		}
	}
	r.nInstances.Store(int64(len(r.instances)))
}

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

// emit publishes the staged points of an instance: one batch per timestamp, in order. A
// batch covers [end of the instance's previous batch, timestamp); the first one starts at
// its points' start time.
func (r *Receiver) emit(w *work, in *instance) {
	if len(w.staged) == 0 {
		return
	}
	slices.SortStableFunc(w.staged, func(a, b staged) int { return cmpInt64(a.t, b.t) })
	for lo := 0; lo < len(w.staged); {
		hi := lo + 1
		for hi < len(w.staged) && w.staged[hi].t == w.staged[lo].t {
			hi++
		}
		r.publishBatch(w, in, w.staged[lo:hi])
		lo = hi
	}
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// publishBatch encodes and publishes one batch of points sharing a timestamp.
func (r *Receiver) publishBatch(w *work, in *instance, pts []staged) {
	end := pts[0].t
	start := int64(math.MaxInt64)
	for _, p := range pts {
		if p.start > 0 && p.start < start {
			start = p.start
		}
	}
	switch {
	case in.lastEnd > 0 && in.lastEnd < end:
		start = in.lastEnd
	case start >= end:
		start = end - 1
	}
	if end-start > proto.MaxInterval {
		start = end - proto.MaxInterval
	}
	if in.start == 0 {
		in.start = start
	}
	in.lastEnd = max(in.lastEnd, end)
	b := &w.batch
	b.Service, b.Version, b.Instance, b.InstanceStart = in.service, in.version, in.id, in.start
	b.Seq, b.Start, b.End, b.Final = in.seq, start, end, false
	in.seq++
	b.Series = b.Series[:0]
	clear(w.edgeIdx)
	points := 0
	for i := range pts {
		p := &pts[i]
		if !p.extra {
			points++
		}
		if p.s.Kind == 0 {
			continue
		}
		if p.edge {
			// Points of several client series (status codes, methods …) that name one
			// callee add up to one edge series.
			w.key = append(append(append(w.key[:0], p.s.Name...), 0xff), p.s.Labels[0].Value...)
			if j, ok := w.edgeIdx[string(w.key)]; ok {
				if p.s.Kind == proto.KindCounter {
					b.Series[j].Value += p.s.Value
				} else if !b.Series[j].Hist.Merge(&p.s.Hist) {
					r.unaccept(w, ReasonBadHistogram, 1, in, fmt.Errorf("%s: the edge's buckets exceed herd's range", clip(proto.SeriesString(p.s.Name, p.s.Labels))))
				}
				continue
			}
			w.edgeIdx[string(w.key)] = len(b.Series)
		}
		b.Series = append(b.Series, p.s)
	}
	var err error
	w.buf, err = w.enc.Append(w.buf[:0], b)
	if err != nil {
		r.unaccept(w, ReasonEncode, points, in, fmt.Errorf("cannot encode batch of %s/%s: %w", in.service, in.version, err))
		return
	}
	if err := r.publish(in.subject, w.buf); err != nil {
		r.unaccept(w, ReasonPublish, points, in, fmt.Errorf("cannot publish batch on %s: %w", in.subject, err))
		return
	}
	r.m.batches.Inc()
}

// unaccept turns n accepted points into refused ones.
func (r *Receiver) unaccept(w *work, reason string, n int, in *instance, err error) {
	w.res.Accepted -= int64(n)
	r.refuse(w, reason, n, in.service, err)
}
