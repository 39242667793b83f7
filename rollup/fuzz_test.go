package rollup

import (
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// FuzzAdd feeds decoded batches of any content and timing to a Rollup: it must never panic,
// and every batch must be merged or refused.
func FuzzAdd(f *testing.F) {
	now := time.Unix(1_790_000_000, 0)
	var enc proto.Encoder
	for _, b := range []*proto.Batch{
		batch(1, 0, now, counter(proto.SeriesRequests, 1), gauge("g", -1), hist(proto.SeriesLatency, 0.1, 3)),
		batch(2, 1<<40, now.Add(time.Hour), counter("x", 1, "a", "b")),
		batch(3, 5, now.Add(-time.Hour)),
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
			clock = clock.Add(time.Duration(step % int64(time.Minute)))
			r.Advance(clock)
		}
		r.Flush()
		if st := r.Stats(); st.BatchesMerged+st.Refused() != added {
			t.Fatalf("merged %d + refused %d; want %d batches", st.BatchesMerged, st.Refused(), added)
		}
	})
}
