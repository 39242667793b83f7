package rollup

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

const (
	win      = 250 * time.Millisecond
	lateness = 500 * time.Millisecond
)

// sink collects emitted windows.
type sink struct {
	mu sync.Mutex
	ws []*proto.Window
}

func (s *sink) emit(w *proto.Window) {
	s.mu.Lock()
	s.ws = append(s.ws, w)
	s.mu.Unlock()
}

// take returns and clears the windows emitted so far.
func (s *sink) take() []*proto.Window {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := s.ws
	s.ws = nil
	return ws
}

// fixedConfig is DefaultConfig without clock correction and corrections, for the tests that
// hand batches over at any time relative to their end (often before it, which a clock
// correction would take for a clock running ahead) and expect late batches refused. The
// clock and correction tests use DefaultConfig.
func fixedConfig() Config {
	cfg := DefaultConfig()
	cfg.MaxSkew, cfg.CorrectionHorizon = 0, 0
	return cfg
}

func newTestRollup(t *testing.T, cfg Config) (*Rollup, *sink) {
	t.Helper()
	s := &sink{}
	r, err := New(cfg, nil, s.emit, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, s
}

func instanceID(n int) [16]byte {
	var id [16]byte
	id[0], id[1], id[2] = byte(n), byte(n>>8), byte(n>>16)
	id[15] = 0x42
	return id
}

// batch returns a batch of instance n of checkout 1.0 covering [end-250ms, end).
func batch(n int, seq uint64, end time.Time, series ...proto.Series) *proto.Batch {
	return groupBatch("checkout", "1.0", n, seq, end, series...)
}

func groupBatch(service, version string, n int, seq uint64, end time.Time, series ...proto.Series) *proto.Batch {
	return &proto.Batch{
		Service:       service,
		Version:       version,
		Instance:      instanceID(n),
		InstanceStart: 1,
		Seq:           seq,
		Start:         end.Add(-win).UnixNano(),
		End:           end.UnixNano(),
		Series:        series,
	}
}

func counter(name string, v float64, labels ...string) proto.Series {
	s := proto.Series{Name: name, Kind: proto.KindCounter, Value: v}
	for i := 0; i+1 < len(labels); i += 2 {
		s.Labels = append(s.Labels, proto.Label{Name: labels[i], Value: labels[i+1]})
	}
	return s
}

func gauge(name string, v float64) proto.Series {
	return proto.Series{Name: name, Kind: proto.KindGauge, Value: v}
}

func hist(name string, vs ...float64) proto.Series {
	s := proto.Series{Name: name, Kind: proto.KindHistogram}
	for _, v := range vs {
		s.Hist.Observe(v, 1)
	}
	return s
}

// find returns the series of w with the given name and labels, or nil.
func find(w *proto.Window, name string, labels ...string) *proto.WindowSeries {
	for i := range w.Series {
		s := &w.Series[i]
		if s.Name != name || len(s.Labels)*2 != len(labels) {
			continue
		}
		ok := true
		for j, l := range s.Labels {
			if l.Name != labels[2*j] || l.Value != labels[2*j+1] {
				ok = false
			}
		}
		if ok {
			return s
		}
	}
	return nil
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// closeAll sleeps past the close of the window ending at end and advances.
func closeAll(r *Rollup, end time.Time) {
	time.Sleep(time.Until(end.Add(lateness)))
	r.Advance(time.Now())
}

func TestExactSumsAcrossInstances(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		base := time.Now() // aligned: synctest starts at midnight
		const instances, windows = 200, 4
		var wantHist [windows]proto.Histogram
		for k := range windows {
			end := base.Add(time.Duration(k+1) * win)
			for i := range instances {
				lat := []float64{0.001 * float64(i+1), 0.01 * float64(k+1), 0.2}
				for _, v := range lat {
					wantHist[k].Observe(v, 1)
				}
				r.Add(batch(i, uint64(k), end,
					counter(proto.SeriesRequests, float64(i+k)),
					counter(proto.SeriesErrors, 1, "code", "500"),
					gauge("inflight", float64(i)),
					hist(proto.SeriesLatency, lat...)))
			}
		}
		closeAll(r, base.Add(windows*win))
		got := s.take()
		if len(got) != windows {
			t.Fatalf("got %d windows; want %d", len(got), windows)
		}
		for k, w := range got {
			start := base.Add(time.Duration(k) * win)
			if w.StartMs != ms(start) || w.EndMs != ms(start.Add(win)) {
				t.Errorf("window %d is [%d, %d); want [%d, %d)", k, w.StartMs, w.EndMs, ms(start), ms(start.Add(win)))
			}
			wantStarted := 0
			if k == 0 {
				wantStarted = instances
			}
			if w.Instances != instances || w.InstancesStarted != wantStarted || w.InstancesStopped != 0 {
				t.Errorf("window %d: got instances %d started %d stopped %d; want %d %d 0",
					k, w.Instances, w.InstancesStarted, w.InstancesStopped, instances, wantStarted)
			}
			wantReq := float64(instances*(instances-1)/2 + instances*k)
			if s := find(w, proto.SeriesRequests); s == nil || s.Value != wantReq {
				t.Errorf("window %d requests: got %+v; want %v", k, s, wantReq)
			}
			if s := find(w, proto.SeriesErrors, "code", "500"); s == nil || s.Value != instances {
				t.Errorf("window %d errors: got %+v; want %d", k, s, instances)
			}
			g := find(w, "inflight")
			wantSum := float64(instances * (instances - 1) / 2)
			if g == nil || g.Sum != wantSum || g.Min != 0 || g.Max != instances-1 || g.Count != instances || g.Value != wantSum/instances {
				t.Errorf("window %d inflight: got %+v; want sum %v min 0 max %d count %d", k, g, wantSum, instances-1, instances)
			}
			h := find(w, proto.SeriesLatency)
			if h == nil || h.Hist == nil {
				t.Fatalf("window %d has no latency histogram", k)
			}
			if h.Hist.Count != wantHist[k].Count || !slices.Equal(h.Hist.Positive.Counts, wantHist[k].Positive.Counts) ||
				h.Hist.Positive.Offset != wantHist[k].Positive.Offset || math.Abs(h.Hist.Sum-wantHist[k].Sum) > 1e-9 {
				t.Errorf("window %d latency: got count %d offset %d; want count %d offset %d (exact bucket merge)",
					k, h.Hist.Count, h.Hist.Positive.Offset, wantHist[k].Count, wantHist[k].Positive.Offset)
			}
			if want := wantHist[k].Quantile(0.99); h.P99 != want || h.Count != wantHist[k].Count {
				t.Errorf("window %d latency p99: got %v count %d; want %v count %d", k, h.P99, h.Count, want, wantHist[k].Count)
			}
		}
		st := r.Stats()
		if st.Batches != instances*windows || st.BatchesMerged != instances*windows || st.Samples != 4*instances*windows {
			t.Errorf("stats: got batches %d merged %d samples %d; want %d %d %d",
				st.Batches, st.BatchesMerged, st.Samples, instances*windows, instances*windows, 4*instances*windows)
		}
		if st.Groups != 1 || st.Instances != instances || st.Series != 4 {
			t.Errorf("stats: got groups %d instances %d series %d; want 1 %d 4", st.Groups, st.Instances, st.Series, instances)
		}
	})
}

func TestRedeliveredBatchCountedOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		b := batch(1, 7, end, counter(proto.SeriesRequests, 10))
		r.Add(b)
		r.Add(b) // redelivered
		r.Add(batch(2, 0, end, counter(proto.SeriesRequests, 5)))
		r.Add(batch(1, 7, end, counter(proto.SeriesRequests, 10)))
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 1 {
			t.Fatalf("got %d windows; want 1", len(ws))
		}
		if got := find(ws[0], proto.SeriesRequests).Value; got != 15 {
			t.Errorf("requests: got %v; want 15", got)
		}
		if ws[0].Instances != 2 {
			t.Errorf("instances: got %d; want 2", ws[0].Instances)
		}
		if got := r.Stats().RefusedBy[ReasonDuplicate]; got != 2 {
			t.Errorf("duplicates: got %d; want 2", got)
		}
	})
}

func TestReorderedBatchesMergedOnceAndDistinctInstances(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		// One instance sends four batches of 62.5 ms into one window, out of order.
		for _, seq := range []uint64{1, 0, 3, 2, 3, 0} {
			b := batch(1, seq, end.Add(-time.Duration(3-seq)*win/4), counter(proto.SeriesRequests, 1))
			r.Add(b)
		}
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 1 {
			t.Fatalf("got %d windows; want 1", len(ws))
		}
		if got := find(ws[0], proto.SeriesRequests).Value; got != 4 {
			t.Errorf("requests: got %v; want 4", got)
		}
		if ws[0].Instances != 1 || ws[0].InstancesStarted != 1 {
			t.Errorf("instances: got %d started %d; want 1 1", ws[0].Instances, ws[0].InstancesStarted)
		}
		if st := r.Stats(); st.RefusedBy[ReasonDuplicate] != 2 || st.Lost != 0 {
			t.Errorf("got duplicates %d lost %d; want 2 0", st.RefusedBy[ReasonDuplicate], st.Lost)
		}
	})
}

