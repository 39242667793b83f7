package otlp

import (
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
)

// seedRequest builds a request with one point of every type, cumulative, for the fuzz corpus
// and the bad-input tests.
func seedRequest(service, version, instance string, ts uint64) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", service)
	rm.Resource().Attributes().PutStr("service.version", version)
	rm.Resource().Attributes().PutStr("service.instance.id", instance)
	ms := rm.ScopeMetrics().AppendEmpty().Metrics()
	s := ms.AppendEmpty()
	s.SetName("requests")
	sum := s.SetEmptySum()
	sum.SetIsMonotonic(true)
	sum.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	dp := sum.DataPoints().AppendEmpty()
	dp.SetStartTimestamp(1)
	dp.SetTimestamp(pcommon.Timestamp(1e9 + ts))
	dp.SetIntValue(int64(ts))
	dp.Attributes().PutInt("code", 200)
	g := ms.AppendEmpty()
	g.SetName("inflight")
	g.SetEmptyGauge().DataPoints().AppendEmpty().SetDoubleValue(3)
	g.Gauge().DataPoints().At(0).SetTimestamp(pcommon.Timestamp(1e9 + ts))
	h := ms.AppendEmpty()
	h.SetName("latency")
	eh := h.SetEmptyExponentialHistogram()
	eh.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	ep := eh.DataPoints().AppendEmpty()
	ep.SetTimestamp(pcommon.Timestamp(1e9 + ts))
	ep.SetStartTimestamp(1)
	ep.SetScale(7)
	ep.Positive().SetOffset(-300)
	ep.Positive().BucketCounts().FromRaw([]uint64{1, 0, 2, ts})
	ep.SetZeroCount(1)
	ep.SetCount(4 + ts)
	ep.SetSum(2.5)
	x := ms.AppendEmpty()
	x.SetName("size")
	xh := x.SetEmptyHistogram()
	xh.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	xp := xh.DataPoints().AppendEmpty()
	xp.SetTimestamp(pcommon.Timestamp(1e9 + ts))
	xp.ExplicitBounds().FromRaw([]float64{0.1, 1, 10})
	xp.BucketCounts().FromRaw([]uint64{1, 2, 3, 4})
	xp.SetCount(10)
	xp.SetSum(40)
	return md
}

// FuzzExport feeds arbitrary bytes through the OTLP decoder and the conversion into batches:
// nothing may panic, and every batch published must decode.
func FuzzExport(f *testing.F) {
	for i, v := range []string{"1.0", "2.0"} {
		b, err := pmetricotlp.NewExportRequestFromMetrics(seedRequest("checkout", v, "a", uint64(i))).MarshalProto()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Client metrics that become edges: explicit and exponential, HTTP and RPC.
	md, ms := clientMetrics(time.Unix(1, 0))
	m := ms.AppendEmpty()
	m.SetName(MetricHTTPClientDuration)
	h := m.SetEmptyHistogram()
	h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	explicitPoint(h, time.Unix(0, 1), time.Unix(1, 0), []float64{0.01, 0.1}, []uint64{1, 2, 3}, 0.5,
		map[string]any{"server.address": "payments.shop:80", "http.response.status_code": 503})
	e := ms.AppendEmpty()
	e.SetName(MetricRPCClientDuration)
	e.SetUnit("ms")
	eh := e.SetEmptyExponentialHistogram()
	eh.SetAggregationTemporality(pmetric.AggregationTemporalityDelta)
	ep := eh.DataPoints().AppendEmpty()
	ep.SetTimestamp(pcommon.Timestamp(1e9))
	ep.SetScale(3)
	ep.Positive().SetOffset(20)
	ep.Positive().BucketCounts().FromRaw([]uint64{1, 0, 2})
	ep.SetCount(3)
	ep.SetSum(30)
	ep.Attributes().PutStr("rpc.service", "shop.Inventory")
	ep.Attributes().PutInt("rpc.grpc.status_code", 14)
	b, err := pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	sums := newBatchSums()
	r, err := New(Config{}, nil, sums.publish, testLogger(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		er := pmetricotlp.NewExportRequest()
		if er.UnmarshalProto(data) != nil {
			return
		}
		r.Export(er.Metrics())
		sums.mu.Lock()
		defer sums.mu.Unlock()
		for _, err := range sums.bad {
			if err != nil && !isSeqErr(err) {
				t.Fatalf("a published batch does not decode: %v", err)
			}
		}
		sums.bad = sums.bad[:0]
	})
}

// isSeqErr: the fuzzer sends one instance's requests in any order across runs, which the
// batch check reads as a sequence gap; only decoding matters here.
func isSeqErr(err error) bool {
	return err != nil && len(err.Error()) > 9 && err.Error()[:9] == "instance "
}
