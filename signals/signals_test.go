package signals

import (
	"math"
	"testing"

	"github.com/herd-dev/herd/proto"
)

func counter(name string, v float64, kv ...string) proto.WindowSeries {
	return proto.WindowSeries{Name: name, Labels: labels(kv...), Kind: proto.KindCounter, Value: v}
}

func histogram(name string, v float64, n uint64, kv ...string) proto.WindowSeries {
	h := &proto.Histogram{}
	h.Observe(v, n)
	return proto.WindowSeries{Name: name, Labels: labels(kv...), Kind: proto.KindHistogram, Hist: h, Count: h.Count, Sum: h.Sum}
}

func labels(kv ...string) proto.Labels {
	var out proto.Labels
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, proto.Label{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// TestProfilesRecognise feeds each convention's series, as herd's agent (Prometheus
// exposition) or OTLP intake carries them, and checks the profile chosen and the values read.
func TestProfilesRecognise(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		profile      string
		series       []proto.WindowSeries
		req, errs    float64
		p50          float64 // seconds
		latencyCount uint64
	}{
		{"herd", []proto.WindowSeries{counter("requests_total", 100), counter("errors_total", 2),
			histogram("latency_seconds", 0.05, 100)}, 100, 2, 0.05, 100},
		{"prometheus", []proto.WindowSeries{
			counter("http_requests_total", 90, "code", "200", "method", "get"),
			counter("http_requests_total", 10, "code", "503", "method", "get"),
			histogram("http_request_duration_seconds", 0.02, 100, "method", "get")}, 100, 10, 0.02, 100},
		{"prometheus-status", []proto.WindowSeries{
			counter("http_requests_total", 40, "status", "200"),
			counter("http_requests_total", 4, "status", "500"),
			histogram("http_request_duration_seconds", 0.3, 44)}, 44, 4, 0.3, 44},
		{"otel-http", []proto.WindowSeries{
			histogram("http.server.request.duration", 0.01, 70, "http.request.method", "GET", "http.response.status_code", "200"),
			histogram("http.server.request.duration", 0.5, 30, "http.request.method", "GET", "http.response.status_code", "502")},
			100, 30, 0.01, 100},
		{"otel-http-prometheus", []proto.WindowSeries{
			histogram("http_server_request_duration_seconds", 0.01, 8, "http_response_status_code", "200"),
			histogram("http_server_request_duration_seconds", 0.01, 2, "http_response_status_code", "500")},
			10, 2, 0.01, 10},
		{"otel-http-old", []proto.WindowSeries{
			histogram("http.server.duration", 12, 9, "http.status_code", "200"),
			histogram("http.server.duration", 12, 1, "http.status_code", "504")}, 10, 1, 0.012, 10},
		{"otel-rpc", []proto.WindowSeries{
			histogram("rpc.server.duration", 4, 50, "rpc.grpc.status_code", "0"),
			histogram("rpc.server.duration", 4, 5, "rpc.grpc.status_code", "14"),
			histogram("rpc.server.duration", 4, 5, "rpc.grpc.status_code", "5")}, 60, 5, 0.004, 60},
		{"otel-rpc-call", []proto.WindowSeries{
			histogram("rpc.server.call.duration", 0.004, 50, "rpc.response.status_code", "OK", "rpc.method", "shop.Payments/Charge"),
			histogram("rpc.server.call.duration", 0.004, 5, "rpc.response.status_code", "UNAVAILABLE", "rpc.method", "shop.Payments/Charge"),
			histogram("rpc.server.call.duration", 0.004, 5, "rpc.response.status_code", "NOT_FOUND", "rpc.method", "shop.Payments/Charge")}, 60, 5, 0.004, 60},
		{"istio", []proto.WindowSeries{
			counter("istio_requests_total", 100, "reporter", "destination", "response_code", "200"),
			counter("istio_requests_total", 100, "reporter", "source", "response_code", "200"),
			counter("istio_requests_total", 5, "reporter", "destination", "response_code", "503"),
			histogram("istio_request_duration_milliseconds", 250, 105, "reporter", "destination"),
			histogram("istio_request_duration_milliseconds", 250, 100, "reporter", "source")}, 105, 5, 0.25, 105},
	} {
		var ch Choice
		if !ch.Observe(c.series) {
			t.Errorf("%s: Observe reported no change; want the profile chosen", c.profile)
		}
		d := ch.Definition()
		if d.Profile != c.profile {
			t.Errorf("got profile %q; want %q", d.Profile, c.profile)
			continue
		}
		var v Values
		d.Read(c.series, &v)
		if v.Requests != c.req || v.Errors != c.errs || v.Skipped != 0 || !v.HasLatency || v.Latency.Count != c.latencyCount {
			t.Errorf("%s: got requests %g errors %g skipped %d latency %v/%d; want %g %g 0 true/%d",
				c.profile, v.Requests, v.Errors, v.Skipped, v.HasLatency, v.Latency.Count, c.req, c.errs, c.latencyCount)
		}
		if p50 := v.Latency.Quantile(0.5); math.Abs(p50-c.p50)/c.p50 > 0.025 {
			t.Errorf("%s: got p50 %g s; want %g s within 2.5 %%", c.profile, p50, c.p50)
		}
	}
}

func TestChoicePrefersAndSticks(t *testing.T) {
	t.Parallel()
	var ch Choice
	if d := ch.Definition(); d.Profile != "herd" || ch.Detected() {
		t.Fatalf("zero Choice: got %q detected=%v; want herd's names, undetected", d.Profile, ch.Detected())
	}
	if ch.Observe([]proto.WindowSeries{counter("something_else_total", 1)}) {
		t.Fatal("unknown series changed the definition")
	}
	istio := []proto.WindowSeries{counter("istio_requests_total", 1, "response_code", "200")}
	prom := []proto.WindowSeries{counter("http_requests_total", 1, "code", "200")}
	if !ch.Observe(istio) || ch.Definition().Profile != "istio" {
		t.Fatalf("got %q; want istio", ch.Definition().Profile)
	}
	if !ch.Observe(prom) || ch.Definition().Profile != "prometheus" {
		t.Fatalf("got %q; want prometheus (preferred to istio)", ch.Definition().Profile)
	}
	// A less preferred convention in a later window does not move the choice back.
	if ch.Observe(istio) || ch.Definition().Profile != "prometheus" {
		t.Fatalf("got %q after istio again; want prometheus kept", ch.Definition().Profile)
	}
	// http_requests_total without code or status labels is no profile's marker.
	var bare Choice
	if bare.Observe([]proto.WindowSeries{counter("http_requests_total", 1, "path", "/")}) {
		t.Fatalf("unlabelled http_requests_total chose %q; want no profile", bare.Definition().Profile)
	}
	pinned, err := Pin(nil, `my_requests`, `my_requests{outcome="error"}`, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	pc := NewChoice(pinned)
	if pc.Observe(prom) || pc.Definition().Profile != ProfilePolicy || !pc.Definition().Pinned() {
		t.Fatalf("pinned: got %q; want the policy's definition kept", pc.Definition().Profile)
	}
	if got := pc.Definition().Latency.String(); got != proto.SeriesLatency {
		t.Fatalf("pinned without latency: got %q; want herd's %q", got, proto.SeriesLatency)
	}
}

func TestPin(t *testing.T) {
	t.Parallel()
	d, err := Pin(Profile("istio"), "", "", "", 0)
	if err != nil || d.Profile != "istio" || !d.Pinned() || d.LatencyUnit != 0.001 {
		t.Fatalf("pinned istio: got %+v, %v; want istio, pinned, ms", d, err)
	}
	d, err = Pin(Profile("istio"), "", "", `my_duration_ms`, 0.001)
	if err != nil || d.Profile != ProfilePolicy || d.LatencyUnit != 0.001 || d.Requests.String() != `istio_requests_total{reporter!="source"}` {
		t.Fatalf("istio with a latency selector: got %v, %v", d, err)
	}
	d, err = Pin(Profile("istio"), "", "", `my_duration_seconds`, 0)
	if err != nil || d.LatencyUnit != 1 {
		t.Fatalf("latency selector without unit: got %v, %v; want seconds", d, err)
	}
	if _, err := Pin(nil, `x{`, "", "", 0); err == nil {
		t.Fatal("bad selector: got no error")
	}
	if _, err := Pin(nil, "", "", "x", -1); err == nil {
		t.Fatal("negative unit: got no error")
	}
}

// TestToSeconds checks that rescaling milliseconds keeps every count and places each at
// its value in seconds within a bucket.
func TestToSeconds(t *testing.T) {
	t.Parallel()
	var h proto.Histogram
	for i, v := range []float64{0.5, 3, 12, 250, 4000} {
		h.Observe(v, uint64(i+1))
	}
	h.ZeroCount++
	h.Count++
	count, sum := h.Count, h.Sum
	ToSeconds(&h, 0.001)
	if h.Count != count || h.ZeroCount != 1 || h.Positive.Total() != count-1 || math.Abs(h.Sum-sum/1000) > 1e-12 {
		t.Fatalf("got count %d zero %d positive %d sum %g; want %d 1 %d %g", h.Count, h.ZeroCount, h.Positive.Total(), h.Sum, count, count-1, sum/1000)
	}
	if q := h.Quantile(1); math.Abs(q-4)/4 > 0.025 {
		t.Fatalf("got max %g s; want 4 s within 2.5 %%", q)
	}
}

func TestSeriesNames(t *testing.T) {
	t.Parallel()
	names := SeriesNames()
	for _, want := range []string{"requests_total", "http_requests_total", "http_request_duration_seconds",
		"http.server.request.duration", "istio_request_duration_milliseconds"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("SeriesNames() lacks %q: %v", want, names)
		}
	}
}
