package rollup

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// TestLateBatchPublishedAsCorrection delays one batch past its window's close: it is
// published as a correction of that window carrying only the late data, counted; a batch
// delayed beyond the correction horizon is refused as late; the totals over windows and
// corrections are what was sent minus what was refused.
func TestLateBatchPublishedAsCorrection(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.CorrectionHorizon = 2 * time.Second
		r, s := newTestRollup(t, cfg)
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		a, b := &skewedAgent{id: 1, born: base}, &skewedAgent{id: 2, born: base}
		type late struct {
			at time.Time
			b  *proto.Batch
		}
		var delayed []late
		for i := 1; i <= 16; i++ {
			end := base.Add(time.Duration(i) * win)
			time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
			r.Add(a.batch(end, 1))
			bt := b.batch(end, 10)
			switch i {
			case 4: // arrives 1 s late: its window closed 0.5 s before
				delayed = append(delayed, late{end.Add(time.Second), bt})
			case 5: // 2.5 s late: beyond the horizon
				delayed = append(delayed, late{end.Add(2500 * time.Millisecond), bt})
			default:
				r.Add(bt)
			}
			for len(delayed) > 0 && !delayed[0].at.After(time.Now()) {
				r.Add(delayed[0].b)
				delayed = delayed[1:]
			}
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		ws := s.take()
		checkMarkers(t, ws)
		var total float64
		var corrections []*proto.Window
		for _, w := range ws {
			if c := find(w, proto.SeriesRequests); c != nil {
				total += c.Value
			}
			if w.Correction {
				corrections = append(corrections, w)
			}
		}
		if want := 16*11.0 - 10; total != want {
			t.Errorf("got %v requests over windows and corrections; want %v (one batch of 10 beyond the horizon)", total, want)
		}
		if len(corrections) != 1 {
			t.Fatalf("got %d corrections; want 1", len(corrections))
		}
		c := corrections[0]
		if req := find(c, proto.SeriesRequests); c.StartMs != ms(base.Add(3*win)) || req == nil || req.Value != 10 ||
			c.Instances != 1 || c.InstancesStarted != 0 {
			t.Errorf("got correction %+v; want the 10 requests of one instance for the window at %d", c, ms(base.Add(3*win)))
		}
		st := r.Stats()
		if st.BatchesCorrected != 1 || st.CorrectionsEmitted != 1 || st.RefusedBy[ReasonLate] != 1 || st.BatchesSkewCorrected != 0 {
			t.Errorf("got corrected %d, corrections %d, late %d, clock-corrected %d; want 1, 1, 1, 0",
				st.BatchesCorrected, st.CorrectionsEmitted, st.RefusedBy[ReasonLate], st.BatchesSkewCorrected)
		}
		if st.WindowsEmitted != uint64(len(ws)-1) {
			t.Errorf("got %d windows counted for %d emitted with 1 correction; want corrections not counted as windows", st.WindowsEmitted, len(ws))
		}
	})
}

// TestHeldBatchPlacedByItsStamps: a new instance's only batch arrives 1 s after its end,
// which may be a clock 1 s behind or a delay. With no second batch to tell, it is placed by
// its own stamps once held long enough: a correction of its window.
func TestHeldBatchPlacedByItsStamps(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		end := time.Now().Add(time.Second)
		a := &skewedAgent{id: 1, born: end.Add(-win)}
		time.Sleep(time.Until(end.Add(time.Second)))
		r.Add(a.batch(end, 7))
		time.Sleep(r.cfg.Lateness + win) // held, not placed yet
		if got := s.take(); len(got) != 0 {
			t.Fatalf("got %d windows while the batch is held; want none", len(got))
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		ws := s.take()
		checkMarkers(t, ws)
		if len(ws) != 1 || !ws[0].Correction || find(ws[0], proto.SeriesRequests).Value != 7 || ws[0].InstancesStarted != 1 {
			t.Fatalf("got %+v; want one correction with the 7 requests, its instance started", ws)
		}
		if st := r.Stats(); st.BatchesSkewCorrected != 0 || st.BatchesCorrected != 1 {
			t.Errorf("got clock-corrected %d, corrected %d; want 0 and 1", st.BatchesSkewCorrected, st.BatchesCorrected)
		}
	})
}

