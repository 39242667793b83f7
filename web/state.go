package web

import (
	"container/list"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// point is the compact summary of one closed window that the ring buffers keep and the
// dashboard charts. Latencies are in seconds; Requests and Errors are counts in the window.
type point struct {
	EndMs     int64
	ClosedMs  int64
	Instances int32
	Started   int32
	Stopped   int32
	Requests  float64
	Errors    float64
	P50       float64
	P90       float64
	P99       float64
}

// pointFields names the elements of a point's JSON array form, in order.
var pointFields = []string{"end_unix_ms", "instances", "started", "stopped", "requests", "errors", "p50", "p90", "p99", "closed_unix_ms"}

// appendJSON appends p as the JSON array [end, instances, started, stopped, requests, errors,
// p50, p90, p99, closed].
func (p *point) appendJSON(b []byte) []byte {
	b = append(b, '[')
	b = strconv.AppendInt(b, p.EndMs, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(p.Instances), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(p.Started), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(p.Stopped), 10)
	for _, v := range [...]float64{p.Requests, p.Errors, p.P50, p.P90, p.P99} {
		b = append(b, ',')
		b = appendFloat(b, v)
	}
	b = append(b, ',')
	b = strconv.AppendInt(b, p.ClosedMs, 10)
	return append(b, ']')
}

// appendFloat appends v with at most 6 significant digits, or 0 for a non-finite v.
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, '0')
	}
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'g', 6, 64)
}

// summarize turns a closed window into a point, reading the service's signals (sv.choice,
// which the window may move to a more preferred profile first: see signals.Choice). The
// caller holds s.mu for writing: it uses s.vals.
func (s *Server) summarize(sv *service, w *proto.Window) point {
	p := point{EndMs: w.EndMs, ClosedMs: w.ClosedMs, Instances: clampInt32(w.Instances),
		Started: clampInt32(w.InstancesStarted), Stopped: clampInt32(w.InstancesStopped)}
	v := &s.vals
	sv.choice.Definition().Read(w.Series, v)
	p.Requests, p.Errors = finite(v.Requests), finite(v.Errors)
	switch one := v.One; {
	case one != nil && sv.choice.Definition().LatencyUnit == 1 && (one.P50 != 0 || one.P99 != 0):
		p.P50, p.P90, p.P99 = one.P50, one.P90, one.P99 // the rollup's, for the common case
	case v.HasLatency && v.Latency.Count > 0:
		p.P50, p.P90, p.P99 = v.Latency.Quantile(0.5), v.Latency.Quantile(0.9), v.Latency.Quantile(0.99)
	}
	p.P50, p.P90, p.P99 = finite(p.P50), finite(p.P90), finite(p.P99)
	return p
}

func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

func clampInt32(n int) int32 { return int32(max(0, min(n, math.MaxInt32))) }

// ring is a ring buffer of at most size points ordered by arrival. Its array grows as it
// fills, so that a group that sends a few windows (a flood of groups) holds a few points, not
// its whole history's worth.
type ring struct {
	buf  []point // len(buf) == n until the ring is full
	size int
	head int // index of the oldest point; 0 until the ring is full
	n    int
}

func newRing(capacity int) ring { return ring{size: capacity} }

func (r *ring) add(p point) {
	if r.n < r.size {
		if r.n == cap(r.buf) {
			nb := make([]point, r.n, min(max(2*r.n, 16), r.size))
			copy(nb, r.buf)
			r.buf = nb
		}
		r.buf = append(r.buf, p)
		r.n++
		return
	}
	r.buf[r.head] = p
	r.head = (r.head + 1) % len(r.buf)
}

// at returns the i-th oldest point.
func (r *ring) at(i int) *point { return &r.buf[(r.head+i)%len(r.buf)] }

// last returns the newest point, or nil.
func (r *ring) last() *point {
	if r.n == 0 {
		return nil
	}
	return r.at(r.n - 1)
}

// since appends to dst the points with EndMs > sinceMs, oldest first.
func (r *ring) since(dst []point, sinceMs int64) []point {
	// Points arrive in end order per group, so search for the first newer one.
	lo, hi := 0, r.n
	for lo < hi {
		m := (lo + hi) / 2
		if r.at(m).EndMs <= sinceMs {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for k := lo; k < r.n; k++ {
		dst = append(dst, *r.at(k))
	}
	return dst
}

// group is the state of one (service, version).
type group struct {
	version string
	ring    ring
	latest  *proto.Window // the newest full window, read-only
	// Admission (see admit.go): the group's service, when it was created or a window with
	// instances last arrived, how many such windows arrived (up to 2), and its element of
	// Server.lru.
	sv       *service
	activeAt time.Time
	live     int
	inAll    *list.Element
}

// service is the state of one service. Verdicts holds its recent verdict changes (oldest
// first, bounded by maxVerdicts), Deployments its recent announcements (bounded by maxDeployments).
type service struct {
	name        string
	choice      signals.Choice // the service's signals: pinned by the policy, or detected
	groups      map[string]*group
	verdicts    []proto.Verdict
	deployments []proto.Deployment
}

const (
	maxVerdicts    = 64
	maxDeployments = 32
)

// sortedGroups returns the service's groups ordered by version.
func (sv *service) sortedGroups() []*group {
	gs := make([]*group, 0, len(sv.groups))
	for _, g := range sv.groups {
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b *group) int { return strings.Compare(a.version, b.version) })
	return gs
}

// latestVerdicts returns the newest verdict of each canary of the service, newest first.
func (sv *service) latestVerdicts() []proto.Verdict {
	var out []proto.Verdict
	seen := map[string]bool{}
	for i := len(sv.verdicts) - 1; i >= 0; i-- {
		v := sv.verdicts[i]
		k := v.Baseline + "\x00" + v.Canary
		if !seen[k] {
			seen[k] = true
			out = append(out, v)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
