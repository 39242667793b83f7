package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

// streamMsg is any message of the stream, decoded loosely.
type streamMsg struct {
	Type       string            `json:"type"`
	Seq        uint64            `json:"seq"`
	Reset      bool              `json:"reset"`
	Service    string            `json:"service"`
	Version    string            `json:"version"`
	P          []float64         `json:"p"`
	Verdict    *proto.Verdict    `json:"verdict"`
	Deployment *proto.Deployment `json:"deployment"`
	Services   []struct {
		Service string `json:"service"`
		Groups  []struct {
			Version string      `json:"version"`
			Points  [][]float64 `json:"points"`
		} `json:"groups"`
		Verdicts []proto.Verdict `json:"verdicts"`
	} `json:"services"`
}

// wsClient is a test websocket client that decodes every message of every frame.
type wsClient struct {
	conn *websocket.Conn
}

func dial(t testing.TB, ts *testServer, query string) *wsClient {
	t.Helper()
	u := "ws" + strings.TrimPrefix(ts.http.URL, "http") + "/api/v1/stream" + query
	conn, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", u, err, status)
	}
	t.Cleanup(func() { conn.Close() })
	return &wsClient{conn: conn}
}

// next reads the next frame and decodes its messages.
func (c *wsClient) next(t testing.TB) []streamMsg {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var out []streamMsg
	for _, line := range bytes.Split(data, []byte("\n")) {
		var m streamMsg
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("cannot decode %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// until reads messages until f returns true for one, returning every message read.
func (c *wsClient) until(t testing.TB, f func(m streamMsg) bool) []streamMsg {
	t.Helper()
	var all []streamMsg
	for {
		for _, m := range c.next(t) {
			all = append(all, m)
			if f(m) {
				return all
			}
		}
	}
}

// waitApplied waits until the hub has numbered n events.
func waitApplied(t testing.TB, ts *testServer, n uint64) {
	t.Helper()
	checkFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		ts.srv.mu.RLock()
		defer ts.srv.mu.RUnlock()
		if ts.srv.seq != n {
			return fmt.Errorf("got seq %d; want %d", ts.srv.seq, n)
		}
		return nil
	})
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.History = time.Minute
	return cfg
}

func window(service, version string, endMs int64, requests float64) *proto.Window {
	return &proto.Window{Service: service, Version: version, StartMs: endMs - 250, EndMs: endMs, Instances: 3,
		Series: []proto.WindowSeries{{Name: "requests_total", Kind: proto.KindCounter, Value: requests}}}
}

func TestStreamSnapshotThenEvents(t *testing.T) {
	t.Parallel()
	ts := startServer(t, testConfig())
	now := time.Now().UnixMilli() / 250 * 250
	ts.srv.AddWindow(window("checkout", "1.4.2", now-250, 10))
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := ts.srv.m.inputs["window"].Get(); n != 1 {
			return fmt.Errorf("got %d windows applied; want 1", n)
		}
		return nil
	})
	c := dial(t, ts, "")
	msgs := c.next(t)
	if len(msgs) != 1 || msgs[0].Type != "snapshot" || msgs[0].Seq != 1 || msgs[0].Reset {
		t.Fatalf("got first frame %+v; want one snapshot at seq 1 without reset", msgs)
	}
	sn := msgs[0]
	if len(sn.Services) != 1 || sn.Services[0].Service != "checkout" || len(sn.Services[0].Groups[0].Points) != 1 {
		t.Fatalf("got snapshot services %+v; want checkout with one point", sn.Services)
	}
	if p := sn.Services[0].Groups[0].Points[0]; int64(p[0]) != now-250 || p[4] != 10 || p[1] != 3 {
		t.Fatalf("got point %v; want end %d, 3 instances, 10 requests", p, now-250)
	}
	ts.srv.AddWindow(window("checkout", "1.4.2", now, 11))
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback})
	ts.srv.AddDeployment(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"})
	got := c.until(t, func(m streamMsg) bool { return m.Type == "deployment" })
	var types []string
	for _, m := range got {
		types = append(types, fmt.Sprintf("%s@%d", m.Type, m.Seq))
	}
	if want := "window@2 verdict@3 deployment@4"; strings.Join(types, " ") != want {
		t.Fatalf("got events %q; want %q", strings.Join(types, " "), want)
	}
	if got[1].Verdict.State != proto.StateRollback {
		t.Fatalf("got verdict %+v; want rollback", got[1].Verdict)
	}
}

