package otlp

import (
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// Refusal reasons of whole requests (herd_otlp_requests_refused_total{reason}).
const (
	ReasonUnauthorized = "unauthorized"           // no or a wrong bearer token; without a token, not from loopback
	ReasonConnections  = "too_many_connections"   // a connection over Config.MaxConns, closed at once
	ReasonMediaType    = "unsupported_media_type" // neither application/x-protobuf nor application/json
	ReasonBadRequest   = "bad_request"            // another method or path, or an unreadable body
	ReasonOversized    = "oversized"              // over Config.MaxRequestBytes
	ReasonMalformed    = "malformed"              // not a decodable ExportMetricsServiceRequest
)

// Refusal reasons of data points (herd_otlp_points_refused_total{reason}).
const (
	ReasonMissingService   = "missing_service"    // no service attribute, or the SDK's unknown_service default
	ReasonBadService       = "bad_service"        // a service name that is no herd service token, even lower-cased
	ReasonMissingVersion   = "missing_version"    // no version attribute
	ReasonBadVersion       = "bad_version"        // a version that is not 1–64 bytes of printable ASCII
	ReasonBadAttributes    = "bad_attributes"     // a data point attribute herd cannot take as a label
	ReasonTooManyInstances = "too_many_instances" // over Config.MaxInstances or MaxInstancesPerService
	ReasonTooManySeries    = "too_many_series"    // over Config.MaxSeriesPerInstance
	ReasonKindConflict     = "kind_conflict"      // one series sent as two kinds or temporalities
	ReasonOutOfOrder       = "out_of_order"       // a point older than its series' previous one
	ReasonUnsupportedType  = "unsupported_type"   // summaries and non-monotonic delta sums
	ReasonBadValue         = "bad_value"          // NaN, ±Inf or a negative counter
	ReasonBadHistogram     = "bad_histogram"      // counts that do not add up, bad bounds or scale, too wide
	ReasonBadTimestamp     = "bad_timestamp"      // a point without a timestamp
	ReasonEncode           = "encode"             // the batch exceeds herd's batch limits (proto.Encoder)
	ReasonPublish          = "publish"            // NATS did not take the batch
)

var requestReasons = []string{ReasonUnauthorized, ReasonConnections, ReasonMediaType, ReasonBadRequest, ReasonOversized, ReasonMalformed}

var pointReasons = []string{ReasonMissingService, ReasonBadService, ReasonMissingVersion, ReasonBadVersion,
	ReasonBadAttributes, ReasonTooManyInstances, ReasonTooManySeries, ReasonKindConflict, ReasonOutOfOrder,
	ReasonUnsupportedType, ReasonBadValue, ReasonBadHistogram, ReasonBadTimestamp, ReasonEncode, ReasonPublish}

// otlpHelp describes the receiver's families.
var otlpHelp = map[string]string{
	"herd_otlp_requests_total":         "OTLP export requests received, by transport (http or grpc), good or refused.",
	"herd_otlp_requests_refused_total": "OTLP export requests refused whole, by reason: unauthorized, too_many_connections (a connection closed at once), unsupported_media_type, bad_request, oversized or malformed.",
	"herd_otlp_points_total":           "OTLP data points taken into herd batches.",
	"herd_otlp_points_refused_total": "OTLP data points refused (answered as rejected_data_points), by reason: missing_service, bad_service, " +
		"missing_version, bad_version, bad_attributes, too_many_instances, too_many_series, kind_conflict, out_of_order, " +
		"unsupported_type, bad_value, bad_histogram, bad_timestamp, encode or publish.",
	"herd_otlp_batches_total":        "Batches the OTLP receiver published on herd.in.<service>.<version>.",
	"herd_otlp_counter_resets_total": "Cumulative OTLP series that went back (a restart or a new start time); the new value is taken as the delta.",
	"herd_otlp_instances":            "Instances whose state the OTLP receiver keeps.",
	"herd_otlp_edge_points_other_total": "OTLP client-metric points (http.client.request.duration, rpc.client.duration …) whose calls were recorded under callee _other, by reason: " +
		"missing_callee (no callee attribute), bad_callee (no herd service name even cleaned) or too_many_callees (over -otlp.max-callees-per-group).",
}

// recvMetrics are a Receiver's self-metrics. Safe for concurrent use.
type recvMetrics struct {
	requests       map[string]*metrics.Counter // by transport
	requestRefused map[string]*metrics.Counter
	points         *metrics.Counter
	pointRefused   map[string]*metrics.Counter
	batches        *metrics.Counter
	resets         *metrics.Counter
	edgeOther      map[string]*metrics.Counter // by reason

	logMu      sync.Mutex // Guards the fields below.
	lastLog    time.Time
	suppressed int
}

func newRecvMetrics(set *metrics.Set, instances func() float64) *recvMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(otlpHelp)
	m := &recvMetrics{
		requests:       map[string]*metrics.Counter{},
		requestRefused: map[string]*metrics.Counter{},
		pointRefused:   map[string]*metrics.Counter{},
		edgeOther:      map[string]*metrics.Counter{},
		points:         set.NewCounter("herd_otlp_points_total"),
		batches:        set.NewCounter("herd_otlp_batches_total"),
		resets:         set.NewCounter("herd_otlp_counter_resets_total"),
	}
	for _, t := range []string{"http", "grpc"} {
		m.requests[t] = set.NewCounter(`herd_otlp_requests_total{transport="` + t + `"}`)
	}
	for _, r := range requestReasons {
		m.requestRefused[r] = set.NewCounter(`herd_otlp_requests_refused_total{reason="` + r + `"}`)
	}
	for _, r := range pointReasons {
		m.pointRefused[r] = set.NewCounter(`herd_otlp_points_refused_total{reason="` + r + `"}`)
	}
	for _, r := range edgeReasons {
		m.edgeOther[r] = set.NewCounter(`herd_otlp_edge_points_other_total{reason="` + r + `"}`)
	}
	set.NewGauge("herd_otlp_instances", instances)
	return m
}