func TestLateBatchNotMerged(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		base := time.Now()
		end1, end2 := base.Add(win), base.Add(2*win)
		r.Add(batch(1, 0, end1, counter(proto.SeriesRequests, 1)))
		r.Add(batch(1, 1, end2, counter(proto.SeriesRequests, 2)))
		closeAll(r, end1) // closes [base, end1) only
		// Instance 2's batch for the closed window arrives now: late, merged nowhere.
		r.Add(batch(2, 0, end1, counter(proto.SeriesRequests, 100)))
		// A batch far in the past, before any window, is late too.
		r.Add(batch(3, 0, base.Add(-time.Hour), counter(proto.SeriesRequests, 1000)))
		closeAll(r, end2)
		ws := s.take()
		if len(ws) != 2 {
			t.Fatalf("got %d windows; want 2", len(ws))
		}
		for i, want := range []float64{1, 2} {
			if got := find(ws[i], proto.SeriesRequests).Value; got != want {
				t.Errorf("window %d requests: got %v; want %v", i, got, want)
			}
			if ws[i].Instances != 1 {
				t.Errorf("window %d instances: got %d; want 1", i, ws[i].Instances)
			}
		}
		st := r.Stats()
		if st.RefusedBy[ReasonLate] != 2 || st.BatchesMerged != 2 {
			t.Errorf("got late %d merged %d; want 2 2", st.RefusedBy[ReasonLate], st.BatchesMerged)
		}
		if st.Instances != 3 {
			t.Errorf("instances: got %d; want 3", st.Instances)
		}
	})
}

func TestLateWithoutTick(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		r.Add(batch(1, 0, end, counter(proto.SeriesRequests, 1)))
		// The window is due at end+lateness; even before Advance runs, a batch arriving then
		// is late, so the emitted window never depends on when the tick ran.
		time.Sleep(time.Until(end.Add(lateness)))
		r.Add(batch(2, 0, end, counter(proto.SeriesRequests, 1)))
		r.Advance(time.Now())
		ws := s.take()
		if len(ws) != 1 || find(ws[0], proto.SeriesRequests).Value != 1 {
			t.Fatalf("got %d windows (%+v); want 1 with requests 1", len(ws), ws)
		}
		if got := r.Stats().RefusedBy[ReasonLate]; got != 1 {
			t.Errorf("late: got %d; want 1", got)
		}
	})
}

func TestFutureBatchRefused(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		now := time.Now()
		r.Add(batch(1, 0, now.Add(2*time.Second+win), counter(proto.SeriesRequests, 1)))
		r.Add(batch(2, 0, now.Add(2*time.Second), counter(proto.SeriesRequests, 5))) // at the bound: accepted
		closeAll(r, now.Add(3*time.Second))
		ws := s.take()
		var total float64
		for _, w := range ws {
			if s := find(w, proto.SeriesRequests); s != nil {
				total += s.Value
			}
		}
		if total != 5 {
			t.Errorf("requests: got %v; want 5", total)
		}
		if got := r.Stats().RefusedBy[ReasonFuture]; got != 1 {
			t.Errorf("future: got %d; want 1", got)
		}
	})
}