func TestStreamSubscribeNarrows(t *testing.T) {
	t.Parallel()
	ts := startServer(t, testConfig())
	c := dial(t, ts, "")
	if m := c.next(t); m[0].Type != "snapshot" {
		t.Fatalf("got %+v; want a snapshot", m)
	}
	if err := c.conn.WriteJSON(map[string]any{"type": "subscribe", "service": "search"}); err != nil {
		t.Fatal(err)
	}
	if m := c.next(t); m[0].Type != "snapshot" {
		t.Fatalf("got %+v after subscribing; want a snapshot", m)
	}
	now := time.Now().UnixMilli() / 250 * 250
	ts.srv.AddWindow(window("checkout", "1", now, 1))
	ts.srv.AddWindow(window("search", "1", now, 2))
	got := c.until(t, func(m streamMsg) bool { return m.Type == "window" })
	if m := got[len(got)-1]; m.Service != "search" || m.Seq != 2 {
		t.Fatalf("got %+v; want search's window at seq 2 (checkout's filtered out)", m)
	}
	// A bad subscription is counted and ignored.
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","service":"Bad Name"}`)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := ts.srv.m.badMessages.Get(); n != 1 {
			return fmt.Errorf("got %d bad messages; want 1", n)
		}
		return nil
	})
}

func TestStreamResumeAndReset(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.ClientQueue = 8
	ts := startServer(t, cfg)
	now := time.Now().UnixMilli() / 250 * 250
	for i := range 3 {
		ts.srv.AddWindow(window("checkout", "1", now+int64(i)*250, 1))
	}
	c := dial(t, ts, "")
	c.until(t, func(m streamMsg) bool { return m.Type == "window" && m.Seq == 3 || m.Type == "snapshot" && m.Seq == 3 })
	c.conn.Close()
	// Missed while disconnected.
	ts.srv.AddWindow(window("checkout", "1", now+750, 1))
	ts.srv.AddWindow(window("checkout", "1", now+1000, 1))

	waitApplied(t, ts, 5)
	c2 := dial(t, ts, "?since=3")
	got := c2.until(t, func(m streamMsg) bool { return m.Type == "window" && m.Seq == 5 })
	if got[0].Type != "resume" || got[1].Seq != 4 || got[2].Seq != 5 {
		t.Fatalf("got %+v; want resume, then events 4 and 5", got)
	}
	// Too far behind for the queue: a fresh snapshot flagged reset.
	for i := range 10 {
		ts.srv.AddWindow(window("checkout", "1", now+1250+int64(i)*250, 1))
	}
	waitApplied(t, ts, 15)
	c3 := dial(t, ts, "?since=5")
	if m := c3.next(t); m[0].Type != "snapshot" || !m[0].Reset || m[0].Seq != 15 {
		t.Fatalf("got %+v; want a reset snapshot at seq 15", m[0])
	}
	// A sequence from another server life also resets.
	c4 := dial(t, ts, "?since=999")
	if m := c4.next(t); m[0].Type != "snapshot" || !m[0].Reset {
		t.Fatalf("got %+v; want a reset snapshot", m[0])
	}
	if r, s := ts.srv.m.resumes.Get(), ts.srv.m.resets.Get(); r != 1 || s != 2 {
		t.Fatalf("got %d resumes, %d resets; want 1, 2", r, s)
	}
}

func TestStreamRefusals(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxClients = 1
	cfg.HTTP.Token = "s3cret"
	ts := startServer(t, cfg)
	base := "ws" + strings.TrimPrefix(ts.http.URL, "http") + "/api/v1/stream"
	_, resp, err := websocket.DefaultDialer.Dial(base, nil)
	if err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %v (%v) without a token; want 401", err, resp)
	}
	hdr := http.Header{"Authorization": {"Bearer s3cret"}}
	c1, _, err := websocket.DefaultDialer.Dial(base, hdr)
	if err != nil {
		t.Fatalf("dial with token: %v", err)
	}
	defer c1.Close()
	_, resp, err = websocket.DefaultDialer.Dial(base+"?token=s3cret", nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %v (%v) beyond the limit; want 503", err, resp)
	}
	_, resp, err = websocket.DefaultDialer.Dial(base+"?token=s3cret&service=BAD", nil)
	if err == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("got %v (%v) for a bad service; want 400", err, resp)
	}
	for reason, want := range map[string]uint64{ReasonUnauthorized: 1, ReasonLimit: 1, ReasonBadRequest: 1} {
		if got := ts.srv.m.refused[reason].Get(); got != want {
			t.Errorf("got %d refusals for %s; want %d", got, reason, want)
		}
	}
}

