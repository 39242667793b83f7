// Package mesh turns the request metrics a service-mesh proxy keeps about the traffic it
// serves into herd's RED series, so a meshed service needs no instrumentation of its own.
//
// A profile reads one proxy's exposition, as herd agent scrapes it from the pod's sidecar:
//   - Istio (Envoy sidecar, /stats/prometheus on port 15020 or 15090): istio_requests_total
//     and istio_request_duration_milliseconds with reporter="destination" (the sidecar of the
//     pod serving the request). Requests are every such response; errors those with a 5xx
//     response_code, or a gRPC status that means a server fault (UNKNOWN, DEADLINE_EXCEEDED,
//     INTERNAL, UNAVAILABLE, DATA_LOSS).
//   - Linkerd (linkerd-proxy, /metrics on port 4191): response_total and response_latency_ms
//     with direction="inbound". Requests are every response; errors those the proxy
//     classified as classification="failure".
//
// Both become requests_total, errors_total and latency_seconds (milliseconds divided by
// 1000), published without labels: the group (service, version) is the serving pod's. The
// proxy's other families are dropped (its own envoy_*, istio_* and process metrics);
// what an Istio sidecar merges in from the application is kept, except families named like
// herd's RED series, which the mesh's would otherwise double.
//
// Request flow (see proto.SeriesEdgeCalls). What the pod called, as its proxy saw it, becomes
// the pod's group's edges: Istio's reporter="source" series, whose destination is the callee
// (destination_canonical_service, else the first label of destination_service, else
// destination_service_name), and Linkerd's direction="outbound" ones (dst_service, else
// dst_deployment, else the first label of authority). Errors are classified as for the RED.
// What the pod served from each caller group, Istio's reporter="destination" series by
// source_canonical_service and source_canonical_revision (else source_app, source_version:
// the labels a Kubernetes deployment's group comes from), becomes its inbound RED by caller
// (proto.SeriesInboundRequests), which the detector's blast-radius test reads. Linkerd's
// inbound series name the caller's identity, not its version: they give no caller group.
// A Rewriter bounds the distinct callees and callers it publishes (DefaultMaxCallees,
// DefaultMaxCallers); further ones are published as proto.CalleeOther and
// proto.CallerUnknown and counted (Rewriter.Stats, herd_agent_mesh_series_other_total).
package mesh

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// Profile names a mesh whose proxy metrics are read. The zero value reads none.
type Profile string

// The profiles.
const (
	None    Profile = ""
	Istio   Profile = "istio"
	Linkerd Profile = "linkerd"
)

// Profiles lists the profiles that read a mesh.
var Profiles = []Profile{Istio, Linkerd}

// Parse returns the profile named s ("", "none", "istio" or "linkerd").
func Parse(s string) (Profile, error) {
	switch Profile(strings.ToLower(strings.TrimSpace(s))) {
	case None, "none":
		return None, nil
	case Istio:
		return Istio, nil
	case Linkerd:
		return Linkerd, nil
	}
	return None, fmt.Errorf("unknown mesh profile %q: want none, istio or linkerd", s)
}

// Bounds of one Rewriter: distinct callees of its edges and distinct caller groups of its
// inbound RED (ingest.DefaultMaxCallees and ingest.DefaultMaxCallers, the Go library's).
const (
	DefaultMaxCallees = 64
	DefaultMaxCallers = 64
)

// Rewriter returns a new rewriter of the profile (an ingest.Rewriter) for one scraped proxy,
// or nil for None.
func (p Profile) Rewriter() *Rewriter {
	if p == None {
		return nil
	}
	return &Rewriter{profile: p, callees: map[string]struct{}{}, callers: map[[2]string]struct{}{}}
}

