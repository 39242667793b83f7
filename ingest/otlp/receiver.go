package otlp

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
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