// TestClientCoalesces checks that a client whose queue overflows gets one snapshot instead
// of the backlog, holding every window.
func TestClientCoalesces(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.ClientQueue = 4
	srv, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{srv: srv, historyMs: 60_000, notify: make(chan struct{}, 1), done: make(chan struct{})}
	srv.clients[c] = struct{}{}
	now := time.Now().UnixMilli() / 250 * 250
	for i := range 10 {
		srv.apply(input{w: window("checkout", "1", now+int64(i)*250, 1)})
		if i == 2 {
			if got := string(c.take()); strings.Count(got, "\n") != 2 || !strings.Contains(got, `"seq":3`) {
				t.Fatalf("got frame %q; want events 1 to 3 on three lines", got)
			}
		}
	}
	if !c.resync || len(c.queue) != 0 {
		t.Fatalf("got resync %v with %d queued; want a pending snapshot and an empty queue", c.resync, len(c.queue))
	}
	var sn streamMsg
	if err := json.Unmarshal(c.take(), &sn); err != nil {
		t.Fatal(err)
	}
	if sn.Type != "snapshot" || sn.Seq != 10 || sn.Reset || len(sn.Services[0].Groups[0].Points) != 10 {
		t.Fatalf("got %s at seq %d (reset %v) with %d points; want a snapshot at seq 10 with all 10 points",
			sn.Type, sn.Seq, sn.Reset, len(sn.Services[0].Groups[0].Points))
	}
	if n := srv.m.coalesced.Get(); n != 5 {
		t.Fatalf("got %d coalesced events; want 5", n)
	}
	srv.apply(input{w: window("checkout", "1", now+2500, 1)})
	if got := string(c.take()); !strings.Contains(got, `"seq":11`) {
		t.Fatalf("got %q after the snapshot; want event 11", got)
	}
}