// Rewriter rewrites one proxy's scrape into herd's RED, edge and inbound families. Its only
// state is the callees and callers it has published, which it bounds. Safe for concurrent
// use.
type Rewriter struct {
	profile Profile

	mu      sync.Mutex // Guards the fields below.
	callees map[string]struct{}
	callers map[[2]string]struct{}

	stats [numReasons]atomic.Uint64
	// counters, when set (WithMetrics), count the same into a metrics set; the Rewriters of
	// one agent share them.
	counters [numReasons]*metrics.Counter
}

// otherFamily counts the proxy series of all of an agent's Rewriters published under a
// stand-in callee or caller.
const otherFamily = "herd_agent_mesh_series_other_total"

// WithMetrics makes r count the series it publishes under proto.CalleeOther or
// proto.CallerUnknown in set as well, as herd_agent_mesh_series_other_total{reason} (shared
// by every Rewriter counting into set), and returns r. Call it before r is used.
func (r *Rewriter) WithMetrics(set *metrics.Set) *Rewriter {
	if r == nil || set == nil {
		return r
	}
	promhelp.Describe(map[string]string{otherFamily: "Mesh proxy series published under callee _other or caller _unknown, by reason: " +
		"too_many_callees and too_many_callers (over 64 per proxy), no_callee and no_caller (no label names a herd service, e.g. traffic leaving or entering the mesh)."})
	for i, reason := range reasonNames {
		r.counters[i] = set.GetOrCreateCounter(otherFamily + `{reason="` + reason + `"}`)
	}
	return r
}

// Reasons a proxy series is published under proto.CalleeOther or proto.CallerUnknown.
const (
	ReasonTooManyCallees = "too_many_callees" // over DefaultMaxCallees
	ReasonNoCallee       = "no_callee"        // no destination label names a herd service
	ReasonTooManyCallers = "too_many_callers" // over DefaultMaxCallers
	ReasonNoCaller       = "no_caller"        // no source label names a herd service (a caller outside the mesh)
	numReasons           = 4
)

var reasonNames = [numReasons]string{ReasonTooManyCallees, ReasonNoCallee, ReasonTooManyCallers, ReasonNoCaller}

// Stats returns how many proxy series were published under proto.CalleeOther or
// proto.CallerUnknown, by reason (only reasons that occurred).
func (r *Rewriter) Stats() map[string]uint64 {
	m := map[string]uint64{}
	for i := range r.stats {
		if n := r.stats[i].Load(); n > 0 {
			m[reasonNames[i]] = n
		}
	}
	return m
}

// Source names of the profiles.
const (
	istioRequests = "istio_requests_total"
	istioDuration = "istio_request_duration_milliseconds"
	lkdResponses  = "response_total"
	lkdLatency    = "response_latency_ms"
)

