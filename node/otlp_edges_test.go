package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"

	"github.com/herd-dev/herd/ingest/otlp"
	"github.com/herd-dev/herd/internal/otlptest"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
	"github.com/herd-dev/herd/web"
)

// withCalls makes each request of a group call payments calls times over HTTP and inventory
// rpcCalls times over gRPC, errPermille (×1000) of them failing.
func withCalls(calls, rpcCalls, errPermille int64) func(*otlpGroup) {
	return func(g *otlpGroup) {
		g.calls.Store(calls)
		g.rpcCalls.Store(rpcCalls)
		g.callErrPermille.Store(errPermille)
	}
}

// TestOTLPEdgesExact runs four calling services through a real node's OTLP receiver, one for
// each transport and temporality, with two versions each and instances replaced every second
// or so. Every request makes two HTTP calls to payments (http.client.request.duration) and
// one gRPC call to inventory (rpc.client.duration, in milliseconds); the closed windows' edge
// totals (calls, errors, latency observations) equal what the OpenTelemetry SDK recorded.
func TestOTLPEdgesExact(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs instrumented services in real time")
	}
	n := otlpNode(t, nil)
	ss := collectSeries(t, n.NATSURL())
	services := []struct {
		name, transport string
		delta           bool
		rec             otlptest.Recorded
	}{
		{name: "checkout", transport: "http"},
		{name: "cart", transport: "http", delta: true},
		{name: "search", transport: "grpc"},
		{name: "orders", transport: "grpc", delta: true},
	}
	var groups []*otlpGroup
	for i := range services {
		sv := &services[i]
		ep := n.OTLPHTTPURL()[len("http://"):]
		if sv.transport == "grpc" {
			ep = n.OTLPGRPCAddr()
		}
		for _, v := range []string{"1.0.0", "1.1.0"} {
			groups = append(groups, startOTLPGroup(otlptest.Config{Transport: sv.transport, Endpoint: ep, Delta: sv.delta,
				Service: sv.name, Version: v, Interval: 250 * time.Millisecond}, 2, 1, 0.02, time.Second, &sv.rec, withCalls(2, 1, 30)))
		}
	}
	time.Sleep(3 * time.Second) // the load's duration, not a wait for a condition
	for _, g := range groups {
		if err := g.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		for i := range services {
			if err := ss.diff(services[i].name, &services[i].rec); err != nil {
				return fmt.Errorf("%s over %s (delta %v): %w", services[i].name, services[i].transport, services[i].delta, err)
			}
		}
		return nil
	})
	st := n.OTLP().Stats()
	if len(st.PointsRefused) > 0 || len(st.RequestsRefused) > 0 || len(st.EdgesOther) > 0 {
		t.Errorf("OTLP refused points %v, requests %v, edges under _other %v; want none", st.PointsRefused, st.RequestsRefused, st.EdgesOther)
	}
	var calls, errs float64
	for i := range services {
		for _, m := range services[i].rec.Sums() {
			for s, v := range m {
				switch {
				case strings.HasPrefix(s, proto.SeriesEdgeCalls):
					calls += v
				case strings.HasPrefix(s, proto.SeriesEdgeErrors):
					errs += v
				}
			}
		}
	}
	if calls == 0 || errs == 0 {
		t.Fatalf("recorded %v calls, %v failed; want both > 0", calls, errs)
	}
	t.Logf("%.0f calls (%.0f failed) recorded by the SDK over 3 s; windows' edge totals equal them; %d OTLP points in %d batches",
		calls, errs, st.Points, st.Batches)
}

// webhookAt serves a webhook receiver and returns the unix ns of its first call (0 before).
func webhookAt(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var at atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at.CompareAndSwap(0, time.Now().UnixNano())
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, &at
}

// rollbackAfter waits for the rollback webhook and returns the decided rollback verdict and
// how long after onset the webhook came.
func rollbackAfter(t *testing.T, n *Node, hookAt *atomic.Int64, onset time.Time) (proto.Verdict, time.Duration) {
	t.Helper()
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if hookAt.Load() == 0 {
			return errorf("no rollback webhook yet")
		}
		return nil
	})
	var decided proto.Verdict
	for _, v := range n.Detector().Verdicts() {
		if v.State == proto.StateRollback {
			decided = v
		}
	}
	return decided, time.Unix(0, hookAt.Load()).Sub(onset)
}

