package alert

import (
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// runFor feeds both groups for d on the bubble's clock: each window ends at the fake now,
// and the Detector's Tick runs every second, as Run would call it.
func (f *fleet) runFor(d time.Duration, feedA bool, errFracB float64) {
	win := testWindow.Milliseconds()
	for range int(d / testWindow) {
		time.Sleep(testWindow)
		f.nowMs = time.Now().UnixMilli() - win
		f.step(1, feedA, true, 1, 0, errFracB)
		if f.nowMs%1000 == 0 {
			f.d.Tick(time.Now())
		}
	}
}

func (f *detectorRun) updateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.updates)
}

func (f *detectorRun) lastUpdate() proto.Verdict {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.updates) == 0 {
		f.t.Fatalf("got no verdict update; want at least one")
	}
	return f.updates[len(f.updates)-1]
}

// TestWatchRollsBackRegressionAfterPass: a canary that passes and turns bad ten minutes later
// is rolled back by the watching comparison, with a decision of its own.
// At 12.5 min the regression starts mid-segment of the watch.
func TestWatchRollsBackRegressionAfterPass(t *testing.T) {
	for _, good := range []time.Duration{10 * time.Minute, 12*time.Minute + 30*time.Second} {
		t.Run(good.String(), func(t *testing.T) { testWatchRollsBack(t, good) })
	}
}

func testWatchRollsBack(t *testing.T, good time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.005})
		f.nowMs = time.Now().UnixMilli()
		f.runFor(10*time.Second, true, 0)
		f.announce()
		for range 5 * 60 {
			if f.runFor(time.Second, true, 0); f.last().State != proto.StatePending {
				break
			}
		}
		pass := f.last()
		if pass.State != proto.StatePass || pass.Watch == nil || !pass.Watch.Active {
			t.Fatalf("A/A canary after 5 min: got %s, watch %+v (%s); want pass, watching", pass.State, pass.Watch, pass.Sentence)
		}
		if !pass.Decides() || pass.DecisionID == "" || !strings.Contains(pass.Sentence, "promoted, watching for 30.0 min") {
			t.Fatalf("pass: got decides %v, id %q, sentence %q; want a decision and the watch named", pass.Decides(), pass.DecisionID, pass.Sentence)
		}
		if got, want := pass.Watch.UntilMs-pass.Watch.PassMs, cfg.Watch.Milliseconds(); got != want {
			t.Fatalf("watch length: got %d ms; want %d ms", got, want)
		}
		if got := f.d.m.watching.Load(); got != 1 {
			t.Fatalf("herd_detector_comparisons_watching: got %d; want 1", got)
		}
		f.runFor(good, true, 0)
		if got := f.states(); len(got) != 2 {
			t.Fatalf("good minutes after the pass: got verdicts %v (%s); want [pending pass]", got, f.last().Sentence)
		}
		u := f.lastUpdate()
		if u.State != proto.StatePass || u.Decides() || u.Watch == nil || !u.Watch.Active ||
			!strings.HasPrefix(u.Sentence, "promoted, watching") || u.DecisionID != pass.DecisionID {
			t.Fatalf("watching update: got %s decides=%v watch %+v id %q (%q); want an update of the pass", u.State, u.Decides(), u.Watch, u.DecisionID, u.Sentence)
		}
		onset := time.Now().UnixMilli()
		f.runFor(2*time.Minute, true, 0.025) // errors ×5
		v := f.last()
		if v.State != proto.StateRollback || v.Evidence.Decisive != "errors" {
			t.Fatalf("errors ×5 ten minutes after the pass: got %s by %q (%s); want rollback by errors", v.State, v.Evidence.Decisive, v.Sentence)
		}
		took := time.Duration(v.UnixMs-onset) * time.Millisecond
		t.Logf("rolled back %s after the onset: %s", took, v.Sentence)
		if took > time.Minute {
			t.Fatalf("rollback took %s after the onset; want ≤ 1 min", took)
		}
		if !v.Decides() || v.DecisionID == "" || v.DecisionID == pass.DecisionID {
			t.Fatalf("rollback: got decides %v, id %q (pass %q); want a new decision", v.Decides(), v.DecisionID, pass.DecisionID)
		}
		if v.Watch == nil || v.Watch.Active || v.Watch.Reason != proto.WatchRegression || v.Watch.PassMs != pass.UnixMs {
			t.Fatalf("rollback watch: got %+v; want ended by regression", v.Watch)
		}
		if !strings.HasPrefix(v.Sentence, "regressed 1") || !strings.Contains(v.Sentence, "min after the pass: errors ") {
			t.Fatalf("rollback sentence: got %q; want 'regressed 1x.x min after the pass: errors …'", v.Sentence)
		}
		if want := "decided after " + after(time.Duration(v.DecidedAfterMs)*time.Millisecond); !strings.HasSuffix(v.Sentence, want) {
			t.Fatalf("decided after: sentence %q does not end with %q (decided_after_ms %d)", v.Sentence, want, v.DecidedAfterMs)
		}
		if got := f.d.m.watching.Load(); got != 0 {
			t.Fatalf("herd_detector_comparisons_watching after the rollback: got %d; want 0", got)
		}
		n := len(f.states())
		f.runFor(30*time.Second, true, 0.025)
		if got := f.states(); len(got) != n {
			t.Fatalf("after the rollback: got verdicts %v; want nothing more", got)
		}
	})
}