func TestSequenceGapCountedLost(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, _ := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		// Instance 1 skips 2 and 3; 5 arrives late (filled) and is not lost.
		for _, seq := range []uint64{0, 1, 4, 6, 5} {
			r.Add(batch(1, seq, end, counter(proto.SeriesRequests, 1)))
		}
		if got := r.Stats().Lost; got != 0 {
			t.Errorf("lost while gaps can still fill: got %d; want 0", got)
		}
		// 2 and 3 fall out of the 64-batch reorder window.
		r.Add(batch(1, 6+reorderWindow, end, counter(proto.SeriesRequests, 1)))
		if got := r.Stats().Lost; got != 2 {
			t.Errorf("lost: got %d; want 2", got)
		}
		// Gaps still inside the window are counted when the instance expires: instance 1's
		// 63 numbers skipped by the jump (7 … 69) and instance 2's 1 and 2. Numbers before an
		// instance's first batch (instance 3's 0 … 9) are not lost.
		r.Add(batch(2, 0, end, counter(proto.SeriesRequests, 1)))
		r.Add(batch(2, 3, end, counter(proto.SeriesRequests, 1)))
		r.Add(batch(3, 10, end, counter(proto.SeriesRequests, 1)))
		time.Sleep(DefaultConfig().InstanceTTL)
		r.Advance(time.Now())
		if got, want := r.Stats().Lost, uint64(2+63+2); got != want {
			t.Errorf("lost after expiry: got %d; want %d", got, want)
		}
	})
}

func TestFinalForgetsInstance(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		r.Add(batch(1, 0, end, counter(proto.SeriesRequests, 1)))
		r.Add(batch(2, 0, end, counter(proto.SeriesRequests, 1)))
		fin := batch(1, 1, end.Add(win), counter(proto.SeriesRequests, 3))
		fin.Final = true
		r.Add(fin)
		if got := r.Stats().Instances; got != 1 {
			t.Errorf("live instances after final: got %d; want 1", got)
		}
		r.Add(fin) // redelivered final: refused, not a new instance
		closeAll(r, end.Add(win))
		ws := s.take()
		// Windows after the last batch, complete with nobody expected, close early: empty.
		for len(ws) > 2 && ws[len(ws)-1].Instances == 0 {
			ws = ws[:len(ws)-1]
		}
		if len(ws) != 2 {
			t.Fatalf("got %d windows with data; want 2", len(ws))
		}
		if ws[1].InstancesStopped != 1 || ws[1].Instances != 1 || ws[1].InstancesStarted != 0 {
			t.Errorf("window 2: got instances %d started %d stopped %d; want 1 0 1",
				ws[1].Instances, ws[1].InstancesStarted, ws[1].InstancesStopped)
		}
		if got := find(ws[1], proto.SeriesRequests).Value; got != 3 {
			t.Errorf("window 2 requests: got %v; want 3", got)
		}
		st := r.Stats()
		if st.RefusedBy[ReasonDuplicate] != 1 || st.Forgotten[forgotFinal] != 1 || st.Instances != 1 {
			t.Errorf("got duplicates %d final %d live %d; want 1 1 1",
				st.RefusedBy[ReasonDuplicate], st.Forgotten[forgotFinal], st.Instances)
		}
	})
}

