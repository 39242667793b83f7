package node

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herd-dev/herd/ingest/otlp"
	"github.com/herd-dev/herd/internal/otlptest"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// otlpNode runs an all-in-one node with OTLP listeners on random ports.
func otlpNode(t *testing.T, edit func(*Config)) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), "127.0.0.1:0"
	cfg.OTLP.HTTPListen, cfg.OTLP.GRPCListen = "127.0.0.1:0", "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	return startNode(t, cfg)
}

// seriesSums totals closed windows (corrections included) per group and series: counter
// values and histogram counts.
type seriesSums struct {
	mu   sync.Mutex
	sums map[[2]string]map[string]float64
}

func collectSeries(t *testing.T, url string) *seriesSums {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ss := &seriesSums{sums: map[[2]string]map[string]float64{}}
	if _, err := nc.Subscribe(proto.SubjectRollupAll, func(m *nats.Msg) {
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			t.Errorf("bad window on %s: %v", m.Subject, err)
			return
		}
		ss.mu.Lock()
		defer ss.mu.Unlock()
		k := [2]string{w.Service, w.Version}
		if ss.sums[k] == nil {
			ss.sums[k] = map[string]float64{}
		}
		for _, s := range w.Series {
			switch s.Kind {
			case proto.KindCounter:
				ss.sums[k][proto.SeriesString(s.Name, s.Labels)] += s.Value
			case proto.KindHistogram:
				ss.sums[k][proto.SeriesString(s.Name, s.Labels)] += float64(s.Count)
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

// diff returns the first difference between the windows' totals and what was recorded.
func (ss *seriesSums) diff(service string, rec *otlptest.Recorded) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for v, m := range rec.Sums() {
		for s, want := range m {
			if got := ss.sums[[2]string{service, v}][s]; got != want {
				return fmt.Errorf("%s/%s %s: windows total %v; the SDK recorded %v", service, v, s, got, want)
			}
		}
	}
	return nil
}

// otlpGroup drives instances of one version through the real OpenTelemetry SDK: each
// records perTick requests every 10 ms with the error rate (×1000) of errPermille and lives
// for life (0: until Stop), replaced by a new instance as it ends.
type otlpGroup struct {
	cfg         otlptest.Config
	perTick     int
	life        time.Duration
	errPermille atomic.Int64
	rec         *otlptest.Recorded
	wg          sync.WaitGroup
	stop        chan struct{}
	started     atomic.Int64
	errs        chan error
	// calls and rpcCalls are the outbound calls each request makes, to payments over HTTP
	// (otlptest.Instance.Call) and to inventory over gRPC (otlptest.Instance.RPC);
	// callErrPermille is the share (×1000) of them that fail.
	calls, rpcCalls, callErrPermille atomic.Int64
}

func startOTLPGroup(cfg otlptest.Config, instances, perTick int, errRate float64, life time.Duration, rec *otlptest.Recorded, opts ...func(*otlpGroup)) *otlpGroup {
	g := &otlpGroup{cfg: cfg, perTick: perTick, life: life, rec: rec, stop: make(chan struct{}), errs: make(chan error, 64)}
	g.errPermille.Store(int64(errRate * 1000))
	for _, o := range opts {
		o(g)
	}
	for range instances {
		g.wg.Go(g.slot)
	}
	return g
}

// slot runs instances one after the other until Stop.
func (g *otlpGroup) slot() {
	ctx := context.Background()
	for {
		select {
		case <-g.stop:
			return
		default:
		}
		n := g.started.Add(1)
		c := g.cfg
		c.Instance = fmt.Sprintf("%s-%s-%d", c.Service, c.Version, n)
		in, err := otlptest.Start(ctx, c)
		if err != nil {
			g.errs <- err
			return
		}
		rng := rand.New(rand.NewPCG(uint64(n), uint64(len(c.Version))))
		var end <-chan time.Time
		if g.life > 0 {
			end = time.After(g.life/2 + time.Duration(rng.Int64N(int64(g.life))))
		}
		tick := time.NewTicker(10 * time.Millisecond)
	run:
		for {
			select {
			case <-g.stop:
				break run
			case <-end:
				break run
			case <-tick.C:
				for range g.perTick {
					code := 200
					if rng.Int64N(1000) < g.errPermille.Load() {
						code = 500
					}
					in.Serve(ctx, code, math.Exp(rng.NormFloat64()*0.5)*0.04)
					if c.SemconvOnly {
						g.rec.AddSemconv(c.Version, code)
					} else {
						g.rec.Add(c.Version, code)
					}
					g.outbound(ctx, in, c.Version, rng)
				}
			}
		}
		tick.Stop()
		if err := in.Shutdown(ctx); err != nil {
			g.errs <- fmt.Errorf("instance %s: shutdown: %w", c.Instance, err)
		}
	}
}

// outbound makes one request's outbound calls and records them.
func (g *otlpGroup) outbound(ctx context.Context, in *otlptest.Instance, version string, rng *rand.Rand) {
	for range g.calls.Load() {
		failed := rng.Int64N(1000) < g.callErrPermille.Load()
		code := 200
		if failed {
			code = 503
		} else if rng.Int64N(50) == 0 {
			code = 404 // the caller's fault: a call, not a failed one
		}
		in.Call(ctx, "payments", code, math.Exp(rng.NormFloat64()*0.5)*0.01)
		g.rec.AddCall(version, "payments", failed)
	}
	for range g.rpcCalls.Load() {
		failed := rng.Int64N(1000) < g.callErrPermille.Load()
		code := 0 // OK
		if failed {
			code = 14 // UNAVAILABLE
		}
		in.RPC(ctx, "Inventory", code, math.Exp(rng.NormFloat64()*0.5)*5)
		g.rec.AddCall(version, "inventory", failed)
	}
}

// Stop stops every instance (each exports its last values) and returns the first error.
func (g *otlpGroup) Stop() error {
	close(g.stop)
	g.wg.Wait()
	select {
	case err := <-g.errs:
		return err
	default:
		return nil
	}
}

// TestOTLPWindowsExact runs four services through a real node's OTLP receiver, one for each
// transport (HTTP, gRPC) and temporality (cumulative, delta), each with two versions and
// instances replaced every second or so, and checks that the closed windows' totals equal
// what the OpenTelemetry SDK recorded: every request counted and every latency observed,
// exactly.
func TestOTLPWindowsExact(t *testing.T) {
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
		{name: "payments", transport: "grpc", delta: true},
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
				Service: sv.name, Version: v, Interval: 250 * time.Millisecond}, 2, 3, 0.02, time.Second, &sv.rec))
		}
	}
	time.Sleep(3 * time.Second) // the load's duration, not a wait for a condition
	started := int64(0)
	for _, g := range groups {
		if err := g.Stop(); err != nil {
			t.Fatal(err)
		}
		started += g.started.Load()
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
	if len(st.PointsRefused) > 0 || len(st.RequestsRefused) > 0 {
		t.Errorf("OTLP refused points %v, requests %v; want none", st.PointsRefused, st.RequestsRefused)
	}
	var requests float64
	for i := range services {
		for _, m := range services[i].rec.Sums() {
			for s, v := range m {
				if strings.HasPrefix(s, otlptest.Requests+"{") {
					requests += v
				}
			}
		}
	}
	t.Logf("%d instances over 3 s, %.0f requests recorded; %d OTLP points in %d batches; windows equal the SDK's totals; rollup refused %v",
		started, requests, st.Points, st.Batches, n.Rollup().Stats().RefusedBy)
}

