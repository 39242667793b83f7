package otlp

import (
	"fmt"
	"math"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/herd-dev/herd/proto"
)

// edgeLog totals the edge series of every batch, and remembers every other series name.
type edgeLog struct {
	dec     proto.Decoder
	b       proto.Batch
	calls   map[string]float64 // by callee
	errors  map[string]float64
	latency map[string]*proto.Histogram
	other   []string
	dups    int // edge series named twice in one batch
}

func newEdgeLog() *edgeLog {
	return &edgeLog{calls: map[string]float64{}, errors: map[string]float64{}, latency: map[string]*proto.Histogram{}}
}

func (l *edgeLog) publish(_ string, data []byte) error {
	if err := l.dec.Decode(data, &l.b); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, s := range l.b.Series {
		k, ok := proto.EdgeOf(s.Name, s.Labels)
		if !ok {
			l.other = append(l.other, s.Name)
			continue
		}
		if id := proto.SeriesString(s.Name, s.Labels); seen[id] {
			l.dups++
		} else {
			seen[id] = true
		}
		switch s.Name {
		case proto.SeriesEdgeCalls:
			l.calls[k.Callee] += s.Value
		case proto.SeriesEdgeErrors:
			l.errors[k.Callee] += s.Value
		case proto.SeriesEdgeLatency:
			h := l.latency[k.Callee]
			if h == nil {
				h = &proto.Histogram{}
				l.latency[k.Callee] = h
			}
			h.Merge(&s.Hist)
		}
	}
	return nil
}

// clientMetrics builds one resource of checkout 2.0 instance a, exporting at ts.
func clientMetrics(ts time.Time) (pmetric.Metrics, pmetric.MetricSlice) {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	a := rm.Resource().Attributes()
	a.PutStr("service.name", "checkout")
	a.PutStr("service.version", "2.0")
	a.PutStr("service.instance.id", "a")
	return md, rm.ScopeMetrics().AppendEmpty().Metrics()
}

// explicitPoint appends a point of an explicit-bucket histogram (bounds in the metric's
// unit) with the given attributes.
func explicitPoint(h pmetric.Histogram, start, ts time.Time, bounds []float64, counts []uint64, sum float64, attrs map[string]any) {
	dp := h.DataPoints().AppendEmpty()
	dp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
	dp.SetTimestamp(pcommon.NewTimestampFromTime(ts))
	dp.ExplicitBounds().FromRaw(bounds)
	dp.BucketCounts().FromRaw(counts)
	var n uint64
	for _, c := range counts {
		n += c
	}
	dp.SetCount(n)
	dp.SetSum(sum)
	if err := dp.Attributes().FromRaw(attrs); err != nil {
		panic(err)
	}
}

