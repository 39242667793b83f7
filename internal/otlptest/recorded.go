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