// TestOTLPCanaryRollback rolls back a canary whose error rate triples, seen through OTLP
// alone: baseline and canary are services instrumented with the OpenTelemetry SDK under
// names of their own, and the policy's selectors name them.
func TestOTLPCanaryRollback(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs instrumented services in real time")
	}
	var hookAt atomic.Int64
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hookAt.CompareAndSwap(0, time.Now().UnixNano())
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	policy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(policy, []byte(`{"services": {"checkout": {
  "requests": "`+otlptest.Requests+`",
  "errors":   "`+otlptest.Requests+`{`+otlptest.StatusCode+`=~\"5..\"}",
  "latency":  "`+otlptest.Duration+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	n := otlpNode(t, func(c *Config) {
		c.Detect.PolicyFile = policy
		c.Deliver.Webhooks = []string{recv.URL + "/hook"}
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
	base := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: ep, Service: "checkout", Version: "1.0.0", Interval: 250 * time.Millisecond}, 3, 10, 0.01, 0, &rec)
	canary := startOTLPGroup(otlptest.Config{Transport: "grpc", Endpoint: n.OTLPGRPCAddr(), Service: "checkout", Version: "1.1.0", Interval: 250 * time.Millisecond}, 2, 10, 0.01, 0, &rec)
	defer base.Stop()
	defer canary.Stop()
	// Past the instances' warm-up (-rollup.warmup, 5 s), the canary's errors triple.
	time.Sleep(6 * time.Second) // the healthy phase's duration, not a wait for a condition
	if at := hookAt.Load(); at != 0 {
		t.Fatalf("rollback before the onset (a false rollback of an equal canary)")
	}
	onset := time.Now()
	canary.errPermille.Store(30)
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if hookAt.Load() == 0 {
			return errorf("no rollback webhook yet")
		}
		return nil
	})
	took := time.Unix(0, hookAt.Load()).Sub(onset)
	var decided proto.Verdict
	for _, v := range n.Detector().Verdicts() {
		if v.State == proto.StateRollback {
			decided = v
		}
	}
	t.Logf("canary with 3× errors over OTLP: rollback webhook %s after the onset (%s)", took.Round(time.Millisecond), decided.Evidence.Decisive)
	if decided.State != proto.StateRollback || decided.Evidence.Decisive != "errors" {
		t.Errorf("verdict %s decided by %q; want a rollback decided by the errors test", decided.State, decided.Evidence.Decisive)
	}
	perftest.Within(t, "rollback webhook after the onset over OTLP (s)", took.Seconds(), 10)
}

