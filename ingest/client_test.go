package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/herd-dev/herd/proto"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder decodes every published batch, as the rollup would see it.
type recorder struct {
	mu      sync.Mutex
	dec     proto.Decoder
	batches []proto.Batch
	fail    error // returned by publish when set
}

func (r *recorder) publish(subject string, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	var b proto.Batch
	if err := r.dec.Decode(data, &b); err != nil {
		return fmt.Errorf("test recorder: %w", err)
	}
	// Copy what the decoder shares.
	b.Series = append([]proto.Series(nil), b.Series...)
	for i := range b.Series {
		b.Series[i].Labels = append([]proto.Label(nil), b.Series[i].Labels...)
		var h proto.Histogram
		h.CopyFrom(&b.Series[i].Hist)
		b.Series[i].Hist = h
	}
	r.batches = append(r.batches, b)
	return nil
}

func (r *recorder) all() []proto.Batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proto.Batch(nil), r.batches...)
}

func find(b *proto.Batch, name string) *proto.Series {
	for i := range b.Series {
		if b.Series[i].Name == name {
			return &b.Series[i]
		}
	}
	return nil
}

func newTestClient(t testing.TB, r *recorder, start time.Time) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1.4.2", Publish: r.publish, Start: start, Logger: quiet})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

func TestClientFlushDeltas(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	start := time.Unix(1000, 0)
	c := newTestClient(t, r, start)
	red := c.RED()
	for i := range 10 {
		red.Observe(time.Duration(i+1)*time.Millisecond, i%5 == 0)
	}
	g := c.Gauge("queue_depth", proto.Label{Name: "q", Value: "a"})
	g.Set(7)
	g.Add(-2)
	c.Counter("bytes_total").Add(1.5)
	c.Counter("bytes_total").Add(2)

	if err := c.Flush(start.Add(250*time.Millisecond), false); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := c.Flush(start.Add(500*time.Millisecond), false); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	bs := r.all()
	if len(bs) != 2 {
		t.Fatalf("got %d batches; want 2", len(bs))
	}
	b := &bs[0]
	if b.Seq != 0 || b.Start != start.UnixNano() || b.End != start.Add(250*time.Millisecond).UnixNano() {
		t.Errorf("got seq %d interval [%d, %d); want 0 [%d, %d)", b.Seq, b.Start, b.End, start.UnixNano(), start.Add(250*time.Millisecond).UnixNano())
	}
	if s := find(b, proto.SeriesRequests); s == nil || s.Value != 10 || s.Kind != proto.KindCounter {
		t.Errorf("got requests %+v; want counter 10", s)
	}
	if s := find(b, proto.SeriesErrors); s == nil || s.Value != 2 {
		t.Errorf("got errors %+v; want 2", s)
	}
	if s := find(b, "bytes_total"); s == nil || s.Value != 3.5 {
		t.Errorf("got bytes_total %+v; want 3.5", s)
	}
	if s := find(b, "queue_depth"); s == nil || s.Value != 5 || len(s.Labels) != 1 {
		t.Errorf("got queue_depth %+v; want gauge 5 with 1 label", s)
	}
	lat := find(b, proto.SeriesLatency)
	if lat == nil || lat.Hist.Count != 10 {
		t.Fatalf("got latency %+v; want 10 observations", lat)
	}
	// The same observations in a DDSketch give the same quantiles.
	sk := proto.NewSketch()
	for i := range 10 {
		_ = sk.Add(float64(i+1) / 1000)
	}
	for _, q := range []float64{0, 0.5, 0.9, 1} {
		want, _ := sk.GetValueAtQuantile(q)
		if got := lat.Hist.Quantile(q); got != want {
			t.Errorf("q%v: got %v; want %v (sketch)", q, got, want)
		}
	}
	// Second batch: deltas were reset; only the gauge remains.
	b = &bs[1]
	if b.Seq != 1 || b.Start != bs[0].End {
		t.Errorf("got seq %d start %d; want 1 %d", b.Seq, b.Start, bs[0].End)
	}
	if len(b.Series) != 1 || b.Series[0].Name != "queue_depth" {
		t.Errorf("got series %v; want only queue_depth", b.Series)
	}
}

