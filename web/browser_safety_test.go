package web

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// Hostile text: each runs script if it ever reaches the page as markup.
const (
	pwnImg    = `<img src=x onerror=window.__pwned=1>`
	pwnScript = `<script>window.__pwned=1</script>`
	// Valid versions (printable ASCII without spaces) that are markup.
	pwnVersionA = `<img/src=x/onerror=window.__pwned=1>`
	pwnVersionB = `"><svg/onload=window.__pwned=1>`
)

// TestBrowserHostileVerdict injects hostile verdicts, deployments, windows and decisions
// through the Server's inputs and through the history Restore path, and checks on every page
// that no script ran and the text shows as text: a verdict whose state is markup is refused
// (counted); markup in valid fields (versions, sentence, test names, decision ids, delivery
// errors) is escaped; service and version names at their length limits render. A control
// shows that the payload does run when inserted as markup in this browser.
func TestBrowserHostileVerdict(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts := startServer(t, testConfig())
	long := "a" + strings.Repeat("b-", (proto.MaxServiceLen-2)/2) + "z" // 64 characters
	if len(long) != proto.MaxServiceLen || proto.ValidService(long) != nil {
		t.Fatalf("BUG: service %q is not valid at the limit", long)
	}
	longVersion := pwnScript + strings.Repeat("x", proto.MaxVersionLen-len(pwnScript))
	f := newFeeder(ts.srv, 250*time.Millisecond,
		groupSpec{service: long, version: pwnVersionA, instances: 10, rps: 50, errRate: 0.01, latency: 0.03},
		groupSpec{service: long, version: pwnVersionB, instances: 3, rps: 50, errRate: 0.05, latency: 0.03},
		groupSpec{service: long, version: longVersion, instances: 2, rps: 10, errRate: 0, latency: 0.03})
	f.backfill(10 * time.Second)
	now := time.Now()
	v := proto.Verdict{Service: long, Baseline: pwnVersionA, Canary: pwnVersionB, State: proto.StateRollback,
		UnixMs: now.UnixMilli(), StartedMs: now.Add(-8 * time.Second).UnixMilli(), DecisionID: pwnVersionA,
		Sentence: pwnScript + pwnImg + ` & 'quoted' "text"`,
		Evidence: proto.Evidence{Alpha: 0.01, EValue: 180, Threshold: 100, Decisive: pwnImg, Windows: 31,
			Tests: []proto.TestEvidence{{Name: pwnImg, EValue: 355, Weight: 0.5, Effect: 5.1, CSLow: 2.9, CSHigh: 9}},
			Effects: []proto.Effect{{Test: pwnImg, Metric: pwnScript, Unit: proto.UnitRatio, Canary: 0.02, Baseline: 0.01,
				Ratio: 2, RatioSinceStart: 1.5, Low: 0.015, High: 0.03, Level: 0.99, RecentMs: 30000, Text: pwnImg}},
			Progress: &proto.Progress{Rollback: 0.5, Text: pwnScript}},
		Watch: &proto.Watch{PassMs: now.UnixMilli() - 5000, UntilMs: now.UnixMilli() + 60000, Alpha: 0.01, Reason: pwnImg}}
	// The delivery state joined by decision id: a hostile target and error, retrying.
	hostileTarget := `webhook:http://x/"><img src=x onerror=window.__pwned=1>`
	ts.srv.SetDecisionLookup(func(id string) (proto.Decision, bool) {
		return proto.Decision{ID: id, Verdict: v, Status: "delivering", Deliveries: []proto.Delivery{{Target: hostileTarget,
			Attempt: 1, UnixMs: v.UnixMs, Status: 503, Outcome: "retry", Error: pwnScript}}}, id == pwnVersionA
	})
	ts.srv.AddDeployment(proto.Deployment{Service: long, Baseline: pwnVersionA, Canary: pwnVersionB, UnixMs: now.Add(-9 * time.Second).UnixMilli()})
	ts.srv.SetVerdict(v)
	ts.srv.SetDecisions(func() []proto.Decision {
		return []proto.Decision{{ID: `"><img src=x onerror=window.__pwned=1>`, Verdict: v, CreatedMs: v.UnixMs, Status: "<i>delivered</i>",
			Deliveries: []proto.Delivery{{Target: `webhook:http://x/"><img src=x onerror=window.__pwned=1>`, Attempt: 1, UnixMs: v.UnixMs,
				Status: 500, Outcome: "retry", Error: pwnScript + "\n" + pwnImg}}}}
	})
	// Through the inputs and the history replay: a verdict whose state is markup.
	bad := v
	bad.State = proto.State(pwnImg)
	ts.srv.SetVerdict(bad)
	restored := v
	restored.Service, restored.UnixMs = "restored", now.Add(-time.Second).UnixMilli()
	restored.Sentence = "restored " + pwnScript
	ctx := context.Background()
	badRestored := restored
	badRestored.State = proto.State(pwnImg)
	for _, v := range []*proto.Verdict{&badRestored, &restored} {
		if err := ts.srv.Restore(ctx, nil, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := ts.srv.m.inputsRefused[ReasonBadInput].Get(); got != 2 {
		t.Fatalf("got %d bad inputs; want the 2 verdicts whose state is markup refused", got)
	}

	b := newBrowser(t)
	b.expectErrors("Failed to load resource") // the control's and any refused image's 404
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/"))
	// Control: the payload runs here when it is inserted as markup.
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](`(() => {
		const d = document.createElement('div');
		d.innerHTML = '<img src=x onerror=window.__control=1>';
		document.body.appendChild(d);
	})()`))
	b.waitJS(t, 5*time.Second, `window.__control === 1`)
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](`document.body.lastChild.remove()`))

	// Overview: the tile shows the versions and the sentence as text.
	tile := fmt.Sprintf(`document.querySelector('a.tile[data-service=%q]')`, long)
	b.waitJS(t, 10*time.Second, tile+` && `+tile+`.innerText.includes('restored') === false && `+tile+`.innerText.includes(`+jsString(pwnVersionA)+`)`)
	text := eval[string](t, b, tile+`.innerText`)
	for _, want := range []string{pwnVersionA, pwnVersionB, pwnScript + pwnImg, "ROLLBACK"} {
		if !strings.Contains(text, want) {
			t.Errorf("overview tile %q lacks %q as text", text, want)
		}
	}
	b.waitJS(t, 5*time.Second, `document.querySelector('a.tile[data-service=restored]')?.innerText.includes('restored '+`+jsString(pwnScript)+`)`)
	assertNoScriptRan(t, b, "overview")

	// Service page: badge, evidence (sentence, decision id, test name), groups table.
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/services/"+long))
	b.waitJS(t, 10*time.Second, `document.querySelector('#verdict-state')?.textContent === 'rollback — delivery failing'`)
	text = eval[string](t, b, `document.querySelector('main').innerText`)
	for _, want := range []string{long, pwnScript + pwnImg + ` & 'quoted' "text"`, "decision " + pwnVersionA, pwnImg, pwnVersionB, longVersion,
		hostileTarget + " (HTTP 503, retry: " + pwnScript + ")", pwnScript + "\t2.00 %"} {
		if !strings.Contains(text, want) {
			t.Errorf("service page %q lacks %q as text", text, want)
		}
	}
	// A hostile state reaching the page anyway (bypassing the server) is shown as text too.
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const s = window.__herd.stream;
		s.handle({type: 'verdict', seq: s.seq + 1, verdict: Object.assign({}, s.services.get(%q).verdicts.at(-1),
			{state: %s, unix_ms: Date.now()})}, Date.now());
		s.emit('data');
	})()`, long, jsString(pwnImg))))
	b.waitJS(t, 5*time.Second, `document.querySelector('#verdict-state')?.textContent === `+jsString(pwnImg))
	if cls := eval[string](t, b, `document.querySelector('#verdict-state').className`); cls != "badge unknown" {
		t.Errorf("got badge class %q for an unknown state; want %q", cls, "badge unknown")
	}
	assertNoScriptRan(t, b, "service page")

	// Decisions page: id (in an attribute), status, target and error as text.
	b.do(t, 20*time.Second, chromedp.Navigate(ts.http.URL+"/decisions"))
	b.waitJS(t, 10*time.Second, `!!document.querySelector('[data-decision]')`)
	if id := eval[string](t, b, `document.querySelector('[data-decision]').dataset.decision`); id != `"><img src=x onerror=window.__pwned=1>` {
		t.Errorf("got decision id attribute %q; want the id as text", id)
	}
	text = eval[string](t, b, `document.querySelector('[data-decision]').innerText`)
	for _, want := range []string{"<i>delivered</i>", `webhook:http://x/"><img src=x onerror=window.__pwned=1>`, pwnScript + " " + pwnImg} {
		if !strings.Contains(text, want) {
			t.Errorf("decision card %q lacks %q as text", text, want)
		}
	}
	assertNoScriptRan(t, b, "decisions page")
}