// TestOTLPBadInput sends malformed requests, a flood of resource attribute values (instance
// ids and versions) and requests over the size limit over both transports while a good
// service exports through the SDK: each is refused and counted by reason, and the good
// service's windows stay exact.
func TestOTLPBadInput(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs an instrumented service in real time")
	}
	n := otlpNode(t, func(c *Config) {
		c.OTLP.MaxInstancesPerService = 50
		c.OTLP.MaxRequestBytes = 256 << 10
	})
	ss := collectSeries(t, n.NATSURL())
	ep := n.OTLPHTTPURL()[len("http://"):]
	var rec otlptest.Recorded
	good := startOTLPGroup(otlptest.Config{Transport: "http", Endpoint: ep, Service: "checkout", Version: "1.0.0", Interval: 250 * time.Millisecond}, 2, 5, 0.02, time.Second, &rec)

	post := func(ct string, body []byte) *http.Response {
		t.Helper()
		resp, err := http.Post(n.OTLPHTTPURL()+otlp.PathMetrics, ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	// Malformed bodies in both encodings.
	for _, b := range []struct{ ct, body string }{{"application/x-protobuf", "\x0a\xff\xff\xff\xff\x0f"}, {"application/json", `{"resourceMetrics": [`}} {
		if resp := post(b.ct, []byte(b.body)); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("malformed %s: status %d; want 400", b.ct, resp.StatusCode)
		}
	}
	// A flood of instance ids and versions of one service.
	flood := pmetric.NewMetrics()
	for i := range 300 {
		md := seedOTLP("flood", fmt.Sprintf("v%d", i%100), fmt.Sprintf("i-%d", i))
		md.ResourceMetrics().MoveAndAppendTo(flood.ResourceMetrics())
	}
	body, err := pmetricotlp.NewExportRequestFromMetrics(flood).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	if resp := post("application/x-protobuf", body); resp.StatusCode != http.StatusOK {
		t.Errorf("flood: status %d; want 200 with a partial success", resp.StatusCode)
	}
	// Over the size limit, over HTTP and gRPC.
	big := pmetric.NewMetrics()
	for i := range 5000 {
		seedOTLP("big", "1", fmt.Sprintf("i-%d", i)).ResourceMetrics().MoveAndAppendTo(big.ResourceMetrics())
	}
	bigReq := pmetricotlp.NewExportRequestFromMetrics(big)
	body, err = bigReq.MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	if resp := post("application/x-protobuf", body); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("over-size HTTP request: status %d; want 413", resp.StatusCode)
	}
	cc, err := grpc.NewClient(n.OTLPGRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := pmetricotlp.NewGRPCClient(cc).Export(context.Background(), bigReq); err == nil {
		t.Error("over-size gRPC request accepted; want ResourceExhausted")
	}
	time.Sleep(2 * time.Second) // the good service's load goes on past the bad input
	if err := good.Stop(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error { return ss.diff("checkout", &rec) })
	st := n.OTLP().Stats()
	t.Logf("OTLP refusals: requests %v, points %v; rollup refused %v", st.RequestsRefused, st.PointsRefused, n.Rollup().Stats().RefusedBy)
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		st = n.OTLP().Stats()
		if st.RequestsRefused[otlp.ReasonMalformed] != 2 || st.RequestsRefused[otlp.ReasonOversized] != 2 {
			return fmt.Errorf("requests refused %v; want malformed 2 and oversized 2 (one HTTP, one gRPC)", st.RequestsRefused)
		}
		return nil
	})
	if got := st.PointsRefused[otlp.ReasonTooManyInstances]; got != 250*4 {
		t.Errorf("points refused as too_many_instances: %d; want %d (250 instances over the bound of 50, 4 points each)", got, 250*4)
	}
	// The 50 instances admitted carry 50 versions; the rollup holds at most
	// -rollup.max-versions-per-service (32) of one service, so each of the other 18 is refused
	// or, when its batch comes after one of the first 32 has gone idle (2 s: the flood sends
	// once, and a starved machine delivers slowly), takes that one's place.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		st := n.Rollup().Stats()
		refused, evicted := st.RefusedBy["too_many_versions"], st.GroupsForgotten["evicted"]
		if refused+evicted < 18 {
			return fmt.Errorf("the rollup refused %d batches of new flood versions and evicted %d idle groups; want at least 18 between them (50 versions over a quota of 32)", refused, evicted)
		}
		return nil
	})
}

