package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/sim/demo"
)

// runDemo runs `herd demo` through its run entry point and returns its JSON events.
func runDemo(t *testing.T, args ...string) (code int, events []demo.Event) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"demo", "--json", "--http", "127.0.0.1:0", "--deploy-after", "2s", "--onset-after", "7s"}, args...),
		&env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }, logger: testLogger(t)})
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var ev demo.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("demo printed a line that is not a JSON event: %q: %v", sc.Text(), err)
		}
		events = append(events, ev)
	}
	if code != 0 {
		t.Logf("stderr: %s", errb.String())
	}
	return code, events
}

func firstEvent(events []demo.Event, typ string) *demo.Event {
	for i := range events {
		if events[i].Type == typ {
			return &events[i]
		}
	}
	return nil
}

// TestDemoScenarios runs the demo's story end to end (embedded NATS, fleet, rollup, detector,
// signed webhook, receiver stopping the canary) and checks its outcome and timing.
func TestDemoScenarios(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the demo in real time")
	}
	for _, tc := range []struct {
		scenario     string
		outcome      string
		maxWebhookMs int64    // from onset; 0: no webhook allowed
		decisive     string   // the decisive test of the rollback, if it matters
		args         []string // more flags
		quick        []string // more flags under make test only (make perf runs the story as shipped)
	}{
		// The longest first. At the demo's 100 requests per second an instance, the p99 latency test's confidence
		// sequence narrows below the accept margin only after about 40 s; ten times the traffic
		// passes at the least exposure (20 s) instead, with the same fleet, detector and checks.
		{"good", "pass", 0, "", nil, []string{"--rps", "1000"}},
		{"crash", "rollback", 500, "", nil, nil},
		{"errors", "rollback", 10000, "", nil, nil},
		// A young fleet: every instance is still warming up when the canary starts, so the
		// latency thresholds must freeze from all instances (this once ended in a pass).
		{"latency", "rollback", 10000, "", nil, nil},
		// Request flow: the canary's own RED stays normal; its edge to payments decides, for
		// downstream from payments' side (the proxy's retry hides most failures from checkout).
		{"fanout", "rollback", 10000, "edge_fanout payments", nil, nil},
		{"downstream", "rollback", 10000, "edge_blast payments", nil, nil},
		// The edge tests (blast radius too) must all bound the canary below the margin: longer.
		{"good", "pass", 0, "", []string{"--graph", "--duration", "150s"}, nil},
	} {
		name := strings.Join(append([]string{tc.scenario}, tc.args...), " ")
		t.Run(name, func(t *testing.T) {
			perftest.Parallel(t) // make perf measures each demo alone
			if slices.Contains(tc.args, "--graph") && !perftest.Enabled() {
				// The graph's good canary passes only once every edge's interval is narrow:
				// about 60 s of real time. make perf runs it.
				t.Skip("the graph's good scenario takes about a minute: make perf (HERD_PERF=1) runs it")
			}
			args := append([]string{"--scenario", tc.scenario, "--duration", "90s"}, tc.args...)
			if !perftest.Enabled() {
				args = append(args, tc.quick...)
			}
			code, events := runDemo(t, args...)
			if code != 0 {
				t.Fatalf("herd demo --scenario %s exited %d; want 0", tc.scenario, code)
			}
			for _, typ := range []string{"start", "deploy", "onset", "verdict", "summary"} {
				if firstEvent(events, typ) == nil {
					t.Errorf("no %q event", typ)
				}
			}
			sum := firstEvent(events, "summary")
			if sum == nil || sum.Summary == nil {
				t.Fatal("no summary")
			}
			if !sum.Summary.OK || sum.Summary.Outcome != tc.outcome {
				t.Errorf("summary outcome %q ok=%v; want %q ok", sum.Summary.Outcome, sum.Summary.OK, tc.outcome)
			}
			hook := firstEvent(events, "webhook_received")
			if tc.maxWebhookMs == 0 {
				if hook != nil || sum.Summary.WebhooksReceived != 0 {
					t.Errorf("a good canary caused a webhook")
				}
				return
			}
			if hook == nil || hook.SinceOnsetMs == nil {
				t.Fatal("no webhook_received event after the onset")
			}
			took, what := *hook.SinceOnsetMs, "webhook received after onset (ms)"
			if tc.scenario == "crash" && perftest.Enabled() {
				// The onset falls anywhere in a 250 ms window, and a crash loop shows from the
				// first whole window after it: one run varies by up to a window. The bound is
				// on the median of three seeds.
				samples := []int64{took}
				for _, seed := range []string{"2", "3"} {
					_, more := runDemo(t, "--scenario", tc.scenario, "--duration", "90s", "--seed", seed)
					if h := firstEvent(more, "webhook_received"); h != nil && h.SinceOnsetMs != nil {
						samples = append(samples, *h.SinceOnsetMs)
					} else {
						t.Errorf("crash demo, seed %s: no webhook after the onset", seed)
					}
				}
				slices.Sort(samples)
				took, what = samples[len(samples)/2], fmt.Sprintf("median webhook received after onset over seeds 1-3 %v (ms)", samples)
			}
			perftest.Within(t, what, took, tc.maxWebhookMs)
			if v := firstVerdict(events, "rollback"); tc.decisive != "" && (v == nil || v.Evidence == nil || v.Evidence.Decisive != tc.decisive) {
				t.Errorf("rollback verdict %+v; want it decided by %s", v, tc.decisive)
			} else if tc.decisive != "" && !strings.Contains(v.Text, "checkout 1.5.0 → payments: ") {
				t.Errorf("rollback verdict %q; want it to name the edge checkout 1.5.0 → payments", v.Text)
			}
			if firstEvent(events, "instances_stopped") == nil {
				t.Errorf("the canary's instances were not stopped after the rollback")
			}
			t.Logf("%s: webhook %d ms after onset; %s", tc.scenario, *hook.SinceOnsetMs, sum.Summary.Sentence)
		})
	}
}

// firstVerdict returns the first verdict event with this state, or nil.
func firstVerdict(events []demo.Event, state string) *demo.Event {
	for i := range events {
		if events[i].Type == "verdict" && events[i].State == state {
			return &events[i]
		}
	}
	return nil
}