// Rewrite returns herd's RED families built from fams, followed by the families the profile
// keeps. Each RED metric keeps the labels of the proxy series it comes from, so the scraper
// keeps one baseline per proxy series; Publish then drops them.
func (r *Rewriter) Rewrite(fams []*dto.MetricFamily) []*dto.MetricFamily {
	fam := func(name string, t dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: ptr(name), Type: t.Enum()}
	}
	req := fam(proto.SeriesRequests, dto.MetricType_COUNTER)
	errs := fam(proto.SeriesErrors, dto.MetricType_COUNTER)
	lat := fam(proto.SeriesLatency, dto.MetricType_HISTOGRAM)
	calls := fam(proto.SeriesEdgeCalls, dto.MetricType_COUNTER)
	callErrs := fam(proto.SeriesEdgeErrors, dto.MetricType_COUNTER)
	callLat := fam(proto.SeriesEdgeLatency, dto.MetricType_HISTOGRAM)
	inReq := fam(proto.SeriesInboundRequests, dto.MetricType_COUNTER)
	inErrs := fam(proto.SeriesInboundErrors, dto.MetricType_COUNTER)
	out := []*dto.MetricFamily{req, errs, lat}
	for _, f := range fams {
		name := f.GetName()
		switch {
		case r.profile == Istio && name == istioRequests && f.GetType() == dto.MetricType_COUNTER:
			for _, m := range f.GetMetric() {
				switch label(m, "reporter") {
				case "destination":
					req.Metric = append(req.Metric, m)
					inReq.Metric = append(inReq.Metric, m)
					if istioError(m) {
						errs.Metric = append(errs.Metric, m)
						inErrs.Metric = append(inErrs.Metric, m)
					}
				case "source":
					calls.Metric = append(calls.Metric, m)
					if istioError(m) {
						callErrs.Metric = append(callErrs.Metric, m)
					}
				}
			}
		case r.profile == Istio && name == istioDuration && f.GetType() == dto.MetricType_HISTOGRAM:
			for _, m := range f.GetMetric() {
				switch label(m, "reporter") {
				case "destination":
					lat.Metric = append(lat.Metric, seconds(m))
				case "source":
					callLat.Metric = append(callLat.Metric, seconds(m))
				}
			}
		case r.profile == Linkerd && name == lkdResponses && f.GetType() == dto.MetricType_COUNTER:
			for _, m := range f.GetMetric() {
				dst, dstErrs := req, errs
				switch label(m, "direction") {
				case "inbound":
				case "outbound":
					dst, dstErrs = calls, callErrs
				default:
					continue
				}
				dst.Metric = append(dst.Metric, m)
				if label(m, "classification") == "failure" {
					dstErrs.Metric = append(dstErrs.Metric, m)
				}
			}
		case r.profile == Linkerd && name == lkdLatency && f.GetType() == dto.MetricType_HISTOGRAM:
			for _, m := range f.GetMetric() {
				switch label(m, "direction") {
				case "inbound":
					lat.Metric = append(lat.Metric, seconds(m))
				case "outbound":
					callLat.Metric = append(callLat.Metric, seconds(m))
				}
			}
		case r.keeps(name):
			out = append(out, f)
		}
	}
	// The request-flow families follow the kept ones, and only when they hold series.
	for _, f := range []*dto.MetricFamily{calls, callErrs, callLat, inReq, inErrs} {
		if len(f.Metric) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// keeps reports whether a family other than the proxy's request metrics passes through.
func (r *Rewriter) keeps(name string) bool {
	switch name {
	case proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency,
		proto.SeriesEdgeCalls, proto.SeriesEdgeErrors, proto.SeriesEdgeLatency,
		proto.SeriesInboundRequests, proto.SeriesInboundErrors:
		return false // the mesh's replace the application's own
	}
	if r.profile == Linkerd {
		return false // the Linkerd proxy's endpoint holds only the proxy's metrics
	}
	return !strings.HasPrefix(name, "envoy_") && !strings.HasPrefix(name, "istio_")
}

// Publish publishes herd's RED series without labels (the group is the pod's), the edges
// with their callee, the inbound RED with its caller group, and every other series as it is.
// The scraper calls it once per new proxy series, so a series keeps its callee or caller
// for its life.
func (r *Rewriter) Publish(name string, labels []proto.Label) []proto.Label {
	switch name {
	case proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency:
		return nil
	case proto.SeriesEdgeCalls, proto.SeriesEdgeErrors, proto.SeriesEdgeLatency:
		return proto.EdgeLabels(proto.EdgeKey{Callee: r.callee(labels)})
	case proto.SeriesInboundRequests, proto.SeriesInboundErrors:
		svc, ver := r.caller(labels)
		ls := []proto.Label{{Name: proto.LabelCaller, Value: svc}}
		if ver != "" {
			ls = append(ls, proto.Label{Name: proto.LabelCallerVersion, Value: ver})
		}
		return ls
	}
	return labels
}

// count counts one series published under a stand-in, by reason.
func (r *Rewriter) count(reason string) {
	for i, n := range reasonNames {
		if n == reason {
			r.stats[i].Add(1)
			if r.counters[i] != nil {
				r.counters[i].Inc()
			}
		}
	}
}

// callee returns the callee an outbound proxy series names, within the bound.
func (r *Rewriter) callee(labels []proto.Label) string {
	var c string
	if r.profile == Istio {
		c = firstService(labels, "destination_canonical_service", "destination_service", "destination_service_name")
	} else {
		c = firstService(labels, "dst_service", "dst_deployment", "authority")
	}
	if c == "" {
		r.count(ReasonNoCallee)
		return proto.CalleeOther
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.callees[c]; !ok {
		if len(r.callees) >= DefaultMaxCallees {
			r.count(ReasonTooManyCallees)
			return proto.CalleeOther
		}
		r.callees[c] = struct{}{}
	}
	return c
}

// caller returns the caller group an inbound proxy series names, within the bound.
func (r *Rewriter) caller(labels []proto.Label) (string, string) {
	svc := firstService(labels, "source_canonical_service", "source_app", "source_workload")
	if svc == "" {
		r.count(ReasonNoCaller)
		return proto.CallerUnknown, ""
	}
	ver := labelValue(labels, "source_canonical_revision")
	if ver == "" || ver == "latest" || ver == "unknown" { // Istio's defaults when no version label is set
		ver = labelValue(labels, "source_version")
	}
	if ver == "unknown" || proto.ValidVersion(ver) != nil {
		ver = ""
	}
	k := [2]string{svc, ver}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.callers[k]; !ok {
		if len(r.callers) >= DefaultMaxCallers {
			r.count(ReasonTooManyCallers)
			return proto.CallerUnknown, ""
		}
		r.callers[k] = struct{}{}
	}
	return svc, ver
}

// firstService returns the herd service the first of the keys set names: a host's first DNS
// label (without a port), lower-cased; "" if none is set or the value is Istio's "unknown" or
// no herd service name.
func firstService(labels []proto.Label, keys ...string) string {
	for _, k := range keys {
		v := labelValue(labels, k)
		if v == "" || v == "unknown" {
			continue
		}
		if h, _, err := net.SplitHostPort(v); err == nil {
			v = h
		}
		if i := strings.IndexByte(v, '.'); i > 0 && net.ParseIP(v) == nil {
			v = v[:i]
		}
		v = strings.ToLower(v)
		if proto.ValidService(v) != nil {
			return ""
		}
		return v
	}
	return ""
}

func labelValue(labels []proto.Label, name string) string {
	for _, l := range labels {
		if l.Name == name {
			return l.Value
		}
	}
	return ""
}

// grpcServerFaults are the gRPC status codes counted as errors: the server's fault, not the
// caller's (2 UNKNOWN, 4 DEADLINE_EXCEEDED, 13 INTERNAL, 14 UNAVAILABLE, 15 DATA_LOSS).
var grpcServerFaults = map[string]bool{"2": true, "4": true, "13": true, "14": true, "15": true}

// istioError reports whether an istio_requests_total series counts errors.
func istioError(m *dto.Metric) bool {
	code := label(m, "response_code")
	if len(code) == 3 && code[0] == '5' {
		return true
	}
	return grpcServerFaults[label(m, "grpc_response_status")]
}

// seconds returns a copy of a millisecond histogram metric in seconds.
func seconds(m *dto.Metric) *dto.Metric {
	h := m.GetHistogram()
	if h == nil {
		return m // the scraper counts it as bad_value
	}
	out := &dto.Histogram{
		SampleCount:      h.SampleCount,
		SampleCountFloat: h.SampleCountFloat,
		SampleSum:        ptr(h.GetSampleSum() / 1000),
		Bucket:           make([]*dto.Bucket, len(h.GetBucket())),
	}
	for i, b := range h.GetBucket() {
		out.Bucket[i] = &dto.Bucket{
			CumulativeCount:      b.CumulativeCount,
			CumulativeCountFloat: b.CumulativeCountFloat,
			UpperBound:           ptr(b.GetUpperBound() / 1000),
		}
	}
	return &dto.Metric{Label: m.Label, Histogram: out}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func ptr[T any](v T) *T { return &v }
