package otlp

import (
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
)

// benchRequest builds one instance's cumulative export shaped like the rollup's
// DecodeAggregate batch: 20 labelled counters, requests and errors, and a latency
// exponential histogram at scale 5 over ~40 buckets: 23 data points.
func benchRequest(instance int) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	a := rm.Resource().Attributes()
	a.PutStr("service.name", "checkout")
	a.PutStr("service.version", "1.4.2")
	a.PutStr("service.instance.id", fmt.Sprintf("instance-%d", instance))
	ms := rm.ScopeMetrics().AppendEmpty().Metrics()
	counter := func(name string, labels ...string) {
		m := ms.AppendEmpty()
		m.SetName(name)
		s := m.SetEmptySum()
		s.SetIsMonotonic(true)
		s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
		dp := s.DataPoints().AppendEmpty()
		for i := 0; i+1 < len(labels); i += 2 {
			dp.Attributes().PutStr(labels[i], labels[i+1])
		}
	}
	for i := range 20 {
		counter("http_requests_by_route", "route", fmt.Sprintf("/api/v1/item/%d", i), "method", "GET")
	}
	counter("requests_total")
	counter("errors_total")
	m := ms.AppendEmpty()
	m.SetName("latency_seconds")
	eh := m.SetEmptyExponentialHistogram()
	eh.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	ep := eh.DataPoints().AppendEmpty()
	ep.SetScale(5)
	ep.Positive().SetOffset(-160)
	ep.Positive().BucketCounts().FromRaw(make([]uint64, 40))
	return md
}

// advance moves a benchBuild request to its next export: timestamps 250 ms on, every
// counter up by its index, 100 more observations in the histogram.
func advance(md pmetric.Metrics, round int) {
	ts := pcommon.Timestamp(time.Unix(1_700_000_000, 0).Add(time.Duration(round) * 250 * time.Millisecond).UnixNano())
	start := pcommon.Timestamp(time.Unix(1_700_000_000, 0).UnixNano())
	ms := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics()
	for i := 0; i < ms.Len(); i++ {
		m := ms.At(i)
		switch m.Type() {
		case pmetric.MetricTypeSum:
			dp := m.Sum().DataPoints().At(0)
			dp.SetStartTimestamp(start)
			dp.SetTimestamp(ts)
			dp.SetIntValue(dp.IntValue() + int64(i+1))
		case pmetric.MetricTypeExponentialHistogram:
			dp := m.ExponentialHistogram().DataPoints().At(0)
			dp.SetStartTimestamp(start)
			dp.SetTimestamp(ts)
			bc := dp.Positive().BucketCounts()
			for k := range 100 {
				j := (k * 7) % bc.Len()
				bc.SetAt(j, bc.At(j)+1)
			}
			dp.SetCount(dp.Count() + 100)
			dp.SetSum(dp.Sum() + 4)
		}
	}
}

// BenchmarkExport decodes one OTLP/protobuf export of 23 cumulative data points (1,000
// instances round-robin), converts it into a herd batch and encodes it for publishing: the
// receiver's work per request on one core. points/cpu-s divides by the process's CPU time
// in the timed part (garbage collection included), which a shared machine does not inflate.
func BenchmarkExport(b *testing.B) {
	const instances = 1000
	r, err := New(Config{}, nil, func(string, []byte) error { return nil }, testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]pmetric.Metrics, instances)
	for i := range reqs {
		reqs[i] = benchRequest(i)
	}
	points := 0
	var body []byte
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		md := reqs[i%instances]
		advance(md, 1+i/instances)
		body, err = pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c0 := cpuTime()
		er := pmetricotlp.NewExportRequest()
		if err := er.UnmarshalProto(body); err != nil {
			b.Fatal(err)
		}
		res := r.Export(er.Metrics())
		if res.Rejected > 0 {
			b.Fatalf("rejected %d: %s", res.Rejected, res.Message)
		}
		points += int(res.Accepted)
		cpu += cpuTime() - c0
	}
	b.ReportMetric(float64(points)/b.Elapsed().Seconds(), "points/s")
	if cpu > 0 {
		b.ReportMetric(float64(points)/cpu.Seconds(), "points/cpu-s")
	}
	b.ReportMetric(float64(len(body)), "bytes/request")
}

