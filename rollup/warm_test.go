package rollup

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// findIn returns the series of ss with the given name and no labels, or nil.
func findIn(ss []proto.WindowSeries, name string) *proto.WindowSeries {
	for i := range ss {
		if ss[i].Name == name && len(ss[i].Labels) == 0 {
			return &ss[i]
		}
	}
	return nil
}

// valueIn returns the counter value of name in ss, 0 when absent.
func valueIn(ss []proto.WindowSeries, name string) float64 {
	if s := findIn(ss, name); s != nil {
		return s.Value
	}
	return 0
}

// histCount returns the latency observation count in ss, 0 when absent.
func histCount(ss []proto.WindowSeries) uint64 {
	if s := findIn(ss, proto.SeriesLatency); s != nil && s.Hist != nil {
		return s.Hist.Count
	}
	return 0
}

// TestWarmExcludesYoungInstancesAndHalvesPartitionThem follows 8 instances started long ago
// and one started at the first window, for 7 s of windows. Instance i sends 2^i requests, so
// a window's sums tell exactly which instances were merged into Warm and into each half.
func TestWarmExcludesYoungInstancesAndHalvesPartitionThem(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig() // warm-up 5 s, RED triple split
		r, s := newTestRollup(t, cfg)
		base := time.Now()
		const old, young = 8, 8 // instances 0..7 are old, instance 8 starts at base
		const windows = 28      // 7 s
		for k := range windows {
			end := base.Add(time.Duration(k+1) * win)
			time.Sleep(time.Until(end))
			r.Advance(time.Now()) // close what is due, as Run does
			for i := 0; i <= young; i++ {
				b := batch(i, uint64(k), end,
					counter(proto.SeriesRequests, float64(uint(1)<<i)),
					counter(proto.SeriesErrors, 1),
					counter("other_total", 1),
					hist(proto.SeriesLatency, 0.01*float64(i+1)))
				if i == young {
					b.InstanceStart = base.UnixNano()
				}
				r.Add(b)
			}
		}
		closeAll(r, base.Add(windows*win))
		got := s.take()
		if len(got) != windows {
			t.Fatalf("got %d windows; want %d", len(got), windows)
		}
		var half [young + 1]int
		for i := range half {
			half[i] = proto.HalfOf(instanceID(i))
		}
		warmFrom := int(cfg.Warmup/win) - 1 // first window whose batch ends ≥ 5 s after base
		for k, w := range got {
			youngWarm := k >= warmFrom
			var wantWarm float64
			var wantHalf [2]float64
			var wantHalfInst [2]int
			var wantBucket [proto.NumBuckets]float64
			var wantBucketInst [proto.NumBuckets]int
			for i := 0; i <= young; i++ {
				if i == young && !youngWarm {
					continue
				}
				wantWarm += float64(uint(1) << i)
				wantHalf[half[i]] += float64(uint(1) << i)
				wantHalfInst[half[i]]++
				wantBucket[proto.BucketOf(instanceID(i))] += float64(uint(1) << i)
				wantBucketInst[proto.BucketOf(instanceID(i))]++
			}
			if len(w.Buckets) != proto.NumBuckets || !slices.Equal(w.BucketInstances, wantBucketInst[:]) {
				t.Errorf("window %d: got %d buckets with instances %v; want %d with %v", k, len(w.Buckets), w.BucketInstances, proto.NumBuckets, wantBucketInst)
			}
			for b := range min(len(w.Buckets), proto.NumBuckets) {
				if v := valueIn(w.Buckets[b], proto.SeriesRequests); v != wantBucket[b] {
					t.Errorf("window %d: bucket %d requests got %v; want %v (instances by BucketOf)", k, b, v, wantBucket[b])
				}
				if n := histCount(w.Buckets[b]); n != uint64(wantBucketInst[b]) {
					t.Errorf("window %d: bucket %d latency count got %d; want %d", k, b, n, wantBucketInst[b])
				}
			}
			all := float64(uint(1)<<(young+1) - 1)
			if v := valueIn(w.Series, proto.SeriesRequests); v != all {
				t.Errorf("window %d: Series requests got %v; want %v (every instance)", k, v, all)
			}
			if v := valueIn(w.Warm, proto.SeriesRequests); v != wantWarm {
				t.Errorf("window %d (young warm %v): Warm requests got %v; want %v", k, youngWarm, v, wantWarm)
			}
			for h := range 2 {
				if v := valueIn(w.Halves[h], proto.SeriesRequests); v != wantHalf[h] {
					t.Errorf("window %d: half %d requests got %v; want %v (instances by HalfOf)", k, h, v, wantHalf[h])
				}
			}
			if w.HalfInstances != wantHalfInst || w.WarmInstances != wantHalfInst[0]+wantHalfInst[1] || w.Instances != young+1 {
				t.Errorf("window %d: got instances %d warm %d halves %v; want %d, %d, %v",
					k, w.Instances, w.WarmInstances, w.HalfInstances, young+1, wantHalfInst[0]+wantHalfInst[1], wantHalfInst)
			}
			// Halves sum to Warm exactly, series by series.
			for _, name := range []string{proto.SeriesRequests, proto.SeriesErrors} {
				if a, b, c := valueIn(w.Halves[0], name), valueIn(w.Halves[1], name), valueIn(w.Warm, name); a+b != c {
					t.Errorf("window %d %s: halves %v + %v; want Warm %v", k, name, a, b, c)
				}
			}
			if a, b, c := histCount(w.Halves[0]), histCount(w.Halves[1]), histCount(w.Warm); a+b != c || c != uint64(wantHalfInst[0]+wantHalfInst[1]) {
				t.Errorf("window %d latency counts: halves %d + %d, Warm %d; want the sum and %d", k, a, b, c, wantHalfInst[0]+wantHalfInst[1])
			}
			if findIn(w.Warm, "other_total") != nil || findIn(w.Halves[0], "other_total") != nil || findIn(w.Series, "other_total") == nil {
				t.Errorf("window %d: other_total must be in Series only (not split)", k)
			}
			if w.WarmupMs != cfg.Warmup.Milliseconds() || !w.Splits(proto.SeriesLatency) || w.Splits("other_total") {
				t.Errorf("window %d: got warmup %d ms split %v; want %d ms and the RED triple", k, w.WarmupMs, w.SplitSeries, cfg.Warmup.Milliseconds())
			}
		}
		st := r.Stats()
		if want := uint64(warmFrom); st.BatchesWarming != want {
			t.Errorf("warming batches: got %d; want %d", st.BatchesWarming, want)
		}
		// Both halves are used by 9 instances: the hash does not put everything in one.
		if n := slices.Index(half[:], 1); n < 0 || slices.Index(half[:], 0) < 0 {
			t.Errorf("HalfOf over 9 ids: got %v; want both halves used", half)
		}
	})
}

