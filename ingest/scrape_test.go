package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/herd-dev/herd/proto"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// target is a real HTTP endpoint whose exposition the test changes between scrapes.
type target struct {
	mu          sync.Mutex
	body        []byte
	contentType string
	status      int
}

func (tg *target) set(status int, contentType string, body []byte) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	tg.status, tg.contentType, tg.body = status, contentType, body
}

func (tg *target) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.contentType != "" {
		w.Header().Set("Content-Type", tg.contentType)
	} else {
		w.Header()["Content-Type"] = nil // no sniffing: really missing
	}
	w.WriteHeader(tg.status)
	_, _ = w.Write(tg.body)
}

const textType = "text/plain; version=0.0.4; charset=utf-8"

func exposition(ok200, err500 float64, extra string, hist string) []byte {
	return fmt.Appendf(nil, `# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",method="get"} %v
http_requests_total{code="500",method="get"} %v
%s
# TYPE temperature_celsius gauge
temperature_celsius 21.5
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 0.05
rpc_duration_seconds_sum 2
rpc_duration_seconds_count 10
# TYPE request_seconds histogram
%s
`, ok200, err500, extra, hist)
}

func classic(b01, b05, b1, inf uint64, sum float64) string {
	return fmt.Sprintf(`request_seconds_bucket{le="0.1"} %d
request_seconds_bucket{le="0.5"} %d
request_seconds_bucket{le="1"} %d
request_seconds_bucket{le="+Inf"} %d
request_seconds_sum %v
request_seconds_count %d`, b01, b05, b1, inf, sum, inf)
}

type scrapeEnv struct {
	tg  *target
	r   *recorder
	c   *Client
	s   *Scraper
	set *metrics.Set
	now time.Time
}

func newScrapeEnv(t *testing.T) *scrapeEnv {
	t.Helper()
	tg := &target{status: 200, contentType: textType}
	srv := httptest.NewServer(tg)
	t.Cleanup(srv.Close)
	r := &recorder{}
	now := time.Unix(5000, 0)
	c := newTestClient(t, r, now)
	set := metrics.NewSet()
	s, err := NewScraper(ScraperConfig{URL: srv.URL + "/metrics", Timeout: 5 * time.Second}, c, quiet, set)
	if err != nil {
		t.Fatal(err)
	}
	return &scrapeEnv{tg: tg, r: r, c: c, s: s, set: set, now: now}
}

// step scrapes (expecting success or the given reason) and flushes; it returns the batch.
func (e *scrapeEnv) step(t *testing.T, wantReason string) *proto.Batch {
	t.Helper()
	err := e.s.Scrape(context.Background())
	var se *ScrapeError
	switch {
	case wantReason == "" && err != nil:
		t.Fatalf("Scrape: %v", err)
	case wantReason != "" && (!errors.As(err, &se) || se.Reason != wantReason):
		t.Fatalf("Scrape: got %v; want a %s error", err, wantReason)
	}
	e.now = e.now.Add(250 * time.Millisecond)
	if err := e.c.Flush(e.now, false); err != nil {
		t.Fatal(err)
	}
	bs := e.r.all()
	return &bs[len(bs)-1]
}

func findLabel(b *proto.Batch, name, label, value string) *proto.Series {
	for i := range b.Series {
		s := &b.Series[i]
		if s.Name != name {
			continue
		}
		for _, l := range s.Labels {
			if l.Name == label && l.Value == value {
				return s
			}
		}
	}
	return nil
}

func (e *scrapeEnv) counter(name string) uint64 { return e.set.GetOrCreateCounter(name).Get() }

