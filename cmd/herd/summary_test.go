package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/checkfor"
)

// TestServeSummary runs herd serve and follows its start screen: it fits one screen, names
// the real listeners, its agent command line has only flags `herd agent` knows, and its
// Prometheus target, announce and gate commands work against the running server.
func TestServeSummary(t *testing.T) {
	t.Parallel()
	var stdout, stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--http", "127.0.0.1:0", "--http.metrics-listen", "127.0.0.1:0", "--nats.listen", "127.0.0.1:0", "--data", t.TempDir()},
			&env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }, logger: testLogger(t)})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exit: got %d; want 0; stderr: %s", code, stderr.String())
		}
	}()
	checkfor.Within(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(stdout.String(), "rollback ") {
			return fmt.Errorf("no summary yet: %q", stdout.String())
		}
		return nil
	})
	out := stdout.String()
	if n := strings.Count(out, "\n"); n > 24 {
		t.Errorf("the summary has %d lines; want one screen (≤ 24)", n)
	}
	field := func(re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %s in\n%s", re, out)
		}
		return m[1]
	}
	httpURL := field(`dashboard +(http://[0-9.:]+)/`)
	opsHost := field(`targets: \["([0-9.:]+)"\]`)
	natsURL := field(`NATS +(nats://[0-9.:]+)`)
	if strings.HasSuffix(opsHost, ":0") || strings.HasSuffix(httpURL, ":0") {
		t.Errorf("the summary names unbound ports: %s, %s", httpURL, opsHost)
	}
	// The agent line: every flag is one of herd agent's.
	agent := strings.Fields(field(`(herd agent [^\n]+)`))
	if code, _, errOut := runHerd(t, nil, append(agent[1:], "--help")...); code != 0 {
		t.Errorf("%v --help: got %d %s", agent, code, errOut)
	}
	if !strings.Contains(strings.Join(agent, " "), "--nats "+natsURL) {
		t.Errorf("agent line %v does not point at %s", agent, natsURL)
	}
	// Prometheus' target serves the export.
	resp, err := http.Get("http://" + opsHost + "/metrics/groups")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /metrics/groups on the Prometheus target: got %s", resp.Status)
	}
	// The announce command works as printed.
	body := field(`-d '([^']+)'`)
	req, _ := http.NewRequest(http.MethodPost, httpURL+"/api/v1/deployments", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Errorf("the printed announcement: got %s; want 2xx", resp.Status)
	}
	gate := field(`curl '(http://[^']+verdicts[^']+)'`)
	resp, err = http.Get(strings.Replace(gate, "wait=60s", "wait=1s", 1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("the printed gate: got %s; want 200", resp.Status)
	}
}
