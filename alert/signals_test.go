package alert

import (
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
	"github.com/herd-dev/herd/sim/traffic"
)

// renamed feeds the fleet's windows after rename turned herd's RED series into another
// convention's: baseline alone for 10 s, then an announced canary for a minute.
func (f *fleet) renamed(rename func(*proto.Window) *proto.Window) {
	win := testWindow.Milliseconds()
	feed := func(n int, canary bool) {
		for range n {
			f.d.AddWindow(rename(f.a.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0)))
			if canary {
				f.d.AddWindow(rename(f.b.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0)))
			}
			f.nowMs += win
		}
	}
	feed(40, false)
	f.announce()
	feed(4*60, true)
}

// asPrometheus renames a simulated window's RED series as prometheus/client_golang's promhttp
// middleware names them: http_requests_total{code,method}, http_request_duration_seconds.
func asPrometheus(w *proto.Window) *proto.Window {
	n, e := w.Series[0].Value, w.Series[1].Value
	out := *w
	out.Series = []proto.WindowSeries{
		{Name: "http_request_duration_seconds", Labels: proto.Labels{{Name: "method", Value: "get"}}, Kind: proto.KindHistogram, Hist: w.Series[2].Hist},
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}, {Name: "method", Value: "get"}}, Kind: proto.KindCounter, Value: n - e},
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "503"}, {Name: "method", Value: "get"}}, Kind: proto.KindCounter, Value: e},
	}
	return &out
}

// asIstio renames a simulated window's series as an Istio sidecar's destination metrics, with
// the latency in milliseconds.
func asIstio(w *proto.Window) *proto.Window {
	n, e := w.Series[0].Value, w.Series[1].Value
	var ms proto.Histogram
	ms.CopyFrom(w.Series[2].Hist)
	// Seconds to milliseconds, bucket by bucket (the inverse of the profile's conversion).
	var out proto.Histogram
	for k, c := range ms.Positive.Counts {
		if c > 0 {
			out.Observe(proto.BucketValue(int(ms.Positive.Offset)+k)*1000, c)
		}
	}
	dst := *w
	dst.Series = []proto.WindowSeries{
		{Name: "istio_request_duration_milliseconds", Labels: proto.Labels{{Name: "reporter", Value: "destination"}}, Kind: proto.KindHistogram, Hist: &out},
		{Name: "istio_requests_total", Labels: proto.Labels{{Name: "reporter", Value: "destination"}, {Name: "response_code", Value: "200"}}, Kind: proto.KindCounter, Value: n - e},
		{Name: "istio_requests_total", Labels: proto.Labels{{Name: "reporter", Value: "destination"}, {Name: "response_code", Value: "503"}}, Kind: proto.KindCounter, Value: e},
	}
	return &dst
}

// TestDetectorPrometheusProfileWithoutPolicy: a service instrumented with the Prometheus
// client conventions is judged on its own series with no policy file, through the
// built-in profile the dashboard reads too.
func TestDetectorPrometheusProfileWithoutPolicy(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.05})
	if got := f.d.Signals("shop").Profile; got != "herd" {
		t.Fatalf("before any window: got profile %q; want herd's names", got)
	}
	f.renamed(asPrometheus)
	if got := f.d.Signals("shop"); got != signals.Profile("prometheus") {
		t.Fatalf("got signals %v; want the prometheus profile", got)
	}
	v := f.last()
	if v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
		t.Fatalf("errors ×10 under the prometheus profile: got %s by %q (%s); want rollback by errors", v.State, v.Evidence.Decisive, v.Sentence)
	}
	if n := f.d.m.wrongKind.Get(); n != 0 {
		t.Fatalf("got %d series of the wrong kind; want 0", n)
	}
}

// TestDetectorIstioProfileLatencyInMilliseconds: Istio's latency histogram in ms is read in
// seconds, so a slower canary is rolled back by a latency test whose threshold is in seconds.
func TestDetectorIstioProfileLatencyInMilliseconds(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.005, scaleB: 3})
	f.renamed(asIstio)
	if got := f.d.Signals("shop").Profile; got != "istio" {
		t.Fatalf("got profile %q; want istio", got)
	}
	v := f.last()
	if v.State != proto.StateRollback || !strings.HasPrefix(v.Evidence.Decisive, "latency_") && v.Evidence.Decisive != "dkw" {
		t.Fatalf("latency ×3 under the istio profile: got %s by %q (%s); want rollback by a latency test", v.State, v.Evidence.Decisive, v.Sentence)
	}
	for _, te := range v.Evidence.Tests {
		// The baseline's median is 50 ms: thresholds sit between 10 ms and 10 s, not ×1000.
		if strings.HasPrefix(te.Name, "latency_") && !(te.ThresholdSeconds > 0.01 && te.ThresholdSeconds < 10) {
			t.Fatalf("test %s: got threshold %g s; want seconds near the baseline's quantiles", te.Name, te.ThresholdSeconds)
		}
	}
}

// TestDetectorPolicyPinsProfile: a policy's selectors win over detection.
func TestDetectorPolicyPinsProfile(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	pol, err := ParsePolicy([]byte("services:\n  shop:\n    errors: http_requests_total{code=\"404\"}\n"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFleet(t, cfg, pol, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.05})
	f.renamed(asPrometheus)
	d := f.d.Signals("shop")
	if d.Profile != signals.ProfilePolicy || d.Errors.String() != `http_requests_total{code="404"}` {
		t.Fatalf("got %v; want the policy's definition", d)
	}
	// requests_total is absent: the pinned definition sees no traffic and no errors.
	if v := f.last(); v.State == proto.StateRollback {
		t.Fatalf("got a rollback (%s) under selectors that select nothing", v.Sentence)
	}
}
