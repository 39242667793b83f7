package web

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
)

func goodVerdict() proto.Verdict {
	return proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback,
		UnixMs: 1_795_656_790_000, StartedMs: 1_795_656_782_000, DecisionID: "4b6f0f7e-2f0e-4c1e-9d7a-1f2e3d4c5b6a",
		Sentence: "errors 5.1× baseline, 99 % CS [2.9, 9.0], decided after 7.8 s",
		Evidence: proto.Evidence{Alpha: 0.01, EValue: 180, Threshold: 100, Decisive: "errors", Windows: 31,
			Tests: []proto.TestEvidence{{Name: "errors", EValue: 355, Weight: 0.5, Effect: 5.1, CSLow: 2.9, CSHigh: 9}},
			Effects: []proto.Effect{{Test: "errors", Metric: "errors", Unit: proto.UnitRatio, Canary: 0.0219, Baseline: 0.0106,
				Ratio: 2.1, RatioSinceStart: 1.5, Low: 0.014, High: 0.029, Level: 0.99, RecentMs: 30000, SinceMs: 60000,
				Text: "errors 2.19 % vs 1.06 % (×2.1, last 30 s; ×1.5 since start), canary 1.40 %–2.91 % (99 %)"}},
			Progress: &proto.Progress{Rollback: 1, CSHigh: 9, AcceptMargin: 1.5, Text: "evidence 100 % of the way to a rollback"}},
		DecidedAfterMs: 7800,
		Watch:          &proto.Watch{PassMs: 1_795_656_780_000, UntilMs: 1_795_658_580_000, Alpha: 0.01, EndedMs: 1_795_656_790_000, Reason: proto.WatchRegression}}
}

