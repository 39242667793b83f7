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
package mesh

import (
	"fmt"
	"strings"

	"github.com/herd-dev/herd/proto"
	dto "github.com/prometheus/client_model/go"
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

// Rewriter returns the profile's rewriter (an ingest.Rewriter), or nil for None.
func (p Profile) Rewriter() *Rewriter {
	if p == None {
		return nil
	}
	return &Rewriter{profile: p}
}

// Rewriter rewrites one proxy's scrape into herd's RED families. It keeps no state and is
// safe for concurrent use.
type Rewriter struct {
	profile Profile
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
	req := &dto.MetricFamily{Name: ptr(proto.SeriesRequests), Type: dto.MetricType_COUNTER.Enum()}
	errs := &dto.MetricFamily{Name: ptr(proto.SeriesErrors), Type: dto.MetricType_COUNTER.Enum()}
	lat := &dto.MetricFamily{Name: ptr(proto.SeriesLatency), Type: dto.MetricType_HISTOGRAM.Enum()}
	out := []*dto.MetricFamily{req, errs, lat}
	for _, f := range fams {
		name := f.GetName()
		switch {
		case r.profile == Istio && name == istioRequests && f.GetType() == dto.MetricType_COUNTER:
			for _, m := range f.GetMetric() {
				if label(m, "reporter") != "destination" {
					continue
				}
				req.Metric = append(req.Metric, m)
				if istioError(m) {
					errs.Metric = append(errs.Metric, m)
				}
			}
		case r.profile == Istio && name == istioDuration && f.GetType() == dto.MetricType_HISTOGRAM:
			for _, m := range f.GetMetric() {
				if label(m, "reporter") == "destination" {
					lat.Metric = append(lat.Metric, seconds(m))
				}
			}
		case r.profile == Linkerd && name == lkdResponses && f.GetType() == dto.MetricType_COUNTER:
			for _, m := range f.GetMetric() {
				if label(m, "direction") != "inbound" {
					continue
				}
				req.Metric = append(req.Metric, m)
				if label(m, "classification") == "failure" {
					errs.Metric = append(errs.Metric, m)
				}
			}
		case r.profile == Linkerd && name == lkdLatency && f.GetType() == dto.MetricType_HISTOGRAM:
			for _, m := range f.GetMetric() {
				if label(m, "direction") == "inbound" {
					lat.Metric = append(lat.Metric, seconds(m))
				}
			}
		case r.keeps(name):
			out = append(out, f)
		}
	}
	return out
}

// keeps reports whether a family other than the proxy's request metrics passes through.
func (r *Rewriter) keeps(name string) bool {
	switch name {
	case proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency:
		return false // the mesh's RED replaces the application's own
	}
	if r.profile == Linkerd {
		return false // the Linkerd proxy's endpoint holds only the proxy's metrics
	}
	return !strings.HasPrefix(name, "envoy_") && !strings.HasPrefix(name, "istio_")
}

// Publish publishes herd's RED series without labels (the group is the pod's) and every
// other series as it is.
func (r *Rewriter) Publish(name string, labels []proto.Label) []proto.Label {
	switch name {
	case proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency:
		return nil
	}
	return labels
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