func TestClientRegistration(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: r.publish, MaxSeries: 3, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	a := c.Counter("x", proto.Label{Name: "b", Value: "2"}, proto.Label{Name: "a", Value: "1"})
	b := c.Counter("x", proto.Label{Name: "a", Value: "1"}, proto.Label{Name: "b", Value: "2"})
	if a != b {
		t.Errorf("got two counters for the same series; want one")
	}
	if g := c.Gauge("x", proto.Label{Name: "a", Value: "1"}, proto.Label{Name: "b", Value: "2"}); g != discardGauge {
		t.Errorf("got a gauge for a counter's series; want the detached gauge")
	}
	c.Counter("", proto.Label{})
	c.Counter("y", proto.Label{Name: "a"}, proto.Label{Name: "a"})
	c.Counter("z1")
	c.Counter("z2")
	c.Counter("z3") // over the limit of 3
	c.Counter("z3").Inc()
	c.Counter("z1").Add(-1)
	c.Counter("z1").Add(math.Inf(1))
	st := c.Stats()
	want := map[string]uint64{"kind_conflict": 1, "bad_name": 1, "bad_labels": 1, "limit": 2}
	for k, v := range want {
		if st.RefusedSeries[k] != v {
			t.Errorf("refused %s: got %d; want %d", k, st.RefusedSeries[k], v)
		}
	}
	if st.RefusedValues != 2 {
		t.Errorf("refused values: got %d; want 2", st.RefusedValues)
	}
}

func TestClientUnsent(t *testing.T) {
	t.Parallel()
	r := &recorder{fail: errors.New("no route")}
	start := time.Unix(2000, 0)
	var seen []uint64
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: r.publish, Start: start, Logger: quiet,
		OnBatch: func(b *proto.Batch, err error) {
			if err == nil {
				seen = append(seen, b.Seq)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	c.Counter("n").Inc()
	if err := c.Flush(start.Add(time.Second), false); err == nil {
		t.Fatalf("got nil error from a failing publish; want an error")
	}
	r.mu.Lock()
	r.fail = nil
	r.mu.Unlock()
	if err := c.Flush(start.Add(2*time.Second), true); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := c.Flush(start.Add(3*time.Second), false); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v after the final batch; want ErrClosed", err)
	}
	bs := r.all()
	if len(bs) != 1 || bs[0].Seq != 1 || !bs[0].Final || len(bs[0].Series) != 0 {
		t.Fatalf("got %+v; want one final batch with seq 1 and no series (the lost delta is gone)", bs)
	}
	if len(seen) != 1 || seen[0] != 1 {
		t.Errorf("OnBatch saw sent seqs %v; want [1]", seen)
	}
	st := c.Stats()
	if st.Sent != 1 || st.Unsent[UnsentPublish] != 1 {
		t.Errorf("got sent %d unsent %v; want 1 and publish:1", st.Sent, st.Unsent)
	}
}

// TestClientRunAligned checks the batch intervals of Run against the fake clock.
func TestClientRunAligned(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		time.Sleep(100 * time.Millisecond) // start between boundaries
		start := time.Now()
		set := metrics.NewSet()
		c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Publish: r.publish, Logger: quiet, Metrics: set})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		red := c.RED()
		for range 10 {
			red.Observe(time.Millisecond, false)
			time.Sleep(100 * time.Millisecond)
		}
		// Now = start + 1 s, which is 100 ms past a boundary.
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		bs := r.all()
		iv := 250 * time.Millisecond
		wantEnds := []time.Time{}
		for e := alignUp(start, iv); e.Before(time.Now()); e = e.Add(iv) {
			wantEnds = append(wantEnds, e)
		}
		wantEnds = append(wantEnds, time.Now())
		if len(bs) != len(wantEnds) {
			t.Fatalf("got %d batches; want %d", len(bs), len(wantEnds))
		}
		prev := start.UnixNano()
		var total float64
		for i, b := range bs {
			if b.Seq != uint64(i) || b.Start != prev || b.End != wantEnds[i].UnixNano() {
				t.Errorf("batch %d: got seq %d [%d, %d); want %d [%d, %d)", i, b.Seq, b.Start, b.End, i, prev, wantEnds[i].UnixNano())
			}
			if b.Final != (i == len(bs)-1) {
				t.Errorf("batch %d: got final %v", i, b.Final)
			}
			if s := find(&b, proto.SeriesRequests); s != nil {
				total += s.Value
			}
			prev = b.End
		}
		if total != 10 {
			t.Errorf("got %v requests over all batches; want 10", total)
		}
		if got := set.GetOrCreateCounter("herd_agent_batches_total").Get(); got != uint64(len(bs)) {
			t.Errorf("herd_agent_batches_total: got %d; want %d", got, len(bs))
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close after Run: got %v; want nil", err)
		}
	})
}