// TestClientMetricsEdges sends OpenTelemetry HTTP and RPC client metrics, cumulative then
// delta, and checks the edges they become: calls are the histogram counts summed per callee
// over status codes and methods, errors the 5xx, gRPC server-fault and error.type-only
// points, latency the histograms in seconds; the client series themselves are not published.
func TestClientMetricsEdges(t *testing.T) {
	log := newEdgeLog()
	r, err := New(Config{}, nil, log.publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	bounds := []float64{0.005, 0.01, 0.025, 0.05, 0.1}
	msBounds := []float64{5, 10, 25, 50, 100}
	export := func(ts time.Time, scale uint64) {
		md, ms := clientMetrics(ts)
		m := ms.AppendEmpty()
		m.SetName(MetricHTTPClientDuration)
		m.SetUnit("s")
		h := m.SetEmptyHistogram()
		h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
		explicitPoint(h, start, ts, bounds, []uint64{1 * scale, 2 * scale, 0, 0, 0, 0}, 0.02*float64(scale),
			map[string]any{"server.address": "payments.shop.svc.cluster.local", "server.port": 8080, "http.request.method": "GET", "http.response.status_code": 200})
		explicitPoint(h, start, ts, bounds, []uint64{0, 0, 1 * scale, 0, 0, 0}, 0.02*float64(scale),
			map[string]any{"server.address": "payments.shop.svc.cluster.local", "server.port": 8080, "http.request.method": "POST", "http.response.status_code": 503, "error.type": "503"})
		explicitPoint(h, start, ts, bounds, []uint64{0, 0, 0, 0, 0, 2 * scale}, 0.4*float64(scale),
			map[string]any{"server.address": "payments.shop.svc.cluster.local", "server.port": 8080, "http.request.method": "GET", "http.response.status_code": 404, "error.type": "404"})
		explicitPoint(h, start, ts, bounds, []uint64{0, 0, 0, 0, 0, 1 * scale}, 0.3*float64(scale),
			map[string]any{"server.address": "10.1.2.3", "server.port": 80, "http.request.method": "GET", "error.type": "timeout"})
		r2 := ms.AppendEmpty()
		r2.SetName(MetricRPCClientDuration)
		r2.SetUnit("ms")
		h2 := r2.SetEmptyHistogram()
		h2.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
		explicitPoint(h2, start, ts, msBounds, []uint64{0, 3 * scale, 0, 0, 0, 0}, 24*float64(scale),
			map[string]any{"rpc.system": "grpc", "rpc.service": "Inventory", "rpc.method": "Reserve", "rpc.grpc.status_code": 0})
		explicitPoint(h2, start, ts, msBounds, []uint64{0, 0, 0, 0, 1 * scale, 0}, 80*float64(scale),
			map[string]any{"rpc.system": "grpc", "rpc.service": "Inventory", "rpc.method": "Reserve", "rpc.grpc.status_code": 14})
		explicitPoint(h2, start, ts, msBounds, []uint64{1 * scale, 0, 0, 0, 0, 0}, 1*float64(scale),
			map[string]any{"rpc.system": "grpc", "rpc.service": "Inventory", "rpc.method": "Reserve", "rpc.grpc.status_code": 5})
		if res := r.Export(md); res.Rejected > 0 {
			t.Fatalf("rejected %d: %s", res.Rejected, res.Message)
		}
	}
	export(start.Add(250*time.Millisecond), 1)
	export(start.Add(500*time.Millisecond), 3) // cumulative: the deltas are twice the first
	// Per first export: payments 3 calls of 200, 1 of 503 (failed), 2 of 404 (the caller's
	// fault); the IP callee 1 call ended by a timeout (failed); inventory 3 OK, 1 UNAVAILABLE
	// (failed), 1 NOT_FOUND.
	want := map[string][2]float64{"payments": {6, 1}, "10-1-2-3": {1, 1}, "inventory": {5, 1}}
	for callee, w := range want {
		if got := [2]float64{log.calls[callee], log.errors[callee]}; got != [2]float64{w[0] * 3, w[1] * 3} {
			t.Errorf("%s: calls, errors %v; want %v (the SDK's counts over two exports)", callee, got, [2]float64{w[0] * 3, w[1] * 3})
		}
		if h := log.latency[callee]; h == nil || float64(h.Count) != w[0]*3 {
			t.Errorf("%s: latency %+v; want %v observations", callee, h, w[0]*3)
		}
	}
	if len(log.calls) != len(want) || len(log.other) != 0 || log.dups != 0 {
		t.Errorf("callees %v, other series %v, duplicated edge series %d; want %d callees, nothing else, no duplicates", log.calls, log.other, log.dups, len(want))
	}
	// Milliseconds became seconds: the RPC's 24 ms over 3 calls is 0.024 s.
	if h := log.latency["inventory"]; math.Abs(h.Sum-0.105*3) > 1e-9 || h.Quantile(0.5) > 0.011 || h.Quantile(0.5) < 0.005 {
		t.Errorf("inventory latency sum %v s, median %v s; want %v s, between 5 and 10 ms", h.Sum, h.Quantile(0.5), 0.105*3)
	}
}

// TestClientMetricsEdgesBound checks the per-group bound of callees: a group naming more
// callees than the bound records the others' calls under _other and counts them, exactly;
// another group keeps its own callees.
func TestClientMetricsEdgesBound(t *testing.T) {
	log := newEdgeLog()
	r, err := New(Config{MaxCalleesPerGroup: 3}, nil, log.publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	md, ms := clientMetrics(start)
	m := ms.AppendEmpty()
	m.SetName(MetricHTTPClientDuration)
	h := m.SetEmptyHistogram()
	h.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	for i := range 10 {
		explicitPoint(h, start.Add(-time.Second), start, []float64{1}, []uint64{1, 0}, 0.1,
			map[string]any{"server.address": fmt.Sprintf("dep%d.shop", i), "http.response.status_code": 200})
	}
	explicitPoint(h, start.Add(-time.Second), start, []float64{1}, []uint64{1, 0}, 0.1,
		map[string]any{"http.response.status_code": 200}) // no callee attribute
	if res := r.Export(md); res.Rejected > 0 {
		t.Fatalf("rejected %d: %s", res.Rejected, res.Message)
	}
	if len(log.calls) != 4 || log.calls[proto.CalleeOther] != 8 || log.calls["dep0"] != 1 {
		t.Errorf("calls by callee %v; want 3 callees of 1 call and %s with 8", log.calls, proto.CalleeOther)
	}
	st := r.Stats().EdgesOther
	if st[EdgeReasonTooManyCallees] != 7 || st[EdgeReasonMissingCallee] != 1 {
		t.Errorf("edge points under _other %v; want too_many_callees 7, missing_callee 1", st)
	}
}

func TestCalleeNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		metric string
		attrs  map[string]any
		callee string
		reason string
	}{
		{MetricHTTPClientDuration, map[string]any{"server.address": "Payments.shop.svc:8443"}, "payments", ""},
		{MetricHTTPClientDuration, map[string]any{"server.address": "[::1]:80"}, "", EdgeReasonBadCallee},
		{MetricHTTPClientDuration, map[string]any{"server.address": "_x"}, "", EdgeReasonBadCallee},
		{MetricHTTPClientDuration, map[string]any{}, "", EdgeReasonMissingCallee},
		{MetricHTTPClientDurationOld, map[string]any{"net.peer.name": "cart.internal"}, "cart", ""},
		{MetricRPCClientDuration, map[string]any{"rpc.service": "shop.Payments", "server.address": "pay"}, "shop-payments", ""},
		{MetricRPCClientDuration, map[string]any{"server.address": "pay:50051"}, "pay", ""},
		{MetricRPCClientCallDuration, map[string]any{"rpc.method": "shop.Payments/Charge"}, "shop-payments", ""},
		{MetricRPCClientCallDuration, map[string]any{"rpc.method": "_OTHER", "server.address": "pay"}, "pay", ""},
	} {
		attrs := pcommon.NewMap()
		if err := attrs.FromRaw(tc.attrs); err != nil {
			t.Fatal(err)
		}
		callee, reason := calleeOf(edgeSources[tc.metric], attrs)
		if callee != tc.callee || reason != tc.reason {
			t.Errorf("%s %v: callee %q, reason %q; want %q, %q", tc.metric, tc.attrs, callee, reason, tc.callee, tc.reason)
		}
	}
	// With RPCCalleeFromAddress, the host names RPC callees.
	byAddr := sourcesFor(true)
	attrs := pcommon.NewMap()
	attrs.PutStr("rpc.service", "shop.Payments")
	attrs.PutStr("server.address", "payments.shop.svc:50051")
	for _, m := range []string{MetricRPCClientDuration, MetricRPCClientCallDuration} {
		if callee, _ := calleeOf(byAddr[m], attrs); callee != "payments" {
			t.Errorf("%s by address: callee %q; want payments", m, callee)
		}
	}
	if byAddr[MetricHTTPClientDuration] != edgeSources[MetricHTTPClientDuration] || len(edgeSources[MetricRPCClientDuration].callees) != 3 {
		t.Error("sourcesFor changed the HTTP sources or the defaults")
	}
}