// TestWatchEnds: the watch ends without a decision when the baseline retires or the watch
// time runs out, and the pass is republished with the reason.
func TestWatchEnds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		feedA  bool
		reason string
	}{
		{"baseline retires", false, proto.WatchBaselineRetired},
		{"watch time", true, proto.WatchTime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := testConfig()
				cfg.Watch = 2 * time.Minute
				f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.005})
				f.nowMs = time.Now().UnixMilli()
				f.runFor(10*time.Second, true, 0)
				f.announce()
				f.runFor(3*time.Minute, true, 0)
				if v := f.last(); v.State != proto.StatePass || v.Watch == nil || !v.Watch.Active {
					t.Fatalf("got %s, watch %+v; want pass, watching", v.State, v.Watch)
				}
				f.runFor(3*time.Minute, tc.feedA, 0)
				u := f.lastUpdate()
				if u.Watch == nil || u.Watch.Active || u.Watch.Reason != tc.reason || !strings.Contains(u.Sentence, "without regression") {
					t.Fatalf("got watch %+v (%q); want ended, reason %s", u.Watch, u.Sentence, tc.reason)
				}
				n, updates := len(f.states()), f.updateCount()
				f.runFor(time.Minute, tc.feedA, 0.05)
				if len(f.states()) != n || f.updateCount() != updates {
					t.Fatalf("after the watch: got verdicts %v and %d more updates; want none", f.states(), f.updateCount()-updates)
				}
				if got := f.d.m.watching.Load(); got != 0 {
					t.Fatalf("herd_detector_comparisons_watching: got %d; want 0", got)
				}
			})
		})
	}
}

