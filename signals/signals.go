// Package signals is the one definition of a service's signals — requests, errors and
// latency — that the detector, the dashboard, the API and `herd tail` all read. A service's
// definition comes from the detector's policy file (its selectors, or a profile it names), or
// else from the built-in profile that the series the service actually sends recognise:
// herd's own names, the Prometheus client conventions, OpenTelemetry's HTTP and RPC semantic
// conventions (as sent over OTLP and as exported to Prometheus), and Istio's standard
// metrics. See docs/dashboard.md, "Signals and profiles".
//
// The package imports only proto: alert and web import it, and neither imports the other.
package signals

import (
	"fmt"
	"slices"
	"strings"

	"github.com/herd-dev/herd/proto"
)

// ProfilePolicy names a definition that the policy file's selectors give.
const ProfilePolicy = "policy"

// Definition is a service's signals: which series count requests and errors and which
// histogram holds the latency. A Definition is immutable and safe for concurrent use.
type Definition struct {
	// Profile names where the definition comes from: a built-in profile (see Profiles) or
	// ProfilePolicy.
	Profile string
	// Requests and Errors sum counters, and the observation counts of histograms; Latency
	// merges histograms.
	Requests, Errors, Latency *Selector
	// LatencyUnit is the length in seconds of one unit of the latency histogram's values:
	// 1 for seconds, 0.001 for milliseconds. Read converts to seconds.
	LatencyUnit float64
	// Doc says in a few words which convention the profile is.
	Doc string

	// marker selects the series whose presence in a window chooses the profile.
	marker *Selector
	// rank is the profile's place in Profiles (lower is preferred); pinned definitions
	// (policy) have rank -1 and never change.
	rank int
}

// Pinned reports whether d was fixed by a policy rather than detected.
func (d *Definition) Pinned() bool { return d.rank < 0 }

// SeriesNames returns the names of the series d reads, sorted and unique.
func (d *Definition) SeriesNames() []string {
	names := []string{d.Requests.Name, d.Errors.Name, d.Latency.Name}
	slices.Sort(names)
	return slices.Compact(names)
}

// String describes d in one line, e.g. `prometheus: requests http_requests_total, …`.
func (d *Definition) String() string {
	return fmt.Sprintf("%s: requests %s, errors %s, latency %s", d.Profile, d.Requests, d.Errors, d.Latency)
}

// profile builds a built-in profile; marker "" means the requests selector.
func profile(name, doc, requests, errors, latency string, unit float64, marker string) *Definition {
	d := &Definition{Profile: name, Doc: doc, Requests: MustSelector(requests), Errors: MustSelector(errors),
		Latency: MustSelector(latency), LatencyUnit: unit}
	d.marker = d.Requests
	if marker != "" {
		d.marker = MustSelector(marker)
	}
	return d
}

// grpcServerErrors are the gRPC status codes that count as the server's errors: UNKNOWN,
// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS (as OpenTelemetry's
// RPC conventions classify them); grpcServerErrorNames the same by name, as the current RPC
// conventions' rpc.response.status_code holds them.
const (
	grpcServerErrors     = `2|4|12|13|14|15`
	grpcServerErrorNames = `UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS`
)