// TestClientMetricsEdgesFlood has one group call 100,000 distinct callees (50 instances of
// 2,000 server.address values each, delta) in the same requests as another group's client
// metrics: the flood's edges are bounded (the callees over the bound counted under _other),
// its calls all counted, and the other group's edges exact.
func TestClientMetricsEdgesFlood(t *testing.T) {
	t.Parallel()
	byGroup := map[string]*edgeLog{}
	var dec proto.Decoder
	var b proto.Batch
	publish := func(_ string, data []byte) error {
		if err := dec.Decode(data, &b); err != nil {
			return err
		}
		l := byGroup[b.Service]
		if l == nil {
			l = newEdgeLog()
			byGroup[b.Service] = l
		}
		return l.publish("", data)
	}
	r, err := New(Config{}, nil, publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	const instances, perInstance = 50, 2000
	start := time.Now()
	for i := range instances {
		md := pmetric.NewMetrics()
		for _, svc := range []string{"flood", "checkout"} {
			rm := md.ResourceMetrics().AppendEmpty()
			a := rm.Resource().Attributes()
			a.PutStr("service.name", svc)
			a.PutStr("service.version", "1")
			a.PutStr("service.instance.id", fmt.Sprint(i))
			m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
			m.SetName(MetricHTTPClientDuration)
			h := m.SetEmptyHistogram()
			h.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
			if svc == "checkout" {
				explicitPoint(h, start, start.Add(time.Second), []float64{0.1}, []uint64{uint64(i), 1}, 1,
					map[string]any{"server.address": "payments", "http.response.status_code": 503})
				continue
			}
			for j := range perInstance {
				explicitPoint(h, start, start.Add(time.Second), []float64{0.1}, []uint64{1, 0}, 0.05,
					map[string]any{"server.address": fmt.Sprintf("dep-%d-%d", i, j), "http.response.status_code": 200})
			}
		}
		if res := r.Export(md); res.Rejected > 0 {
			t.Fatalf("rejected %d: %s", res.Rejected, res.Message)
		}
	}
	flood, good := byGroup["flood"], byGroup["checkout"]
	var calls float64
	for _, c := range flood.calls {
		calls += c
	}
	limit := DefaultMaxCalleesPerGroup
	if len(flood.calls) != limit+1 || calls != instances*perInstance || flood.calls[proto.CalleeOther] != instances*perInstance-float64(limit) {
		t.Errorf("flood: %d callees, %v calls, %v under %s; want %d callees and %s, %d calls, %d under it",
			len(flood.calls), calls, flood.calls[proto.CalleeOther], proto.CalleeOther, limit, proto.CalleeOther, instances*perInstance, instances*perInstance-limit)
	}
	if got := r.Stats().EdgesOther[EdgeReasonTooManyCallees]; got != instances*perInstance-uint64(limit) {
		t.Errorf("herd_otlp_edge_points_other_total{reason=too_many_callees} %d; want %d", got, instances*perInstance-limit)
	}
	// checkout: instance i made i+1 calls, all failed.
	if want := float64(instances * (instances + 1) / 2); good.calls["payments"] != want || good.errors["payments"] != want || len(good.calls) != 1 {
		t.Errorf("checkout beside the flood: calls %v, errors %v; want payments %v and %v", good.calls, good.errors, want, want)
	}
}