// TestLiveEvidenceWhilePending: a pending comparison republishes its evidence in the
// metrics' units once per second of window time, with its distance from a decision.
func TestLiveEvidenceWhilePending(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01, scaleB: 1})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(4*20, true, true, 1, 0, 0)
	if got := f.states(); len(got) != 1 {
		t.Fatalf("20 s of A/A: got verdicts %v; want [pending]", got)
	}
	// 20 s of canary windows, the group warm-up's first ones not compared: one update a second.
	compared := int((20*time.Second - cfg.Warmup) / time.Second)
	if n := f.updateCount(); n < compared-2 || n > compared {
		t.Fatalf("updates in %d s of compared windows: got %d; want one per second", compared, n)
	}
	u := f.lastUpdate()
	if u.State != proto.StatePending || !u.Update || u.Decides() || u.DecidedAfterMs != 0 {
		t.Fatalf("got %s update=%v decides=%v decided_after %d; want a pending update", u.State, u.Update, u.Decides(), u.DecidedAfterMs)
	}
	byTest := map[string]proto.Effect{}
	for _, e := range u.Evidence.Effects {
		byTest[e.Test] = e
	}
	e, ok := byTest["errors"]
	if !ok || e.Unit != proto.UnitRatio || !(e.Baseline > 0.005 && e.Baseline < 0.02) || !(e.Low < e.CanarySinceStart && e.CanarySinceStart < e.High) {
		t.Fatalf("errors effect: got %+v; want ≈ 1 %% with an interval around the canary's value", e)
	}
	if !strings.HasPrefix(e.Text, "errors ") || !strings.Contains(e.Text, " % vs ") || !regexp.MustCompile(`last (1[89]|20) s`).MatchString(e.Text) || !strings.Contains(e.Text, "since start), canary ") {
		t.Fatalf("errors effect text: got %q", e.Text)
	}
	p99, ok := byTest["latency_p99"]
	if !ok || p99.Unit != proto.UnitSeconds || p99.Metric != "p99" || !(p99.Baseline > 0.1 && p99.Baseline < 1) ||
		!(p99.Low <= p99.CanarySinceStart && p99.CanarySinceStart <= p99.High) || !strings.HasPrefix(p99.Text, "p99 ") || !strings.Contains(p99.Text, " ms vs ") {
		t.Fatalf("p99 effect: got %+v", p99)
	}
	p := u.Evidence.Progress
	if p == nil || p.Rollback < 0 || p.Rollback > 1 || p.PassInMs <= 0 || p.AcceptMargin != 1.5 || !strings.Contains(p.Text, "of the way to a rollback") {
		t.Fatalf("progress: got %+v", p)
	}
	if !strings.HasPrefix(u.Sentence, "pending: ") || !strings.Contains(u.Sentence, "a pass needs") {
		t.Fatalf("sentence: got %q", u.Sentence)
	}
	if vs := f.d.Verdicts(); len(vs) != 1 || vs[0].Evidence.Progress == nil {
		t.Fatalf("Verdicts: got %+v; want the live evidence", vs)
	}
}

// TestLiveEvidenceOff: EvidenceEvery 0 publishes state changes only.
func TestLiveEvidenceOff(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.EvidenceEvery = 0
	f := newFleet(t, cfg, nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.01, errB: 0.01})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	f.step(4*20, true, true, 1, 0, 0)
	if n := f.updateCount(); n != 0 {
		t.Fatalf("got %d updates; want none", n)
	}
}

// TestWatchSuperseded: a new deployment of the watched canary ends the watch and starts a
// comparison of its own.
func TestWatchSuperseded(t *testing.T) {
	t.Parallel()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.2, errA: 0.005, errB: 0.005})
	f.step(40, true, false, 1, 0, 0)
	f.announce()
	for range 4 * 300 {
		if f.step(1, true, true, 1, 0, 0); f.last().State != proto.StatePending {
			break
		}
	}
	if v := f.last(); v.State != proto.StatePass || v.Watch == nil || !v.Watch.Active {
		t.Fatalf("got %s, watch %+v; want pass, watching", v.State, v.Watch)
	}
	f.step(4*5, true, true, 1, 0, 0)
	f.announce() // the same canary deployed again, later
	u := f.lastUpdate()
	if u.Watch == nil || u.Watch.Active || u.Watch.Reason != proto.WatchSuperseded {
		t.Fatalf("got watch %+v; want ended, superseded", u.Watch)
	}
	if got := f.states(); len(got) != 3 || got[2] != proto.StatePending {
		t.Fatalf("got verdicts %v; want [pending pass pending]", got)
	}
	if got := f.d.m.watching.Load(); got != 0 {
		t.Fatalf("herd_detector_comparisons_watching: got %d; want 0", got)
	}
}