// TestOTLPEdgesFanoutRollback rolls back a canary that calls its dependency five times per
// request where the baseline calls it once, its own requests, errors and latency unchanged,
// seen through OTLP alone: services instrumented with the OpenTelemetry SDK under semantic-
// convention names only (http.server.request.duration, http.client.request.duration), no
// policy file. The verdict names the edge.
func TestOTLPEdgesFanoutRollback(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs instrumented services in real time")
	}
	hook, hookAt := webhookAt(t)
	n := otlpNode(t, func(c *Config) {
		c.Deliver.Webhooks = []string{hook.URL + "/hook"}
		c.Deliver.WebhookSecrets = []string{"test-secret"}
		// A canary whose exporters a loaded machine starves for a second is not crash-looping:
		// the test is about another decision.
		c.Detect.GoneAfter = 5 * time.Second
	})
	if err := n.Announce(proto.Deployment{Service: "checkout", Baseline: "1.0.0", Canary: "1.1.0"}); err != nil {
		t.Fatal(err)
	}
	var rec otlptest.Recorded
	ep := n.OTLPHTTPURL()[len("http://"):]
	base := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: ep, Service: "checkout", Version: "1.0.0",
		Interval: 250 * time.Millisecond, SemconvOnly: true}, 3, 3, 0.01, 0, &rec, withCalls(1, 0, 5))
	canary := startOTLPGroup(otlptest.Config{Transport: "grpc", Endpoint: n.OTLPGRPCAddr(), Service: "checkout", Version: "1.1.0",
		Interval: 250 * time.Millisecond, SemconvOnly: true}, 2, 3, 0.01, 0, &rec, withCalls(1, 0, 5))
	defer base.Stop()
	defer canary.Stop()
	// Past the instances' warm-up (-rollup.warmup, 5 s), the canary fans out.
	time.Sleep(6 * time.Second) // the healthy phase's duration, not a wait for a condition
	if hookAt.Load() != 0 {
		t.Fatalf("rollback before the onset (a false rollback of an equal canary)")
	}
	onset := time.Now()
	canary.calls.Store(5)
	decided, took := rollbackAfter(t, n, hookAt, onset)
	t.Logf("canary calling payments 5× per request over OTLP: rollback webhook %s after the onset (%s): %s",
		took.Round(time.Millisecond), decided.Evidence.Decisive, decided.Sentence)
	if decided.State != proto.StateRollback || decided.Evidence.Decisive != "edge_fanout payments" || !strings.Contains(decided.Sentence, "payments") {
		t.Errorf("verdict %s decided by %q (%s); want a rollback decided by edge_fanout payments, naming the edge",
			decided.State, decided.Evidence.Decisive, decided.Sentence)
	}
	if p := n.Detector().Signals("checkout").Profile; p != "otel-http" {
		t.Errorf("checkout's signals profile %q; want otel-http", p)
	}
	perftest.Within(t, "fan-out rollback webhook after the onset over OTLP (s)", took.Seconds(), 10)
	// The dependency graph shows both versions' edges to payments, the canary's at ~5× the
	// calls per request.
	checkFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get(n.HTTPURL() + "/api/v1/graph")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var g web.Graph
		if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
			return fmt.Errorf("cannot decode the graph: %w", err)
		}
		rps := map[string]float64{}
		for _, e := range g.Edges {
			if e.Caller == "checkout" && e.Callee == "payments" {
				rps[e.Version] = e.RPS
			}
		}
		if rps["1.0.0"] <= 0 || rps["1.1.0"] <= 0 {
			return fmt.Errorf("graph edges checkout → payments by version %v; want both versions' with calls", rps)
		}
		t.Logf("graph: checkout → payments %.0f calls/s from 1.0.0 (3 instances), %.0f from 1.1.0 (2 instances)", rps["1.0.0"], rps["1.1.0"])
		return nil
	})
}

// signalSums totals the signals of closed windows (corrections included) per group, read
// through one definition.
type signalSums struct {
	mu                       sync.Mutex
	requests, errors, counts map[[2]string]float64 // by service, version
	herdNamed                int                   // series with herd's own RED names
}

