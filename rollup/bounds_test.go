package rollup

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/proto/prototest"
)

// TestOverflowRefusedWindowPublished sends values whose sums would overflow: they are refused
// per sample and counted, and the window, with the rest of the batches, is encoded and
// published by herd's publisher on a real nats-server instead of failing to encode.
func TestOverflowRefusedWindowPublished(t *testing.T) {
	s := natstest.RunServer(t, natstest.Options{})
	nc := natstest.Connect(t, s)
	got := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(proto.SubjectRollupAll, got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	pub := bus.NewPublisher(nc, set, slog.New(slog.DiscardHandler))
	var pubErr error
	m := NewMetrics(metrics.NewSet())
	r, err := New(fixedConfig(), m, func(w *proto.Window) { pubErr = pub.Window(w) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_790_000_000, 0)
	r.now = func() time.Time { return now }
	end := now.Add(win)

	big := proto.Series{Name: "big_seconds", Kind: proto.KindHistogram}
	big.Hist.Observe(0.1, 1)
	big.Hist.Sum = 6e299
	for i, v := range []float64{1e308, 1e308, 6e299, 6e299, 1} {
		// Two counter values near 1e308 (each alone beyond MaxSum), then two of 6e299 whose
		// sum would exceed it; the gauge likewise, and the histogram sums from the second on.
		r.Add(batch(i, 0, end, counter("bytes_total", v), gauge("level", v),
			counter(proto.SeriesRequests, 10), hist(proto.SeriesLatency, 0.2), big))
	}
	r.Advance(end.Add(lateness))
	if pubErr != nil {
		t.Fatalf("publish: %v", pubErr)
	}
	var msg *nats.Msg
	checkfor.Within(t, 5*time.Second, 10*time.Millisecond, func() error {
		select {
		case msg = <-got:
			return nil
		default:
			return fmt.Errorf("no window published")
		}
	})
	w, err := proto.UnmarshalWindow(msg.Data)
	if err != nil {
		t.Fatalf("published window does not decode: %v", err)
	}
	if s := find(w, "bytes_total"); s == nil || s.Value != 6e299+1 {
		t.Errorf("bytes_total: got %+v; want 6e299+1 (the samples that fit)", s)
	}
	if s := find(w, "level"); s == nil || s.Count != 2 || s.Sum != 6e299+1 {
		t.Errorf("level: got %+v; want 2 samples summing to 6e299+1", s)
	}
	if s := find(w, proto.SeriesRequests); s == nil || s.Value != 50 {
		t.Errorf("requests: got %+v; want 50 (every batch merged)", s)
	}
	if s := find(w, proto.SeriesLatency); s == nil || s.Count != 5 {
		t.Errorf("latency: got %+v; want count 5", s)
	}
	if s := find(w, "big_seconds"); s == nil || s.Count != 1 || s.Sum != 6e299 {
		t.Errorf("big_seconds: got %+v; want the first histogram only", s)
	}
	st := r.Stats()
	// bytes_total: 1e308 twice and the second 6e299; level likewise; big_seconds four times.
	if got := st.SeriesRefused[ReasonOverflow]; got != 3+3+4 {
		t.Errorf("overflow refusals: got %d; want 10", got)
	}
	if st.BatchesMerged != 5 {
		t.Errorf("merged batches: got %d; want 5", st.BatchesMerged)
	}
	for _, c := range []string{
		`herd_bus_publish_errors_total{kind="window",reason="encode"}`,
		`herd_bus_publish_errors_total{kind="window",reason="publish"}`,
	} {
		if n := set.GetOrCreateCounter(c).Get(); n != 0 {
			t.Errorf("%s: got %d; want 0", c, n)
		}
	}
	if n := set.GetOrCreateCounter(`herd_bus_published_total{kind="window"}`).Get(); n != 1 {
		t.Errorf("published windows: got %d; want 1", n)
	}
}

// farHist returns a histogram series with one observation in bucket i.
func farHist(name string, i int) proto.Series {
	s := proto.Series{Name: name, Kind: proto.KindHistogram}
	s.Hist.Positive.Add(i, 1)
	s.Hist.Count = 1
	return s
}

// TestWindowBucketBudget merges narrow histograms whose buckets lie far apart across
// instances: the window holds the union of their ranges, up to Config.MaxWindowBuckets.
func TestWindowBucketBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		cfg.Warmup = 0
		cfg.MaxWindowBuckets = 2 * proto.MaxBuckets
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		lo, hi := -4000, 4000 // 8001 buckets apart
		r.Add(batch(1, 0, end, farHist("a", lo), farHist("b", lo), farHist("c", lo)))
		r.Add(batch(2, 0, end, farHist("a", hi), farHist("b", hi), farHist("c", hi), counter(proto.SeriesRequests, 1)))
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 1 {
			t.Fatalf("got %d windows; want 1", len(ws))
		}
		for name, want := range map[string]uint64{"a": 2, "b": 2, "c": 1} {
			if s := find(ws[0], name); s == nil || s.Count != want {
				t.Errorf("%s: got %+v; want count %d", name, s, want)
			}
		}
		if find(ws[0], proto.SeriesRequests) == nil {
			t.Error("the rest of the batch was not merged")
		}
		if got := r.Stats().SeriesRefused[ReasonTooManyBuckets]; got != 1 {
			t.Errorf("too_many_buckets: got %d; want 1", got)
		}
	})
}