func TestInstanceTTLExpiry(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		r.Add(batch(1, 5, end, counter(proto.SeriesRequests, 1)))
		time.Sleep(cfg.InstanceTTL - time.Millisecond)
		r.Advance(time.Now())
		if got := r.Stats().Instances; got != 1 {
			t.Fatalf("instances just before the TTL: got %d; want 1", got)
		}
		time.Sleep(time.Millisecond)
		r.Advance(time.Now())
		st := r.Stats()
		if st.Instances != 0 || st.Forgotten[forgotExpired] != 1 {
			t.Fatalf("after the TTL: got instances %d expired %d; want 0 1", st.Instances, st.Forgotten[forgotExpired])
		}
		// The instance comes back: it is new again.
		s.take()
		end2 := time.Now().Add(win).Truncate(win)
		r.Add(batch(1, 6, end2, counter(proto.SeriesRequests, 1)))
		closeAll(r, end2)
		ws := s.take()
		last := ws[len(ws)-1]
		if last.InstancesStarted != 1 || last.Instances != 1 {
			t.Errorf("returning instance: got started %d instances %d; want 1 1", last.InstancesStarted, last.Instances)
		}
	})
}

func TestInstanceEvictedBeyondMaxInstances(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		cfg.MaxInstances = 10
		r, _ := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		for i := range 15 {
			r.Add(batch(i, 0, end, counter(proto.SeriesRequests, 1)))
		}
		st := r.Stats()
		if st.Instances != 10 || st.Forgotten[forgotEvicted] != 5 {
			t.Errorf("got instances %d evicted %d; want 10 5", st.Instances, st.Forgotten[forgotEvicted])
		}
	})
}

func TestInstanceRestartAndConflict(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		r.Add(batch(1, 10, end, counter(proto.SeriesRequests, 1)))
		b := batch(1, 0, end, counter(proto.SeriesRequests, 1))
		b.InstanceStart = 2 // same id, new incarnation: seq 0 is not a duplicate
		r.Add(b)
		r.Add(groupBatch("checkout", "2.0", 1, 1, end, counter(proto.SeriesRequests, 1)))
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 1 || find(ws[0], proto.SeriesRequests).Value != 2 || ws[0].InstancesStarted != 2 {
			t.Fatalf("got %+v; want one window with requests 2 and 2 started", ws)
		}
		st := r.Stats()
		if st.Forgotten[forgotRestarted] != 1 || st.RefusedBy[ReasonInstanceConflict] != 1 || st.Instances != 1 {
			t.Errorf("got restarted %d conflicts %d live %d; want 1 1 1",
				st.Forgotten[forgotRestarted], st.RefusedBy[ReasonInstanceConflict], st.Instances)
		}
	})
}

func TestLabelFloodRefusedOtherGroupsExact(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		cfg.MaxSeriesPerGroup = 50
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		// A flooding instance of checkout 1.0 sends 200 distinct series plus the RED counter.
		flood := []proto.Series{counter(proto.SeriesRequests, 1)}
		for i := range 200 {
			flood = append(flood, counter("user_requests_total", 1, "user", fmt.Sprint(i)))
		}
		r.Add(batch(1, 0, end, flood...))
		// A well-behaved group is unaffected.
		for i := range 10 {
			r.Add(groupBatch("cart", "7", 100+i, 0, end, counter(proto.SeriesRequests, 2), counter(proto.SeriesErrors, 1)))
		}
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 2 {
			t.Fatalf("got %d windows; want 2", len(ws))
		}
		cart, checkout := ws[0], ws[1]
		if cart.Service != "cart" {
			cart, checkout = checkout, cart
		}
		if len(checkout.Series) != 50 || find(checkout, proto.SeriesRequests).Value != 1 {
			t.Errorf("checkout: got %d series; want 50 including requests_total", len(checkout.Series))
		}
		if len(cart.Series) != 2 || find(cart, proto.SeriesRequests).Value != 20 || find(cart, proto.SeriesErrors).Value != 10 {
			t.Errorf("cart: got %+v; want requests 20 errors 10", cart.Series)
		}
		if got := r.Stats().SeriesRefused[ReasonTooManySeries]; got != 151 {
			t.Errorf("too_many_series: got %d; want 151", got)
		}
		// Series unused for the TTL are swept, so the group recovers while it lives on.
		for seq := uint64(1); time.Since(end) < cfg.InstanceTTL+time.Second; seq++ {
			time.Sleep(win)
			r.Add(batch(1, seq, time.Now(), counter(proto.SeriesRequests, 1)))
			r.Advance(time.Now())
		}
		if got := r.Stats().Series; got != 1 {
			t.Errorf("series after the sweep: got %d; want 1 (checkout's requests_total)", got)
		}
		r.Add(batch(1, 1000, time.Now(), counter("new_total", 1)))
		if got := r.Stats().Series; got != 2 {
			t.Errorf("series after a new one: got %d; want 2", got)
		}
	})
}