// TestCheckVerdict checks that the schema refuses what a forged verdict may carry and keeps
// what the detector sends, hostile-looking text included (the dashboard escapes it).
func TestCheckVerdict(t *testing.T) {
	v := goodVerdict()
	if err := checkVerdict(&v); err != nil {
		t.Fatalf("got %v for a good verdict; want nil", err)
	}
	for name, mut := range map[string]func(*proto.Verdict){
		"markup state":         func(v *proto.Verdict) { v.State = "<img src=x onerror=window.__pwned=1>" },
		"unknown state":        func(v *proto.Verdict) { v.State = "rolled" },
		"empty state":          func(v *proto.Verdict) { v.State = "" },
		"bad service":          func(v *proto.Verdict) { v.Service = "<b>" },
		"long service":         func(v *proto.Verdict) { v.Service = strings.Repeat("a", proto.MaxServiceLen+1) },
		"no canary":            func(v *proto.Verdict) { v.Canary = "" },
		"version with space":   func(v *proto.Verdict) { v.Baseline = "1 2" },
		"long version":         func(v *proto.Verdict) { v.Canary = strings.Repeat("9", proto.MaxVersionLen+1) },
		"negative time":        func(v *proto.Verdict) { v.UnixMs = -1 },
		"far future":           func(v *proto.Verdict) { v.StartedMs = math.MaxInt64 },
		"long sentence":        func(v *proto.Verdict) { v.Sentence = strings.Repeat("x", maxSentence+1) },
		"control in sentence":  func(v *proto.Verdict) { v.Sentence = "a\x00b" },
		"bad UTF-8":            func(v *proto.Verdict) { v.Sentence = "\xff\xfe" },
		"long decision id":     func(v *proto.Verdict) { v.DecisionID = strings.Repeat("d", maxName+1) },
		"NaN e-value":          func(v *proto.Verdict) { v.Evidence.EValue = math.NaN() },
		"Inf threshold":        func(v *proto.Verdict) { v.Evidence.Threshold = math.Inf(1) },
		"Inf test effect":      func(v *proto.Verdict) { v.Evidence.Tests[0].Effect = math.Inf(-1) },
		"long test name":       func(v *proto.Verdict) { v.Evidence.Tests[0].Name = strings.Repeat("t", maxName+1) },
		"too many tests":       func(v *proto.Verdict) { v.Evidence.Tests = make([]proto.TestEvidence, maxTests+1) },
		"negative windows":     func(v *proto.Verdict) { v.Evidence.Windows = -1 },
		"unknown effect unit":  func(v *proto.Verdict) { v.Evidence.Effects[0].Unit = "<b>" },
		"NaN effect":           func(v *proto.Verdict) { v.Evidence.Effects[0].Low = math.NaN() },
		"Inf effect ratio":     func(v *proto.Verdict) { v.Evidence.Effects[0].Ratio = math.Inf(1) },
		"long effect text":     func(v *proto.Verdict) { v.Evidence.Effects[0].Text = strings.Repeat("x", maxSentence+1) },
		"control in metric":    func(v *proto.Verdict) { v.Evidence.Effects[0].Metric = "p\x0099" },
		"negative effect span": func(v *proto.Verdict) { v.Evidence.Effects[0].RecentMs = -1 },
		"too many effects":     func(v *proto.Verdict) { v.Evidence.Effects = make([]proto.Effect, maxTests+1) },
		"NaN progress":         func(v *proto.Verdict) { v.Evidence.Progress.Rollback = math.NaN() },
		"long progress text":   func(v *proto.Verdict) { v.Evidence.Progress.Text = strings.Repeat("x", maxSentence+1) },
		"negative pass_in":     func(v *proto.Verdict) { v.Evidence.Progress.PassInMs = -1 },
		"negative decided":     func(v *proto.Verdict) { v.DecidedAfterMs = -1 },
		"watch far future":     func(v *proto.Verdict) { v.Watch.UntilMs = math.MaxInt64 },
		"watch NaN alpha":      func(v *proto.Verdict) { v.Watch.Alpha = math.NaN() },
		"long watch reason":    func(v *proto.Verdict) { v.Watch.Reason = strings.Repeat("r", maxName+1) },
	} {
		v := goodVerdict()
		mut(&v)
		if err := checkVerdict(&v); err == nil {
			t.Errorf("%s: got nil; want refused", name)
		}
	}
	v = goodVerdict()
	v.Service = strings.Repeat("s", proto.MaxServiceLen)
	v.Baseline = `<script>alert(1)</script>`
	v.Canary = "<img/src=x/onerror=window.__pwned=1>" + strings.Repeat("v", proto.MaxVersionLen-36)
	v.Sentence = `<script>window.__pwned=1</script> & "quotes" ` + strings.Repeat("é", 100)
	if err := checkVerdict(&v); err != nil {
		t.Fatalf("got %v for valid tokens at their limits with markup characters; want nil (escaped when shown)", err)
	}
}

func TestCheckWindow(t *testing.T) {
	if err := checkWindow(window("checkout", "1", 1000, 5)); err != nil {
		t.Fatalf("got %v for a good window; want nil", err)
	}
	for name, mut := range map[string]func(*proto.Window){
		"bad version":     func(w *proto.Window) { w.Version = "" },
		"start after end": func(w *proto.Window) { w.StartMs = w.EndMs + 1 },
		"negative end":    func(w *proto.Window) { w.StartMs, w.EndMs = -500, -250 },
		"negative count":  func(w *proto.Window) { w.Instances = -1 },
		"NaN value":       func(w *proto.Window) { w.Series[0].Value = math.NaN() },
		"Inf p99":         func(w *proto.Window) { w.Series[0].P99 = math.Inf(1) },
		"Inf hist sum":    func(w *proto.Window) { w.Series[0].Hist = &proto.Histogram{Sum: math.Inf(1)} },
		"unnamed series":  func(w *proto.Window) { w.Series[0].Name = "" },
		"long label": func(w *proto.Window) {
			w.Series[0].Labels = proto.Labels{{Name: "a", Value: strings.Repeat("v", proto.MaxStringBytes+1)}}
		},
		"NaN in a half": func(w *proto.Window) {
			w.Halves[1] = []proto.WindowSeries{{Name: "requests_total", Value: math.NaN()}}
		},
	} {
		w := window("checkout", "1", 1000, 5)
		mut(w)
		if err := checkWindow(w); err == nil {
			t.Errorf("%s: got nil; want refused", name)
		}
	}
}

