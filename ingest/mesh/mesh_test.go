package mesh_test

import (
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

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

// red is what one batch carried.
type red struct {
	requests, errors float64
	count            uint64
	sumSeconds       float64
	names            []string
}

// TestProfilesRED scrapes each recorded pair of a meshed pod's proxy expositions through the
// profile and checks the RED of the batch covering the second scrape: the destination's
// requests, errors and latency for that version, and nothing of the traffic the pod sent.
func TestProfilesRED(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		profile mesh.Profile
		pair    string
		version string
		want    red
	}{
		{mesh.Istio, "istio-v1", "v1", red{requests: 135, errors: 1, count: 135, sumSeconds: 4.4324}},
		{mesh.Istio, "istio-v2", "v2", red{requests: 141, errors: 15, count: 141, sumSeconds: 39.6404}},
		{mesh.Linkerd, "linkerd-v1", "v1", red{requests: 384, errors: 4, count: 384, sumSeconds: 4.368}},
		{mesh.Linkerd, "linkerd-v2", "v2", red{requests: 245, errors: 48, count: 245, sumSeconds: 17.244}},
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
					got = red{}
					for _, s := range b.Series {
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
			s, err := ingest.NewScraper(ingest.ScraperConfig{URL: srv.URL + "/stats/prometheus", Rewriter: tc.profile.Rewriter()}, c, nil, nil)
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
