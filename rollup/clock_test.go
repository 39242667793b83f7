package rollup

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// marker is the gauge each test batch carries: the start (unix ms) of the window of the
// interval it was measured in, in the rollup's time. A window whose marker's min and max
// equal its start holds only batches of its own interval.
const marker = "marker"

// skewedAgent sends one batch per window, stamped by a clock off by skew, as an agent does.
type skewedAgent struct {
	id   int
	skew time.Duration
	seq  uint64
	born time.Time // in the agent's time
}

// batch returns the agent's batch for the interval [end-win, end) of the rollup's time.
func (a *skewedAgent) batch(end time.Time, requests float64) *proto.Batch {
	b := batch(a.id, a.seq, end.Add(a.skew), counter(proto.SeriesRequests, requests), gauge(marker, float64(ms(end.Add(-win)))))
	b.InstanceStart = a.born.UnixNano()
	a.seq++
	return b
}

// checkMarkers checks that every window and correction holds only batches of its interval.
func checkMarkers(t *testing.T, ws []*proto.Window) {
	t.Helper()
	for _, w := range ws {
		m := find(w, marker)
		if m == nil {
			continue
		}
		if int64(m.Min) != w.StartMs || int64(m.Max) != w.StartMs {
			t.Errorf("window %d (correction %v) holds batches of intervals %d … %d; want only its own", w.StartMs, w.Correction, int64(m.Min), int64(m.Max))
		}
	}
}

// runRollup runs r until the test's bubble ends.
func runRollup(t *testing.T, r *Rollup) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// TestSkewedClocksLandInTrueWindows runs five agents whose clocks are off by −2 s … +2 s and
// whose batches travel 2–14 ms: every batch lands in the window of the interval it was
// measured in (the agents that are behind from their first batch on, held until their
// second arrival tells skew from delay), every window holds all five, and the totals are
// exact, with no correction needed.
func TestSkewedClocksLandInTrueWindows(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		rng := rand.New(rand.NewPCG(1, 2))
		base := time.Now().Add(time.Second)
		var agents []*skewedAgent
		for i, skew := range []time.Duration{-2 * time.Second, -time.Second, 0, time.Second, 2 * time.Second} {
			agents = append(agents, &skewedAgent{id: i, skew: skew, born: base.Add(-win).Add(skew)})
		}
		const n = 40
		for i := 1; i <= n; i++ {
			end := base.Add(time.Duration(i-1) * win)
			for _, a := range agents {
				time.Sleep(time.Until(end.Add(time.Duration(2+rng.IntN(3)) * time.Millisecond)))
				r.Add(a.batch(end, 1))
			}
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		ws := s.take()
		checkMarkers(t, ws)
		var total float64
		full := 0
		for _, w := range ws {
			if w.Correction {
				t.Errorf("got a correction of window %d; want none", w.StartMs)
			}
			if c := find(w, proto.SeriesRequests); c != nil {
				total += c.Value
				if w.Instances == len(agents) && c.Value == float64(len(agents)) {
					full++
				}
			}
		}
		if total != n*float64(len(agents)) || full != n {
			t.Errorf("got %v requests in %d full windows; want %d in %d", total, full, n*len(agents), n)
		}
		st := r.Stats()
		if want := uint64(4 * n); st.BatchesSkewCorrected != want || st.Refused() != 0 {
			t.Errorf("got %d batches clock-corrected, refused %v; want %d and none", st.BatchesSkewCorrected, st.RefusedBy, want)
		}
	})
}