func TestTooManyGroups(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		cfg.MaxGroups = 2
		r, s := newTestRollup(t, cfg)
		end := time.Now().Add(win)
		for i, v := range []string{"1", "2", "3", "1"} {
			r.Add(groupBatch("checkout", v, i, 0, end, counter(proto.SeriesRequests, 1)))
		}
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 2 || ws[0].Version != "1" || ws[1].Version != "2" {
			t.Fatalf("got %d windows; want versions 1 and 2", len(ws))
		}
		if got := find(ws[0], proto.SeriesRequests).Value; got != 2 {
			t.Errorf("version 1 requests: got %v; want 2", got)
		}
		if got := r.Stats().RefusedBy[ReasonTooManyGroups]; got != 1 {
			t.Errorf("too_many_groups: got %d; want 1", got)
		}
	})
}

func TestKindMismatchAndBadHistogram(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		end := time.Now().Add(win)
		wide := proto.Series{Name: proto.SeriesLatency, Kind: proto.KindHistogram}
		wide.Hist.Observe(1e-200, 1) // the merged range would exceed proto.MaxBuckets
		r.Add(batch(1, 0, end, counter("x", 1), hist(proto.SeriesLatency, 0.1)))
		r.Add(batch(2, 0, end, gauge("x", 1), wide, counter(proto.SeriesRequests, 1)))
		closeAll(r, end)
		ws := s.take()
		if len(ws) != 1 {
			t.Fatalf("got %d windows; want 1", len(ws))
		}
		if x := find(ws[0], "x"); x == nil || x.Kind != proto.KindCounter || x.Value != 1 {
			t.Errorf("x: got %+v; want counter 1", x)
		}
		if h := find(ws[0], proto.SeriesLatency); h == nil || h.Count != 1 {
			t.Errorf("latency: got %+v; want count 1", h)
		}
		if find(ws[0], proto.SeriesRequests) == nil || ws[0].Instances != 2 {
			t.Errorf("the rest of the batch was not merged: %+v", ws[0])
		}
		st := r.Stats()
		if st.SeriesRefused[ReasonKindMismatch] != 1 || st.SeriesRefused[ReasonBadHistogram] != 1 {
			t.Errorf("got kind_mismatch %d bad_histogram %d; want 1 1",
				st.SeriesRefused[ReasonKindMismatch], st.SeriesRefused[ReasonBadHistogram])
		}
	})
}

func TestEmptyWindowsWhenInstancesGone(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := fixedConfig()
		cfg.InstanceTTL = 3 * time.Second
		r, s := newTestRollup(t, cfg)
		base := time.Now()
		for k := range 2 {
			b := batch(1, uint64(k), base.Add(time.Duration(k+1)*win), counter(proto.SeriesRequests, 1))
			b.Final = k == 1
			r.Add(b)
		}
		lastData := base.Add(2 * win)
		time.Sleep(10 * time.Second)
		r.Advance(time.Now())
		ws := s.take()
		// 2 windows with data, then empty windows until InstanceTTL after the last one.
		wantEmpty := int(cfg.InstanceTTL / win)
		if len(ws) != 2+wantEmpty {
			t.Fatalf("got %d windows; want %d", len(ws), 2+wantEmpty)
		}
		for i, w := range ws[2:] {
			start := lastData.Add(time.Duration(i) * win)
			if w.StartMs != ms(start) || w.Instances != 0 || len(w.Series) != 0 {
				t.Errorf("empty window %d: got start %d instances %d series %d; want %d 0 0",
					i, w.StartMs, w.Instances, len(w.Series), ms(start))
			}
		}
		if got := ws[len(ws)-1].EndMs; got != ms(lastData.Add(cfg.InstanceTTL)) {
			t.Errorf("last empty window ends at %d; want %d", got, ms(lastData.Add(cfg.InstanceTTL)))
		}
		st := r.Stats()
		if st.Groups != 0 || st.EmptyWindowsEmitted != uint64(wantEmpty) {
			t.Errorf("got groups %d empty windows %d; want 0 %d", st.Groups, st.EmptyWindowsEmitted, wantEmpty)
		}
		// Nothing more is emitted for the forgotten group.
		time.Sleep(time.Second)
		r.Advance(time.Now())
		if ws := s.take(); len(ws) != 0 {
			t.Errorf("got %d windows after the group expired; want 0", len(ws))
		}
	})
}