// TestWindowsShrinkAfterOutlier fills a window with wide histograms, then runs normal
// windows: the recycled windows give the outlier's buckets back.
func TestWindowsShrinkAfterOutlier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		r, _ := newTestRollup(t, cfg)
		base := time.Now()
		end := base.Add(win)
		for i := range 200 {
			// 200 series whose two instances lie 1000 buckets apart: 200k buckets.
			r.Add(batch(1, 0, end, farHist(fmt.Sprint("wide", i), 0)))
			r.Add(batch(2, 0, end, farHist(fmt.Sprint("wide", i), 1000)))
			r.Add(batch(1, 0, end, farHist(fmt.Sprint("wide", i), 0)))
		}
		rng := rand.New(rand.NewPCG(1, 2))
		for k := range 3 {
			end := base.Add(time.Duration(k+2) * win)
			for i := range 10 {
				r.Add(realisticBatch(rng, "checkout", i, end))
			}
			closeAll(r, end)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.freeWindows) == 0 {
			t.Fatal("no recycled windows")
		}
		for _, w := range r.freeWindows {
			if w.held > windowKeepBuckets {
				t.Errorf("a recycled window holds %d buckets; want at most %d", w.held, windowKeepBuckets)
			}
		}
		if r.freeBytes > maxFreeBytes {
			t.Errorf("recycled windows hold %d bytes; want at most %d", r.freeBytes, maxFreeBytes)
		}
	})
}

// TestGroupTableShrinks checks that a group that once held many series gives their table
// back once they are swept.
func TestGroupTableShrinks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		r, _ := newTestRollup(t, cfg)
		base := time.Now()
		series := make([]proto.Series, 0, 1000)
		for i := range 1000 {
			series = append(series, counter("flood", 1, "id", fmt.Sprint(i)))
		}
		r.Add(batch(1, 0, base.Add(win), series...))
		// Normal traffic for longer than InstanceTTL: the flood's series are swept.
		for k := range int(2 * cfg.InstanceTTL / win) {
			end := base.Add(time.Duration(k+2) * win)
			r.Add(batch(2, uint64(k), end, counter(proto.SeriesRequests, 1)))
			closeAll(r, end)
		}
		if st := r.Stats(); st.Series != 1 {
			t.Fatalf("series: got %d; want 1", st.Series)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		g := r.groups[groupKey{"checkout", "1.0"}]
		if cap(g.series) > 64 || g.idsPeak > 64 {
			t.Errorf("series table: len %d cap %d, id map peak %d; want both small", len(g.series), cap(g.series), g.idsPeak)
		}
	})
}

// memoryResult is what memoryRun measured.
type memoryResult struct {
	heap                    uint64 // the largest live heap after a window, over the run's baseline
	refused                 map[string]int
	sentReq, gotReq         float64
	sentLatency, gotLatency uint64
	refusedSamples, merged  uint64
}

// memoryRun feeds a Rollup, through one proto.Decoder and Batch as ingest's intake does,
// windows of normal traffic from instances (each instance one realistic batch per window),
// and with crafted > 0 that many crafted far-span batches of about 154 KB spread over the
// run. It returns the largest live heap the run held after a window's batches (after GC,
// rollup and decoder alive, open windows included), the decode refusals by reason, and the
// totals of requests_total and latency_seconds observations sent and emitted.