func collectSignals(t *testing.T, url string, def *signals.Definition) *signalSums {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ss := &signalSums{requests: map[[2]string]float64{}, errors: map[[2]string]float64{}, counts: map[[2]string]float64{}}
	if _, err := nc.Subscribe(proto.SubjectRollupAll, func(m *nats.Msg) {
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			t.Errorf("bad window on %s: %v", m.Subject, err)
			return
		}
		var v signals.Values
		def.Read(w.Series, &v)
		ss.mu.Lock()
		defer ss.mu.Unlock()
		k := [2]string{w.Service, w.Version}
		ss.requests[k] += v.Requests
		ss.errors[k] += v.Errors
		ss.counts[k] += float64(v.Latency.Count)
		for _, s := range w.Series {
			switch s.Name {
			case proto.SeriesRequests, proto.SeriesErrors, proto.SeriesLatency:
				ss.herdNamed++
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ss
}

// TestOTLPSemconvProfile runs a service instrumented with the OpenTelemetry SDK under
// OpenTelemetry's HTTP semantic conventions only (http.server.request.duration with
// http.response.status_code, http.route and http.request.method; service.name and
// service.version), without a policy file, through the OTLP receiver: the detector picks the
// otel-http profile, the windows' requests, errors and latency observations read through it
// equal what the SDK recorded, and a canary whose errors triple is rolled back by the
// profile's errors test. No series carries herd's own names.
func TestOTLPSemconvProfile(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs instrumented services in real time")
	}
	hook, hookAt := webhookAt(t)
	n := otlpNode(t, func(c *Config) {
		c.Deliver.Webhooks = []string{hook.URL + "/hook"}
		c.Deliver.WebhookSecrets = []string{"test-secret"}
		// A canary whose exporters a loaded machine starves for a second is not crash-looping:
		// the test is about another decision.
		c.Detect.GoneAfter = 5 * time.Second
	})
	profile := signals.Profile("otel-http")
	ss := collectSignals(t, n.NATSURL(), profile)
	if err := n.Announce(proto.Deployment{Service: "checkout", Baseline: "1.0.0", Canary: "1.1.0"}); err != nil {
		t.Fatal(err)
	}
	var rec, churnRec otlptest.Recorded
	ep := n.OTLPHTTPURL()[len("http://"):]
	// checkout's baseline exports cumulative over HTTP, its canary delta over gRPC; cart's
	// instances are replaced every second or so (too young for the detector, counted all the
	// same).
	base := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: ep, Service: "checkout", Version: "1.0.0",
		Interval: 250 * time.Millisecond, SemconvOnly: true}, 3, 10, 0.01, 0, &rec)
	canary := startOTLPGroup(otlptest.Config{Transport: "grpc", Endpoint: n.OTLPGRPCAddr(), Service: "checkout", Version: "1.1.0",
		Interval: 250 * time.Millisecond, SemconvOnly: true, Delta: true}, 2, 10, 0.01, 0, &rec)
	churn := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: ep, Service: "cart", Version: "2.0.0",
		Interval: 250 * time.Millisecond, SemconvOnly: true}, 2, 2, 0.05, time.Second, &churnRec)
	time.Sleep(6 * time.Second) // past the warm-up: the healthy phase's duration, not a wait for a condition
	if hookAt.Load() != 0 {
		for _, g := range []*otlpGroup{base, canary, churn} {
			_ = g.Stop()
		}
		t.Fatalf("rollback before the onset (a false rollback of an equal canary)")
	}
	onset := time.Now()
	canary.errPermille.Store(30)
	decided, took := rollbackAfter(t, n, hookAt, onset)
	for _, g := range []*otlpGroup{base, canary, churn} {
		if err := g.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("canary with 3× errors, semantic conventions only: rollback webhook %s after the onset (%s): %s",
		took.Round(time.Millisecond), decided.Evidence.Decisive, decided.Sentence)
	if decided.State != proto.StateRollback || decided.Evidence.Decisive != "errors" {
		t.Errorf("verdict %s decided by %q; want a rollback decided by the errors test", decided.State, decided.Evidence.Decisive)
	}
	if p := n.Detector().Signals("checkout").Profile; p != profile.Profile {
		t.Errorf("checkout's signals profile %q; want %s", p, profile.Profile)
	}
	perftest.Within(t, "semconv-only 3× error rollback webhook after the onset over OTLP (s)", took.Seconds(), 10)

	// What the SDK recorded, per group: requests, the 5xx ones, latency observations.
	want := map[[2]string][3]float64{}
	for svc, r := range map[string]*otlptest.Recorded{"checkout": &rec, "cart": &churnRec} {
		for v, m := range r.Sums() {
			var w [3]float64
			for s, c := range m {
				w[0] += c
				if strings.Contains(s, `http.response.status_code="5`) {
					w[1] += c
				}
			}
			w[2] = w[0]
			want[[2]string{svc, v}] = w
		}
	}
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		for k, w := range want {
			if got := [3]float64{ss.requests[k], ss.errors[k], ss.counts[k]}; got != w {
				return fmt.Errorf("%s %s: windows' requests, errors, latency count %v; the SDK recorded %v", k[0], k[1], got, w)
			}
		}
		return nil
	})
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.herdNamed != 0 {
		t.Errorf("%d windows' series carry herd's own RED names; want none", ss.herdNamed)
	}
	t.Logf("windows read through %s equal the SDK's totals: %v (requests, errors, latency count by group)", profile.Profile, want)
}

