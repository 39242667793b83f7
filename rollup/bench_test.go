package rollup

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// benchSeqBase makes every sequence number a 5-byte uvarint, so benchmarks can rewrite it
// in place in an encoded batch.
const benchSeqBase = 1 << 28

// latencySketch returns a realistic request latency histogram: n log-normal observations
// around 20 ms.
func latencySketch(rng *rand.Rand, n int) proto.Histogram {
	var h proto.Histogram
	for range n {
		h.Observe(0.02*math.Exp(rng.NormFloat64()*0.6), 1)
	}
	return h
}

// realisticBatch is one instance's batch: 20 labelled HTTP counters, the RED counters and the
// latency histogram (23 samples).
func realisticBatch(rng *rand.Rand, service string, n int, end time.Time) *proto.Batch {
	b := groupBatch(service, "1.4.2", n, benchSeqBase, end)
	routes := []string{"/cart", "/checkout", "/pay", "/search", "/user"}
	codes := []string{"200", "201", "404", "500"}
	for _, route := range routes {
		for _, code := range codes {
			b.Series = append(b.Series, counter("http_requests_total", float64(rng.IntN(50)), "code", code, "method", "GET", "route", route))
		}
	}
	b.Series = append(b.Series,
		counter(proto.SeriesRequests, float64(rng.IntN(500))),
		counter(proto.SeriesErrors, float64(rng.IntN(3))),
		proto.Series{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: latencySketch(rng, 100)})
	return b
}

// benchRollup returns a Rollup with the default config whose clock reads *now.
func benchRollup(b *testing.B, now *time.Time, emit Emit) *Rollup {
	b.Helper()
	return benchRollupConfig(b, DefaultConfig(), now, emit)
}

// benchRollupConfig returns a Rollup with cfg whose clock reads *now.
func benchRollupConfig(b *testing.B, cfg Config, now *time.Time, emit Emit) *Rollup {
	b.Helper()
	r, err := New(cfg, nil, emit, nil)
	if err != nil {
		b.Fatal(err)
	}
	r.now = func() time.Time { return *now }
	return r
}

// BenchmarkDecodeAggregate decodes and merges encoded batches of 1000 warm instances with
// the default config (the RED triple split into Warm and Halves); one op is one batch of 23
// samples.
func BenchmarkDecodeAggregate(b *testing.B) { benchDecodeAggregate(b, DefaultConfig()) }

// BenchmarkDecodeAggregateSplitAll is BenchmarkDecodeAggregate with every series split.
func BenchmarkDecodeAggregateSplitAll(b *testing.B) {
	cfg := DefaultConfig()
	cfg.SplitSeries = "*"
	benchDecodeAggregate(b, cfg)
}

// BenchmarkDecodeAggregateNoWarmup is BenchmarkDecodeAggregate without Warm and Halves.
func BenchmarkDecodeAggregateNoWarmup(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Warmup = 0
	benchDecodeAggregate(b, cfg)
}

func benchDecodeAggregate(b *testing.B, cfg Config) {
	const instances = 1000
	now := time.Unix(1_790_000_000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	var enc proto.Encoder
	msgs := make([][]byte, instances)
	seqOff := make([]int, instances)
	samples := 0
	for i := range msgs {
		bt := realisticBatch(rng, "checkout", i, now)
		data, err := enc.Append(nil, bt)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = data
		seqOff[i] = 4 + 16 + len(binary.AppendVarint(nil, bt.InstanceStart))
		samples = len(bt.Series)
	}
	r := benchRollupConfig(b, cfg, &now, func(*proto.Window) {})
	var dec proto.Decoder
	var bt proto.Batch
	add := func(i int) {
		k := i % instances
		binary.PutUvarint(msgs[k][seqOff[k]:], benchSeqBase+uint64(i/instances))
		if err := dec.Decode(msgs[k], &bt); err != nil {
			b.Fatal(err)
		}
		r.Add(&bt)
	}
	for i := range instances { // warm up: instance state, series, window
		add(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		add(instances + i)
	}
	b.StopTimer()
	if st := r.Stats(); st.Refused() != 0 || st.BatchesMerged != uint64(b.N+instances) {
		b.Fatalf("merged %d, refused %v; want %d merged and none refused", st.BatchesMerged, st.RefusedBy, b.N+instances)
	}
	b.ReportMetric(float64(b.N*samples)/b.Elapsed().Seconds(), "samples/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*samples), "ns/sample")
}

// BenchmarkHistogramMerge merges realistic latency sketches (100 observations each, ~60
// buckets) of 1000 instances into a window; one op is one merge.
func BenchmarkHistogramMerge(b *testing.B) {
	const instances = 1000
	now := time.Unix(1_790_000_000, 0)
	rng := rand.New(rand.NewPCG(3, 4))
	batches := make([]*proto.Batch, instances)
	for i := range batches {
		batches[i] = groupBatch("checkout", "1.4.2", i, 0, now,
			proto.Series{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: latencySketch(rng, 100)})
	}
	r := benchRollup(b, &now, func(*proto.Window) {})
	add := func(i int) {
		bt := batches[i%instances]
		bt.Seq = uint64(i / instances)
		r.Add(bt)
	}
	for i := range instances {
		add(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		add(instances + i)
	}
	b.StopTimer()
	if st := r.Stats(); st.Samples != uint64(b.N+instances) {
		b.Fatalf("merged %d sketches; want %d", st.Samples, b.N+instances)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "merges/s")
}

// BenchmarkWindowClose closes the windows of 20 groups of 10 instances (23 series each,
// histograms copied and their quantiles computed); one op is one Advance closing 20 windows.
// Filling the windows is not timed.
func BenchmarkWindowClose(b *testing.B) {
	const groups, instances = 20, 10
	now := time.Unix(1_790_000_000, 0)
	rng := rand.New(rand.NewPCG(5, 6))
	var batches []*proto.Batch
	for g := range groups {
		for i := range instances {
			batches = append(batches, realisticBatch(rng, fmt.Sprintf("svc%d", g), g*instances+i, now))
		}
	}
	emitted := 0
	r := benchRollup(b, &now, func(*proto.Window) { emitted++ })
	fill := func(k int) {
		start := now
		now = now.Add(win) // a batch arrives at its interval's end, as an agent sends it
		for _, bt := range batches {
			bt.Seq = uint64(k)
			bt.Start, bt.End = start.UnixNano(), now.UnixNano()
			r.Add(bt)
		}
	}
	fill(0)
	now = now.Add(lateness)
	r.Advance(now)
	now = now.Add(-lateness)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		fill(i + 1)
		b.StartTimer()
		r.Advance(now.Add(lateness))
	}
	b.StopTimer()
	if emitted != groups*(b.N+1) {
		b.Fatalf("emitted %d windows; want %d", emitted, groups*(b.N+1))
	}
	b.ReportMetric(float64(b.N*groups)/b.Elapsed().Seconds(), "windows/s")
}
