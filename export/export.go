// Package export writes herd's per-version rollups and verdicts in the Prometheus text
// exposition format, so that Prometheus, Grafana, Argo Rollouts' Prometheus provider and
// Flagger's metric templates can read what herd sees. The node serves it on /metrics/groups
// (see docs/export.md).
//
// The exporter totals closed windows (corrections included) into cumulative series per
// group (service, version):
//
//	herd_group_requests_total{service,version}             counter
//	herd_group_errors_total{service,version}               counter
//	herd_group_latency_seconds_bucket{service,version,le}  histogram (with _sum and _count)
//	herd_group_instances{service,version}                  gauge: instances of the newest window
//	herd_group_last_window_end_timestamp_seconds{service,version}
//
// and keeps the current verdict of every comparison:
//
//	herd_verdict{service,baseline,canary,state}            1 for the current state, 0 for the others
//	herd_verdict_e_value{service,baseline,canary}          the combined e-value
//	herd_verdict_change_timestamp_seconds{service,baseline,canary}
//
// Cardinality is bounded: at most Config.MaxGroups groups and Config.MaxVerdicts verdicts;
// a group idle for Config.GroupTTL and a final verdict older than Config.VerdictTTL are
// forgotten (their series disappear, and come back from zero if they report again, which
// Prometheus reads as a counter reset). A new group or verdict over its bound is refused and
// counted in herd_export_refused_total{reason}. Each group costs len(Config.Buckets) + 6
// series.
//
// Latency buckets: herd's sketches have fixed buckets of ratio 2^(1/32); the exported
// classic buckets are a coarser ladder. Each sketch bucket is counted in the first `le`
// bound not below the sketch bucket's representative value, so a bound that is a sketch
// bucket edge (the default ladder, 2^(k/2) seconds) is exact. Zero and negative values go to
// the lowest bucket.
package export

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Exporter totals windows and keeps verdicts for the exposition. It is safe for concurrent
// use: AddWindow and SetVerdict are called by the node's input path, WritePrometheus by HTTP
// handlers.
type Exporter struct {
	cfg Config
	now func() time.Time
	// leLabels[j] is `,le="<Buckets[j]>"`, and stateLabels[k] `,state="<states[k]>"`,
	// formatted once.
	leLabels, stateLabels [][]byte

	mu       sync.Mutex // Guards the maps and vals below.
	groups   map[groupKey]*group
	verdicts map[verdictKey]*verdict
	// services holds each exported service's signal definition (pinned, or detected from
	// its windows), and how many of its groups are exported.
	services map[string]*service
	vals     signals.Values // scratch of AddWindow

	refusedGroups, refusedVerdicts, badValues *metrics.Counter
	expiredGroups, expiredVerdicts            *metrics.Counter
}

type groupKey struct{ service, version string }

// service is the signals of one service and the number of its groups exported.
type service struct {
	choice signals.Choice
	groups int
}

type verdictKey struct{ service, baseline, canary string }

// group is the running totals of one (service, version).
type group struct {
	requests, errors float64
	// counts[j] is the number of observations in (Buckets[j-1], Buckets[j]];
	// counts[len(Buckets)] those above the last bound.
	counts    []uint64
	count     uint64
	sum       float64
	instances int
	lastEndMs int64
	seen      time.Time // wall clock of the newest window
}

type verdict struct {
	state    proto.State
	eValue   float64
	changeMs int64
	seen     time.Time
}