func TestScraperText(t *testing.T) {
	t.Parallel()
	e := newScrapeEnv(t)
	e.tg.set(200, textType, exposition(100, 5, "", classic(10, 15, 18, 20, 7)))
	b := e.step(t, "")
	// First scrape: baselines only; the gauge passes through.
	if len(b.Series) != 1 || b.Series[0].Name != "temperature_celsius" || b.Series[0].Value != 21.5 {
		t.Fatalf("first batch: got %v; want only temperature_celsius 21.5", b.Series)
	}

	e.tg.set(200, textType, exposition(130, 5, `http_requests_total{code="503",method="get"} 2`, classic(12, 17, 21, 23, 7.5)))
	b = e.step(t, "")
	if s := findLabel(b, "http_requests_total", "code", "200"); s == nil || s.Value != 30 || len(s.Labels) != 2 {
		t.Errorf("code 200: got %v; want delta 30 with 2 labels", s)
	}
	if s := findLabel(b, "http_requests_total", "code", "500"); s != nil {
		t.Errorf("code 500: got %v; want omitted (zero delta)", s)
	}
	if s := findLabel(b, "http_requests_total", "code", "503"); s == nil || s.Value != 2 {
		t.Errorf("code 503 (new series after the first scrape): got %v; want its whole value 2", s)
	}
	h := find(b, "request_seconds")
	if h == nil || h.Hist.Count != 3 || math.Abs(h.Hist.Sum-0.5) > 1e-12 {
		t.Fatalf("histogram: got %+v; want count 3 sum 0.5", h)
	}
	// Per-bucket deltas: 2 in (0, 0.1] at 0.05, 1 in (0.5, 1] at sqrt(0.5).
	wantBuckets := map[int]uint64{proto.BucketIndex(0.05): 2, proto.BucketIndex(math.Sqrt(0.5)): 1}
	got := map[int]uint64{}
	for k, c := range h.Hist.Positive.Counts {
		if c > 0 {
			got[int(h.Hist.Positive.Offset)+k] = c
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(wantBuckets) {
		t.Errorf("histogram buckets: got %v; want %v", got, wantBuckets)
	}
	if find(b, "rpc_duration_seconds_count") != nil {
		t.Errorf("summary count unchanged: got a series; want none")
	}

	// The target restarts: counters and the histogram start again from small values.
	e.tg.set(200, textType, exposition(7, 1, "", classic(3, 3, 3, 4, 0.4)))
	b = e.step(t, "")
	if s := findLabel(b, "http_requests_total", "code", "200"); s == nil || s.Value != 7 {
		t.Errorf("after reset: got %v; want 7", s)
	}
	if s := findLabel(b, "http_requests_total", "code", "500"); s == nil || s.Value != 1 {
		t.Errorf("after reset: got %v; want 1", s)
	}
	if h := find(b, "request_seconds"); h == nil || h.Hist.Count != 4 || h.Hist.Sum != 0.4 {
		t.Errorf("histogram after reset: got %+v; want the whole new histogram (count 4)", h)
	}
	if n := e.counter("herd_agent_scrape_counter_resets_total"); n != 3 {
		t.Errorf("resets: got %d; want 3", n)
	}

	// Garbage and bad statuses change nothing.
	e.tg.set(200, textType, []byte("\x00\x01 this is { not metrics"))
	e.step(t, "parse")
	e.tg.set(503, textType, nil)
	e.step(t, "status")
	// A missing Content-Type falls back to the text format; the summary's count is a counter.
	body := exposition(17, 1, "", classic(3, 3, 3, 4, 0.4))
	body = bytes.Replace(body, []byte("rpc_duration_seconds_count 10"), []byte("rpc_duration_seconds_count 13"), 1)
	e.tg.set(200, "", body)
	b = e.step(t, "")
	if s := findLabel(b, "http_requests_total", "code", "200"); s == nil || s.Value != 10 {
		t.Errorf("after failed scrapes: got %v; want 10", s)
	}
	if s := find(b, "rpc_duration_seconds_count"); s == nil || s.Value != 3 {
		t.Errorf("summary count: got %v; want 3", s)
	}
	for name, want := range map[string]uint64{
		`herd_agent_scrape_errors_total{reason="parse"}`:  1,
		`herd_agent_scrape_errors_total{reason="status"}`: 1,
		`herd_agent_scrape_format_fallbacks_total`:        1,
	} {
		if n := e.counter(name); n != want {
			t.Errorf("%s: got %d; want %d", name, n, want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// nativeFamily builds a schema-s native histogram family from bucket index → count.
func nativeFamily(schema int32, counts map[int]uint64, zero uint64, sum float64) *dto.MetricFamily {
	var idx []int
	for i := range counts {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	h := &dto.Histogram{Schema: ptr(schema), ZeroThreshold: ptr(1e-128), ZeroCount: ptr(zero), SampleSum: ptr(sum)}
	total := zero
	var prev int64
	next := 0
	for k, i := range idx {
		if k == 0 {
			h.PositiveSpan = append(h.PositiveSpan, &dto.BucketSpan{Offset: ptr(int32(i)), Length: ptr(uint32(1))})
		} else if i == next {
			*h.PositiveSpan[len(h.PositiveSpan)-1].Length++
		} else {
			h.PositiveSpan = append(h.PositiveSpan, &dto.BucketSpan{Offset: ptr(int32(i - next)), Length: ptr(uint32(1))})
		}
		next = i + 1
		h.PositiveDelta = append(h.PositiveDelta, int64(counts[i])-prev)
		prev = int64(counts[i])
		total += counts[i]
	}
	h.SampleCount = ptr(total)
	return &dto.MetricFamily{Name: ptr("latency_seconds"), Type: dto.MetricType_HISTOGRAM.Enum(),
		Metric: []*dto.Metric{{Histogram: h}}}
}

func protoBody(t testing.TB, fams ...*dto.MetricFamily) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestScraperNativeSchema5(t *testing.T) {
	t.Parallel()
	e := newScrapeEnv(t)
	ct := string(expfmt.NewFormat(expfmt.TypeProtoDelim))
	// Prometheus schema-5 bucket j holds (2^((j-1)/32), 2^(j/32)].
	e.tg.set(200, ct, protoBody(t, nativeFamily(5, map[int]uint64{-100: 4, -99: 1, -50: 2}, 1, 3)))
	e.step(t, "")
	e.tg.set(200, ct, protoBody(t, nativeFamily(5, map[int]uint64{-100: 6, -99: 1, -50: 5, -10: 1}, 3, 4.5)))
	b := e.step(t, "")
	h := find(b, "latency_seconds")
	if h == nil {
		t.Fatalf("got no latency_seconds in %v", b.Series)
	}
	got := map[int]uint64{}
	for k, c := range h.Hist.Positive.Counts {
		if c > 0 {
			got[int(h.Hist.Positive.Offset)+k] = c
		}
	}
	want := map[int]uint64{-101: 2, -51: 3, -11: 1}
	if fmt.Sprint(got) != fmt.Sprint(want) || h.Hist.ZeroCount != 2 || h.Hist.Count != 8 || h.Hist.Sum != 1.5 {
		t.Errorf("got buckets %v zero %d count %d sum %v; want %v zero 2 count 8 sum 1.5", got, h.Hist.ZeroCount, h.Hist.Count, h.Hist.Sum, want)
	}
	// The herd bucket of a value inside Prometheus bucket -50 is -51.
	v := math.Exp2(-50.5 / 32)
	if i := proto.BucketIndex(v); i != -51 {
		t.Errorf("herd bucket of a value in Prometheus bucket -50: got %d; want -51", i)
	}
}

// TestHerdIndex checks the schema mapping against where a value really falls.
func TestHerdIndex(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for schema := int32(-4); schema <= 8; schema++ {
		for range 2000 {
			v := math.Exp2(rng.Float64()*40 - 20)
			j := int(math.Ceil(math.Log2(v) * math.Exp2(float64(schema))))
			got := herdIndex(j, schema)
			if schema >= 5 {
				if want := proto.BucketIndex(v); got != want {
					t.Fatalf("schema %d value %v (bucket %d): got herd bucket %d; want %d", schema, v, j, got, want)
				}
				continue
			}
			// Coarser: the herd bucket lies inside the Prometheus bucket.
			lo := math.Exp2(float64(j-1) / math.Exp2(float64(schema)))
			hi := math.Exp2(float64(j) / math.Exp2(float64(schema)))
			if l := proto.BucketLower(got); l < lo*(1-1e-9) || l >= hi {
				t.Fatalf("schema %d bucket %d (%v, %v]: herd bucket %d starts at %v outside", schema, j, lo, hi, got, l)
			}
		}
	}
}

func TestScraperRun(t *testing.T) {
	t.Parallel()
	tg := &target{status: 200, contentType: textType}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	r := &recorder{}
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: r.publish, Logger: quiet, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// A scrape's timeout defaults to the 20 ms interval: too short on a loaded machine, where
	// a timed-out scrape leaves the baseline unset.
	s, err := NewScraper(ScraperConfig{URL: srv.URL, Timeout: 5 * time.Second}, c, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	tg.set(200, textType, exposition(1, 0, "", classic(1, 1, 1, 1, 0.01)))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := c.Stats().Sent; n < 2 {
			return fmt.Errorf("got %d batches; want ≥ 2", n)
		}
		return nil
	})
	// The last scrape before the final batch picks this up.
	tg.set(200, textType, exposition(41, 0, "", classic(1, 1, 1, 1, 0.01)))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	var total float64
	bs := r.all()
	for _, b := range bs {
		if s := findLabel(&b, "http_requests_total", "code", "200"); s != nil {
			total += s.Value
		}
	}
	if total != 40 || !bs[len(bs)-1].Final {
		t.Errorf("got %v requests, last final %v; want 40 and a final batch", total, bs[len(bs)-1].Final)
	}
}

func TestNewScraperBadURL(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, &recorder{}, time.Now())
	for _, u := range []string{"", "localhost:9100", "ftp://x/metrics", "http:///metrics"} {
		if _, err := NewScraper(ScraperConfig{URL: u}, c, quiet, nil); err == nil {
			t.Errorf("NewScraper(%q): got nil error; want one", u)
		}
	}
}

// BenchmarkScrape is one scrape of a 200-series text exposition over HTTP.
func BenchmarkScrape(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString("# TYPE http_requests_total counter\n")
	for i := range 200 {
		fmt.Fprintf(&buf, "http_requests_total{code=\"%d\",path=\"/p%d\"} %d\n", 200+i%5, i, 1000+i)
	}
	tg := &target{status: 200, contentType: textType, body: buf.Bytes()}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: func(string, []byte) error { return nil }, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	s, err := NewScraper(ScraperConfig{URL: srv.URL, Timeout: 5 * time.Second}, c, quiet, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Scrape(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

func TestScraperOpenMetrics(t *testing.T) {
	t.Parallel()
	e := newScrapeEnv(t)
	ct := string(expfmt.NewFormat(expfmt.TypeOpenMetrics))
	om := func(n int) []byte {
		return fmt.Appendf(nil, "# TYPE jobs counter\njobs_total{queue=\"a\"} %d\n# TYPE up gauge\nup 1\n# EOF\n", n)
	}
	e.tg.set(200, ct, om(5))
	e.step(t, "")
	e.tg.set(200, ct, om(9))
	b := e.step(t, "")
	if s := findLabel(b, "jobs_total", "queue", "a"); s == nil || s.Value != 4 {
		t.Errorf("got %v; want jobs_total delta 4", s)
	}
	if s := find(b, "up"); s == nil || s.Value != 1 {
		t.Errorf("got %v; want gauge up 1", s)
	}
	if n := e.counter("herd_agent_scrape_format_fallbacks_total"); n != 0 {
		t.Errorf("got %d fallbacks; want 0", n)
	}
}

// TestScraperHandover checks CountFirst and a baseline handed from one scraper to the next
// (a target moving to another group): each count is published once, by the scraper that
// saw it happen.
func TestScraperHandover(t *testing.T) {
	t.Parallel()
	tg := &target{status: 200, contentType: textType}
	srv := httptest.NewServer(tg)
	defer srv.Close()
	body := func(n int) []byte {
		return fmt.Appendf(nil, "# TYPE requests_total counter\nrequests_total{code=\"200\"} %d\n", n)
	}
	newScraper := func(version string, countFirst bool) (*Scraper, *float64) {
		got := new(float64)
		c, err := NewClient(ClientConfig{Service: "cart", Version: version, Publish: func(string, []byte) error { return nil },
			OnBatch: func(b *proto.Batch, _ error) {
				for _, s := range b.Series {
					*got += s.Value
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewScraper(ScraperConfig{URL: srv.URL, CountFirst: countFirst}, c, quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s, got
	}
	a, gotA := newScraper("v1", true)
	tg.set(200, textType, body(7))
	if err := a.Scrape(t.Context()); err != nil { // CountFirst: 7 counts
		t.Fatal(err)
	}
	tg.set(200, textType, body(10))
	if err := a.Scrape(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Close(); err != nil {
		t.Fatal(err)
	}
	b, gotB := newScraper("v2", true)
	b.Adopt(a.Handover())
	tg.set(200, textType, body(16))
	if err := b.Scrape(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Close(); err != nil {
		t.Fatal(err)
	}
	if *gotA != 10 || *gotB != 6 {
		t.Errorf("got %v in v1, %v in v2; want 10 and 6", *gotA, *gotB)
	}
}
