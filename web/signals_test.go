package web

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

func hist(v float64, n uint64) *proto.Histogram {
	h := &proto.Histogram{}
	h.Observe(v, n)
	return h
}

// TestSignalsProfiles: the dashboard reads each service's signals with its detected profile
// (or the policy's pinned definition), announces a detected profile once on the stream and
// shows it in the API.
func TestSignalsProfiles(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	pinned, err := signals.Pin(nil, `jobs_total`, `jobs_total{outcome="failed"}`, `job_seconds`, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Signals = func(service string) *signals.Definition {
		if service == "batch" {
			return pinned
		}
		return nil
	}
	ts := startServer(t, cfg)
	end := time.Now().UnixMilli() / 250 * 250
	win := func(service string, ss ...proto.WindowSeries) *proto.Window {
		return &proto.Window{Service: service, Version: "1", StartMs: end - 250, EndMs: end, Instances: 2, Series: ss}
	}
	ts.srv.AddWindow(win("shop",
		proto.WindowSeries{Name: "http_request_duration_seconds", Kind: proto.KindHistogram, Hist: hist(0.02, 50)},
		proto.WindowSeries{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 45},
		proto.WindowSeries{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "500"}}, Kind: proto.KindCounter, Value: 5}))
	ts.srv.AddWindow(win("mesh",
		proto.WindowSeries{Name: "istio_request_duration_milliseconds", Labels: proto.Labels{{Name: "reporter", Value: "destination"}}, Kind: proto.KindHistogram, Hist: hist(120, 10)},
		proto.WindowSeries{Name: "istio_requests_total", Labels: proto.Labels{{Name: "reporter", Value: "destination"}, {Name: "response_code", Value: "503"}}, Kind: proto.KindCounter, Value: 10}))
	ts.srv.AddWindow(win("batch",
		proto.WindowSeries{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 1000},
		proto.WindowSeries{Name: "jobs_total", Labels: proto.Labels{{Name: "outcome", Value: "failed"}}, Kind: proto.KindCounter, Value: 1},
		proto.WindowSeries{Name: "jobs_total", Labels: proto.Labels{{Name: "outcome", Value: "done"}}, Kind: proto.KindCounter, Value: 3}))
	ts.srv.AddWindow(win("plain", proto.WindowSeries{Name: "requests_total", Kind: proto.KindCounter, Value: 7}))
	// shop and mesh announce their profile (2 events); batch is pinned, plain keeps herd's names.
	waitApplied(t, ts, 4+2)

	var services struct{ Services []ServiceSummary }
	if code := get(t, ts.http.URL+"/api/v1/services", "", &services); code != 200 || len(services.Services) != 4 {
		t.Fatalf("got %d, %d services; want 200, 4", code, len(services.Services))
	}
	by := map[string]ServiceSummary{}
	for _, s := range services.Services {
		by[s.Service] = s
	}
	for _, c := range []struct {
		service, profile    string
		detected, pinned    bool
		rps, errRatio, p50s float64
	}{
		{"shop", "prometheus", true, false, 200, 0.1, 0.02},
		{"mesh", "istio", true, false, 40, 1, 0.12},
		{"batch", "policy", true, true, 16, 0.25, 0},
		{"plain", "herd", true, false, 28, 0, 0},
	} {
		s := by[c.service]
		g := s.Groups[0]
		if s.Signals.Profile != c.profile || s.Signals.Detected != c.detected || s.Signals.Pinned != c.pinned {
			t.Errorf("%s: got signals %+v; want profile %s detected=%v pinned=%v", c.service, s.Signals, c.profile, c.detected, c.pinned)
		}
		if math.Abs(g.RequestsPerSecond-c.rps) > 1e-9 || math.Abs(g.ErrorRatio-c.errRatio) > 1e-9 || math.Abs(g.P50-c.p50s) > 0.025*c.p50s {
			t.Errorf("%s: got %g req/s, error ratio %g, p50 %g s; want %g, %g, %g", c.service, g.RequestsPerSecond, g.ErrorRatio, g.P50, c.rps, c.errRatio, c.p50s)
		}
	}
	if got := by["mesh"].Signals.LatencyUnitSeconds; got != 0.001 {
		t.Errorf("mesh: got latency unit %g s; want 0.001", got)
	}
	// The stream's replay holds the signals events, each before the service's first window.
	ts.srv.mu.RLock()
	evs, ok := ts.srv.replay.since(0, ts.srv.seq, "")
	ts.srv.mu.RUnlock()
	var kinds []string
	for _, e := range evs {
		s := string(e)
		kinds = append(kinds, s[strings.Index(s, `"type":"`)+8:strings.Index(s, `","seq"`)])
	}
	if got := strings.Join(kinds, ","); !ok || got != "signals,window,signals,window,window,window" {
		t.Fatalf("got events %s (ok %v); want each detected profile announced before the window read with it", got, ok)
	}
	if s := string(evs[0]); !strings.Contains(s, `"service":"shop"`) || !strings.Contains(s, `"profile":"prometheus"`) {
		t.Fatalf("got %s; want shop's prometheus profile", s)
	}
}