// New returns an Exporter registering its own counters in set. cfg must have passed
// Validate.
func New(cfg Config, set *metrics.Set) *Exporter {
	promhelp.Describe(exportHelp)
	e := &Exporter{
		cfg: cfg, now: time.Now,
		groups:          map[groupKey]*group{},
		verdicts:        map[verdictKey]*verdict{},
		services:        map[string]*service{},
		refusedGroups:   set.NewCounter(`herd_export_refused_total{reason="max_groups"}`),
		refusedVerdicts: set.NewCounter(`herd_export_refused_total{reason="max_verdicts"}`),
		badValues:       set.NewCounter(`herd_export_refused_total{reason="bad_value"}`),
		expiredGroups:   set.NewCounter(`herd_export_expired_total{kind="group"}`),
		expiredVerdicts: set.NewCounter(`herd_export_expired_total{kind="verdict"}`),
	}
	for _, le := range cfg.Buckets {
		e.leLabels = append(e.leLabels, appendLabel(nil, "le", formatBound(le), false))
	}
	for _, st := range states {
		e.stateLabels = append(e.stateLabels, appendLabel(nil, "state", string(st), false))
	}
	return e
}

var exportHelp = map[string]string{
	"herd_export_refused_total": "Groups and verdicts the /metrics/groups export refused (over -export.max-groups or -export.max-verdicts) and window values it skipped (negative or not finite, or a selected series of the wrong kind), by reason.",
	"herd_export_expired_total": "Groups idle for -export.group-ttl and final verdicts older than -export.verdict-ttl that the export forgot, by kind.",
}

// AddWindow adds a closed window (or a correction) to its group's totals. A new group over
// Config.MaxGroups is refused and counted once an idle group cannot make room.
func (e *Exporter) AddWindow(w *proto.Window) {
	now := e.now()
	k := groupKey{w.Service, w.Version}
	e.mu.Lock()
	defer e.mu.Unlock()
	g := e.groups[k]
	if g == nil {
		if len(e.groups) >= e.cfg.MaxGroups {
			e.expireLocked(now)
		}
		if len(e.groups) >= e.cfg.MaxGroups {
			e.refusedGroups.Inc()
			return
		}
		g = &group{counts: make([]uint64, len(e.cfg.Buckets)+1)}
		e.groups[k] = g
		e.serviceLocked(w.Service).groups++
	}
	g.seen = now
	if !w.Correction && w.EndMs >= g.lastEndMs {
		g.instances, g.lastEndMs = w.Instances, w.EndMs
	}
	sv := e.services[w.Service]
	sv.choice.Observe(w.Series)
	v := &e.vals
	sv.choice.Definition().Read(w.Series, v)
	if v.Skipped > 0 { // a negative or non-finite counter, or a selected series of the wrong kind
		e.badValues.Add(v.Skipped)
	}
	g.requests += e.delta(v.Requests)
	g.errors += e.delta(v.Errors)
	if v.HasLatency { // in seconds (Read converts)
		e.addHistLocked(g, &v.Latency)
	}
}

// serviceLocked returns the named service's state, creating it.
func (e *Exporter) serviceLocked(name string) *service {
	sv := e.services[name]
	if sv == nil {
		var pinned *signals.Definition
		if e.cfg.Signals != nil {
			pinned = e.cfg.Signals(name)
		}
		sv = &service{choice: signals.NewChoice(pinned)}
		e.services[name] = sv
	}
	return sv
}

// delta returns a counter's window delta, or 0 (counted) for a value no counter can add.
func (e *Exporter) delta(v float64) float64 {
	if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		e.badValues.Inc()
		return 0
	}
	return v
}

// addHistLocked adds h's buckets to g's classic buckets.
func (e *Exporter) addHistLocked(g *group, h *proto.Histogram) {
	if math.IsNaN(h.Sum) || math.IsInf(h.Sum, 0) {
		e.badValues.Inc()
		return
	}
	bounds := e.cfg.Buckets
	var n uint64
	low := h.ZeroCount + h.Negative.Total()
	g.counts[0] += low
	n += low
	for k, c := range h.Positive.Counts {
		if c == 0 {
			continue
		}
		v := proto.BucketValue(int(h.Positive.Offset) + k)
		j := sort.SearchFloat64s(bounds, v) // first bound ≥ v, or len(bounds): +Inf
		g.counts[j] += c
		n += c
	}
	g.count += n
	g.sum += h.Sum
}