// stalledDialer dials with a tiny receive buffer and never reads.
func stalledDial(t *testing.T, ts *testServer, query string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
				if err != nil {
					return err
				}
				return serr
			}}
			return nd.DialContext(ctx, network, addr)
		},
	}
	conn, _, err := d.Dial("ws"+strings.TrimPrefix(ts.http.URL, "http")+"/api/v1/stream"+query, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestFanout runs 200 clients on one service receiving windows every 250 ms, plus a client
// that never reads: every reader sees every window (within 1 s of its end: a bound make perf
// enforces), and the stalled client is dropped as slow and counted.
func TestFanout(t *testing.T) {
	if testing.Short() {
		t.Skip("fan-out test")
	}
	cfg := testConfig()
	cfg.WriteTimeout = 500 * time.Millisecond
	cfg.SendBuffer = 4096
	ts := startServer(t, cfg)
	f := newFeeder(ts.srv, 250*time.Millisecond, demoGroups()...)
	f.backfill(time.Minute) // a large snapshot for the stalled client

	const clients = 200
	type result struct {
		windows atomic.Int64
		maxLag  time.Duration
		err     error
	}
	results := make([]result, clients)
	var wg sync.WaitGroup
	var ready atomic.Int32
	stop := make(chan struct{})
	for i := range clients {
		c := dial(t, ts, "?service=checkout&history_ms=5000")
		wg.Go(func() {
			r := &results[i]
			snap := false
			for {
				_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, data, err := c.conn.ReadMessage()
				select {
				case <-stop:
					return
				default:
				}
				if err != nil {
					r.err = err
					return
				}
				now := time.Now().UnixMilli()
				for line := range bytes.SplitSeq(data, []byte("\n")) {
					var m streamMsg
					if err := json.Unmarshal(line, &m); err != nil {
						r.err = err
						return
					}
					switch m.Type {
					case "snapshot":
						if !snap {
							snap = true
							ready.Add(1)
						}
					case "window":
						if m.Service != "checkout" {
							r.err = fmt.Errorf("got a window of %s; want only checkout", m.Service)
							return
						}
						r.windows.Add(1)
						r.maxLag = max(r.maxLag, time.Duration(now-int64(m.P[0]))*time.Millisecond)
					}
				}
			}
		})
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := ready.Load(); n != clients {
			return fmt.Errorf("got %d clients with a snapshot; want %d", n, clients)
		}
		return nil
	})
	stalled := stalledDial(t, ts, "?history_ms=60000")
	_ = stalled

	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	go f.run(ctx)
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := ts.srv.m.dropped[ReasonSlow].Get(); n != 1 {
			return fmt.Errorf("got %d slow clients dropped; want 1", n)
		}
		return nil
	})
	time.Sleep(time.Until(start.Add(4 * time.Second))) // 4 s of windows
	cancel()
	elapsed := time.Since(start)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	// Every reader gets every window emitted, however loaded the machine (how soon is the
	// lag bound below).
	want := int64(f.emitted("checkout"))
	checkFor(t, time.Minute, 20*time.Millisecond, func() error {
		for i := range results {
			if got := results[i].windows.Load(); got < want {
				return fmt.Errorf("client %d has %d windows; want %d", i, got, want)
			}
		}
		return nil
	})
	close(stop)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	ts.stop()
	wg.Wait()

	var worst time.Duration
	minWindows := int64(1 << 30)
	for i := range results {
		r := &results[i]
		if r.err != nil && !websocket.IsCloseError(r.err, websocket.CloseAbnormalClosure) && !strings.Contains(r.err.Error(), "close") {
			t.Errorf("client %d: %v", i, r.err)
		}
		worst = max(worst, r.maxLag)
		minWindows = min(minWindows, r.windows.Load())
	}
	// Two groups of checkout at 4 windows/s for ~4 s.
	if minWindows < want || want < 24 {
		t.Errorf("got a client with %d windows of %d emitted; want all, and at least 24", minWindows, want)
	}
	perftest.Within(t, "max lag window end → websocket client", worst, time.Second)
	t.Logf("fan-out: %d clients, min %d windows each, max lag %s, CPU %s over %s (%.0f%% of one core), stalled client dropped: %d",
		clients, minWindows, worst, cpu.Round(time.Millisecond), elapsed.Round(time.Millisecond),
		100*cpu.Seconds()/elapsed.Seconds(), ts.srv.m.dropped[ReasonSlow].Get())
}

// TestStreamSlotsPerToken checks the per-token websocket slots: one token (or, without
// tokens, one address) cannot take every slot of the server.
func TestStreamSlotsPerToken(t *testing.T) {
	for _, tc := range []struct {
		name           string
		token, readTok string
		first, other   string // query of the first client and of a client with another key
		otherGetsSlot  bool
	}{
		{name: "tokens", token: "w", readTok: "r", first: "?token=r", other: "?token=w", otherGetsSlot: true},
		{name: "no tokens, one address", first: "", other: "", otherGetsSlot: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxClientsPerToken = 1
			cfg.HTTP.Token, cfg.HTTP.ReadToken = tc.token, tc.readTok
			ts := startServer(t, cfg)
			base := "ws" + strings.TrimPrefix(ts.http.URL, "http") + "/api/v1/stream"
			c1, _, err := websocket.DefaultDialer.Dial(base+tc.first, nil)
			if err != nil {
				t.Fatalf("first client: %v", err)
			}
			defer c1.Close()
			_, resp, err := websocket.DefaultDialer.Dial(base+tc.first, nil)
			if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("got %v (%v) for a second client of the same key; want 503", err, resp)
			}
			c2, _, err := websocket.DefaultDialer.Dial(base+tc.other, nil)
			if tc.otherGetsSlot != (err == nil) {
				t.Fatalf("got %v for a client of another key; want a slot: %v", err, tc.otherGetsSlot)
			}
			if c2 != nil {
				c2.Close()
			}
			if got := ts.srv.m.refused[ReasonTokenLimit].Get(); got < 1 {
				t.Fatalf("got %d token_limit refusals; want ≥ 1", got)
			}
			// A slot frees when its client leaves.
			c1.Close()
			checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				c, _, err := websocket.DefaultDialer.Dial(base+tc.first, nil)
				if err != nil {
					return err
				}
				c.Close()
				return nil
			})
		})
	}
}
