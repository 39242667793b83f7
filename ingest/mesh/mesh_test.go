package mesh_test

import (
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/mesh"
	"github.com/herd-dev/herd/proto"
	dto "github.com/prometheus/client_model/go"
)

// fixture serves one of the recorded proxy expositions, switchable between scrapes.
type fixture struct {
	mu   sync.Mutex
	body []byte
}

func (f *fixture) load(t *testing.T, name string) {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.body = b
	f.mu.Unlock()
}

func (f *fixture) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write(f.body)
}

// red is what one batch carried: the pod's RED, and the request flow it saw.
type red struct {
	requests, errors float64
	count            uint64
	sumSeconds       float64
	names            []string
	edges            map[string]edge    // by callee
	inbound          map[string]inbound // by caller "service/version"
}

// edge is one callee's calls as the pod's proxy saw them.
type edge struct {
	calls, errors float64
	count         uint64
	sumSeconds    float64
}

// inbound is the requests of one caller group the pod served.
type inbound struct{ requests, errors float64 }

// TestProfilesRED scrapes each recorded pair of a meshed pod's proxy expositions through the
// profile and checks the batch covering the second scrape: the destination's requests,
// errors and latency for that version, nothing of the traffic the pod sent in its RED; the
// traffic it sent as its edges (Istio reporter="source", Linkerd direction="outbound") by
// callee; and what it served by caller group (Istio reporter="destination" by source).
func TestProfilesRED(t *testing.T) {
	t.Parallel()
	ratings := map[string]edge{"ratings": {calls: 128, errors: 7, count: 128, sumSeconds: 0.7298}}
	authors := map[string]edge{"authors": {calls: 181, count: 181, sumSeconds: 0.905}}
	for _, tc := range []struct {
		profile mesh.Profile
		pair    string
		version string
		want    red
	}{
		{mesh.Istio, "istio-v1", "v1", red{requests: 135, errors: 1, count: 135, sumSeconds: 4.4324,
			inbound: map[string]inbound{"productpage/v1": {135, 1}}}},
		{mesh.Istio, "istio-v2", "v2", red{requests: 141, errors: 15, count: 141, sumSeconds: 39.6404,
			edges: ratings, inbound: map[string]inbound{"productpage/v1": {141, 15}}}},
		{mesh.Linkerd, "linkerd-v1", "v1", red{requests: 384, errors: 4, count: 384, sumSeconds: 4.368, edges: authors}},
		{mesh.Linkerd, "linkerd-v2", "v2", red{requests: 245, errors: 48, count: 245, sumSeconds: 17.244, edges: authors}},
	} {
		t.Run(tc.pair, func(t *testing.T) {
			t.Parallel()
			fx := &fixture{}
			fx.load(t, tc.pair+"-0.txt")
			srv := httptest.NewServer(fx)
			defer srv.Close()

			var got red
			c, err := ingest.NewClient(ingest.ClientConfig{Service: "reviews", Version: tc.version,
				Publish: func(string, []byte) error { return nil },
				OnBatch: func(b *proto.Batch, _ error) {
					got = red{edges: map[string]edge{}, inbound: map[string]inbound{}}
					for _, s := range b.Series {
						if k, ok := proto.EdgeOf(s.Name, s.Labels); ok {
							e := got.edges[k.Callee]
							switch s.Name {
							case proto.SeriesEdgeCalls:
								e.calls += s.Value
							case proto.SeriesEdgeErrors:
								e.errors += s.Value
							case proto.SeriesEdgeLatency:
								e.count, e.sumSeconds = e.count+s.Hist.Count, e.sumSeconds+s.Hist.Sum
							}
							got.edges[k.Callee] = e
							continue
						}
						if svc, ver, ok := proto.CallerOf(s.Name, s.Labels); ok {
							in := got.inbound[svc+"/"+ver]
							if s.Name == proto.SeriesInboundRequests {
								in.requests += s.Value
							} else {
								in.errors += s.Value
							}
							got.inbound[svc+"/"+ver] = in
							continue
						}
						if len(s.Labels) > 0 {
							t.Errorf("series %s published with labels %v; want none", s.Name, s.Labels)
						}
						got.names = append(got.names, s.Name)
						switch s.Name {
						case proto.SeriesRequests:
							got.requests = s.Value
						case proto.SeriesErrors:
							got.errors = s.Value
						case proto.SeriesLatency:
							got.count, got.sumSeconds = s.Hist.Count, s.Hist.Sum
						}
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			s, err := ingest.NewScraper(ingest.ScraperConfig{URL: srv.URL + "/stats/prometheus", Rewriter: tc.profile.Rewriter(),
				Timeout: 10 * time.Second}, c, nil, nil) // one scrape under test, not the interval
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if err := s.Scrape(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(now.Add(time.Second), false); err != nil {
				t.Fatal(err)
			}
			if got.requests != 0 || got.count != 0 {
				t.Fatalf("first scrape published %+v; want baselines only", got)
			}
			fx.load(t, tc.pair+"-1.txt")
			if err := s.Scrape(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(now.Add(2*time.Second), false); err != nil {
				t.Fatal(err)
			}
			if got.requests != tc.want.requests || got.errors != tc.want.errors || got.count != tc.want.count {
				t.Errorf("got requests %v errors %v latency count %d; want %v %v %d",
					got.requests, got.errors, got.count, tc.want.requests, tc.want.errors, tc.want.count)
			}
			if math.Abs(got.sumSeconds-tc.want.sumSeconds) > 1e-9*tc.want.sumSeconds {
				t.Errorf("got latency sum %v s; want %v s", got.sumSeconds, tc.want.sumSeconds)
			}
			if len(got.edges) != len(tc.want.edges) {
				t.Errorf("got edges %+v; want %+v", got.edges, tc.want.edges)
			}
			for callee, w := range tc.want.edges {
				e := got.edges[callee]
				if e.calls != w.calls || e.errors != w.errors || e.count != w.count || math.Abs(e.sumSeconds-w.sumSeconds) > 1e-9 {
					t.Errorf("edge to %s: got %+v; want %+v", callee, e, w)
				}
			}
			for caller, w := range tc.want.inbound {
				if in := got.inbound[caller]; in != w {
					t.Errorf("inbound from %s: got %+v; want %+v", caller, in, w)
				}
			}
			if len(got.inbound) != len(tc.want.inbound) {
				t.Errorf("got inbound callers %+v; want %+v", got.inbound, tc.want.inbound)
			}
			slices.Sort(got.names)
			if want := []string{proto.SeriesErrors, proto.SeriesLatency, proto.SeriesRequests}; !slices.Equal(got.names, want) {
				t.Errorf("got series %v; want only %v (the proxy's own families dropped)", got.names, want)
			}
		})
	}
}

// TestIstioKeepsApplicationFamilies checks that what pilot-agent merges in from the
// application passes through, except families named like herd's RED series, and that the
// Linkerd profile keeps nothing but its RED.
func TestIstioKeepsApplicationFamilies(t *testing.T) {
	t.Parallel()
	names := []string{"jvm_memory_used_bytes", "envoy_server_live", "istio_agent_pilot_xds",
		proto.SeriesRequests, "istio_request_bytes", "orders_processed_total"}
	var fams []*dto.MetricFamily
	for _, n := range names {
		fams = append(fams, &dto.MetricFamily{Name: &n, Type: dto.MetricType_GAUGE.Enum()})
	}
	for p, want := range map[mesh.Profile][]string{
		mesh.Istio:   {"jvm_memory_used_bytes", "orders_processed_total"},
		mesh.Linkerd: nil,
	} {
		var kept []string
		for _, f := range p.Rewriter().Rewrite(slices.Clone(fams))[3:] { // after the three RED families
			kept = append(kept, f.GetName())
		}
		if !slices.Equal(kept, want) {
			t.Errorf("%s kept %v; want %v", p, kept, want)
		}
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]mesh.Profile{"": mesh.None, "none": mesh.None, "Istio": mesh.Istio, "linkerd": mesh.Linkerd} {
		if got, err := mesh.Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := mesh.Parse("consul"); err == nil {
		t.Error("Parse(consul) succeeded; want an error")
	}
}

// TestRequestFlowNames checks how proxy labels name callees and caller groups, and the
// bounds: past DefaultMaxCallees callees and DefaultMaxCallers callers, series are published
// under _other and _unknown and counted.
func TestRequestFlowNames(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	r := mesh.Istio.Rewriter().WithMetrics(set)
	ls := func(kv ...string) []proto.Label {
		var out []proto.Label
		for i := 0; i < len(kv); i += 2 {
			out = append(out, proto.Label{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		labels []proto.Label
		want   string
	}{
		{ls("destination_canonical_service", "ratings", "destination_service", "x.default.svc.cluster.local"), "ratings"},
		{ls("destination_canonical_service", "unknown", "destination_service", "httpbin.org:443", "destination_service_name", "PassthroughCluster"), "httpbin"},
		{ls("destination_canonical_service", "unknown", "destination_service_name", "details"), "details"},
		{ls("destination_canonical_service", "unknown"), proto.CalleeOther},
	} {
		if got := r.Publish(proto.SeriesEdgeCalls, tc.labels); len(got) != 1 || got[0].Value != tc.want {
			t.Errorf("edge of %v published as %v; want callee %s", tc.labels, got, tc.want)
		}
	}
	for _, tc := range []struct {
		labels []proto.Label
		want   string
	}{
		{ls("source_canonical_revision", "v3", "source_canonical_service", "productpage", "source_version", "v1"), "productpage/v3"},
		{ls("source_canonical_revision", "latest", "source_canonical_service", "productpage", "source_version", "v1"), "productpage/v1"},
		{ls("source_app", "web", "source_canonical_service", "unknown"), "web/"},
		{ls("source_canonical_service", "unknown", "source_workload", "unknown"), proto.CallerUnknown + "/"},
	} {
		svc, ver, _ := proto.CallerOf(proto.SeriesInboundRequests, r.Publish(proto.SeriesInboundRequests, tc.labels))
		if got := svc + "/" + ver; got != tc.want {
			t.Errorf("inbound of %v published as %s; want %s", tc.labels, got, tc.want)
		}
	}
	for i := range 100 {
		r.Publish(proto.SeriesEdgeCalls, ls("destination_canonical_service", "dep"+strconv.Itoa(i)))
		r.Publish(proto.SeriesInboundRequests, ls("source_canonical_revision", "v1", "source_canonical_service", "caller"+strconv.Itoa(i)))
	}
	if got := r.Publish(proto.SeriesEdgeCalls, ls("destination_canonical_service", "dep99")); got[0].Value != proto.CalleeOther {
		t.Errorf("the 100th callee published as %v; want %s past the bound", got, proto.CalleeOther)
	}
	// Callees: 3 named above and 100 more, over 64; callers: 3 above and 100 more.
	want := map[string]uint64{mesh.ReasonNoCallee: 1, mesh.ReasonTooManyCallees: 3 + 100 - mesh.DefaultMaxCallees + 1,
		mesh.ReasonNoCaller: 1, mesh.ReasonTooManyCallers: 3 + 100 - mesh.DefaultMaxCallers}
	if got := r.Stats(); !maps.Equal(got, want) {
		t.Errorf("stats %v; want %v", got, want)
	}
	for reason, n := range want {
		if got := set.GetOrCreateCounter(`herd_agent_mesh_series_other_total{reason="` + reason + `"}`).Get(); got != n {
			t.Errorf("herd_agent_mesh_series_other_total{reason=%q} %d; want %d", reason, got, n)
		}
	}
}
