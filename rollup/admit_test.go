package rollup

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// requestsOf sums the requests of the windows of service/version in ws.
func requestsOf(ws []*proto.Window, service, version string) float64 {
	var n float64
	for _, w := range ws {
		if w.Service == service && w.Version == version {
			if s := find(w, proto.SeriesRequests); s != nil {
				n += s.Value
			}
		}
	}
	return n
}

// TestVersionQuota floods one service with versions: beyond its quota they are refused as
// too_many_versions while the table has room, and a new service still gets its group. Once
// the first versions are idle, new versions take their places.
func TestVersionQuota(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig() // batches placed by their own stamps: admission, not clocks, is under test
		cfg.MaxVersionsPerService = 3
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		for v := range 10 {
			r.Add(groupBatch("flood", fmt.Sprint(v), 100+v, 0, end, counter(proto.SeriesRequests, 1)))
		}
		r.Add(groupBatch("real", "1", 1, 0, end, counter(proto.SeriesRequests, 5)))
		st := r.Stats()
		if st.Groups != 4 || st.RefusedBy[ReasonTooManyVersions] != 7 {
			t.Fatalf("got %d groups, %d too_many_versions; want 4, 7", st.Groups, st.RefusedBy[ReasonTooManyVersions])
		}
		closeAll(r, end)
		if got := requestsOf(s.take(), "real", "1"); got != 5 {
			t.Errorf("real/1 requests: got %v; want 5", got)
		}

		// The flood's first versions had their last batch at end; once idle, a new version
		// evicts the one idle longest.
		time.Sleep(time.Until(end.Add(groupIdleAfter(cfg))))
		end2 := time.Now().Add(win)
		r.Add(groupBatch("flood", "new", 200, 0, end2, counter(proto.SeriesRequests, 1)))
		st = r.Stats()
		if st.Groups != 4 || st.GroupsForgotten[groupEvicted] != 1 || st.RefusedBy[ReasonTooManyVersions] != 7 {
			t.Errorf("got %d groups, %d evicted, %d too_many_versions; want 4, 1, 7",
				st.Groups, st.GroupsForgotten[groupEvicted], st.RefusedBy[ReasonTooManyVersions])
		}
		r.mu.Lock()
		_, kept := r.groups[groupKey{"flood", "0"}]
		r.mu.Unlock()
		if kept {
			t.Error("flood/0, idle longest, was not the version evicted")
		}
	})
}

