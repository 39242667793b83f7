package export

import (
	"io"
	"strconv"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// BenchmarkAddWindow measures adding one closed window (RED series, a 500-value latency
// sketch) to its group's totals: the export's work on the node's input path.
func BenchmarkAddWindow(b *testing.B) {
	e := New(DefaultConfig(), metrics.NewSet())
	lat := make([]float64, 500)
	for i := range lat {
		lat[i] = 0.01 * float64(1+i%200)
	}
	w := testWindow("checkout", "1.4.2", 1000, 10, 500, 3, lat)
	b.ReportAllocs()
	for b.Loop() {
		e.AddWindow(w)
	}
}

// BenchmarkWritePrometheus measures one scrape of 200 groups and 50 verdicts.
func BenchmarkWritePrometheus(b *testing.B) {
	e := New(DefaultConfig(), metrics.NewSet())
	for i := range 200 {
		e.AddWindow(testWindow("svc"+strconv.Itoa(i%50), "v"+strconv.Itoa(i), 1000, 10, 500, 3, []float64{0.01, 0.1, 1}))
	}
	b.ReportAllocs()
	for b.Loop() {
		e.WritePrometheus(io.Discard)
	}
}