// profiles are the built-in profiles, most preferred first. Their names are stable: the API,
// the dashboard and policy files use them.
var profiles = []*Definition{
	profile("herd", "herd's own names (the agent library's RED helper)",
		proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency, 1, ""),
	profile("prometheus", "Prometheus client libraries: http_requests_total{code}, http_request_duration_seconds",
		`http_requests_total`, `http_requests_total{code=~"5.."}`, `http_request_duration_seconds`, 1,
		`http_requests_total{code!=""}`),
	profile("prometheus-status", "Prometheus client libraries with a status label: http_requests_total{status}",
		`http_requests_total`, `http_requests_total{status=~"5.."}`, `http_request_duration_seconds`, 1,
		`http_requests_total{status!=""}`),
	profile("otel-http", "OpenTelemetry HTTP server conventions: http.server.request.duration",
		`http.server.request.duration`, `http.server.request.duration{http.response.status_code=~"5.."}`,
		`http.server.request.duration`, 1, ""),
	profile("otel-http-prometheus", "OpenTelemetry HTTP server conventions exported to Prometheus: http_server_request_duration_seconds",
		`http_server_request_duration_seconds`, `http_server_request_duration_seconds{http_response_status_code=~"5.."}`,
		`http_server_request_duration_seconds`, 1, ""),
	profile("otel-http-old", "OpenTelemetry HTTP server conventions before 1.23: http.server.duration in ms",
		`http.server.duration`, `http.server.duration{http.status_code=~"5.."}`, `http.server.duration`, 0.001, ""),
	profile("otel-http-old-prometheus", "OpenTelemetry HTTP server conventions before 1.23 exported to Prometheus: http_server_duration_milliseconds",
		`http_server_duration_milliseconds`, `http_server_duration_milliseconds{http_status_code=~"5.."}`,
		`http_server_duration_milliseconds`, 0.001, ""),
	profile("otel-rpc", "OpenTelemetry RPC server conventions: rpc.server.duration in ms",
		`rpc.server.duration`, `rpc.server.duration{rpc.grpc.status_code=~"`+grpcServerErrors+`"}`,
		`rpc.server.duration`, 0.001, ""),
	profile("otel-rpc-prometheus", "OpenTelemetry RPC server conventions exported to Prometheus: rpc_server_duration_milliseconds",
		`rpc_server_duration_milliseconds`, `rpc_server_duration_milliseconds{rpc_grpc_status_code=~"`+grpcServerErrors+`"}`,
		`rpc_server_duration_milliseconds`, 0.001, ""),
	profile("otel-rpc-call", "OpenTelemetry's current RPC server conventions: rpc.server.call.duration in s, rpc.response.status_code",
		`rpc.server.call.duration`, `rpc.server.call.duration{rpc.response.status_code=~"`+grpcServerErrorNames+`|`+grpcServerErrors+`"}`,
		`rpc.server.call.duration`, 1, ""),
	profile("istio", "Istio/Envoy standard metrics, as the destination reports them: istio_requests_total{response_code}",
		`istio_requests_total{reporter!="source"}`, `istio_requests_total{reporter!="source",response_code=~"5.."}`,
		`istio_request_duration_milliseconds{reporter!="source"}`, 0.001, ""),
}

// byMarker indexes profiles by their marker's metric name.
var byMarker = func() map[string][]*Definition {
	m := map[string][]*Definition{}
	for i, p := range profiles {
		p.rank = i
		m[p.marker.Name] = append(m[p.marker.Name], p)
	}
	return m
}()

// undetected reads herd's own names for a service none of whose windows has carried a
// profile's series yet; any profile replaces it.
var undetected = func() *Definition {
	d := *profiles[0]
	d.rank = len(profiles)
	return &d
}()

// Profiles returns the built-in profiles, most preferred first.
func Profiles() []*Definition { return slices.Clone(profiles) }

// Profile returns the built-in profile named name, or nil.
func Profile(name string) *Definition {
	for _, p := range profiles {
		if p.Profile == name {
			return p
		}
	}
	return nil
}

// ProfileNames returns the names of the built-in profiles, most preferred first.
func ProfileNames() []string {
	names := make([]string, len(profiles))
	for i, p := range profiles {
		names[i] = p.Profile
	}
	return names
}

// Default is the definition a service has before any of its windows carried a profile's
// series, and the one a policy's missing selectors fall back to: herd's own names.
func Default() *Definition { return undetected }