// assertNoScriptRan waits for any image error handlers to have fired, then checks that no
// injected handler ran and no injected element exists.
func assertNoScriptRan(t *testing.T, b *browser, page string) {
	t.Helper()
	// An injected <img src=x> would have failed to load by the time a fetch of the same
	// missing URL has: wait for one.
	b.waitJS(t, 5*time.Second, `(window.__probe = window.__probe || fetch('x').then(() => window.__probed = true), window.__probed === true)`)
	b.do(t, 5*time.Second, chromedp.Evaluate[chromedp.Void](`window.__probe = null; window.__probed = false`))
	if pwned := eval[bool](t, b, `window.__pwned !== undefined`); pwned {
		t.Fatalf("%s: injected script ran", page)
	}
	if n := eval[int](t, b, `document.querySelectorAll('main img, main script, main svg, main iframe, [onerror], [onload]').length`); n != 0 {
		t.Fatalf("%s: got %d injected elements; want 0", page, n)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string { return fmt.Sprintf("%q", s) }

// TestBrowserCrossSiteWriteRefused runs the attacks on a node without a token from a real
// browser: a page of another origin posts an announcement (text/plain fetch, JSON fetch, a
// form), and a DNS-rebinding page (its host name resolving to 127.0.0.1, so the browser
// deems the request same-origin) posts JSON. Every attempt is refused and counted and no
// announcement is made; the same page served from the listener's own loopback address may
// announce (the control).
func TestBrowserCrossSiteWriteRefused(t *testing.T) {
	perftest.Parallel(t)
	if testing.Short() {
		t.Skip("browser test")
	}
	ts := startServer(t, testConfig())
	var mu sync.Mutex
	var announced []proto.Deployment
	ts.srv.SetAnnounce(func(d proto.Deployment) error {
		mu.Lock()
		defer mu.Unlock()
		announced = append(announced, d)
		return nil
	})
	body := `{"service":"checkout","baseline":"1.4.2","canary":"1.4.1"}`
	// The listener, serving an attacker's page under the host name rebind.test: what the
	// attacker's own server served before its DNS name was rebound to 127.0.0.1.
	h := ts.srv.Handler()
	herd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page" {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<!doctype html><script>
				fetch('/api/v1/deployments', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: %s})
					.then(r => window.__status = r.status, e => window.__status = String(e));
			</script>`, jsString(body))
			return
		}
		h.ServeHTTP(w, r)
	}))
	defer herd.Close()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html>
			<form id=f method=POST action="%[1]s/api/v1/deployments" enctype="text/plain" target=sink>
			<input name='{"service":"checkout","baseline":"1.4.2","canary":"1.4.1","x":"' value='"}'></form>
			<iframe name=sink></iframe>
			<script>
			(async () => {
				const url = %[2]s, body = %[3]s, res = {};
				try { await fetch(url, {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body}); res.text = 'sent'; }
				catch (e) { res.text = String(e); }
				try { const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'}, body}); res.json = r.status; }
				catch (e) { res.json = 'blocked'; }
				document.getElementById('f').submit();
				window.__res = res;
			})();
			</script>`, herd.URL, jsString(herd.URL+"/api/v1/deployments"), jsString(body))
	}))
	defer evil.Close()

	b := newBrowser(t, chromedp.Flag("host-resolver-rules", "MAP rebind.test 127.0.0.1"))
	b.expectErrors("Failed to load resource", "CORS", "Access to fetch")
	refused := func(reason string) uint64 { return ts.srv.guard.refused[reason].Get() }

	// Cross-site: the text/plain fetch and the form are sent and refused; the JSON fetch's
	// preflight fails, so the browser never sends it.
	b.do(t, 20*time.Second, chromedp.Navigate(evil.URL+"/"))
	b.waitJS(t, 10*time.Second, `window.__res !== undefined`)
	if got := eval[string](t, b, `JSON.stringify(window.__res)`); got != `{"text":"sent","json":"blocked"}` {
		t.Errorf("got %s; want the text/plain POST sent and the JSON one blocked by its preflight", got)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := refused(ReasonContentType); n < 2 {
			return fmt.Errorf("got %d content_type refusals; want the fetch and the form", n)
		}
		return nil
	})

	// DNS rebinding: same-origin to the browser, refused by its Host.
	_, port, _ := strings.Cut(strings.TrimPrefix(herd.URL, "http://"), ":")
	b.do(t, 20*time.Second, chromedp.Navigate("http://rebind.test:"+port+"/page"))
	b.waitJS(t, 10*time.Second, `window.__status !== undefined`)
	if got := eval[int](t, b, `window.__status`); got != http.StatusForbidden {
		t.Errorf("got %d for the rebinding page's POST; want 403", got)
	}
	if n := refused(ReasonBadHost); n != 1 {
		t.Errorf("got %d bad_host refusals; want 1", n)
	}
	mu.Lock()
	n := len(announced)
	mu.Unlock()
	if n != 0 {
		t.Fatalf("got %d announcements from attacking pages; want none", n)
	}

	// Control: the same page from the listener's own loopback address may announce.
	b.do(t, 20*time.Second, chromedp.Navigate(herd.URL+"/page"))
	b.waitJS(t, 10*time.Second, `window.__status !== undefined`)
	if got := eval[int](t, b, `window.__status`); got != http.StatusAccepted {
		t.Fatalf("got %d for a same-origin loopback page's POST; want 202", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(announced) != 1 {
		t.Fatalf("got %d announcements; want the control's one", len(announced))
	}
}