func memoryRun(t *testing.T, instances, windows, crafted int) memoryResult {
	t.Helper()
	res := memoryResult{refused: map[string]int{}}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	emit := func(w *proto.Window) {
		if s := w.Find(proto.SeriesRequests); s != nil {
			res.gotReq += s.Value
		}
		if s := w.Find(proto.SeriesLatency); s != nil {
			res.gotLatency += s.Count
		}
	}
	r, err := New(DefaultConfig(), nil, emit, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_790_000_000, 0)
	r.now = func() time.Time { return now }
	rng := rand.New(rand.NewPCG(7, 8))
	var enc proto.Encoder
	var dec proto.Decoder
	var b proto.Batch
	var buf []byte
	deliver := func(data []byte) {
		if err := dec.Decode(data, &b); err != nil {
			res.refused[proto.Reason(err)]++
			return
		}
		r.Add(&b)
	}
	sentCrafted := 0
	for k := range windows {
		end := now.Add(win)
		for i := range instances {
			bt := realisticBatch(rng, "checkout", i, end)
			bt.Seq = uint64(k)
			bt.InstanceStart = now.Add(-time.Minute).UnixNano()
			res.sentReq += bt.Series[len(bt.Series)-3].Value
			res.sentLatency += bt.Series[len(bt.Series)-1].Hist.Count
			if buf, err = enc.Append(buf[:0], bt); err != nil {
				t.Fatal(err)
			}
			deliver(buf)
			// The crafted batches arrive among the legitimate ones, from instances of
			// their own in the same group.
			if sentCrafted < crafted && i == instances/2 && k%(windows/crafted) == 0 {
				tmpl := groupBatch("checkout", "1.4.2", 1_000_000+sentCrafted, 0, end)
				deliver(prototest.FarSpans(tmpl, 154_000))
				sentCrafted++
			}
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if after.HeapAlloc > before.HeapAlloc {
			res.heap = max(res.heap, after.HeapAlloc-before.HeapAlloc)
		}
		now = end
		r.Advance(now.Add(-lateness))
	}
	r.Flush()
	runtime.KeepAlive(&dec)
	runtime.KeepAlive(&b)
	st := r.Stats()
	res.refusedSamples = st.SeriesRefused[ReasonTooManyBuckets] + st.SeriesRefused[ReasonBadHistogram]
	res.merged = st.BatchesMerged
	return res
}

// TestZeroFillBatchMemory is the acceptance test of bounded decoding: 200 instances of normal
// traffic plus twenty crafted 154 KB batches whose histograms have spans far apart. The
// crafted batches are refused and counted, the legitimate totals stay exact, and the live
// heap stays within 2× of the same run without them.
func TestZeroFillBatchMemory(t *testing.T) {
	const instances, windows, crafted = 200, 40, 20
	memoryRun(t, instances, 4, 0) // settles the runtime's and packages' own caches
	normal := memoryRun(t, instances, windows, 0)
	attacked := memoryRun(t, instances, windows, crafted)
	t.Logf("live heap: %d bytes normal, %d bytes with %d crafted batches (%.2f×); refused %v",
		normal.heap, attacked.heap, crafted, float64(attacked.heap)/float64(normal.heap), attacked.refused)

	if got := attacked.refused["histogram_span"]; got != crafted || len(attacked.refused) != 1 {
		t.Errorf("refused: got %v; want histogram_span %d", attacked.refused, crafted)
	}
	for _, res := range []memoryResult{normal, attacked} {
		if res.gotReq != res.sentReq || res.gotLatency != res.sentLatency {
			t.Errorf("totals: got requests %v latency %d; want %v %d", res.gotReq, res.gotLatency, res.sentReq, res.sentLatency)
		}
		if res.merged != instances*windows || res.refusedSamples != 0 {
			t.Errorf("merged %d batches (refused %d samples); want %d and none", res.merged, res.refusedSamples, instances*windows)
		}
	}
	if attacked.heap > 2*normal.heap {
		t.Errorf("live heap %d bytes with crafted batches; want at most 2× the %d of a normal run", attacked.heap, normal.heap)
	}
}
