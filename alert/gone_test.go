package alert

import (
	"slices"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// side is what one group sends in a simulated interval.
type side int

const (
	live    side = iota // its instances report traffic
	empty               // the rollup reports the group without any instance
	missing             // no window arrives at all
)

// stepSides feeds n windows of the baseline (a) and the canary (b) as told; canaryFirst
// feeds the canary's window of each interval before the baseline's.
func (f *fleet) stepSides(n int, a, b side, canaryFirst bool) {
	win := testWindow.Milliseconds()
	feed := func(g *traffic.WindowGroup, s side) {
		switch s {
		case live:
			f.d.AddWindow(g.Fill(f.r, f.nowMs, f.nowMs+win, 1, traffic.Normal, 0))
		case empty:
			f.d.AddWindow(&proto.Window{Service: "shop", Version: g.Version, StartMs: f.nowMs, EndMs: f.nowMs + win, ClosedMs: f.nowMs + win})
		}
	}
	for range n {
		if canaryFirst {
			feed(f.b, b)
			feed(f.a, a)
		} else {
			feed(f.a, a)
			feed(f.b, b)
		}
		f.nowMs += win
		f.d.Tick(time.UnixMilli(f.nowMs))
	}
}

// goneFleet is a running comparison of a healthy canary: 10 s of baseline, the announcement,
// then 10 s of both.
func goneFleet(t *testing.T) *fleet {
	t.Helper()
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.stepSides(40, live, missing, false)
	f.announce()
	f.stepSides(40, live, live, false)
	return f
}

// wantPending fails unless the only verdict is the comparison's pending one.
func wantPending(t *testing.T, f *fleet, what string) {
	t.Helper()
	if got := f.states(); !slices.Equal(got, []proto.State{proto.StatePending}) {
		t.Fatalf("%s: got verdicts %v (last %q); want [pending]", what, got, f.last().Sentence)
	}
}

// TestGoneFleetWideStall: every agent stalls for about 2 s, so every group's windows come
// empty (or not at all), then traffic resumes; the canary may resume a window after the
// baseline. The canary was never gone while the baseline served.
func TestGoneFleetWideStall(t *testing.T) {
	for _, tc := range []struct {
		name        string
		a, b        side
		canaryFirst bool
		lateCanary  int // windows the canary resumes after the baseline
	}{
		{"both empty", empty, empty, false, 0},
		{"both empty, canary windows first", empty, empty, true, 0},
		{"both empty, canary resumes late", empty, empty, false, 2},
		{"baseline missing, canary empty", missing, empty, false, 0},
		{"baseline empty, canary missing", empty, missing, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := goneFleet(t)
			for _, stall := range []time.Duration{2 * time.Second, 4 * time.Second, 10 * time.Second} {
				f.stepSides(int(stall/testWindow), tc.a, tc.b, tc.canaryFirst)
				f.stepSides(tc.lateCanary, live, empty, tc.canaryFirst)
				f.stepSides(40, live, live, tc.canaryFirst)
				wantPending(t, f, "after a fleet-wide stall of "+stall.String())
			}
		})
	}
}

// TestGoneServiceStop: the whole service stops (baseline and canary), in either order a
// window apart, and stays down; then its windows stop coming at all.
func TestGoneServiceStop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first side // what the canary does in the window the baseline still serves
	}{
		{"together", empty},
		{"baseline first", live},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := goneFleet(t)
			if tc.first == empty {
				f.stepSides(1, live, empty, false) // the canary's instances end a window earlier
			} else {
				f.stepSides(1, empty, live, false)
			}
			f.stepSides(4*60, empty, empty, false)
			f.stepSides(4*60, missing, missing, false)
			wantPending(t, f, "a stopped service")
		})
	}
}

// TestGoneNATSGapBothSides: a NATS hiccup loses every window of both groups for a while.
func TestGoneNATSGapBothSides(t *testing.T) {
	f := goneFleet(t)
	for _, gap := range []int{2, 8, 40} {
		f.stepSides(gap, missing, missing, false)
		f.stepSides(20, live, live, false)
	}
	wantPending(t, f, "windows missing on both sides")
}

// TestGoneCanaryOnlyCrash: the canary's instances die while the baseline serves; whatever the
// order of the two groups' windows, and also right after a fleet-wide stall, the canary is
// rolled back once the baseline has served GoneAfter (1 s) without it.
func TestGoneCanaryOnlyCrash(t *testing.T) {
	for _, tc := range []struct {
		name        string
		canaryFirst bool
		stallBefore int // windows of fleet-wide stall before the crash shows
	}{
		{"baseline windows first", false, 0},
		{"canary windows first", true, 0},
		{"after a fleet-wide stall", false, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := goneFleet(t)
			f.stepSides(tc.stallBefore, empty, empty, tc.canaryFirst)
			onset := f.nowMs
			f.stepSides(3, live, empty, tc.canaryFirst)
			wantPending(t, f, "canary silent 0.75 s")
			f.stepSides(1, live, empty, tc.canaryFirst)
			v := f.last()
			if v.State != proto.StateRollback || v.Evidence.Decisive != "guard_canary_gone" {
				t.Fatalf("canary silent 1 s while the baseline serves: got %s by %q (%q); want rollback by guard_canary_gone", v.State, v.Evidence.Decisive, v.Sentence)
			}
			if got := time.Duration(v.UnixMs-onset) * time.Millisecond; got != time.Second {
				t.Errorf("decided %s after the crash; want 1s (-detect.gone-after)", got)
			}
			if tc.stallBefore > 0 {
				want := "canary crash-looping: no canary instance reporting for 3.0 s, 1.0 s of it while the baseline served traffic"
				if v.Sentence != want {
					t.Errorf("sentence: got %q; want %q", v.Sentence, want)
				}
			}
		})
	}
}

// TestGoneCanaryEmptyWhileBaselineIdle: a baseline that reports instances but serves no
// requests is no evidence against an empty canary (the service gets no traffic).
func TestGoneCanaryEmptyWhileBaselineIdle(t *testing.T) {
	f := goneFleet(t)
	win := testWindow.Milliseconds()
	for range 40 {
		f.d.AddWindow(&proto.Window{Service: "shop", Version: "v1", StartMs: f.nowMs, EndMs: f.nowMs + win, Instances: 10})
		f.d.AddWindow(&proto.Window{Service: "shop", Version: "v2", StartMs: f.nowMs, EndMs: f.nowMs + win})
		f.nowMs += win
	}
	wantPending(t, f, "canary empty while the baseline serves nothing")
}