// clientBenchRequest builds one instance's cumulative export of http.client.request.duration:
// 10 callees × 3 status codes, explicit buckets (the SDK's default 15 bounds): 30 points
// that become 10 edges of 2 or 3 series each.
func clientBenchRequest(instance int) pmetric.Metrics {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	a := rm.Resource().Attributes()
	a.PutStr("service.name", "checkout")
	a.PutStr("service.version", "1.4.2")
	a.PutStr("service.instance.id", fmt.Sprintf("instance-%d", instance))
	m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
	m.SetName(MetricHTTPClientDuration)
	m.SetUnit("s")
	h := m.SetEmptyHistogram()
	h.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	bounds := []float64{0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	for c := range 10 {
		for _, code := range []int64{200, 404, 503} {
			dp := h.DataPoints().AppendEmpty()
			dp.ExplicitBounds().FromRaw(bounds)
			dp.BucketCounts().FromRaw(make([]uint64, len(bounds)+1))
			dp.Attributes().PutStr("server.address", fmt.Sprintf("dep%d.shop.svc.cluster.local", c))
			dp.Attributes().PutInt("server.port", 8080)
			dp.Attributes().PutStr("http.request.method", "GET")
			dp.Attributes().PutInt("http.response.status_code", code)
		}
	}
	return md
}

// advanceClient moves a clientBenchRequest to its next export: timestamps 250 ms on, 10 more
// calls in each point.
func advanceClient(md pmetric.Metrics, round int) {
	ts := pcommon.Timestamp(time.Unix(1_700_000_000, 0).Add(time.Duration(round) * 250 * time.Millisecond).UnixNano())
	start := pcommon.Timestamp(time.Unix(1_700_000_000, 0).UnixNano())
	dps := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).Histogram().DataPoints()
	for i := 0; i < dps.Len(); i++ {
		dp := dps.At(i)
		dp.SetStartTimestamp(start)
		dp.SetTimestamp(ts)
		bc := dp.BucketCounts()
		for k := range 10 {
			j := 2 + (k*3+i)%6
			bc.SetAt(j, bc.At(j)+1)
		}
		dp.SetCount(dp.Count() + 10)
		dp.SetSum(dp.Sum() + 0.3)
	}
}

// BenchmarkExportClientEdges is BenchmarkExport for a client's export that becomes edges:
// 30 cumulative explicit-bucket points of http.client.request.duration per request (1,000
// instances round-robin), summed into 10 edges per batch.
func BenchmarkExportClientEdges(b *testing.B) {
	const instances = 1000
	r, err := New(Config{}, nil, func(string, []byte) error { return nil }, testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]pmetric.Metrics, instances)
	for i := range reqs {
		reqs[i] = clientBenchRequest(i)
	}
	points := 0
	var body []byte
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		md := reqs[i%instances]
		advanceClient(md, 1+i/instances)
		body, err = pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c0 := cpuTime()
		er := pmetricotlp.NewExportRequest()
		if err := er.UnmarshalProto(body); err != nil {
			b.Fatal(err)
		}
		res := r.Export(er.Metrics())
		if res.Rejected > 0 {
			b.Fatalf("rejected %d: %s", res.Rejected, res.Message)
		}
		points += int(res.Accepted)
		cpu += cpuTime() - c0
	}
	b.ReportMetric(float64(points)/b.Elapsed().Seconds(), "points/s")
	if cpu > 0 {
		b.ReportMetric(float64(points)/cpu.Seconds(), "points/cpu-s")
	}
	b.ReportMetric(float64(len(body)), "bytes/request")
}