// TestSkewBeyondMaxSkew: clocks further off than MaxSkew are not corrected beyond it. One 8 s
// behind is placed by its stamps, in corrections of the windows 8 s back; one 8 s ahead is
// moved back by MaxSkew only, still 3 s ahead: refused as future.
func TestSkewBeyondMaxSkew(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		r, s := newTestRollup(t, DefaultConfig())
		runRollup(t, r)
		base := time.Now().Add(10 * time.Second)
		behind := &skewedAgent{id: 1, skew: -8 * time.Second, born: base.Add(-10 * time.Second)}
		ahead := &skewedAgent{id: 2, skew: 8 * time.Second, born: base}
		const n = 12
		for i := 1; i <= n; i++ {
			end := base.Add(time.Duration(i) * win)
			time.Sleep(time.Until(end.Add(2 * time.Millisecond)))
			r.Add(behind.batch(end, 1))
			r.Add(ahead.batch(end, 100))
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		var total float64
		for _, w := range s.take() {
			if !w.Correction {
				t.Errorf("got window %d not a correction; want every batch of the clock 8 s behind in corrections", w.StartMs)
			}
			total += find(w, proto.SeriesRequests).Value
		}
		st := r.Stats()
		if total != n || st.BatchesSkewCorrected != 0 || st.RefusedBy[ReasonFuture] != n {
			t.Errorf("got %v requests, %d clock-corrected, %d future; want %d, 0, %d", total, st.BatchesSkewCorrected, st.RefusedBy[ReasonFuture], n, n)
		}
	})
}

// TestClockCorrectionDisabled: MaxSkew 0 places every batch by its stamps.
func TestClockCorrectionDisabled(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MaxSkew = 0
		r, s := newTestRollup(t, cfg)
		runRollup(t, r)
		base := time.Now().Add(time.Second)
		a := &skewedAgent{id: 1, skew: time.Second, born: base}
		for i := 1; i <= 8; i++ {
			end := base.Add(time.Duration(i) * win)
			time.Sleep(time.Until(end))
			r.Add(a.batch(end, 1))
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		for _, w := range s.take() {
			if m := find(w, marker); m != nil && int64(m.Min) != w.StartMs-1000 {
				t.Errorf("window %d holds the batch of %d; want the batch stamped 1 s ahead", w.StartMs, int64(m.Min))
			}
		}
		if st := r.Stats(); st.BatchesSkewCorrected != 0 || st.BatchesMerged != 8 {
			t.Errorf("got %d clock-corrected of %d merged; want 0 of 8", st.BatchesSkewCorrected, st.BatchesMerged)
		}
	})
}

// TestOpenCorrectionsBounded: late batches for more distinct closed windows than the rollup
// keeps corrections open for are refused as too_many_corrections, counted; the others are
// published.
func TestOpenCorrectionsBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.MaxGroups = 1 // the bound is max(MaxGroups, 1024)
		cfg.CorrectionHorizon = time.Hour
		r, s := newTestRollup(t, cfg)
		now := time.Now().Add(time.Hour)
		time.Sleep(time.Until(now))
		const n = 1100
		for i := range n { // 10 s late and more: not taken for clock skew
			r.Add(batch(i, 0, now.Add(-10*time.Second).Add(-time.Duration(i)*win), counter(proto.SeriesRequests, 1)))
		}
		r.Advance(now.Add(lateness))
		var total float64
		ws := s.take()
		for _, w := range ws {
			if !w.Correction {
				t.Fatalf("got window %d not a correction; want only corrections", w.StartMs)
			}
			total += find(w, proto.SeriesRequests).Value
		}
		st := r.Stats()
		if len(ws) != 1024 || total != 1024 || st.RefusedBy[ReasonTooManyCorrections] != n-1024 {
			t.Errorf("got %d corrections with %v requests, %d refused; want 1024, 1024, %d", len(ws), total, st.RefusedBy[ReasonTooManyCorrections], n-1024)
		}
	})
}