// TestOTLPEdgesCalleeFlood has one group call 20,000 distinct callees (10 instances, 2,000
// server.address values each, over OTLP/HTTP) while a service instrumented with the SDK
// exports beside it: the flood's edges are bounded to -otlp.max-callees-per-group callees
// plus _other, the folded points counted, its calls still all counted, and the good
// service's windows exact. (ingest/otlp's TestClientMetricsEdgesFlood takes 100,000 callees
// through the receiver alone: a node's real-time tests running beside this one would starve.)
func TestOTLPEdgesCalleeFlood(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs an instrumented service in real time")
	}
	n := otlpNode(t, nil)
	ss := collectSeries(t, n.NATSURL())
	var rec otlptest.Recorded
	good := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: n.OTLPHTTPURL()[len("http://"):], Service: "checkout",
		Version: "1.0.0", Interval: 250 * time.Millisecond}, 2, 5, 0.02, time.Second, &rec, withCalls(1, 1, 20))
	const instances, perInstance = 10, 2000
	for i := range instances {
		md := pmetric.NewMetrics()
		rm := md.ResourceMetrics().AppendEmpty()
		a := rm.Resource().Attributes()
		a.PutStr("service.name", "flood")
		a.PutStr("service.version", "1.0.0")
		a.PutStr("service.instance.id", fmt.Sprintf("i-%d", i))
		m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
		m.SetName(otlp.MetricHTTPClientDuration)
		m.SetUnit("s")
		h := m.SetEmptyHistogram()
		h.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
		now := time.Now()
		for j := range perInstance {
			dp := h.DataPoints().AppendEmpty()
			dp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-250 * time.Millisecond)))
			dp.SetTimestamp(pcommon.NewTimestampFromTime(now))
			dp.ExplicitBounds().FromRaw([]float64{0.01, 0.1})
			dp.BucketCounts().FromRaw([]uint64{0, 1, 0})
			dp.SetCount(1)
			dp.SetSum(0.05)
			dp.Attributes().PutStr("server.address", fmt.Sprintf("dep-%d-%d.shop.svc", i, j))
			dp.Attributes().PutInt("http.response.status_code", 200)
		}
		body, err := pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post(n.OTLPHTTPURL()+otlp.PathMetrics, "application/x-protobuf", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("flood request %d: status %d; want 200", i, resp.StatusCode)
		}
	}
	time.Sleep(time.Second) // the good service's load goes on past the flood
	if err := good.Stop(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error { return ss.diff("checkout", &rec) })
	var calls, other float64
	callees := 0
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		calls, other, callees = 0, 0, 0
		for s, v := range ss.sums[[2]string{"flood", "1.0.0"}] {
			if strings.HasPrefix(s, proto.SeriesEdgeCalls) {
				calls += v
				callees++
				if strings.Contains(s, `"`+proto.CalleeOther+`"`) {
					other = v
				}
			}
		}
		if calls != instances*perInstance {
			return fmt.Errorf("flood: windows hold %v calls; want %d", calls, instances*perInstance)
		}
		return nil
	})
	st := n.OTLP().Stats()
	limit := otlp.DefaultMaxCalleesPerGroup
	if callees != limit+1 || other != float64(instances*perInstance-limit) || st.EdgesOther[otlp.EdgeReasonTooManyCallees] != uint64(instances*perInstance-limit) {
		t.Errorf("flood: %d callees, %v calls under %s, %v counted; want %d callees and %s, %d calls under it, counted",
			callees, other, proto.CalleeOther, st.EdgesOther, limit, proto.CalleeOther, instances*perInstance-limit)
	}
	if len(st.PointsRefused) > 0 {
		t.Errorf("OTLP refused points %v; want none", st.PointsRefused)
	}
	t.Logf("%d callees of one group: %d edge series, %v calls under %s (herd_otlp_edge_points_other_total %v); checkout exact beside it",
		instances*perInstance, callees, other, proto.CalleeOther, st.EdgesOther)
}
