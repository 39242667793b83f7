package export

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/herd-dev/herd/proto"
)

// testWindow builds a window of the group with the given counts and latencies.
func testWindow(service, version string, endMs int64, instances int, req, errs float64, lat []float64) *proto.Window {
	w := &proto.Window{Service: service, Version: version, StartMs: endMs - 250, EndMs: endMs, Instances: instances}
	w.Series = append(w.Series,
		proto.WindowSeries{Name: "requests_total", Kind: proto.KindCounter, Value: req},
		proto.WindowSeries{Name: "errors_total", Kind: proto.KindCounter, Value: errs})
	h := &proto.Histogram{}
	for _, v := range lat {
		h.Observe(v, 1)
	}
	w.Series = append(w.Series, proto.WindowSeries{Name: "latency_seconds", Kind: proto.KindHistogram, Hist: h, Count: h.Count, Sum: h.Sum})
	return w
}

// parse parses the exposition with the text parser Prometheus uses.
func parse(t *testing.T, e *Exporter) map[string]*dto.MetricFamily {
	t.Helper()
	var b strings.Builder
	e.WritePrometheus(&b)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("cannot parse the export: %v\n%s", err, b.String())
	}
	return mfs
}

// find returns the metric of family name whose labels include want, or nil.
func find(mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// histogramQuantile is PromQL's histogram_quantile over classic cumulative buckets: find the
// bucket holding rank q·count and interpolate linearly inside it.
func histogramQuantile(q float64, bs []*dto.Bucket) float64 {
	sort.Slice(bs, func(i, j int) bool { return bs[i].GetUpperBound() < bs[j].GetUpperBound() })
	total := float64(bs[len(bs)-1].GetCumulativeCount())
	rank := q * total
	i := sort.Search(len(bs), func(i int) bool { return float64(bs[i].GetCumulativeCount()) >= rank })
	if i == len(bs)-1 && math.IsInf(bs[i].GetUpperBound(), 1) {
		return bs[len(bs)-2].GetUpperBound()
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = bs[i-1].GetUpperBound(), float64(bs[i-1].GetCumulativeCount())
	}
	in := float64(bs[i].GetCumulativeCount()) - below
	return lo + (bs[i].GetUpperBound()-lo)*(rank-below)/in
}

func TestExportMatchesWindows(t *testing.T) {
	e := New(DefaultConfig(), metrics.NewSet())
	rng := rand.New(rand.NewPCG(1, 2))
	type totals struct {
		req, errs float64
		hist      proto.Histogram
		inst      int
	}
	want := map[string]*totals{"v1": {}, "v2": {}}
	for k := range 40 {
		for _, v := range []string{"v1", "v2"} {
			mu := -3.0 // median ≈ 50 ms
			if v == "v2" {
				mu = -2.3 // ≈ 100 ms: the canary is slower
			}
			var lat []float64
			for range 500 {
				lat = append(lat, math.Exp(mu+0.6*rng.NormFloat64()))
			}
			inst := 10 + k%3
			w := testWindow("checkout", v, int64(1000+250*k), inst, 500, float64(k%4), lat)
			e.AddWindow(w)
			tt := want[v]
			tt.req += 500
			tt.errs += float64(k % 4)
			tt.hist.Merge(w.Find("latency_seconds").Hist)
			tt.inst = inst
		}
	}
	e.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "v1", Canary: "v2", State: proto.StatePending, UnixMs: 1000})
	e.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "v1", Canary: "v2", State: proto.StateRollback, UnixMs: 9000,
		Evidence: proto.Evidence{EValue: 250}})

	mfs := parse(t, e)
	bounds := DefaultBuckets()
	for v, tt := range want {
		g := map[string]string{"service": "checkout", "version": v}
		if m := find(mfs, "herd_group_requests_total", g); m == nil || m.GetCounter().GetValue() != tt.req {
			t.Errorf("%s requests: got %v; want %v", v, m, tt.req)
		}
		if m := find(mfs, "herd_group_errors_total", g); m == nil || m.GetCounter().GetValue() != tt.errs {
			t.Errorf("%s errors: got %v; want %v", v, m, tt.errs)
		}
		if m := find(mfs, "herd_group_instances", g); m == nil || m.GetGauge().GetValue() != float64(tt.inst) {
			t.Errorf("%s instances: got %v; want %d", v, m, tt.inst)
		}
		m := find(mfs, "herd_group_latency_seconds", g)
		if m == nil {
			t.Fatalf("%s: no latency histogram", v)
		}
		h := m.GetHistogram()
		if h.GetSampleCount() != tt.hist.Count || math.Abs(h.GetSampleSum()-tt.hist.Sum) > 1e-9*tt.hist.Sum {
			t.Errorf("%s latency count, sum: got %d, %v; want %d, %v", v, h.GetSampleCount(), h.GetSampleSum(), tt.hist.Count, tt.hist.Sum)
		}
		if len(h.Bucket) != len(bounds)+1 {
			t.Fatalf("%s: got %d buckets; want %d", v, len(h.Bucket), len(bounds)+1)
		}
		got, herd := histogramQuantile(0.99, h.Bucket), tt.hist.Quantile(0.99)
		gi, hi := sort.SearchFloat64s(bounds, got), sort.SearchFloat64s(bounds, herd)
		if d := gi - hi; d < -1 || d > 1 {
			t.Errorf("%s p99: histogram_quantile %v (bucket %d); herd %v (bucket %d): more than one bucket apart", v, got, gi, herd, hi)
		}
		t.Logf("%s p99: histogram_quantile %.4f s, herd %.4f s (buckets %d, %d)", v, got, herd, gi, hi)
	}
	vl := map[string]string{"service": "checkout", "baseline": "v1", "canary": "v2"}
	for _, st := range []string{"pending", "pass", "rollback", "inconclusive"} {
		vl["state"] = st
		want := 0.0
		if st == "rollback" {
			want = 1
		}
		if m := find(mfs, "herd_verdict", vl); m == nil || m.GetGauge().GetValue() != want {
			t.Errorf("herd_verdict state %s: got %v; want %v", st, m, want)
		}
	}
	delete(vl, "state")
	if m := find(mfs, "herd_verdict_e_value", vl); m == nil || m.GetGauge().GetValue() != 250 {
		t.Errorf("e-value: got %v; want 250", m)
	}
	if m := find(mfs, "herd_verdict_change_timestamp_seconds", vl); m == nil || m.GetGauge().GetValue() != 9 {
		t.Errorf("change time: got %v; want 9", m)
	}
}

