package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/embednats"
)

// lockedBuffer is a bytes.Buffer safe for the writes of several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// jsonRecords parses every line of s as a JSON log record.
func jsonRecords(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestAgentWaitsForNATS starts the agent before NATS is up: it keeps running and retrying,
// logs so (as JSON with --log.format json), and its batches arrive once a server listens.
func TestAgentWaitsForNATS(t *testing.T) {
	t.Parallel()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# TYPE requests_total counter\nrequests_total 5")
	}))
	defer app.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there until the server starts below

	var stdout, stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"agent", "--log.format", "json", "--nats", fmt.Sprintf("nats://127.0.0.1:%d", port),
			"--service", "checkout", "--version", "1.4.2", "--scrape", app.URL}, &env{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }})
	}()
	defer func() {
		cancel()
		<-done
	}()
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range jsonRecords(t, stderr.String()) {
			if r["level"] == "WARN" && strings.Contains(fmt.Sprint(r["msg"]), "not reachable yet") {
				return nil
			}
		}
		return fmt.Errorf("no JSON warning that NATS is not reachable yet in %q", stderr.String())
	})
	select {
	case code := <-done:
		t.Fatalf("the agent exited with %d while NATS was down; want it to keep retrying", code)
	default:
	}
	ns, err := embednats.Start(embednats.Config{Host: "127.0.0.1", Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer embednats.Shutdown(ns)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan string, 100)
	if _, err := nc.Subscribe("herd.in.>", func(m *nats.Msg) {
		select {
		case got <- m.Subject:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !strings.HasPrefix(s, "herd.in.checkout.") {
			t.Errorf("got a batch on %s; want herd.in.checkout.…", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no batch after NATS came up; stderr: %s", stderr.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("agent exit: got %d; want 0; stderr: %s", code, stderr.String())
	}
	done <- 0 // for the deferred wait
}

// TestLogFormat checks --log.format: every command has it, json gives JSON lines, and an
// unknown format is a usage error.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	for _, c := range commands() {
		if c.raw != nil {
			continue
		}
		if code, out, _ := runHerd(t, nil, c.name, "--help"); code != 0 || !strings.Contains(out, "--log.format") {
			t.Errorf("herd %s --help: no --log.format", c.name)
		}
	}
	if code, _, errOut := runHerd(t, nil, "version", "--log.format", "xml"); code != 2 || !strings.Contains(errOut, "log.format") {
		t.Errorf("--log.format xml: got %d %q; want 2 naming the flag", code, errOut)
	}
	if code, _, _ := runHerd(t, map[string]string{"HERD_LOG_FORMAT": "json"}, "version"); code != 0 {
		t.Errorf("HERD_LOG_FORMAT=json: got exit %d; want 0", code)
	}
}
