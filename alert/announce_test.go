package alert

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
)

// TestAnnounceRefusesEstablishedVersion: production (the version the service has been
// running) or the baseline of a running comparison named as a canary is refused and counted,
// also while every group's windows come empty (a stall) or after the service stopped.
func TestAnnounceRefusesEstablishedVersion(t *testing.T) {
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.stepSides(4*40, live, missing, false) // v1 serves for 40 s: established
	prod := proto.Deployment{Service: "shop", Baseline: "v0", Canary: "v1", UnixMs: f.nowMs}
	check := func(what string, wantRefusals uint64) {
		t.Helper()
		if err := f.d.CheckDeployment(prod); !errors.Is(err, errNotNew) {
			t.Errorf("%s: CheckDeployment: got %v; want a refusal", what, err)
		}
		err := f.d.Announce(prod)
		if err == nil || !strings.Contains(err.Error(), "v1 is the established version of shop") {
			t.Fatalf("%s: Announce(canary v1): got %v; want 'v1 is the established version of shop'", what, err)
		}
		if got := f.d.m.notNewCanary.Get(); got != wantRefusals {
			t.Errorf("%s: refusals counted: got %d; want %d", what, got, wantRefusals)
		}
		if got := f.states(); len(got) != 0 {
			t.Fatalf("%s: got verdicts %v; want none", what, got)
		}
	}
	check("v1 serving", 1)
	f.stepSides(12, empty, missing, false)
	check("every window empty for 3 s", 2)
	f.stepSides(4*60, missing, missing, false)
	check("the service stopped a minute ago", 3)

	// A comparison runs: its baseline is no canary either, its canary may be re-announced.
	f.stepSides(4, live, missing, false)
	f.announce()
	f.stepSides(8, live, live, false)
	err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v2", Canary: "v1", UnixMs: f.nowMs})
	if err == nil || !strings.Contains(err.Error(), "v1 is the baseline of the running comparison of canary v2") {
		t.Fatalf("Announce(canary v1 against v2): got %v; want 'v1 is the baseline of the running comparison of canary v2'", err)
	}
	if err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v3", UnixMs: f.nowMs}); err != nil {
		t.Fatalf("Announce(a new canary v3): got %v; want nil", err)
	}
	if err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2", UnixMs: f.nowMs}); err != nil {
		t.Fatalf("Announce(the running canary v2 again): got %v; want nil", err)
	}
}

// TestAnnounceSameDeploymentDecidesOnce: announcing a deployment again after its rollback —
// while the verdict is kept, after the detector forgot it, or inferred first and announced
// late — restarts nothing and publishes no second decision; a new deployment of the same
// versions (a later start) is a new comparison with its own decision id.
func TestAnnounceSameDeploymentDecidesOnce(t *testing.T) {
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.stepSides(40, live, missing, false)
	dep := proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2", UnixMs: f.nowMs}
	if err := f.d.Announce(dep); err != nil {
		t.Fatal(err)
	}
	f.step(1, true, true, 1, 0, 0.95) // crash loop: rolled back in the first window
	first := f.last()
	if first.State != proto.StateRollback {
		t.Fatalf("crash loop: got %s; want rollback", first.State)
	}
	if want := decisionID("shop", "v1", "v2", dep.UnixMs, proto.StateRollback); first.DecisionID != want {
		t.Errorf("decision id: got %s; want %s, derived from the deployment", first.DecisionID, want)
	}
	f.step(4, true, true, 1, 0, 0.95)
	for _, what := range []string{"verdict kept", "verdict forgotten"} {
		if what == "verdict forgotten" {
			f.d.mu.Lock()
			delete(f.d.services["shop"].comps, "v2") // as Tick does an hour after the verdict
			f.d.mu.Unlock()
		}
		if err := f.d.Announce(dep); err != nil {
			t.Fatalf("%s: the same deployment again: got %v; want nil", what, err)
		}
		f.step(8, true, true, 1, 0, 0.95)
		if got := f.states(); !slices.Equal(got, []proto.State{proto.StatePending, proto.StateRollback}) {
			t.Fatalf("%s: the same deployment again: got verdicts %v; want [pending rollback]", what, got)
		}
	}
	if got := f.d.m.judgedAnnouncement.Get(); got != 2 {
		t.Errorf("repeated announcements counted: got %d; want 2", got)
	}

	next := dep
	next.UnixMs = f.nowMs
	if err := f.d.Announce(next); err != nil {
		t.Fatal(err)
	}
	f.step(1, true, true, 1, 0, 0.95)
	v := f.last()
	if v.State != proto.StateRollback || v.DecisionID == first.DecisionID || v.StartedMs != next.UnixMs {
		t.Fatalf("a new deployment: got %s id %s started %d; want a rollback with a new id, started %d", v.State, v.DecisionID, v.StartedMs, next.UnixMs)
	}
}

// TestAnnounceLateForInferredComparison: a canary inferred and rolled back, then announced
// by the deploy tool with the start it had: the rollback stands.
func TestAnnounceLateForInferredComparison(t *testing.T) {
	f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
	f.stepSides(4*40, live, missing, false)
	started := f.nowMs
	f.step(4, true, true, 1, 0, 0.95) // inferred, then rolled back by the ceiling within a second
	if s := f.last(); s.State != proto.StateRollback || !strings.Contains(f.verdicts[0].Sentence, "inferred") {
		t.Fatalf("inferred crash loop: got %v; want [pending (inferred) rollback]", f.states())
	}
	f.step(4, true, true, 1, 0, 0.95)
	if err := f.d.Announce(proto.Deployment{Service: "shop", Baseline: "v1", Canary: "v2", UnixMs: started - 2000}); err != nil {
		t.Fatal(err)
	}
	f.step(4, true, true, 1, 0, 0.95)
	if got := f.states(); len(got) != 2 {
		t.Fatalf("late announcement of the judged deployment: got verdicts %v; want [pending rollback]", got)
	}
}

// TestDecisionIDSameAcrossDetectors: two detectors that see the same announcement and
// windows (a restarted one replaying them) derive the same decision id.
func TestDecisionIDSameAcrossDetectors(t *testing.T) {
	var ids []string
	for range 2 {
		f := newFleet(t, testConfig(), nil, fleetOpts{rps: 2000, share: 0.05, errA: 0.005, errB: 0.005})
		f.stepSides(40, live, missing, false)
		f.announce()
		f.step(1, true, true, 1, 0, 0.95)
		ids = append(ids, f.last().DecisionID)
	}
	if ids[0] == "" || ids[0] != ids[1] {
		t.Fatalf("decision ids: got %q and %q; want one id", ids[0], ids[1])
	}
}