func TestExportBoundsCardinality(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxGroups, cfg.MaxVerdicts, cfg.GroupTTL = 2, 1, time.Minute
	set := metrics.NewSet()
	e := New(cfg, set)
	now := time.Unix(1000, 0)
	e.now = func() time.Time { return now }
	for _, v := range []string{"a", "b", "c"} {
		e.AddWindow(testWindow("s", v, 1000, 1, 1, 0, nil))
	}
	e.SetVerdict(proto.Verdict{Service: "s", Baseline: "a", Canary: "b", State: proto.StatePending, UnixMs: 1})
	e.SetVerdict(proto.Verdict{Service: "s", Baseline: "a", Canary: "c", State: proto.StatePending, UnixMs: 1})
	if got := e.refusedGroups.Get(); got != 1 {
		t.Errorf("refused groups: got %d; want 1", got)
	}
	if got := e.refusedVerdicts.Get(); got != 1 {
		t.Errorf("refused verdicts: got %d; want 1", got)
	}
	mfs := parse(t, e)
	if n := len(mfs["herd_group_requests_total"].Metric); n != 2 {
		t.Errorf("exported groups: got %d; want 2", n)
	}
	// Idle past the TTL, a group makes room for a new one.
	now = now.Add(2 * time.Minute)
	e.AddWindow(testWindow("s", "c", 2000, 1, 1, 0, nil))
	if find(parse(t, e), "herd_group_requests_total", map[string]string{"version": "c"}) == nil {
		t.Errorf("group c not exported after the idle groups expired")
	}
	if got := e.expiredGroups.Get(); got != 2 {
		t.Errorf("expired groups: got %d; want 2", got)
	}
}

func TestExportBadValues(t *testing.T) {
	e := New(DefaultConfig(), metrics.NewSet())
	w := testWindow("s", `v"1\`, 1000, 1, math.NaN(), -3, []float64{0, -1, 0.01, 1e9})
	e.AddWindow(w)
	mfs := parse(t, e)
	m := find(mfs, "herd_group_requests_total", map[string]string{"version": `v"1\`})
	if m == nil || m.GetCounter().GetValue() != 0 {
		t.Errorf("requests after a NaN: got %v; want 0", m)
	}
	if got := e.badValues.Get(); got != 2 {
		t.Errorf("bad values: got %d; want 2", got)
	}
	h := find(mfs, "herd_group_latency_seconds", nil).GetHistogram()
	if h.GetSampleCount() != 4 || h.Bucket[0].GetCumulativeCount() != 2 {
		t.Errorf("zero and negative latencies: got count %d, lowest bucket %d; want 4, 2", h.GetSampleCount(), h.Bucket[0].GetCumulativeCount())
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var b boundsFlag
	for _, bad := range []string{"", "1,0.5", "x", "-1", "1,+Inf"} {
		if err := b.Set(bad); err == nil {
			t.Errorf("bounds %q: got no error", bad)
		}
	}
	if err := b.Set("0.1, 0.5,2"); err != nil || len(b) != 3 {
		t.Errorf("bounds: got %v, %v; want 3 bounds", b, err)
	}
}
