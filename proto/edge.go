package proto

// Request flow. An edge is (caller service, caller version) → callee service, with at most
// one bounded operation label: the caller's view of its calls. Edges travel in the caller
// group's batches and windows as ordinary labelled series, so the rollup merges them like
// any series (exactly, under churn) and its per-group series limits bound them:
//
//	herd_edge_calls_total{callee="payments"}          counter: calls made
//	herd_edge_errors_total{callee="payments"}         counter: calls that failed
//	herd_edge_latency_seconds{callee="payments"}      histogram: call latency
//
// The callee's side of the same calls, split by caller group, travels in the callee's
// windows (inbound RED by caller):
//
//	herd_inbound_requests_total{caller="checkout",caller_version="1.5.0"}
//	herd_inbound_errors_total{caller="checkout",caller_version="1.5.0"}
const (
	SeriesEdgeCalls       = "herd_edge_calls_total"
	SeriesEdgeErrors      = "herd_edge_errors_total"
	SeriesEdgeLatency     = "herd_edge_latency_seconds"
	SeriesInboundRequests = "herd_inbound_requests_total"
	SeriesInboundErrors   = "herd_inbound_errors_total"
)

// Label names of the edge and inbound series.
const (
	LabelCallee        = "callee"
	LabelOperation     = "operation"
	LabelCaller        = "caller"
	LabelCallerVersion = "caller_version"
)

// W3C baggage keys the client side of herd's library adds to outbound requests so that the
// callee's server side can split its inbound RED by caller group (baggage passes through
// proxies that keep unknown headers).
const (
	BaggageCaller        = "herd.caller"
	BaggageCallerVersion = "herd.caller_version"
)

// CalleeOther is the callee that stands in for every callee beyond a client's bound of
// distinct callees, and CallerUnknown the caller of inbound requests that carry no valid
// herd baggage (or come from callers beyond the bound).
const (
	CalleeOther   = "_other"
	CallerUnknown = "_unknown"
)

// EdgeKey identifies one outbound edge of a group: the callee and the optional operation.
type EdgeKey struct {
	Callee    string `json:"callee"`
	Operation string `json:"operation,omitempty"`
}

// String returns "callee" or "callee operation".
func (k EdgeKey) String() string {
	if k.Operation == "" {
		return k.Callee
	}
	return k.Callee + " " + k.Operation
}

// EdgeLabels returns the sorted labels of an edge series.
func EdgeLabels(k EdgeKey) []Label {
	ls := []Label{{Name: LabelCallee, Value: k.Callee}}
	if k.Operation != "" {
		ls = append(ls, Label{Name: LabelOperation, Value: k.Operation})
	}
	return ls
}

// EdgeOf reports the edge a series name and labels describe: ok is false unless name is one
// of the edge series and the labels are a callee and at most an operation.
func EdgeOf(name string, labels []Label) (k EdgeKey, ok bool) {
	switch name {
	case SeriesEdgeCalls, SeriesEdgeErrors, SeriesEdgeLatency:
	default:
		return EdgeKey{}, false
	}
	for _, l := range labels {
		switch l.Name {
		case LabelCallee:
			k.Callee = l.Value
		case LabelOperation:
			k.Operation = l.Value
		default:
			return EdgeKey{}, false
		}
	}
	return k, k.Callee != ""
}

// CallerOf reports the caller group an inbound series names (see SeriesInboundRequests).
func CallerOf(name string, labels []Label) (service, version string, ok bool) {
	if name != SeriesInboundRequests && name != SeriesInboundErrors {
		return "", "", false
	}
	for _, l := range labels {
		switch l.Name {
		case LabelCaller:
			service = l.Value
		case LabelCallerVersion:
			version = l.Value
		default:
			return "", "", false
		}
	}
	return service, version, service != ""
}