func TestWarmGaugesAndHistogramsMergeAcrossHalves(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.SplitSeries = "*"
		r, s := newTestRollup(t, cfg)
		base := time.Now()
		end := base.Add(win)
		var want proto.Histogram
		for i := range 10 {
			want.Observe(0.001*float64(i+1), 1)
			r.Add(batch(i, 0, end, gauge("inflight", float64(i)), hist(proto.SeriesLatency, 0.001*float64(i+1))))
		}
		closeAll(r, end)
		w := s.take()[0]
		g, all := findIn(w.Warm, "inflight"), find(w, "inflight")
		if g == nil || g.Value != all.Value || g.Sum != all.Sum || g.Min != all.Min || g.Max != all.Max || g.Count != all.Count || g.Count != 10 {
			t.Fatalf("warm gauge: got %+v; want %+v (all 10 instances are warm)", g, all)
		}
		h := findIn(w.Warm, proto.SeriesLatency)
		if h == nil || h.Hist.Count != want.Count || !slices.Equal(h.Hist.Positive.Counts, want.Positive.Counts) || h.P99 != want.Quantile(0.99) {
			t.Fatalf("warm latency: got %+v; want the exact merge of both halves", h)
		}
		if !w.Splits("anything") {
			t.Fatalf("split series %v: got Splits(anything) false; want true for *", w.SplitSeries)
		}
	})
}