// SeriesNames returns the names of every series the built-in profiles read, sorted and
// unique: the rollup splits them into warm and young instances.
func SeriesNames() []string {
	var names []string
	for _, p := range profiles {
		names = append(names, p.SeriesNames()...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Pin returns a definition fixed by a policy: base (Default when nil) with the selectors
// given (non-empty) in place of its own. unit is the latency histogram's unit in seconds
// when latency is given (0 means seconds). The result is pinned: detection never changes it.
func Pin(base *Definition, requests, errors, latency string, unit float64) (*Definition, error) {
	if base == nil {
		base = undetected
	}
	if unit < 0 || unit > 1e6 || unit != unit {
		return nil, fmt.Errorf("bad latency unit %g: want seconds per unit, > 0", unit)
	}
	d := *base
	d.rank, d.marker = -1, nil
	changed := false
	for _, r := range []struct {
		text  string
		dst   **Selector
		field string
	}{{requests, &d.Requests, "requests"}, {errors, &d.Errors, "errors"}, {latency, &d.Latency, "latency"}} {
		if r.text == "" {
			continue
		}
		sel, err := ParseSelector(r.text)
		if err != nil {
			return nil, fmt.Errorf("bad %s: %w", r.field, err)
		}
		*r.dst = sel
		changed = true
	}
	if latency != "" {
		d.LatencyUnit = 1
		if unit > 0 {
			d.LatencyUnit = unit
		}
	}
	if changed {
		d.Profile = ProfilePolicy
		d.Doc = "selectors of the policy file"
	}
	return &d, nil
}

// Choice is one service's definition as its windows arrive: pinned by a policy, or the most
// preferred built-in profile whose marker series any window of the service has carried
// (Default until one has). The choice moves only to a more preferred profile, so a service
// whose groups send different conventions settles on one rather than flipping per window.
//
// The zero Choice detects. A Choice is not safe for concurrent use: its owner serializes.
type Choice struct {
	def *Definition
}

// NewChoice returns a Choice that starts from pinned (nil: detect).
func NewChoice(pinned *Definition) Choice { return Choice{def: pinned} }

// Definition returns the current definition (Default while nothing is detected).
func (c *Choice) Definition() *Definition {
	if c.def == nil {
		return undetected
	}
	return c.def
}

// Detected reports whether the definition is pinned or a detected profile.
func (c *Choice) Detected() bool { return c.def != nil }

// Observe looks for more preferred profiles' markers among the series of one window and
// reports whether the definition changed.
func (c *Choice) Observe(ss []proto.WindowSeries) bool {
	cur := c.Definition()
	if cur.rank <= 0 {
		return false // pinned, or already the most preferred profile
	}
	best := cur
	for i := range ss {
		ws := &ss[i]
		for _, p := range byMarker[ws.Name] {
			if p.rank < best.rank && p.marker.Matches(ws.Name, ws.Labels) {
				best = p
			}
		}
	}
	if best == cur {
		return false
	}
	c.def = best
	return true
}

// Values are one window's signals under a definition. Latency is in seconds.
type Values struct {
	Requests, Errors float64
	// HasLatency reports whether any latency histogram was selected.
	HasLatency bool
	Latency    proto.Histogram
	// One is the only latency series selected, when exactly one was (nil otherwise): a
	// reader in seconds may take its precomputed quantiles. It points into the series read.
	One *proto.WindowSeries
	// Skipped counts selected series of the wrong kind (see Selector.Sum, Selector.Merge).
	Skipped int
}

// Read sets v to the signals of the series ss under d, converting the latency to seconds.
// It reuses v's memory.
func (d *Definition) Read(ss []proto.WindowSeries, v *Values) {
	var b int
	v.Requests, v.Skipped = d.Requests.Sum(ss)
	v.Errors, b = d.Errors.Sum(ss)
	v.Skipped += b
	v.HasLatency, b = d.Latency.Merge(ss, &v.Latency)
	v.Skipped += b
	v.One = nil
	if v.HasLatency && b == 0 {
		for i := range ss {
			if d.Latency.Matches(ss[i].Name, ss[i].Labels) {
				if v.One != nil {
					v.One = nil
					break
				}
				v.One = &ss[i]
			}
		}
	}
	if v.HasLatency && d.LatencyUnit != 1 && d.LatencyUnit > 0 {
		ToSeconds(&v.Latency, d.LatencyUnit)
	}
}

// ToSeconds rescales h, whose values are in units of unit seconds, to seconds. Each bucket's
// count moves to the bucket holding its representative value times unit: the mapping is
// monotone, so counts above any bucket edge stay exact with respect to the mapped edge
// (what the detector's latency tests count), and quantiles keep herd's relative accuracy
// within one bucket.
func ToSeconds(h *proto.Histogram, unit float64) {
	if unit == 1 || len(h.Positive.Counts) == 0 && len(h.Negative.Counts) == 0 {
		h.Sum *= unit
		return
	}
	var out proto.Histogram
	out.ZeroCount = h.ZeroCount
	for _, side := range []struct {
		src  *proto.Buckets
		sign float64
	}{{&h.Positive, 1}, {&h.Negative, -1}} {
		for k, n := range side.src.Counts {
			if n == 0 {
				continue
			}
			v := side.sign * proto.BucketValue(int(side.src.Offset)+k) * unit
			if !out.Observe(v, n) {
				out.ZeroCount += n // beyond the bucket bounds: cannot happen for unit ≤ 1
				out.Count += n
			}
		}
	}
	out.Count = h.Count
	out.Sum = h.Sum * unit
	h.CopyFrom(&out)
}

// Describe returns the list of profiles for help texts: "name: doc" lines.
func Describe() string {
	var b strings.Builder
	for _, p := range profiles {
		fmt.Fprintf(&b, "%s: %s\n", p.Profile, p.Doc)
	}
	return b.String()
}