// TestClientRunMissedTicks stalls one publish past two boundaries.
func TestClientRunMissedTicks(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r := &recorder{}
		stall := true
		var ends []int64
		c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Logger: quiet,
			Publish: func(subject string, data []byte) error {
				if stall {
					stall = false
					time.Sleep(600 * time.Millisecond)
				}
				return r.publish(subject, data)
			},
			OnBatch: func(b *proto.Batch, err error) { ends = append(ends, b.End) }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 1600*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		if err := c.Run(ctx); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Boundaries: 250 (publish stalls to 850), then 750 is missed, 1000, 1250, 1500, final 1600.
		ms := func(d int) int64 { return t0.Add(time.Duration(d) * time.Millisecond).UnixNano() }
		want := []int64{ms(250), ms(750), ms(1000), ms(1250), ms(1500), ms(1600)}
		if fmt.Sprint(ends) != fmt.Sprint(want) {
			t.Errorf("got batch ends %v; want %v", ends, want)
		}
		if got := c.Stats().MissedTicks; got != 1 {
			t.Errorf("got %d missed ticks; want 1", got)
		}
	})
}

func TestAlign(t *testing.T) {
	t.Parallel()
	iv := 250 * time.Millisecond
	for _, tc := range []struct{ in, down int64 }{
		{0, 0}, {1, 0}, {249_999_999, 0}, {250_000_000, 250_000_000}, {-1, -250_000_000},
	} {
		if got := alignDown(time.Unix(0, tc.in), iv).UnixNano(); got != tc.down {
			t.Errorf("alignDown(%d): got %d; want %d", tc.in, got, tc.down)
		}
		if got := alignUp(time.Unix(0, tc.in), iv).UnixNano(); got != tc.down+int64(iv) {
			t.Errorf("alignUp(%d): got %d; want %d", tc.in, got, tc.down+int64(iv))
		}
	}
}

func TestClientConcurrent(t *testing.T) {
	t.Parallel()
	r := &recorder{}
	start := time.Now()
	c := newTestClient(t, r, start)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			red := c.RED()
			for i := range 1000 {
				red.Observe(time.Duration(i)*time.Microsecond, i%10 == 0)
			}
		})
	}
	for i := range 5 {
		if err := c.Flush(start.Add(time.Duration(i+1)*time.Millisecond), false); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := c.Flush(start.Add(time.Second), true); err != nil {
		t.Fatal(err)
	}
	var req, errs float64
	var lat uint64
	for _, b := range r.all() {
		if s := find(&b, proto.SeriesRequests); s != nil {
			req += s.Value
		}
		if s := find(&b, proto.SeriesErrors); s != nil {
			errs += s.Value
		}
		if s := find(&b, proto.SeriesLatency); s != nil {
			lat += s.Hist.Count
		}
	}
	if req != 4000 || errs != 400 || lat != 4000 {
		t.Errorf("got requests %v errors %v latency count %d; want 4000 400 4000", req, errs, lat)
	}
}

// BenchmarkFlush measures one interval of a RED client with 100 requests: recording and
// the flush (encode and publish to a no-op).
func BenchmarkFlush(b *testing.B) {
	var bytes int
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1.4.2", Logger: quiet,
		Publish: func(_ string, data []byte) error { bytes = len(data); return nil }})
	if err != nil {
		b.Fatal(err)
	}
	red := c.RED()
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for k := range 100 {
			red.Observe(time.Duration(5+k%40)*time.Millisecond+time.Duration(k)*37*time.Microsecond, k == 0)
		}
		now = now.Add(250 * time.Millisecond)
		if err := c.Flush(now, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(bytes), "bytes/batch")
}

// BenchmarkFlushOnly is the flush alone (the simulator's per-instance cost besides
// recording).
func BenchmarkFlushOnly(b *testing.B) {
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1.4.2", Logger: quiet,
		Publish: func(string, []byte) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	red := c.RED()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for k := range 100 {
			red.Observe(time.Duration(5+k%40)*time.Millisecond+time.Duration(k)*37*time.Microsecond, k == 0)
		}
		b.StartTimer()
		now = now.Add(250 * time.Millisecond)
		if err := c.Flush(now, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedObserve(b *testing.B) {
	c, err := NewClient(ClientConfig{Service: "checkout", Version: "1", Logger: quiet,
		Publish: func(string, []byte) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	red := c.RED()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		red.Observe(time.Duration(i%1000)*time.Microsecond, false)
	}
}
