package otlp

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/herd-dev/herd/proto"
)

// counterPoint appends a monotonic cumulative counter point of "hits" to a new resource of md.
func counterPoint(md pmetric.Metrics, instance string, start, ts time.Time, v int64) {
	rm := md.ResourceMetrics().AppendEmpty()
	a := rm.Resource().Attributes()
	a.PutStr("service.name", "checkout")
	a.PutStr("service.version", "1")
	a.PutStr("service.instance.id", instance)
	m := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
	m.SetName("hits")
	s := m.SetEmptySum()
	s.SetIsMonotonic(true)
	s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	dp := s.DataPoints().AppendEmpty()
	dp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
	dp.SetTimestamp(pcommon.NewTimestampFromTime(ts))
	dp.SetIntValue(v)
}

// batchLog records every batch's interval and its "hits" delta.
type batchLog struct {
	dec  proto.Decoder
	b    proto.Batch
	ends []int64
	hits []float64
	seqs []uint64
}

func (l *batchLog) publish(_ string, data []byte) error {
	if err := l.dec.Decode(data, &l.b); err != nil {
		return err
	}
	l.ends = append(l.ends, l.b.End)
	l.seqs = append(l.seqs, l.b.Seq)
	h := 0.0
	for _, s := range l.b.Series {
		if s.Name == "hits" {
			h += s.Value
		}
	}
	l.hits = append(l.hits, h)
	return nil
}

// TestCumulativeToDelta checks the conversion of a cumulative counter: the first value of a
// series started after the receiver counts whole, then differences, a value that went down
// or a new start time is a reset, and one request holding several exports of an instance
// becomes one batch per timestamp, in order.
func TestCumulativeToDelta(t *testing.T) {
	var log batchLog
	r, err := New(Config{}, nil, log.publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	send := func(points ...func(md pmetric.Metrics)) {
		md := pmetric.NewMetrics()
		for _, p := range points {
			p(md)
		}
		if res := r.Export(md); res.Rejected > 0 {
			t.Fatalf("rejected %d: %s", res.Rejected, res.Message)
		}
	}
	pt := func(start time.Time, ms int, v int64) func(pmetric.Metrics) {
		return func(md pmetric.Metrics) { counterPoint(md, "a", start, at(ms), v) }
	}
	send(pt(start, 250, 10))
	send(pt(start, 500, 15))
	send(pt(start, 750, 3))                          // went down: a reset
	send(pt(at(800), 1000, 4))                       // a new start time: a reset
	send(pt(at(800), 1500, 9), pt(at(800), 1250, 6)) // two exports in one request, out of order
	send(pt(at(800), 1750, 9))                       // no change: an empty batch
	want := []float64{10, 5, 3, 4, 2, 3, 0}
	if len(log.hits) != len(want) {
		t.Fatalf("batches' hits %v; want %v", log.hits, want)
	}
	for i := range want {
		if log.hits[i] != want[i] || log.seqs[i] != uint64(i) || (i > 0 && log.ends[i] <= log.ends[i-1]) {
			t.Errorf("batch %d: hits %v seq %d end %d; want hits %v, seq %d, ends increasing (all: %v %v %v)",
				i, log.hits[i], log.seqs[i], log.ends[i], want[i], i, log.hits, log.seqs, log.ends)
		}
	}
	if got := r.Stats().Resets; got != 2 {
		t.Errorf("resets %d; want 2", got)
	}
	// A series that started before the receiver: its first value is only a base.
	send(func(md pmetric.Metrics) { counterPoint(md, "old", start.Add(-time.Hour), at(2000), 1000) })
	send(func(md pmetric.Metrics) { counterPoint(md, "old", start.Add(-time.Hour), at(2250), 1003) })
	if got := log.hits[len(log.hits)-2:]; got[0] != 0 || got[1] != 3 {
		t.Errorf("series older than the receiver: hits %v; want [0 3]", got)
	}
}

// TestPartialSuccess checks that refused points are answered with OTLP's partial-success
// fields over OTLP/HTTP in JSON and over gRPC.
func TestPartialSuccess(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, Config{MaxInstancesPerService: 1}, newBatchSums().publish)
	md := seedRequest("checkout", "1", "a", 1)
	seedRequest("checkout", "1", "b", 1).ResourceMetrics().MoveAndAppendTo(md.ResourceMetrics())
	req := pmetricotlp.NewExportRequestFromMetrics(md)
	check := func(via string, resp pmetricotlp.ExportResponse) {
		ps := resp.PartialSuccess()
		if ps.RejectedDataPoints() != 4 || !strings.Contains(ps.ErrorMessage(), ReasonTooManyInstances) {
			t.Errorf("%s: partial success %d %q; want 4 rejected, naming %s", via, ps.RejectedDataPoints(), ps.ErrorMessage(), ReasonTooManyInstances)
		}
	}
	body, err := req.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	hr, err := http.Post("http://"+r.HTTPAddr()+PathMetrics, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusOK || hr.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("HTTP JSON: status %d, %s; want 200 in JSON", hr.StatusCode, hr.Header.Get("Content-Type"))
	}
	resp := pmetricotlp.NewExportResponse()
	if err := resp.UnmarshalJSON(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	check("HTTP JSON", resp)

	cc, err := grpc.NewClient(r.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// Instance b again: still over the bound.
	md = seedRequest("checkout", "1", "b", 2)
	resp, err = pmetricotlp.NewGRPCClient(cc).Export(context.Background(), pmetricotlp.NewExportRequestFromMetrics(md))
	if err != nil {
		t.Fatal(err)
	}
	check("gRPC", resp)
}

// TestSweepForgets checks that instances silent for the TTL are forgotten with their series,
// and that the series bound refuses past it.
func TestSweepForgets(t *testing.T) {
	r, err := New(Config{InstanceTTL: time.Second, MaxSeries: 8}, nil, newBatchSums().publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	md := seedRequest("checkout", "1", "a", 1)
	seedRequest("checkout", "1", "b", 1).ResourceMetrics().MoveAndAppendTo(md.ResourceMetrics())
	seedRequest("checkout", "1", "c", 1).ResourceMetrics().MoveAndAppendTo(md.ResourceMetrics())
	res := r.Export(md) // 4 series each: the third instance's are over the bound of 8
	if res.Rejected != 4 || r.Stats().PointsRefused[ReasonTooManySeries] != 4 {
		t.Errorf("rejected %d (%v); want the third instance's 4 points as too_many_series", res.Rejected, r.Stats().PointsRefused)
	}
	r.sweep(now.Add(500 * time.Millisecond))
	if n := r.nInstances.Load(); n != 3 {
		t.Errorf("%d instances after half the TTL; want 3", n)
	}
	r.sweep(now.Add(2 * time.Second))
	if n, s := r.nInstances.Load(), r.nSeries.Load(); n != 0 || s != 0 || len(r.perService) != 0 {
		t.Errorf("after the TTL: %d instances, %d series, per service %v; want none", n, s, r.perService)
	}
}