// TestSkewIgnoresDelayedBatches: an instance whose clock is right, cut off for 3 s, sends
// what it buffered in one burst when it reconnects. The batches are late, not skewed: they
// go into corrections of their own windows, nothing is clock-corrected, and the totals are
// exact — whether the rollup knew the instance before the outage or starts afresh (a
// restarted herd serve).
func TestSkewIgnoresDelayedBatches(t *testing.T) {
	t.Parallel()
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprint("restart=", restart), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				r, s := newTestRollup(t, DefaultConfig())
				stop := func() {}
				start := func() {
					ctx, cancel := context.WithCancel(context.Background())
					var wg sync.WaitGroup
					wg.Go(func() { _ = r.Run(ctx) })
					stop = func() { cancel(); wg.Wait() }
				}
				start()
				base := time.Now().Add(time.Second)
				a := &skewedAgent{id: 1, born: base.Add(-win)}
				sent := 0.0
				var buffered []*proto.Batch
				for i := range 40 {
					end := base.Add(time.Duration(i) * win)
					time.Sleep(time.Until(end.Add(3 * time.Millisecond)))
					b := a.batch(end, float64(i+1))
					sent += float64(i + 1)
					if i >= 10 && i < 22 { // cut off for 3 s
						buffered = append(buffered, b)
						continue
					}
					if i == 22 {
						if restart {
							stop()
							r.Flush()
							var err error
							if r, err = New(DefaultConfig(), nil, s.emit, nil); err != nil {
								t.Fatal(err)
							}
							start()
						}
						for _, old := range buffered { // the reconnect buffer, in a burst
							r.Add(old)
							time.Sleep(100 * time.Microsecond)
						}
					}
					r.Add(b)
				}
				time.Sleep(3 * time.Second)
				synctest.Wait()
				stop()
				ws := s.take()
				checkMarkers(t, ws)
				var total float64
				corrections := 0
				for _, w := range ws {
					if c := find(w, proto.SeriesRequests); c != nil {
						total += c.Value
					}
					if w.Correction {
						corrections++
					}
				}
				if total != sent {
					t.Errorf("got %v requests over windows and corrections; want %v", total, sent)
				}
				st := r.Stats()
				if st.BatchesSkewCorrected != 0 || st.Refused() != 0 || corrections == 0 {
					t.Errorf("got %d clock-corrected, refused %v, %d corrections; want none, none, some", st.BatchesSkewCorrected, st.RefusedBy, corrections)
				}
				t.Logf("%d corrections, %d batches in them", corrections, st.BatchesCorrected)
			})
		})
	}
}

// TestPartitionedSpanUsesCorrectedTime: a partition's span decides on a batch's corrected
// window. Agents 1 s behind and 1 s ahead report while a lease runs from t0 to t0+2 s: the
// partition publishes exactly the batches measured in [t0, t0+2 s), each in its own window,
// though the stamps of the first lie before t0.
func TestPartitionedSpanUsesCorrectedTime(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		src := &fanout{}
		s := &sink{}
		pr, err := NewPartitioned(DefaultConfig(), nil, src.source, s.emit, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go pr.Run(ctx)
		t0 := time.Now().Truncate(time.Second).Add(time.Second)
		time.Sleep(time.Until(t0))
		l := testLease(t0, t0.Add(time.Hour))
		pr.Acquire(l)
		synctest.Wait()
		agents := []*skewedAgent{
			{id: 1, skew: -time.Second, born: t0.Add(-time.Second)},
			{id: 2, skew: time.Second, born: t0.Add(time.Second)},
		}
		inSpan := 0.0
		for i := 1; i <= 12; i++ { // 3 s of batches
			end := t0.Add(time.Duration(i) * win)
			time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
			if end.Equal(t0.Add(2 * time.Second).Add(win)) {
				l.end(t0.Add(2 * time.Second))
			}
			for _, a := range agents {
				src.publish(a.batch(end, 1))
				if !end.After(t0.Add(2 * time.Second)) {
					inSpan++
				}
			}
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		ws := s.take()
		checkMarkers(t, ws)
		var total float64
		for _, w := range ws {
			if c := find(w, proto.SeriesRequests); c != nil {
				total += c.Value
			}
		}
		// Once the span's windows closed the partition stops and takes no more batches.
		st := pr.Stats()
		if total != inSpan || st.Skipped[SkipAfterSpan] == 0 || st.Skipped[SkipBeforeSpan] != 0 {
			t.Errorf("got %v requests published, skipped %v; want %v published and some skipped after the span", total, st.Skipped, inSpan)
		}
	})
}