// Stats are a Receiver's totals.
type Stats struct {
	Points          uint64            // data points taken
	PointsRefused   map[string]uint64 // data points refused, by reason
	RequestsRefused map[string]uint64 // requests refused whole, by reason
	Batches         uint64            // batches published
	Resets          uint64            // cumulative series that went back
	// EdgesOther counts client-metric points recorded under callee proto.CalleeOther, by
	// reason (EdgeReasonTooManyCallees, …).
	EdgesOther map[string]uint64
}

func (m *recvMetrics) stats() Stats {
	st := Stats{Points: m.points.Get(), Batches: m.batches.Get(), Resets: m.resets.Get(),
		PointsRefused: map[string]uint64{}, RequestsRefused: map[string]uint64{}, EdgesOther: map[string]uint64{}}
	for r, c := range m.edgeOther {
		if n := c.Get(); n > 0 {
			st.EdgesOther[r] = n
		}
	}
	for r, c := range m.pointRefused {
		if n := c.Get(); n > 0 {
			st.PointsRefused[r] = n
		}
	}
	for r, c := range m.requestRefused {
		if n := c.Get(); n > 0 {
			st.RequestsRefused[r] = n
		}
	}
	return st
}

// logEvery is the least time between two refusal log lines.
const logEvery = 10 * time.Second

// shouldLog reports whether a refusal may be logged now, and how many were not logged
// since the last line.
func (m *recvMetrics) shouldLog(now time.Time) (bool, int) {
	m.logMu.Lock()
	defer m.logMu.Unlock()
	if !m.lastLog.IsZero() && now.Sub(m.lastLog) < logEvery {
		m.suppressed++
		return false, 0
	}
	n := m.suppressed
	m.lastLog, m.suppressed = now, 0
	return true, n
}