// SetVerdict records the current state of a comparison: the last one set wins. A new comparison over
// Config.MaxVerdicts is refused and counted once old final verdicts cannot make room.
func (e *Exporter) SetVerdict(v proto.Verdict) {
	now := e.now()
	k := verdictKey{v.Service, v.Baseline, v.Canary}
	e.mu.Lock()
	defer e.mu.Unlock()
	x := e.verdicts[k]
	if x == nil {
		if len(e.verdicts) >= e.cfg.MaxVerdicts {
			e.expireLocked(now)
		}
		if len(e.verdicts) >= e.cfg.MaxVerdicts {
			e.refusedVerdicts.Inc()
			return
		}
		x = &verdict{}
		e.verdicts[k] = x
	}
	// Verdicts arrive in the order the detector reached them (one subject per service);
	// their UnixMs is event time (a window's end), which may precede an announcement's.
	x.state, x.eValue, x.changeMs, x.seen = v.State, v.Evidence.EValue, v.UnixMs, now
}

// expireLocked forgets idle groups and old final verdicts.
func (e *Exporter) expireLocked(now time.Time) {
	for k, g := range e.groups {
		if now.Sub(g.seen) > e.cfg.GroupTTL {
			delete(e.groups, k)
			e.expiredGroups.Inc()
			if sv := e.services[k.service]; sv != nil {
				if sv.groups--; sv.groups <= 0 {
					delete(e.services, k.service)
				}
			}
		}
	}
	for k, v := range e.verdicts {
		final := v.state == proto.StatePass || v.state == proto.StateRollback || v.state == proto.StateInconclusive
		if final && now.Sub(v.seen) > e.cfg.VerdictTTL {
			delete(e.verdicts, k)
			e.expiredVerdicts.Inc()
		}
	}
}

// states are the verdict states, each a label value of herd_verdict.
var states = [...]proto.State{proto.StatePending, proto.StatePass, proto.StateRollback, proto.StateInconclusive}

// ServeHTTP writes the exposition.
func (e *Exporter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	e.WritePrometheus(w)
}

