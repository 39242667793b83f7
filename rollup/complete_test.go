package rollup

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

const settle = 20 * time.Millisecond

// closeDelay returns how long after its end w was closed.
func closeDelay(w *proto.Window) time.Duration {
	return time.Duration(w.ClosedMs-w.EndMs) * time.Millisecond
}

// sumRequests returns the requests of ws (windows and corrections) by window start.
func sumRequests(ws []*proto.Window) (map[int64]float64, float64) {
	by := map[int64]float64{}
	var total float64
	for _, w := range ws {
		if c := find(w, proto.SeriesRequests); c != nil {
			by[w.StartMs] += c.Value
			total += c.Value
		}
	}
	return by, total
}

// TestCompleteWindowsCloseEarly: five instances send their batch 2–6 ms after every window's
// end, one of them stops with a final batch. Every window closes Settle after the last batch
// of the burst, not after the lateness, holds everyone, and the totals are exact.
func TestCompleteWindowsCloseEarly(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		const n, instances = 12, 5
		want := 0.0
		for k := range n {
			end := base.Add(time.Duration(k) * win)
			for i := range instances {
				if i == 4 && k > 6 {
					continue // stopped in window 6
				}
				time.Sleep(time.Until(end.Add(time.Duration(2+i) * time.Millisecond)))
				b := batch(i, uint64(k), end, counter(proto.SeriesRequests, 1))
				b.Final = i == 4 && k == 6
				r.Add(b)
				want++
			}
		}
		time.Sleep(time.Until(base.Add(n*win + lateness)))
		synctest.Wait()
		ws := s.take()
		_, total := sumRequests(ws)
		if total != want {
			t.Errorf("got %v requests; want %v", total, want)
		}
		for _, w := range ws {
			if w.Correction {
				t.Errorf("window %d: got a correction; want none", w.StartMs)
			}
			if w.Instances == 0 {
				continue
			}
			// The last batch arrives 6 ms (5 ms without the stopped one) after the end.
			if d := closeDelay(w); d > 6*time.Millisecond+settle {
				t.Errorf("window %d with %d instances closed %v after its end; want ≤ %v", w.StartMs, w.Instances, d, 6*time.Millisecond+settle)
			}
		}
		if got := len(ws); got < n {
			t.Errorf("got %d windows; want ≥ %d", got, n)
		}
		if st := r.Stats(); st.WindowsClosedComplete < n || st.Refused() != 0 || st.BatchesCorrected != 0 {
			t.Errorf("got %d closed complete, refused %v, %d corrected; want ≥ %d, none, 0", st.WindowsClosedComplete, st.RefusedBy, st.BatchesCorrected, n)
		}
	})
}

// TestStragglerHoldsOnlyItsWindow: of four instances, one stops mid-window without a final
// batch (it crashed). The window it was expected in waits the full lateness for it; the
// windows after close early again, without it.
func TestStragglerHoldsOnlyItsWindow(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		const n, crashAfter = 10, 4
		want := 0.0
		for k := range n {
			end := base.Add(time.Duration(k) * win)
			time.Sleep(time.Until(end.Add(3 * time.Millisecond)))
			for i := range 4 {
				if i == 3 && k > crashAfter {
					continue
				}
				r.Add(batch(i, uint64(k), end, counter(proto.SeriesRequests, 1)))
				want++
			}
		}
		time.Sleep(time.Until(base.Add(n*win + lateness)))
		synctest.Wait()
		ws := s.take()
		if _, total := sumRequests(ws); total != want {
			t.Errorf("got %v requests; want %v", total, want)
		}
		waited := ms(base.Add(crashAfter * win)) // the window the crashed instance never sent
		waitedClose := waited + (win + lateness).Milliseconds()
		for _, w := range ws {
			if w.Instances == 0 {
				continue
			}
			// A group's windows close in order: those ending before the waited one
			// closes close with it.
			early := max(w.EndMs+(3*time.Millisecond+settle).Milliseconds(), waitedClose)
			switch {
			case w.StartMs == waited && closeDelay(w) != lateness:
				t.Errorf("window %d (the crashed instance's): closed %v after its end; want %v", w.StartMs, closeDelay(w), lateness)
			case w.StartMs > waited && w.ClosedMs > early:
				t.Errorf("window %d: closed at %d; want ≤ %d", w.StartMs, w.ClosedMs, early)
			case w.StartMs < waited && closeDelay(w) > 3*time.Millisecond+settle:
				t.Errorf("window %d: closed %v after its end; want ≤ %v", w.StartMs, closeDelay(w), 3*time.Millisecond+settle)
			}
		}
	})
}