// TestIdleGroupEvictedWhenFull fills the table: a new group is refused while every group had
// a recent batch, and takes the place of the group idle longest once there is one. A group
// that keeps reporting is never evicted, nor one whose window is still open.
func TestIdleGroupEvictedWhenFull(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig() // batches placed by their own stamps: admission, not clocks, is under test
		cfg.MaxGroups = 4
		r, s := newTestRollup(t, cfg)
		base := time.Now()
		var want float64 // requests of the active group
		active := func(k int) {
			r.Add(groupBatch("active", "1", 1, uint64(k), base.Add(time.Duration(k+1)*win), counter(proto.SeriesRequests, 1)))
			want++
		}
		active(0)
		// Stamped ahead of the clock: its window stays open past the idle time.
		r.Add(groupBatch("ahead", "1", 4, 0, base.Add(cfg.MaxFuture), counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("idle-a", "1", 2, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("idle-b", "1", 3, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("new", "1", 5, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		if got := r.Stats().RefusedBy[ReasonTooManyGroups]; got != 1 {
			t.Fatalf("too_many_groups with no group idle: got %d; want 1", got)
		}
		idle := groupIdleAfter(cfg)
		k := 1
		for ; time.Duration(k)*win < idle+win; k++ {
			time.Sleep(time.Until(base.Add(time.Duration(k) * win)))
			active(k)
			r.Advance(time.Now())
		}
		// ahead has gone longest without a batch, but its window is open: idle-a goes, then
		// idle-b, then none is left.
		r.Add(groupBatch("new", "1", 5, 1, time.Now(), counter(proto.SeriesRequests, 7)))
		r.Add(groupBatch("new2", "1", 6, 0, time.Now(), counter(proto.SeriesRequests, 7)))
		r.Add(groupBatch("new3", "1", 7, 0, time.Now(), counter(proto.SeriesRequests, 7)))
		st := r.Stats()
		if st.GroupsForgotten[groupEvicted] != 2 || st.RefusedBy[ReasonTooManyGroups] != 2 {
			t.Errorf("got %d evicted, %d too_many_groups; want 2 (idle-a, idle-b), 2 (new's first batch, new3)",
				st.GroupsForgotten[groupEvicted], st.RefusedBy[ReasonTooManyGroups])
		}
		r.mu.Lock()
		for _, k := range []groupKey{{"active", "1"}, {"ahead", "1"}, {"new", "1"}, {"new2", "1"}} {
			if r.groups[k] == nil {
				t.Errorf("group %v was evicted", k)
			}
		}
		r.mu.Unlock()
		active(k)
		r.Flush()
		ws := s.take()
		if got := requestsOf(ws, "active", "1"); got != want {
			t.Errorf("active requests: got %v; want %v", got, want)
		}
		for g, want := range map[string]float64{"new": 7, "new2": 7, "new3": 0, "idle-a": 1, "idle-b": 1, "ahead": 1} {
			if got := requestsOf(ws, g, "1"); got != want {
				t.Errorf("%s requests: got %v; want %v", g, got, want)
			}
		}
	})
}

// TestServiceSeriesBudget bounds the series of a service's groups together.
func TestServiceSeriesBudget(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig() // batches placed by their own stamps: admission, not clocks, is under test
		cfg.MaxSeriesPerService = 5
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		series := func(prefix string) []proto.Series {
			return []proto.Series{counter(prefix+"a", 1), counter(prefix+"b", 1), counter(prefix+"c", 1)}
		}
		r.Add(groupBatch("svc", "1", 1, 0, end, series("x_")...))
		r.Add(groupBatch("svc", "2", 2, 0, end, series("y_")...))
		r.Add(groupBatch("other", "1", 3, 0, end, series("z_")...))
		st := r.Stats()
		if st.SeriesRefused[ReasonTooManyServiceSeries] != 1 || st.Series != 8 {
			t.Fatalf("got %d too_many_service_series, %d series; want 1, 8", st.SeriesRefused[ReasonTooManyServiceSeries], st.Series)
		}
		closeAll(r, end)
		if ws := s.take(); len(ws) != 3 {
			t.Fatalf("got %d windows; want 3", len(ws))
		}
		// Once svc/1 expires, its series no longer count against svc; svc/2's still do.
		for k := 1; time.Duration(k)*win <= cfg.InstanceTTL+time.Second; k++ {
			r.Add(groupBatch("svc", "2", 2, uint64(k), end.Add(time.Duration(k)*win), counter("y_a", 1), counter("y_b", 1)))
			time.Sleep(win)
			r.Advance(time.Now())
		}
		if st := r.Stats(); st.Groups != 1 || st.Series != 2 || st.GroupsForgotten[groupExpired] != 2 {
			t.Fatalf("after expiry: %d groups, %d series, %d expired; want 1, 2, 2", st.Groups, st.Series, st.GroupsForgotten[groupExpired])
		}
		r.Add(groupBatch("svc", "3", 4, 0, time.Now().Add(win), append(series("p_"), counter("p_d", 1), counter("p_e", 1))...))
		if st := r.Stats(); st.SeriesRefused[ReasonTooManyServiceSeries] != 3 || st.Series != 5 {
			t.Errorf("got %d too_many_service_series, %d series; want 3, 5", st.SeriesRefused[ReasonTooManyServiceSeries], st.Series)
		}
	})
}

// TestFloodLeavesNewServiceExact floods the rollup with 50,000 distinct groups in 10 s (10,000
// into a table of 2,000 outside make perf; half
// of them versions of five services, half services of one version each) while a new service
// of 20 instances starts: every one of its batches is merged, the flooding services are held
// to their quota, and the table drains once the flood stops.
func TestFloodLeavesNewServiceExact(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig() // batches placed by their own stamps: admission, not clocks, is under test
		subjects := 50_000
		if !perftest.Enabled() {
			// make test floods a fifth as much into a table a fifth as large: the same
			// pressure on admission for a fifth of the work. make perf floods at full size.
			subjects, cfg.MaxGroups = 10_000, cfg.MaxGroups/5
		}
		var (
			realReq   float64
			realWins  int
			floodWins int
		)
		r, err := New(cfg, nil, func(w *proto.Window) {
			if w.Service != "real" {
				floodWins++
				return
			}
			realWins++
			if s := find(w, proto.SeriesRequests); s != nil {
				realReq += s.Value
			}
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		const (
			floodFor  = 10 * time.Second
			instances = 20
		)
		base := time.Now()
		ticks := int(floodFor / win)
		perTick := subjects / ticks
		realFrom, realUntil := ticks/2, ticks/2+20 // the new service reports for 5 s mid-flood
		var sent float64
		maxGroups, n := 0, 0
		for k := 0; ; k++ {
			end := base.Add(time.Duration(k+1) * win)
			if k < ticks {
				for range perTick {
					svc, ver := fmt.Sprintf("one-%d", n), "1"
					if n%2 == 0 {
						svc, ver = fmt.Sprintf("many-%d", n%10/2), fmt.Sprint(n)
					}
					r.Add(groupBatch(svc, ver, 1000+n, 0, end, counter(proto.SeriesRequests, 1)))
					n++
				}
			}
			if k >= realFrom && k < realUntil {
				for i := range instances {
					r.Add(groupBatch("real", "1", i, uint64(k-realFrom), end, counter(proto.SeriesRequests, float64(i+1))))
					sent += float64(i + 1)
				}
			}
			maxGroups = max(maxGroups, r.Stats().Groups)
			time.Sleep(time.Until(end))
			r.Advance(time.Now())
			if k >= ticks && r.Stats().Groups == 0 {
				t.Logf("table drained %s after the flood's last batch", time.Since(base.Add(floodFor)))
				break
			}
		}
		r.Flush()
		st := r.Stats()
		t.Logf("flood: %d subjects in %s; groups held at most %d of %d; refused %v; groups forgotten %v; windows of the flood %d",
			n, floodFor, maxGroups, cfg.MaxGroups, st.RefusedBy, st.GroupsForgotten, floodWins)
		if realReq != sent || realWins == 0 {
			t.Errorf("new service: windows hold %v requests in %d windows; sent %v", realReq, realWins, sent)
		}
		if st.RefusedBy[ReasonTooManyVersions] == 0 || st.GroupsForgotten[groupEvicted] == 0 {
			t.Errorf("got %d too_many_versions, %d evicted; want the flooding services held to their quota and idle groups evicted",
				st.RefusedBy[ReasonTooManyVersions], st.GroupsForgotten[groupEvicted])
		}
		if maxGroups > cfg.MaxGroups {
			t.Errorf("held %d groups; want at most %d", maxGroups, cfg.MaxGroups)
		}
		if st.BatchesMerged+st.Refused() != st.Batches {
			t.Errorf("merged %d + refused %d; want %d batches", st.BatchesMerged, st.Refused(), st.Batches)
		}
	})
}

// TestOneShotGroupEvictedOnceClosed: a group that had a single batch makes room as soon as its
// window closed; one that had more only after idleAfter.
func TestOneShotGroupEvictedOnceClosed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig() // batches placed by their own stamps: admission, not clocks, is under test
		cfg.MaxGroups = 2
		r, s := newTestRollup(t, cfg)
		base := time.Now()
		r.Add(groupBatch("twice", "1", 1, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("once", "1", 2, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("twice", "1", 1, 1, base.Add(2*win), counter(proto.SeriesRequests, 1)))
		closeAll(r, base.Add(2*win)) // both windows closed, 0.75 s after the last batch
		end := time.Now().Add(win)
		r.Add(groupBatch("new", "1", 3, 0, end, counter(proto.SeriesRequests, 1)))
		r.Add(groupBatch("newer", "1", 4, 0, end, counter(proto.SeriesRequests, 1)))
		st := r.Stats()
		if st.GroupsForgotten[groupEvicted] != 1 || st.RefusedBy[ReasonTooManyGroups] != 1 {
			t.Fatalf("got %d evicted, %d too_many_groups; want 1 (once), 1 (newer)", st.GroupsForgotten[groupEvicted], st.RefusedBy[ReasonTooManyGroups])
		}
		r.Flush()
		ws := s.take()
		for g, want := range map[string]float64{"twice": 2, "once": 1, "new": 1, "newer": 0} {
			if got := requestsOf(ws, g, "1"); got != want {
				t.Errorf("%s requests: got %v; want %v", g, got, want)
			}
		}
	})
}
