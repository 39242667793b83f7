package rollup

import (
	"math"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// FuzzAdd feeds decoded batches of any content and timing to a Rollup: it must never panic,
// every batch must be merged or refused, and every open window must stay within its bucket
// budget with finite sums.
func FuzzAdd(f *testing.F) {
	now := time.Unix(1_790_000_000, 0)
	var enc proto.Encoder
	for _, b := range []*proto.Batch{
		batch(1, 0, now, counter(proto.SeriesRequests, 1), gauge("g", -1), hist(proto.SeriesLatency, 0.1, 3)),
		batch(2, 1<<40, now.Add(time.Hour), counter("x", 1, "a", "b")),
		batch(3, 5, now.Add(-time.Hour)),
		batch(4, 0, now, counter("x", 1e308), gauge("g", -1.7e308), farHist("h", -4000)),
		batch(5, 0, now, counter("x", 1e308), gauge("g", -1.7e308), farHist("h", 4000)),
	} {
		data, err := enc.Append(nil, b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, data, int64(0))
	}
	f.Fuzz(func(t *testing.T, a, b []byte, step int64) {
		cfg := DefaultConfig()
		cfg.MaxSeriesPerGroup = 4
		r, err := New(cfg, nil, func(*proto.Window) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		clock := now
		r.now = func() time.Time { return clock }
		var dec proto.Decoder
		var bt proto.Batch
		added := uint64(0)
		for _, data := range [][]byte{a, b, a} {
			if dec.Decode(data, &bt) != nil {
				continue
			}
			r.Add(&bt)
			added++
			checkWindows(t, r)
			clock = clock.Add(time.Duration(step % int64(time.Minute)))
			r.Advance(clock)
		}
		r.Flush()
		if st := r.Stats(); st.BatchesMerged+st.Refused() != added {
			t.Fatalf("merged %d + refused %d; want %d batches", st.BatchesMerged, st.Refused(), added)
		}
	})
}

// checkWindows checks the bucket accounting of every open window and correction of r: the
// buckets in use match w.buckets and stay within the budget, the capacity matches w.held,
// and every sum is within MaxSum.
func checkWindows(t *testing.T, r *Rollup) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	type openWindow struct {
		key groupKey
		w   *window
	}
	var open []openWindow
	for _, g := range r.groups {
		for _, w := range g.windows {
			open = append(open, openWindow{g.key, w})
		}
	}
	for k, cs := range r.corr {
		for _, c := range cs {
			open = append(open, openWindow{k, c.w})
		}
	}
	for _, o := range open {
		w := o.w
		used, held := 0, 0
		for _, accs := range append([][]acc{w.accs}, w.parts[:]...) {
			for i := range accs {
				a := &accs[i]
				used += len(a.hist.Positive.Counts) + len(a.hist.Negative.Counts)
				held += histCap(&a.hist)
				if !(math.Abs(a.sum) <= MaxSum && math.Abs(a.hist.Sum) <= MaxSum) {
					t.Fatalf("window %d of %v: sums %v and %v beyond MaxSum", w.start, o.key, a.sum, a.hist.Sum)
				}
			}
		}
		if used != w.buckets || held != w.held || used > r.cfg.MaxWindowBuckets {
			t.Fatalf("window %d of %v: %d buckets in use (accounted %d), %d held (accounted %d), budget %d",
				w.start, o.key, used, w.buckets, held, w.held, r.cfg.MaxWindowBuckets)
		}
	}
}
