package web

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// TestBrowserVerdictPanel checks the service page's verdict panel: the effect and its
// interval in the metric's units, the verdict's age, live updates while pending without a
// reload, and the decision's delivery state — a rollback is red only once delivered — and
// the overview's badge of a rollback that had no target.
func TestBrowserVerdictPanel(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts, _ := liveDemo(t)
	decisions := &decisionsFake{ds: map[string]proto.Decision{}}
	ts.srv.SetDecisionLookup(decisions.lookup)
	b := newBrowser(t)
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/checkout"))
	b.waitJS(t, 10*time.Second, `(window.__herd.chartPoints || 0) > 100`)

	started := time.Now().Add(-20 * time.Second).UnixMilli()
	pending := proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StatePending,
		UnixMs: started, StartedMs: started, Sentence: "comparing canary 1.5.0 with baseline 1.4.2 (announced; warm-up 1s, α 0.01)",
		Evidence: proto.Evidence{Alpha: 0.01, EValue: 2.9, Threshold: 100, Windows: 76, FirstMs: started, LastMs: time.Now().Add(-time.Second).UnixMilli()}}
	effects := func(errCanary, ratio float64) []proto.Effect {
		return []proto.Effect{
			{Test: "errors", Metric: "errors", Unit: proto.UnitRatio, Canary: errCanary, Baseline: 0.0106, CanarySinceStart: 0.0159,
				BaselineSinceStart: 0.0106, Ratio: ratio, RatioSinceStart: 1.5, Low: 0.0140, High: 0.0291, Level: 0.99, RecentMs: 30000},
			{Test: "latency_p99", Metric: "p99", Unit: proto.UnitSeconds, Canary: 0.41, Baseline: 0.18, CanarySinceStart: 0.40,
				BaselineSinceStart: 0.18, Ratio: 2.3, RatioSinceStart: 2.2, Low: 0.38, High: 0.45, Level: 0.99, RecentMs: 30000},
		}
	}
	pending.Evidence.Effects = effects(0.0219, 2.1)
	pending.Evidence.Progress = &proto.Progress{Rollback: 0.23, AcceptMargin: 1.5, CSHigh: 2.7,
		Text: "evidence 23 % of the way to a rollback (e-value 2.9 of 100)"}
	ts.srv.SetVerdict(pending)
	b.waitJS(t, 5*time.Second, `!!document.querySelector('#verdict-effects tr[data-test=errors]')`)
	row := func(test string) string {
		return eval[string](t, b, `document.querySelector('#verdict-effects tr[data-test=`+test+`]').innerText`)
	}
	// Effect and interval in the metric's units.
	for test, wants := range map[string][]string{
		"errors":      {"errors", "2.19 %", "1.06 %", "×2.1", "×1.5", "1.40 % – 2.91 %"},
		"latency_p99": {"p99", "410 ms", "180 ms", "×2.3", "×2.2", "380 ms – 450 ms"},
	} {
		text := row(test)
		for _, want := range wants {
			if !strings.Contains(text, want) {
				t.Errorf("effect row %s %q lacks %q", test, text, want)
			}
		}
	}
	if head := eval[string](t, b, `document.querySelector('#verdict-effects tr').innerText`); !strings.Contains(head, "canary 99 % interval") {
		t.Errorf("effects header %q lacks the interval's level", head)
	}
	// The age, counting.
	ageRe := regexp.MustCompile(`^pending since (\d+) s ago$`)
	age := func() int {
		text := eval[string](t, b, `document.querySelector('#verdict-age').textContent`)
		m := ageRe.FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("age %q; want 'pending since N s ago'", text)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	first := age()
	if first < 19 || first > 30 {
		t.Fatalf("got age %d s; want ≈ 20 s", first)
	}
	b.waitJS(t, 5*time.Second, `/^pending since (\d+) s ago$/.test(document.querySelector('#verdict-age').textContent) && +document.querySelector('#verdict-age').textContent.match(/\d+/)[0] >= `+strconv.Itoa(first+2))
	if got := eval[string](t, b, `document.querySelector('#verdict-evidence-age').textContent`); !strings.HasPrefix(got, "● evidence as of ") {
		t.Errorf("evidence age %q; want '● evidence as of N s ago'", got)
	}
	if got := eval[string](t, b, `document.querySelector('#verdict-progress').innerText`); !strings.Contains(got, "23 % of the way to a rollback") {
		t.Errorf("progress %q lacks the distance from a decision", got)
	}
	// Live while pending: an update changes the panel in place.
	snapshots := eval[int](t, b, `window.__herd.snapshots`)
	up := pending
	up.Update = true
	up.Evidence.Effects = effects(0.0312, 2.9)
	up.Evidence.Progress = &proto.Progress{Rollback: 0.61, AcceptMargin: 1.5, CSHigh: 3.4, Text: "evidence 61 % of the way to a rollback (e-value 17 of 100)"}
	ts.srv.SetVerdict(up)
	b.waitJS(t, 5*time.Second, `document.querySelector('#verdict-effects tr[data-test=errors]').innerText.includes('3.12 %')`)
	if text := row("errors"); !strings.Contains(text, "×2.9") {
		t.Errorf("updated effect row %q lacks ×2.9", text)
	}
	if got := eval[string](t, b, `document.querySelector('#verdict-progress').innerText`); !strings.Contains(got, "61 %") {
		t.Errorf("updated progress %q lacks 61 %%", got)
	}
	if got := eval[int](t, b, `window.__herd.snapshots`); got != snapshots {
		t.Errorf("got %d snapshots after the update; want %d (no reload)", got, snapshots)
	}
	if n := eval[int](t, b, `window.__herd.stream.services.get('checkout').verdicts.length`); n != 1 {
		t.Errorf("got %d verdicts kept by the page; want 1 (the update replaced the pending verdict)", n)
	}

	// A rollback: delivering (not red), then delivered (red, with the target's answer).
	now := time.Now()
	rb := pending
	rb.State, rb.UnixMs, rb.DecidedAfterMs = proto.StateRollback, now.UnixMilli(), 41000
	rb.DecisionID = "4b6f0f7e-2f0e-4c1e-9d7a-1f2e3d4c5b6a"
	rb.Sentence = "errors 2.19 % vs 1.06 % (×2.1, last 30 s; ×1.5 since start), canary 1.40 %–2.91 % (99 %); ratio 2.1× baseline, 99 % CS [1.3, 2.7], decided after 41.0 s"
	rb.Evidence.Progress = nil
	decisions.set(proto.Decision{ID: rb.DecisionID, Verdict: rb, Status: "delivering"})
	ts.srv.SetVerdict(rb)
	b.waitJS(t, 5*time.Second, `document.querySelector('#verdict-state')?.textContent === 'rollback — delivering'`)
	if cls := eval[string](t, b, `document.querySelector('#verdict-state').className`); cls != "badge undelivered" {
		t.Errorf("badge of a rollback not delivered yet: got class %q; want %q", cls, "badge undelivered")
	}
	if got := eval[string](t, b, `getComputedStyle(document.querySelector('#verdict-state')).backgroundColor`); got == "rgb(198, 40, 40)" {
		t.Errorf("badge of a rollback not delivered yet is red")
	}
	if got := eval[string](t, b, `document.querySelector('#verdict-decided-after').textContent`); got != "41.0 s" {
		t.Errorf("decided after: got %q; want %q, as the sentence says", got, "41.0 s")
	}
	decisions.set(proto.Decision{ID: rb.DecisionID, Verdict: rb, Status: "delivered", Deliveries: []proto.Delivery{
		{DecisionID: rb.DecisionID, Target: "webhook:http://127.0.0.1:9000/hooks/herd", Attempt: 1, UnixMs: rb.UnixMs + 40, Status: 204, Outcome: "done"}}})
	b.waitJS(t, 5*time.Second, `document.querySelector('#verdict-state')?.textContent === 'rollback'`)
	if cls := eval[string](t, b, `document.querySelector('#verdict-state').className`); cls != "badge rollback" {
		t.Errorf("badge of a delivered rollback: got class %q; want %q", cls, "badge rollback")
	}
	if got, want := eval[string](t, b, `document.querySelector('#verdict-delivery').textContent`), "delivered: webhook:http://127.0.0.1:9000/hooks/herd (HTTP 204, done)"; got != want {
		t.Errorf("delivery: got %q; want %q", got, want)
	}
	if got := eval[string](t, b, `document.querySelector('#verdict-age').textContent`); !strings.HasPrefix(got, "verdict ") || !strings.HasSuffix(got, " s ago") {
		t.Errorf("age of the rollback: got %q; want 'verdict N s ago'", got)
	}

	// The overview: a rollback without a target is not a red ROLLBACK.
	prb := proto.Verdict{Service: "payments", Baseline: "3.2.0", Canary: "3.3.0", State: proto.StateRollback, UnixMs: now.UnixMilli(),
		StartedMs: now.Add(-9 * time.Second).UnixMilli(), DecisionID: "9c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f", DecidedAfterMs: 9000,
		Sentence: "canary error ratio 62 % over the last 1.0 s (ceiling 50 %, baseline 0.1 %), decided after 9.0 s"}
	decisions.set(proto.Decision{ID: prb.DecisionID, Verdict: prb, Status: "none"})
	ts.srv.SetVerdict(prb)
	// A pass that keeps watching its canary.
	pass := proto.Verdict{Service: "search", Baseline: "2.0.0", Canary: "2.0.1", State: proto.StatePass, UnixMs: now.UnixMilli(),
		StartedMs: now.Add(-6 * time.Minute).UnixMilli(), DecisionID: "1f2e3d4c-5b6a-4c7d-8e9f-0a1b2c3d4e5f", DecidedAfterMs: 305000,
		Sentence: "no regression after 305.0 s: errors 1.0× (CS ≤ 1.3); all below the accept margin 1.5×; promoted, watching for 30.0 min (α 0.01) or until the baseline stops serving",
		Watch:    &proto.Watch{Active: true, PassMs: now.UnixMilli(), UntilMs: now.Add(30 * time.Minute).UnixMilli(), Alpha: 0.01}}
	decisions.set(proto.Decision{ID: pass.DecisionID, Verdict: pass, Status: "none"})
	ts.srv.SetVerdict(pass)
	b.do(t, 10*time.Second, chromedp.Click(chromedp.CSS(`a[href^="/"][data-nav].muted`)))
	b.waitJS(t, 10*time.Second, `!!document.querySelector('a.tile[data-service=payments] .badge')`)
	b.waitJS(t, 5*time.Second, `document.querySelector('a.tile[data-service=payments] .badge').textContent === 'rollback — not delivered (no target)'`)
	if cls := eval[string](t, b, `document.querySelector('a.tile[data-service=payments]').className`); !strings.Contains(cls, "h-undelivered") {
		t.Errorf("payments tile: got class %q; want h-undelivered", cls)
	}
	b.waitJS(t, 5*time.Second, `document.querySelector('a.tile[data-service=search] .badge')?.textContent === 'promoted, watching'`)
	if cls := eval[string](t, b, `document.querySelector('a.tile[data-service=checkout] .badge').className`); cls != "badge rollback" {
		t.Errorf("checkout tile badge: got class %q; want badge rollback (delivered)", cls)
	}
}