// TestBadInputRefused feeds hostile inputs through every entry point — AddWindow,
// SetVerdict, AddDeployment and the history Restore — and checks that none is stored and
// each is counted.
func TestBadInputRefused(t *testing.T) {
	srv, err := New(testConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := goodVerdict()
	bad.State = "<img src=x onerror=window.__pwned=1>"
	nan := window("checkout", "1", 1000, math.NaN())
	dep := proto.Deployment{Service: "checkout", Baseline: "1", Canary: "2", UnixMs: -5}
	srv.SetVerdict(bad)
	srv.AddWindow(nan)
	srv.AddDeployment(dep)
	ctx := context.Background()
	for _, err := range []error{srv.Restore(ctx, nil, &bad, nil), srv.Restore(ctx, nan, nil, nil), srv.Restore(ctx, nil, nil, &dep)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.m.inputsRefused[ReasonBadInput].Get(); n != 6 {
		t.Fatalf("got %d bad inputs; want 6", n)
	}
	if n := len(srv.in); n != 0 {
		t.Fatalf("got %d inputs queued; want none", n)
	}
	good := goodVerdict()
	if err := srv.Restore(ctx, nil, &good, nil); err != nil || len(srv.in) != 1 {
		t.Fatalf("got %v with %d queued for a good verdict; want it queued", err, len(srv.in))
	}
}

func TestCleanDecision(t *testing.T) {
	d := proto.Decision{ID: "d1", Verdict: goodVerdict(), Status: "delivered", Deliveries: []proto.Delivery{
		{Target: "webhook:http://x", Outcome: "done", Error: strings.Repeat("e", 5000) + "\n<script>"}}}
	got, err := cleanDecision(d)
	if err != nil {
		t.Fatal(err)
	}
	if e := got.Deliveries[0].Error; len(e) > maxDeliveryText+len("…") || strings.ContainsAny(e, "\n") {
		t.Fatalf("got an error of %d bytes; want it clipped to %d without control characters", len(e), maxDeliveryText)
	}
	if &got.Deliveries[0] == &d.Deliveries[0] {
		t.Fatal("cleanDecision changed the caller's deliveries")
	}
	d.Verdict.State = "<b>"
	if _, err := cleanDecision(d); err == nil {
		t.Fatal("got nil for a decision with a bad verdict; want refused")
	}
	if got := clipText("ab\x01c\xff", 10); got != "ab c " {
		t.Fatalf("got %q; want control and invalid bytes as spaces", got)
	}
	if got := clipText("ééé", 4); got != "éé…" {
		t.Fatalf("got %q; want clipped at a rune boundary", got)
	}
}

// TestDashboardRendersNoRawHTML checks the dashboard's code: only setHTML (format.js) may
// assign innerHTML, and only markup built by the escaping html`…` tag reaches it.
func TestDashboardRendersNoRawHTML(t *testing.T) {
	files, err := filepath.Glob("static/*.js")
	if err != nil || len(files) == 0 {
		t.Fatalf("got %v, %v; want the dashboard's modules", files, err)
	}
	sink := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if !sink.MatchString(line) {
				continue
			}
			if filepath.Base(f) == "format.js" && strings.Contains(line, "if (m instanceof Markup) el.innerHTML = m.s;") {
				continue
			}
			t.Errorf("%s:%d writes HTML directly: %s (use setHTML with html`…`)", f, i+1, strings.TrimSpace(line))
		}
	}
}
