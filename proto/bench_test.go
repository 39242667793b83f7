package proto

import (
	"fmt"
	"testing"
)

// benchBatch is a realistic agent batch: the RED triple with a ~100-observation latency
// histogram, and 20 labelled counters.
func benchBatch() *Batch {
	b := testBatch()
	b.Series = b.Series[:0]
	b.Series = append(b.Series, Series{Name: SeriesRequests, Kind: KindCounter, Value: 100},
		Series{Name: SeriesErrors, Kind: KindCounter, Value: 1})
	var h Histogram
	for i := range 100 {
		h.Observe(0.02+float64(i%37)*0.004, 1)
	}
	b.Series = append(b.Series, Series{Name: SeriesLatency, Kind: KindHistogram, Hist: h})
	for i := range 20 {
		b.Series = append(b.Series, Series{Name: "http_requests_total", Kind: KindCounter, Value: float64(i),
			Labels: []Label{{"code", fmt.Sprint(200 + i)}, {"route", "/api/v1/items"}}})
	}
	return b
}

func BenchmarkEncode(b *testing.B) {
	in := benchBatch()
	var e Encoder
	buf, _ := e.Append(nil, in)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = e.Append(buf[:0], in)
	}
	b.ReportMetric(float64(len(buf)), "bytes/batch")
}

func BenchmarkDecode(b *testing.B) {
	var e Encoder
	data, _ := e.Append(nil, benchBatch())
	var d Decoder
	var out Batch
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(data, &out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(out.Series))*float64(b.N)/b.Elapsed().Seconds(), "series/s")
}

func BenchmarkHistogramObserve(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	v := 0.0
	for b.Loop() {
		v += 0.0001
		if v > 1 {
			v = 0.001
		}
		h.Observe(v, 1)
	}
}
