package ingest

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

// FuzzScrapeBody feeds arbitrary exposition bodies, as text, OpenMetrics or protobuf, through
// parsing and delta conversion twice (baseline, then deltas): nothing may panic.
func FuzzScrapeBody(f *testing.F) {
	f.Add(uint8(0), exposition(1, 2, "", classic(1, 2, 3, 4, 5)))
	f.Add(uint8(0), []byte("# TYPE x histogram\nx_bucket{le=\"1\"} 5\nx_bucket{le=\"0.5\"} 3\nx_count 2\nx_sum NaN\n"))
	f.Add(uint8(1), []byte("# TYPE a counter\na_total 1\n# EOF\n"))
	f.Add(uint8(2), protoBody(f, nativeFamily(5, map[int]uint64{-3: 1, 4: 2}, 1, 2), nativeFamily(-4, map[int]uint64{1: 1}, 0, 1)))
	f.Add(uint8(2), protoBody(f, nativeFamily(8, map[int]uint64{-3000: 1, 4000: 2}, 1, 2)))
	types := []string{
		string(expfmt.NewFormat(expfmt.TypeTextPlain)),
		string(expfmt.NewFormat(expfmt.TypeOpenMetrics)),
		string(expfmt.NewFormat(expfmt.TypeProtoDelim)),
		"application/json",
	}
	f.Fuzz(func(t *testing.T, ct uint8, body []byte) {
		c := newTestClient(t, &recorder{}, time.Unix(0, 0))
		s, err := NewScraper(ScraperConfig{URL: "http://127.0.0.1/metrics", MaxSeries: 50}, c, quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{"Content-Type": {types[int(ct)%len(types)]}}
		for range 2 {
			fams, err := s.parse(h, body)
			if err != nil {
				return
			}
			for _, fam := range fams {
				s.family(fam, time.Unix(1, 0))
			}
			s.primed = true
		}
		_ = c.Flush(time.Unix(1, 0), true)
	})
}
