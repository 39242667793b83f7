package otlp

import (
	"net"
	"strings"
	"sync"
	"unicode/utf8"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/herd-dev/herd/proto"
)

// Edges from OpenTelemetry client metrics. A histogram of outbound call durations, named as
// OpenTelemetry's HTTP or RPC client conventions name it, becomes the request-flow edges of
// the caller group (the resource's service and version): for each data point, its callee
// (from the point's attributes) gets
//
//	herd_edge_calls_total{callee}      the point's observation count
//	herd_edge_errors_total{callee}     the same, when the point's status is the callee's fault
//	herd_edge_latency_seconds{callee}  the point's histogram, in seconds
//
// The client series themselves are not published: the edges carry what they hold. Each
// client series keeps its own cumulative state, like any series, so the edges are exact
// under both temporalities; the points of one timestamp that name one callee (several
// status codes, methods, ports) are summed into one edge series of the batch.

// edgeSource is one client convention whose duration histogram becomes edges.
type edgeSource struct {
	// unit is the length in seconds of one unit of the values, unless the metric's own
	// unit says otherwise.
	unit float64
	// callees are the attributes naming the callee, the first present wins; service marks
	// those that hold a logical service name rather than a host.
	callees []calleeAttr
	// status is the attribute holding the response status; grpc marks a gRPC status
	// (numeric, or its name), otherwise an HTTP status code.
	status string
	grpc   bool
}

// calleeAttr is one attribute that may name the callee.
type calleeAttr struct {
	key string
	// kind says how the value becomes a herd service: a host (its first DNS label), a
	// logical service name (lower-cased, other characters '-'), or an RPC method
	// "service/method" (its service part, as a logical name).
	kind calleeKind
}

type calleeKind int

const (
	calleeHost calleeKind = iota
	calleeService
	calleeMethod
)

// Metric names of the client conventions read as edges.
const (
	// MetricHTTPClientDuration is OpenTelemetry's HTTP client duration (semantic conventions
	// 1.23 and later, seconds).
	MetricHTTPClientDuration = "http.client.request.duration"
	// MetricHTTPClientDurationOld is the HTTP client duration before 1.23 (milliseconds).
	MetricHTTPClientDurationOld = "http.client.duration"
	// MetricRPCClientDuration is the RPC client duration of the experimental RPC
	// conventions (milliseconds).
	MetricRPCClientDuration = "rpc.client.duration"
	// MetricRPCClientCallDuration is the RPC client duration of the current RPC conventions
	// (seconds).
	MetricRPCClientCallDuration = "rpc.client.call.duration"
)

// edgeSources are the client conventions read as edges, by metric name.
var edgeSources = map[string]*edgeSource{
	MetricHTTPClientDuration: {unit: 1, status: "http.response.status_code",
		callees: []calleeAttr{{"server.address", calleeHost}}},
	MetricHTTPClientDurationOld: {unit: 0.001, status: "http.status_code",
		callees: []calleeAttr{{"net.peer.name", calleeHost}, {"server.address", calleeHost}}},
	MetricRPCClientDuration: {unit: 0.001, status: "rpc.grpc.status_code", grpc: true,
		callees: []calleeAttr{{"rpc.service", calleeService}, {"server.address", calleeHost}, {"net.peer.name", calleeHost}}},
	MetricRPCClientCallDuration: {unit: 1, status: "rpc.response.status_code", grpc: true,
		callees: []calleeAttr{{"rpc.service", calleeService}, {"rpc.method", calleeMethod}, {"server.address", calleeHost}}},
}

// sourcesFor returns edgeSources, with the RPC conventions' callee taken from the server's
// host (server.address, net.peer.name) rather than from rpc.service and rpc.method when
// byAddress is set.
func sourcesFor(byAddress bool) map[string]*edgeSource {
	if !byAddress {
		return edgeSources
	}
	out := make(map[string]*edgeSource, len(edgeSources))
	for name, src := range edgeSources {
		if src.grpc {
			c := *src
			c.callees = []calleeAttr{{"server.address", calleeHost}, {"net.peer.name", calleeHost}}
			src = &c
		}
		out[name] = src
	}
	return out
}

// Reasons a client point's calls are recorded under callee proto.CalleeOther
// (herd_otlp_edge_points_other_total{reason}).
const (
	EdgeReasonMissingCallee  = "missing_callee"   // none of the callee attributes is set
	EdgeReasonBadCallee      = "bad_callee"       // a callee that is no herd service name, even cleaned
	EdgeReasonTooManyCallees = "too_many_callees" // over Config.MaxCalleesPerGroup
)

var edgeReasons = []string{EdgeReasonMissingCallee, EdgeReasonBadCallee, EdgeReasonTooManyCallees}

