package otlptest

import (
	"fmt"
	"maps"
	"sync"

	"github.com/herd-dev/herd/proto"
)

// Recorded totals what test services recorded (Instance.Serve calls), per version and per
// series as herd's windows name it (proto.SeriesString). Safe for concurrent use.
type Recorded struct {
	mu   sync.Mutex
	sums map[string]map[string]float64
}

// Add counts one request of version answered with code: one in Requests and one observation
// in Duration and SemconvDuration, each under its status code.
func (r *Recorded) Add(version string, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sums == nil {
		r.sums = map[string]map[string]float64{}
	}
	m := r.sums[version]
	if m == nil {
		m = map[string]float64{}
		r.sums[version] = m
	}
	c := fmt.Sprint(code)
	m[proto.SeriesString(Requests, []proto.Label{{Name: StatusCode, Value: c}})]++
	m[proto.SeriesString(Duration, []proto.Label{{Name: StatusCode, Value: c}})]++
	m[proto.SeriesString(SemconvDuration, []proto.Label{{Name: "http.response.status_code", Value: c}})]++
}

// Sums returns a copy of the totals by version, then series.
func (r *Recorded) Sums() map[string]map[string]float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]float64, len(r.sums))
	for v, m := range r.sums {
		out[v] = maps.Clone(m)
	}
	return out
}

// AddSemconv counts one request of version answered with code by an instance in SemconvOnly
// mode: one observation of SemconvDuration with its status code, Route and Method.
func (r *Recorded) AddSemconv(version string, code int) {
	r.add(version, proto.SeriesString(SemconvDuration, []proto.Label{{Name: "http.request.method", Value: Method},
		{Name: "http.response.status_code", Value: fmt.Sprint(code)}, {Name: "http.route", Value: Route}}))
}

// AddCall counts one outbound call of version to callee as herd's edges name it (Call's and
// RPC's callee is the first label of their server.address, or the rpc.service lower-cased):
// one call, one latency observation, and one error if failed.
func (r *Recorded) AddCall(version, callee string, failed bool) {
	ls := proto.EdgeLabels(proto.EdgeKey{Callee: callee})
	r.add(version, proto.SeriesString(proto.SeriesEdgeCalls, ls))
	r.add(version, proto.SeriesString(proto.SeriesEdgeLatency, ls))
	if failed {
		r.add(version, proto.SeriesString(proto.SeriesEdgeErrors, ls))
	}
}

// add counts one in series of version.
func (r *Recorded) add(version, series string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sums == nil {
		r.sums = map[string]map[string]float64{}
	}
	m := r.sums[version]
	if m == nil {
		m = map[string]float64{}
		r.sums[version] = m
	}
	m[series]++
}