// TestSkewedInstanceIsExpected: an instance whose clock is 1 s behind is expected in the
// windows its batches are placed in after the clock correction: once its offset is known,
// the windows close early and hold it.
func TestSkewedInstanceIsExpected(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		agents := []*skewedAgent{{id: 0, born: base.Add(-win)}, {id: 1, skew: -time.Second, born: base.Add(-win - time.Second)}}
		const n = 30
		for k := range n {
			end := base.Add(time.Duration(k) * win)
			time.Sleep(time.Until(end.Add(4 * time.Millisecond)))
			for _, a := range agents {
				r.Add(a.batch(end, 1))
			}
		}
		time.Sleep(time.Until(base.Add(n*win + lateness)))
		synctest.Wait()
		ws := s.take()
		checkMarkers(t, ws)
		if _, total := sumRequests(ws); total != 2*n {
			t.Errorf("got %v requests; want %d", total, 2*n)
		}
		early := 0
		for _, w := range ws {
			if w.Instances == 2 && closeDelay(w) <= 4*time.Millisecond+settle {
				early++
			}
		}
		// The first windows wait while the skewed instance's first batch is held.
		if early < n-4 {
			t.Errorf("got %d windows of both instances closed early; want ≥ %d", early, n-4)
		}
	})
}

// TestLateBatchAfterEarlyClose: a window closed early (its expected instances all sent);
// then a new instance's first batch for it arrives 100 ms after its end, within the
// lateness. It becomes a correction, counted, and the totals stay exact.
func TestLateBatchAfterEarlyClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		for k := range 4 {
			end := base.Add(time.Duration(k) * win)
			time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
			for i := range 3 {
				r.Add(batch(i, uint64(k), end, counter(proto.SeriesRequests, 1)))
			}
		}
		late := base.Add(3 * win)
		time.Sleep(time.Until(late.Add(100 * time.Millisecond)))
		r.Add(batch(9, 0, late, counter(proto.SeriesRequests, 5)))
		time.Sleep(time.Until(late.Add(2 * lateness)))
		synctest.Wait()
		ws := s.take()
		by, total := sumRequests(ws)
		if total != 4*3+5 || by[ms(late.Add(-win))] != 3+5 {
			t.Errorf("got %v requests, %v in the late window; want %d, %d", total, by[ms(late.Add(-win))], 4*3+5, 3+5)
		}
		var corr *proto.Window
		for _, w := range ws {
			if w.Correction {
				corr = w
			}
		}
		if corr == nil || corr.StartMs != ms(late.Add(-win)) || corr.Instances != 1 {
			t.Fatalf("got correction %+v; want one of window %d with 1 instance", corr, ms(late.Add(-win)))
		}
		if st := r.Stats(); st.BatchesCorrected != 1 || st.CorrectionsEmitted != 1 || st.Refused() != 0 {
			t.Errorf("got %d corrected in %d corrections, refused %v; want 1, 1, none", st.BatchesCorrected, st.CorrectionsEmitted, st.RefusedBy)
		}
	})
}

// TestLongIntervalIsExpected: an instance sending every second (four windows) is expected
// in every fourth window only; its batches are never corrections, and the windows in between
// close early.
func TestLongIntervalIsExpected(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		const n = 16
		for k := range n {
			end := base.Add(time.Duration(k) * win)
			time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
			r.Add(batch(0, uint64(k), end, counter(proto.SeriesRequests, 1)))
			if k%4 == 3 {
				time.Sleep(10 * time.Millisecond) // the slow one arrives after the others
				b := batch(1, uint64(k/4), end, counter(proto.SeriesRequests, 4))
				b.Start = end.Add(-4 * win).UnixNano()
				r.Add(b)
			}
		}
		time.Sleep(time.Until(base.Add(n*win + lateness)))
		synctest.Wait()
		ws := s.take()
		if _, total := sumRequests(ws); total != 2*n {
			t.Errorf("got %v requests; want %d", total, 2*n)
		}
		st := r.Stats()
		if st.BatchesCorrected != 0 || st.WindowsClosedComplete < n-1 {
			t.Errorf("got %d corrected, %d closed complete; want 0, ≥ %d", st.BatchesCorrected, st.WindowsClosedComplete, n-1)
		}
	})
}

// TestEvictedAfterEarlyCloseStaysClosed: a one-shot group's window closes early and the
// group is evicted for another version of its service; a late batch for that window then
// brings the group back. Its window is not reopened: the batch becomes a correction, and the
// window is published once.
func TestEvictedAfterEarlyCloseStaysClosed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MaxVersionsPerService = 1
		r, s := newTestRollup(t, cfg)
		runRollup(t, r)
		end := time.Now().Add(time.Second)
		time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
		r.Add(groupBatch("checkout", "1", 1, 0, end, counter(proto.SeriesRequests, 1)))
		time.Sleep(time.Until(end.Add(30 * time.Millisecond))) // checkout/1 closed early
		r.Add(groupBatch("checkout", "2", 2, 0, end, counter(proto.SeriesRequests, 2)))
		time.Sleep(time.Until(end.Add(100 * time.Millisecond))) // checkout/2 closed early too
		r.Add(groupBatch("checkout", "1", 3, 0, end, counter(proto.SeriesRequests, 5)))
		time.Sleep(time.Until(end.Add(2 * lateness)))
		synctest.Wait()
		var windows, corrections int
		var total float64
		for _, w := range s.take() {
			t.Logf("%s/%s [%d, %d) closed %d, %d instances, correction %v", w.Service, w.Version, w.StartMs, w.EndMs, w.ClosedMs, w.Instances, w.Correction)
			if w.Version != "1" || w.StartMs != ms(end.Add(-win)) {
				continue
			}
			if w.Correction {
				corrections++
			} else {
				windows++
			}
			total += find(w, proto.SeriesRequests).Value
		}
		if windows != 1 || corrections != 1 || total != 6 {
			t.Errorf("checkout/1's window: got %d windows, %d corrections, %v requests; want 1, 1, 6", windows, corrections, total)
		}
		if st := r.Stats(); st.GroupsForgotten[groupEvicted] != 2 || st.Refused() != 0 {
			t.Errorf("got %d groups evicted, refused %v; want 2, none", st.GroupsForgotten[groupEvicted], st.RefusedBy)
		}
	})
}

