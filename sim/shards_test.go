package sim

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/ingest"
)

// TestFleetPublishersAndIntervals: with Publishers, each shard publishes through its own
// function (a load generator's connection), and OnInterval reports every boundary each
// shard published, aligned, with nothing skipped on time; the totals are exact.
func TestFleetPublishersAndIntervals(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		recs := []*recorder{newRecorder(), newRecorder(), newRecorder()}
		var mu sync.Mutex
		boundaries := map[int][]time.Time{}
		skipped := 0
		f, err := NewFleet(FleetConfig{
			Groups:      testGroups(),
			LifetimeMin: time.Hour, LifetimeMax: time.Hour,
			Interval: 250 * time.Millisecond, Seed: 1, Shards: 3,
			Publishers: []ingest.PublishFunc{recs[0].publish, recs[1].publish, recs[2].publish},
			OnInterval: func(shard int, boundary, done time.Time, n int) {
				mu.Lock()
				defer mu.Unlock()
				boundaries[shard] = append(boundaries[shard], boundary)
				skipped += n
				if done.Before(boundary) {
					t.Errorf("shard %d: done %v before its boundary %v", shard, done, boundary)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Run(context.Background(), time.Now().Add(2*time.Second)); err != nil {
			t.Fatal(err)
		}
		var sent, want uint64
		for i, r := range recs {
			n := uint64(0)
			for _, got := range r.totals {
				n += got.BatchesSent
				sent += got.Requests
			}
			if n == 0 {
				t.Errorf("publisher %d: got no batches; want its shard's", i)
			}
		}
		for _, tot := range f.Totals() {
			want += tot.Requests
		}
		if sent != want {
			t.Errorf("publishers got %d requests; fleet counted %d", sent, want)
		}
		for shard := range 3 {
			bs := boundaries[shard]
			if len(bs) < 7 {
				t.Errorf("shard %d: %d intervals reported; want ≥ 7 in 2 s", shard, len(bs))
			}
			for _, b := range bs {
				if b.UnixNano()%int64(250*time.Millisecond) != 0 {
					t.Errorf("shard %d: boundary %v is not aligned to the interval", shard, b)
				}
			}
		}
		if skipped != 0 {
			t.Errorf("got %d boundaries skipped; want 0 (fake time never runs late)", skipped)
		}
	})
}