// edgeOut is what a client series becomes: its edge's labels, whether its calls failed,
// and why its callee is proto.CalleeOther (empty: it is not).
type edgeOut struct {
	labels []proto.Label
	failed bool
	reason string
	unit   float64
}

// groupEdges bounds the distinct callees of one group. Instances of the group share it.
type groupEdges struct {
	refs int // instances holding it; the Receiver's mutex guards it

	mu      sync.Mutex // Guards callees.
	callees map[string]struct{}
}

// admit reports whether callee is one of the group's edges, admitting it while the group has
// fewer than limit.
func (g *groupEdges) admit(callee string, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.callees[callee]; ok {
		return true
	}
	if len(g.callees) >= limit {
		return false
	}
	if g.callees == nil {
		g.callees = map[string]struct{}{}
	}
	g.callees[callee] = struct{}{}
	return true
}

// edgeOf returns what a new client series of in with the given attributes becomes.
func (r *Receiver) edgeOf(in *instance, src *edgeSource, unit string, attrs pcommon.Map) *edgeOut {
	e := &edgeOut{unit: unitSeconds(unit, src.unit), failed: failedCall(src, attrs)}
	callee, reason := calleeOf(src, attrs)
	if reason == "" && callee != proto.CalleeOther && !in.edges.admit(callee, r.cfg.MaxCalleesPerGroup) {
		reason = EdgeReasonTooManyCallees
	}
	if reason != "" {
		callee = proto.CalleeOther
	}
	e.reason = reason
	e.labels = proto.EdgeLabels(proto.EdgeKey{Callee: callee})
	return e
}

// unitSeconds returns the seconds per unit of a metric's UCUM unit, or def for another or
// no unit.
func unitSeconds(unit string, def float64) float64 {
	switch unit {
	case "s":
		return 1
	case "ms":
		return 0.001
	case "us":
		return 1e-6
	case "ns":
		return 1e-9
	}
	return def
}

// calleeOf returns the herd service a client point's attributes name as its callee, or a
// reason it names none.
func calleeOf(src *edgeSource, attrs pcommon.Map) (string, string) {
	for _, ca := range src.callees {
		v, ok := attrs.Get(ca.key)
		if !ok || v.AsString() == "" {
			continue
		}
		s := v.AsString()
		switch ca.kind {
		case calleeHost:
			s = hostService(s)
		case calleeMethod:
			i := strings.LastIndexByte(s, '/')
			if i <= 0 {
				continue // no service part
			}
			s = serviceToken(s[:i])
		default:
			s = serviceToken(s)
		}
		if proto.ValidService(s) != nil {
			return "", EdgeReasonBadCallee
		}
		return s, ""
	}
	return "", EdgeReasonMissingCallee
}

// hostService returns the herd service a host names: the first DNS label of a name, lower
// cased, without the port ("payments" for payments.shop.svc.cluster.local:8080, as herd's
// RoundTripper names its callees), or an IP address with '.' and ':' made '-'.
func hostService(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if net.ParseIP(host) == nil {
		if i := strings.IndexByte(host, '.'); i > 0 {
			host = host[:i]
		}
	}
	return serviceToken(host)
}

// serviceToken lower-cases s and makes '-' of every character a service token cannot hold,
// as the receiver does with service.name ("myshop.Payments" → "myshop-payments").
func serviceToken(s string) string {
	if len(s) > proto.MaxServiceLen || !utf8.ValidString(s) {
		return ""
	}
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}

// grpcCalleeFaults are the gRPC status codes, by number and by name, that count as a failed
// call: the callee's fault, as OpenTelemetry's gRPC conventions classify server errors
// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Codes that
// are the caller's business (NOT_FOUND, INVALID_ARGUMENT, CANCELLED …) do not, as a 4xx does
// not for HTTP.
var grpcCalleeFaults = map[string]bool{
	"2": true, "4": true, "12": true, "13": true, "14": true, "15": true,
	"UNKNOWN": true, "DEADLINE_EXCEEDED": true, "UNIMPLEMENTED": true, "INTERNAL": true,
	"UNAVAILABLE": true, "DATA_LOSS": true,
}

// failedCall reports whether a client point's calls failed: a 5xx HTTP status, a gRPC status
// that is the callee's fault, or an error.type without any status (the call ended before a
// response: connection refused, timeout).
func failedCall(src *edgeSource, attrs pcommon.Map) bool {
	st, ok := attrs.Get(src.status)
	if !ok || st.AsString() == "" {
		et, ok := attrs.Get("error.type")
		return ok && et.AsString() != ""
	}
	code := st.AsString()
	if src.grpc {
		return grpcCalleeFaults[code]
	}
	return len(code) == 3 && code[0] == '5'
}