// WritePrometheus writes every group's and verdict's series to w in the Prometheus text
// format, families in a fixed order and series sorted by labels.
func (e *Exporter) WritePrometheus(w io.Writer) {
	e.mu.Lock()
	e.expireLocked(e.now())
	gks := make([]groupKey, 0, len(e.groups))
	for k := range e.groups {
		gks = append(gks, k)
	}
	vks := make([]verdictKey, 0, len(e.verdicts))
	for k := range e.verdicts {
		vks = append(vks, k)
	}
	slices.SortFunc(gks, func(a, b groupKey) int {
		return strings.Compare(a.service+"\xff"+a.version, b.service+"\xff"+b.version)
	})
	slices.SortFunc(vks, func(a, b verdictKey) int {
		return strings.Compare(a.service+"\xff"+a.canary+"\xff"+a.baseline, b.service+"\xff"+b.canary+"\xff"+b.baseline)
	})
	// Copy under the lock, write without it: a slow scraper holds no input.
	gs := make([]group, len(gks))
	for i, k := range gks {
		gs[i] = *e.groups[k]
		gs[i].counts = slices.Clone(gs[i].counts)
	}
	vs := make([]verdict, len(vks))
	for i, k := range vks {
		vs[i] = *e.verdicts[k]
	}
	e.mu.Unlock()

	b := make([]byte, 0, 4096)
	glabels := make([][]byte, len(gks))
	for i, k := range gks {
		glabels[i] = appendLabel(appendLabel(nil, "service", k.service, true), "version", k.version, false)
	}
	family := func(name, typ, help string) {
		b = append(b, "# HELP "+name+" "+help+"\n# TYPE "+name+" "+typ+"\n"...)
	}
	sample := func(name string, labels []byte, extra []byte, v float64) {
		b = append(b, name...)
		b = append(b, '{')
		b = append(b, labels...)
		b = append(b, extra...)
		b = append(b, "} "...)
		b = appendValue(b, v)
		b = append(b, '\n')
	}
	flush := func() {
		_, _ = w.Write(b)
		b = b[:0]
	}
	family("herd_group_requests_total", "counter", "Requests of the group (service, version), totalled over herd's closed windows since the export first saw it.")
	for i := range gs {
		sample("herd_group_requests_total", glabels[i], nil, gs[i].requests)
	}
	family("herd_group_errors_total", "counter", "Errors of the group, totalled over herd's closed windows.")
	for i := range gs {
		sample("herd_group_errors_total", glabels[i], nil, gs[i].errors)
	}
	flush()
	family("herd_group_latency_seconds", "histogram", "Request latency of the group in seconds, from herd's merged sketches.")
	for i := range gs {
		var cum uint64
		for j := range e.cfg.Buckets {
			cum += gs[i].counts[j]
			sample("herd_group_latency_seconds_bucket", glabels[i], e.leLabels[j], float64(cum))
		}
		sample("herd_group_latency_seconds_bucket", glabels[i], []byte(`,le="+Inf"`), float64(gs[i].count))
		sample("herd_group_latency_seconds_sum", glabels[i], nil, gs[i].sum)
		sample("herd_group_latency_seconds_count", glabels[i], nil, float64(gs[i].count))
		flush()
	}
	family("herd_group_instances", "gauge", "Instances that reported in the group's newest closed window.")
	for i := range gs {
		sample("herd_group_instances", glabels[i], nil, float64(gs[i].instances))
	}
	family("herd_group_last_window_end_timestamp_seconds", "gauge", "End of the group's newest closed window, unix seconds.")
	for i := range gs {
		sample("herd_group_last_window_end_timestamp_seconds", glabels[i], nil, float64(gs[i].lastEndMs)/1000)
	}
	flush()
	vlabels := make([][]byte, len(vks))
	for i, k := range vks {
		l := appendLabel(nil, "service", k.service, true)
		l = appendLabel(l, "baseline", k.baseline, false)
		vlabels[i] = appendLabel(l, "canary", k.canary, false)
	}
	family("herd_verdict", "gauge", "herd's current verdict of each comparison (service, baseline, canary): 1 for its state, 0 for the other states.")
	for i := range vs {
		for k, st := range states {
			v := 0.0
			if vs[i].state == st {
				v = 1
			}
			sample("herd_verdict", vlabels[i], e.stateLabels[k], v)
		}
	}
	family("herd_verdict_e_value", "gauge", "Combined e-value of each comparison's sequential tests (rollback at 1/alpha).")
	for i := range vs {
		sample("herd_verdict_e_value", vlabels[i], nil, vs[i].eValue)
	}
	family("herd_verdict_change_timestamp_seconds", "gauge", "When each comparison's verdict last changed, unix seconds.")
	for i := range vs {
		sample("herd_verdict_change_timestamp_seconds", vlabels[i], nil, float64(vs[i].changeMs)/1000)
	}
	flush()
}

// appendLabel appends name="value" (with a leading comma unless first), escaping the value
// as the text format requires.
func appendLabel(b []byte, name, value string, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, name...)
	b = append(b, '=', '"')
	for i := 0; i < len(value); i++ {
		switch c := value[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

func appendValue(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// formatBound formats an le bound the way Prometheus client libraries do.
func formatBound(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// checkBounds reports an error for bounds that are not a strictly increasing run of positive,
// finite numbers.
func checkBounds(bs []float64) error {
	if len(bs) == 0 {
		return fmt.Errorf("no bucket bound")
	}
	for i, b := range bs {
		if !(b > 0) || math.IsInf(b, 0) {
			return fmt.Errorf("bucket bound %v is not a positive finite number", b)
		}
		if i > 0 && b <= bs[i-1] {
			return fmt.Errorf("bucket bounds must increase: %v after %v", b, bs[i-1])
		}
	}
	return nil
}