func TestWarmJSONAndDisabled(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		for _, warmup := range []time.Duration{5 * time.Second, 0} {
			cfg := DefaultConfig()
			cfg.Warmup = warmup
			r, s := newTestRollup(t, cfg)
			end := time.Now().Add(win)
			for i := range 4 {
				r.Add(batch(i, 0, end, counter(proto.SeriesRequests, 1), counter(proto.SeriesErrors, 1)))
			}
			closeAll(r, end)
			data, err := proto.MarshalWindow(s.take()[0])
			if err != nil {
				t.Fatal(err)
			}
			w, err := proto.UnmarshalWindow(data)
			if err != nil {
				t.Fatalf("UnmarshalWindow(%s): got %v; want no error", data, err)
			}
			if warmup == 0 {
				if strings.Contains(string(data), `"warm`) || strings.Contains(string(data), `"halves"`) || w.WarmupMs != 0 {
					t.Errorf("warm-up 0: got %s; want no warm fields", data)
				}
				continue
			}
			if w.WarmupMs != 5000 || w.WarmInstances != 4 || w.HalfInstances[0]+w.HalfInstances[1] != 4 ||
				valueIn(w.Warm, proto.SeriesErrors) != 4 || valueIn(w.Halves[0], proto.SeriesErrors)+valueIn(w.Halves[1], proto.SeriesErrors) != 4 {
				t.Errorf("JSON round trip: got %s; want warmup 5000, 4 warm instances, 4 errors split in halves", data)
			}
		}
	})
}

func TestHalfOfStable(t *testing.T) {
	t.Parallel()
	ids := [][16]byte{{}, instanceID(1), instanceID(2), instanceID(3), instanceID(4)}
	// Computed independently from the documented formula: other workers must agree.
	want := []int{0, 0, 1, 0, 1}
	for i, id := range ids {
		if got := proto.HalfOf(id); got != want[i] {
			t.Errorf("HalfOf(%x): got %d; want %d", id, got, want[i])
		}
	}
}

func TestSplitSeriesConfig(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"", "a,,b", "*,requests_total", `a{b="c"}`} {
		c := DefaultConfig()
		c.SplitSeries = v
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "-rollup.split-series ") {
			t.Errorf("split series %q: got %v; want an error naming -rollup.split-series", v, err)
		}
		c.Warmup = 0
		if err := c.Validate(); err != nil {
			t.Errorf("split series %q with warm-up 0: got %v; want valid (unused)", v, err)
		}
	}
	c := DefaultConfig()
	c.Warmup = 1500 * time.Microsecond
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "-rollup.warmup ") {
		t.Errorf("warm-up 1.5ms: got %v; want an error naming -rollup.warmup", err)
	}
}

// TestBucketsOmittedBeyondTheirBound: a window whose split series have so many label sets
// that its 16 instance buckets would hold more than MaxBucketCells entries is published
// without buckets, counted, and with Warm and Halves exact.
func TestBucketsOmittedBeyondTheirBound(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()         // requests_total is split
		labels := MaxBucketCells/4 + 1 // more than MaxBucketCells in any 4 buckets
		cfg.MaxSeriesPerGroup, cfg.MaxSeriesPerService = labels, labels
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		const instances = 16 // in at least 4 buckets
		for i := range instances {
			ss := make([]proto.Series, 0, labels)
			for l := range labels {
				ss = append(ss, counter(proto.SeriesRequests, 1, "route", strconv.Itoa(l)))
			}
			r.Add(batch(i, 0, end, ss...))
		}
		r.Add(batch(instances, 0, end, counter(proto.SeriesRequests, 1, "route", "0")))
		closeAll(r, end)
		w := s.take()[0]
		if w.Buckets != nil || w.BucketInstances != nil {
			t.Fatalf("%d label sets in 16 buckets: got %d buckets; want none (over MaxBucketCells)", labels, len(w.Buckets))
		}
		if got := r.m.bucketsOmitted.Get(); got != 1 {
			t.Fatalf("windows without buckets: got %d counted; want 1", got)
		}
		var n float64
		for _, ws := range w.Warm {
			n += ws.Value
		}
		if want := float64(instances*labels + 1); n != want || w.WarmInstances != instances+1 {
			t.Fatalf("Warm without buckets: got %v requests of %d instances; want %v of %d", n, w.WarmInstances, want, instances+1)
		}
	})
}