func TestEmitOrder(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		base := time.Now()
		// Batches arrive out of order across windows and groups.
		for _, k := range []int{3, 1, 2, 0} {
			for _, v := range []string{"b", "a"} {
				r.Add(groupBatch("svc", v, k*10+int(v[0]), 0, base.Add(time.Duration(k+1)*win), counter(proto.SeriesRequests, float64(k))))
			}
		}
		closeAll(r, base.Add(4*win))
		ws := s.take()
		if len(ws) != 8 {
			t.Fatalf("got %d windows; want 8", len(ws))
		}
		for i, w := range ws {
			k, v := i/2, []string{"a", "b"}[i%2]
			if w.StartMs != ms(base.Add(time.Duration(k)*win)) || w.Version != v || find(w, proto.SeriesRequests).Value != float64(k) {
				t.Errorf("window %d: got %s@%d; want %s@%d", i, w.Version, w.StartMs, v, ms(base.Add(time.Duration(k)*win)))
			}
		}
	})
}

func TestFlush(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, fixedConfig())
		base := time.Now()
		r.Add(batch(1, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(batch(1, 1, base.Add(2*win), counter(proto.SeriesRequests, 2)))
		r.Add(groupBatch("cart", "1", 2, 0, base.Add(win), counter(proto.SeriesRequests, 3)))
		r.Flush()
		ws := s.take()
		var checkout, cart int
		for _, w := range ws {
			if w.Service == "cart" {
				cart++
			} else {
				checkout++
			}
		}
		if checkout != 2 || cart != 2 { // cart gets an empty window for the second interval
			t.Fatalf("got %d checkout and %d cart windows; want 2 and 2", checkout, cart)
		}
		// Ordered by start, then group: cart@0, checkout@0, cart@250 (empty), checkout@250.
		if got := find(ws[3], proto.SeriesRequests); ws[3].Service != "checkout" || got == nil || got.Value != 2 {
			t.Errorf("last window: got %+v; want checkout with requests 2", ws[3])
		}
		// Batches for flushed windows are late.
		r.Add(batch(3, 0, base.Add(2*win), counter(proto.SeriesRequests, 1)))
		if got := r.Stats().RefusedBy[ReasonLate]; got != 1 {
			t.Errorf("late after flush: got %d; want 1", got)
		}
	})
}

func TestAddConcurrentWithAdvance(t *testing.T) {
	t.Parallel()
	// Real time and real goroutines, for the race detector: totals must add up exactly.
	r, s := newTestRollup(t, fixedConfig())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				r.Advance(time.Now())
			}
		}
	})
	const n = 2000
	for i := range n {
		r.Add(batch(i%50, uint64(i/50), time.Now(), counter(proto.SeriesRequests, 1)))
	}
	close(stop)
	wg.Wait()
	r.Flush()
	var total float64
	for _, w := range s.take() {
		if c := find(w, proto.SeriesRequests); c != nil {
			total += c.Value
		}
	}
	if st := r.Stats(); total+float64(st.RefusedBy[ReasonLate]) != n {
		t.Errorf("merged %v + late %d; want %d", total, st.RefusedBy[ReasonLate], n)
	}
}