// TestEarlyCloseRandomized drives a rollup with early closes through random batches of
// instances that come, go, straggle and crash, in groups that are evicted and made anew
// (three versions per service at most): it never panics, never publishes a window twice, and
// every merged batch is in exactly one window or correction.
func TestEarlyCloseRandomized(t *testing.T) {
	t.Parallel()
	for seed := range uint64(50) {
		synctest.Test(t, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.MaxVersionsPerService = 3
			r, s := newTestRollup(t, cfg)
			rng := rand.New(rand.NewPCG(seed, 7))
			base := time.Now().Add(time.Second)
			type inst struct {
				id, version int
				seq         uint64
			}
			var insts []*inst
			for i := range 12 {
				insts = append(insts, &inst{id: i, version: rng.IntN(2)})
			}
			for k := range 40 {
				end := base.Add(time.Duration(k) * win)
				// Each instance sends its batch for the window ending at end, some late,
				// some never (crashed), some replaced by a new one.
				type send struct {
					at time.Duration
					in *inst
				}
				var sends []send
				if k%10 == 9 { // a deploy: every instance is replaced by one of the next versions
					for _, in := range insts {
						*in = inst{id: in.id + 1000, version: (k/10 + 1 + rng.IntN(2)) % 6}
					}
				}
				for _, in := range insts {
					switch p := rng.IntN(20); {
					case p == 0: // crashed: replaced by a new instance of a current version
						*in = inst{id: in.id + 100, version: (k/8 + rng.IntN(2)) % 6}
					case p < 3: // and two one-shot publishers of any version, one of them late
						v := rng.IntN(6)
						sends = append(sends, send{time.Duration(rng.IntN(8)) * time.Millisecond,
							&inst{id: 10_000 + 100*k + in.id, version: v}})
						sends = append(sends, send{time.Duration(20+rng.IntN(400)) * time.Millisecond,
							&inst{id: 20_000 + 100*k + in.id, version: v}})
						sends = append(sends, send{time.Duration(rng.IntN(8)) * time.Millisecond, in})
					case p < 5: // straggler
						sends = append(sends, send{time.Duration(rng.IntN(900)) * time.Millisecond, in})
					default:
						sends = append(sends, send{time.Duration(rng.IntN(8)) * time.Millisecond, in})
					}
				}
				slices.SortFunc(sends, func(a, b send) int { return int(a.at - b.at) })
				for _, sd := range sends {
					if time.Until(end.Add(sd.at)) > 0 {
						time.Sleep(time.Until(end.Add(sd.at)))
					}
					r.Advance(time.Now())
					r.Add(groupBatch("svc", fmt.Sprint(sd.in.version), sd.in.id, sd.in.seq, end, counter(proto.SeriesRequests, 1)))
					sd.in.seq++
				}
				time.Sleep(time.Until(end.Add(win - time.Millisecond)))
				r.Advance(time.Now())
			}
			time.Sleep(2 * time.Second)
			r.Advance(time.Now())
			r.Flush()
			seen := map[string]int{}
			var total float64
			for _, w := range s.take() {
				if !w.Correction {
					k := fmt.Sprintf("%s/%s@%d", w.Service, w.Version, w.StartMs)
					if seen[k]++; seen[k] > 1 {
						t.Errorf("seed %d: window %s published twice", seed, k)
					}
				}
				if c := find(w, proto.SeriesRequests); c != nil {
					total += c.Value
				}
			}
			st := r.Stats()
			t.Logf("seed %d: %d merged, %d corrected, %d closed complete, groups forgotten %v, refused %v", seed, st.BatchesMerged, st.BatchesCorrected, st.WindowsClosedComplete, st.GroupsForgotten, st.RefusedBy)
			if total != float64(st.BatchesMerged) {
				t.Errorf("seed %d: windows and corrections hold %v requests; %d batches merged (refused %v)", seed, total, st.BatchesMerged, st.RefusedBy)
			}
		})
	}
}