// seedOTLP builds one resource with a cumulative counter, a gauge, an exponential and an
// explicit-bucket histogram point stamped now.
func seedOTLP(service, version, instance string) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	a := rm.Resource().Attributes()
	a.PutStr("service.name", service)
	a.PutStr("service.version", version)
	a.PutStr("service.instance.id", instance)
	ms := rm.ScopeMetrics().AppendEmpty().Metrics()
	now := uint64(time.Now().UnixNano())
	s := ms.AppendEmpty()
	s.SetName("requests")
	sum := s.SetEmptySum()
	sum.SetIsMonotonic(true)
	sum.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	dp := sum.DataPoints().AppendEmpty()
	dp.SetStartTimestamp(pcommonTS(now - 250e6))
	dp.SetTimestamp(pcommonTS(now))
	dp.SetIntValue(7)
	dp.Attributes().PutInt("code", 200)
	g := ms.AppendEmpty()
	g.SetName("inflight")
	gp := g.SetEmptyGauge().DataPoints().AppendEmpty()
	gp.SetDoubleValue(3)
	gp.SetTimestamp(pcommonTS(now))
	h := ms.AppendEmpty()
	h.SetName("latency")
	eh := h.SetEmptyExponentialHistogram()
	eh.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	ep := eh.DataPoints().AppendEmpty()
	ep.SetTimestamp(pcommonTS(now))
	ep.SetStartTimestamp(pcommonTS(now - 250e6))
	ep.SetScale(5)
	ep.Positive().SetOffset(-100)
	ep.Positive().BucketCounts().FromRaw([]uint64{1, 0, 2})
	ep.SetCount(3)
	ep.SetSum(0.3)
	x := ms.AppendEmpty()
	x.SetName("size")
	xh := x.SetEmptyHistogram()
	xh.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	xp := xh.DataPoints().AppendEmpty()
	xp.SetTimestamp(pcommonTS(now))
	xp.ExplicitBounds().FromRaw([]float64{0.1, 1, 10})
	xp.BucketCounts().FromRaw([]uint64{1, 2, 3, 4})
	xp.SetCount(10)
	xp.SetSum(40)
	return md
}

func pcommonTS(ns uint64) pcommon.Timestamp { return pcommon.Timestamp(ns) }