func TestEveryBatchAccountedOnce(t *testing.T) {
	t.Parallel()
	t.Run("late refused", func(t *testing.T) { t.Parallel(); testEveryBatchAccountedOnce(t, fixedConfig()) })
	// With the defaults, what arrives after its window closed is published in corrections.
	// (Delays spread this widely are sometimes taken for a clock offset, which moves a batch
	// to another window; the totals stay exact.)
	t.Run("late corrected", func(t *testing.T) { t.Parallel(); testEveryBatchAccountedOnce(t, DefaultConfig()) })
}

func testEveryBatchAccountedOnce(t *testing.T, cfg Config) {
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, cfg)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { r.Run(ctx) })

		// 20 instances send one batch per window for 200 windows. The network drops 10 %,
		// duplicates 10 % and delays each copy by up to 1 s, so some arrive after their window
		// closed and some out of order.
		const instances, seqs = 20, 200
		rng := rand.New(rand.NewPCG(7, 8))
		base := time.Now()
		type delivery struct {
			at  time.Time
			b   *proto.Batch
			dup bool
		}
		var ds []delivery
		for i := range instances {
			for q := range seqs {
				if rng.Float64() < 0.1 {
					continue
				}
				end := base.Add(time.Duration(q+1) * win)
				b := batch(i, uint64(q), end, counter(proto.SeriesRequests, 1))
				copies := 1
				if rng.Float64() < 0.1 {
					copies = 2
				}
				for c := range copies {
					ds = append(ds, delivery{at: end.Add(time.Duration(rng.Int64N(int64(time.Second)))), b: b, dup: c > 0})
				}
			}
		}
		slices.SortFunc(ds, func(a, b delivery) int { return a.at.Compare(b.at) })
		for _, d := range ds {
			time.Sleep(time.Until(d.at))
			r.Add(d.b)
		}
		time.Sleep(cfg.InstanceTTL + time.Second) // every instance expires: pending gaps settle
		synctest.Wait()
		cancel()
		wg.Wait()

		var dups uint64
		for _, d := range ds {
			if d.dup {
				dups++
			}
		}
		var requests float64
		for _, w := range s.take() {
			if c := find(w, proto.SeriesRequests); c != nil {
				requests += c.Value
			}
		}
		st := r.Stats()
		late := st.RefusedBy[ReasonLate]
		// Sequence numbers before an instance's first arrival, or after its last, are not
		// known to exist; all between are accounted.
		var want uint64
		for i := range instances {
			lo, hi := uint64(seqs), uint64(0)
			for _, d := range ds {
				if d.b.Instance == instanceID(i) {
					lo, hi = min(lo, d.b.Seq), max(hi, d.b.Seq)
				}
			}
			want += hi - lo + 1
		}
		if got := st.BatchesMerged + late + st.RefusedBy[ReasonFuture] + st.Lost; got != want {
			t.Errorf("merged %d + late %d + lost %d = %d; want %d sequence numbers accounted once",
				st.BatchesMerged, late, st.Lost, got, want)
		}
		if st.RefusedBy[ReasonDuplicate] != dups {
			t.Errorf("duplicates: got %d; want %d", st.RefusedBy[ReasonDuplicate], dups)
		}
		if requests != float64(st.BatchesMerged) || late+st.BatchesCorrected == 0 || st.Lost == 0 {
			t.Errorf("got requests %v, merged %d, late %d, corrected %d, lost %d; want requests = merged and some late or corrected, and lost",
				requests, st.BatchesMerged, late, st.BatchesCorrected, st.Lost)
		}
		if cfg.CorrectionHorizon > 0 && (late != 0 || st.CorrectionsEmitted == 0) {
			t.Errorf("got late %d, corrections %d; want every late batch in a correction", late, st.CorrectionsEmitted)
		}
		if cfg.CorrectionHorizon == 0 && st.BatchesCorrected != 0 {
			t.Errorf("got %d batches corrected without a correction horizon; want 0", st.BatchesCorrected)
		}
		t.Logf("merged %d (corrected %d, clock-corrected %d), late %d, lost %d, duplicates %d",
			st.BatchesMerged, st.BatchesCorrected, st.BatchesSkewCorrected, late, st.Lost, dups)
	})
}
