package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// httpTestConfig is a web node on an embedded NATS with the given HTTP limits.
func httpTestConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), "127.0.0.1:0"
	return cfg
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(es)
}

// floodEnv tells a child test process to dial connections (see TestHTTPFloodHelper).
const floodEnv = "HERD_TEST_HTTP_FLOOD"

// TestHTTPFloodHelper is not a test: run as a child process by TestHTTPConnectionFlood with
// floodEnv set to "address count first", it opens count TCP connections to address from the
// loopback addresses 127.0.0.first … first+3 (Linux finds free ports for thousands of
// connections between one pair of addresses only slowly), sends nothing, prints "dialed N
// failed M" once all are made and holds them until its stdin closes.
func TestHTTPFloodHelper(t *testing.T) {
	spec := os.Getenv(floodEnv)
	if spec == "" {
		t.Skip("run by TestHTTPConnectionFlood")
	}
	var addr string
	var count, first int
	if _, err := fmt.Sscanf(spec, "%s %d %d", &addr, &count, &first); err != nil {
		t.Fatalf("bad %s %q: %v", floodEnv, spec, err)
	}
	var (
		mu     sync.Mutex
		conns  []net.Conn
		failed int
		next   atomic.Int64
		wg     sync.WaitGroup
	)
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(count) {
					return
				}
				d := net.Dialer{Timeout: 30 * time.Second,
					LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(first+int(i%4)))}}
				c, err := d.Dial("tcp", addr)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Printf("dialed %d failed %d\n", len(conns), failed)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// gaugeOf reads a gauge or counter of the node's own metrics.
func counterOf(n *Node, name string) uint64 { return n.metrics.GetOrCreateCounter(name).Get() }
func gaugeOf(n *Node, name string) float64  { return n.metrics.GetOrCreateGauge(name, nil).Get() }

// floodNodeEnv tells a child test process to run TestHTTPConnectionFlood's node.
const floodNodeEnv = "HERD_TEST_HTTP_FLOOD_NODE"

// TestHTTPConnectionFlood opens 20,000 idle TCP connections (from two child processes, each
// within its own descriptor limit) to the HTTP listener of a serve node capped at 200
// connections: the node's open descriptors stay within the cap (plus a few refused in
// flight), the idle connections it kept are closed after the header timeout, and then a
// normal request succeeds.
//
// It counts the node process's descriptors, which other tests would move: the node runs in a
// child process of its own (this test binary, running this test alone), so that this test
// runs beside the others.
func TestHTTPConnectionFlood(t *testing.T) {
	if os.Getenv(floodNodeEnv) == "" {
		lightParallel(t)
		args := []string{"-test.run=^TestHTTPConnectionFlood$", "-test.count=1", "-test.v", "-test.timeout=5m"}
		if testing.Short() {
			args = append(args, "-test.short")
		}
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), floodNodeEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the node's process failed: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "http_test.go") {
				t.Log(strings.TrimSpace(l))
			}
		}
		return
	}
	total, children := 20000, 2
	if testing.Short() {
		total, children = 2000, 1
	}
	const maxConns = 200
	cfg := httpTestConfig(t)
	cfg.Web.HTTP.MaxConns = maxConns
	cfg.Web.HTTP.ReadHeaderTimeout, cfg.Web.HTTP.ReadTimeout = time.Second, time.Second
	n := startRoles(t, cfg, Roles{Ingest: true, Detect: true, Web: true})
	addr := n.httpLn.Addr().String()
	base := openFDs(t)

	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if es, err := os.ReadDir("/proc/self/fd"); err == nil && int64(len(es)) > peak.Load() {
				peak.Store(int64(len(es)))
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	var outs []io.Reader
	for i := range children {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHTTPFloodHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", floodEnv, addr, total/children, 2+4*i))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			stdin.Close()
			_ = cmd.Wait()
		})
		outs = append(outs, stdout)
	}
	var held, failed int
	for _, stdout := range outs {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		var d, f int
		if _, serr := fmt.Sscanf(line, "dialed %d failed %d", &d, &f); err != nil || serr != nil {
			t.Fatalf("flood child: got %q, %v; want its count", line, err)
		}
		held += d
		failed += f
	}
	dialed := time.Since(start)
	if held < total*99/100 {
		t.Fatalf("got %d connections made; want ≈ %d", held, total)
	}
	// The kernel completed the handshakes; wait until the node has taken every one.
	var refused, accepted uint64
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		refused = counterOf(n, `herd_http_connections_refused_total{listener="http",reason="limit"}`)
		accepted = counterOf(n, `herd_http_connections_accepted_total{listener="http"}`)
		if refused+accepted < uint64(held) {
			return fmt.Errorf("got %d accepted and %d refused of %d", accepted, refused, held)
		}
		return nil
	})
	close(stop)
	sampler.Wait()
	t.Logf("%d connections held open by %d clients (%d failed) in %s: %d accepted, %d refused at the cap of %d; "+
		"descriptors %d before, peak %d (+%d)", held, children, failed, dialed.Round(time.Millisecond), accepted, refused,
		maxConns, base, peak.Load(), peak.Load()-int64(base))
	if got := peak.Load() - int64(base); got > maxConns+50 {
		t.Fatalf("got the node's descriptors up %d during the flood; want at most the cap %d plus a few", got, maxConns)
	}
	if refused < uint64(held)/2 {
		t.Fatalf("got %d refused, %d accepted of %d; want most refused at the cap", refused, accepted, held)
	}
	// The connections it kept sent nothing: the header timeout closes them, freeing the slots
	// and descriptors while the clients still hold their ends.
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if open := gaugeOf(n, `herd_http_connections{listener="http"}`); open != 0 {
			return fmt.Errorf("got %.0f connections open; want the idle ones closed", open)
		}
		if fds := openFDs(t); fds > base+10 {
			return fmt.Errorf("got %d descriptors; want ≈ %d", fds, base)
		}
		return nil
	})
	resp, err := http.Get(n.HTTPURL() + "/api/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %s for a normal request after the flood; want 200", resp.Status)
	}
}

// TestHTTPTimeouts checks the listener's timeouts with short values: a slowloris sending
// headers forever, a slow body and an idle keep-alive connection are closed, while the
// websocket stream (which runs on its own deadlines once upgraded) keeps flowing for many
// times the server's timeouts.
func TestHTTPTimeouts(t *testing.T) {
	lightParallel(t)
	cfg := httpTestConfig(t)
	h := &cfg.Web.HTTP
	h.ReadHeaderTimeout, h.ReadTimeout, h.WriteTimeout, h.IdleTimeout = 300*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
	// Pings every second: a client is dropped after 2 s of silence, which a loaded machine's
	// scheduling does not reach; the HTTP timeouts the stream must outlive are 0.5 s.
	cfg.Web.PingInterval = time.Second
	n := startRoles(t, cfg, Roles{Ingest: true, Detect: true, Web: true})
	addr := n.httpLn.Addr().String()

	// closedWithin writes to c on every tick until the server closes it.
	closedWithin := func(name string, c net.Conn, drip string) {
		t.Helper()
		defer c.Close()
		deadline := time.Now().Add(10 * time.Second)
		_ = c.SetReadDeadline(deadline)
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, c)
			done <- err
		}()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case err := <-done:
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("%s: still open after 10 s; want closed by the server", name)
				}
				return
			case <-tick.C:
				if drip != "" {
					_, _ = c.Write([]byte(drip))
				}
			}
		}
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	fmt.Fprintf(c, "GET /livez HTTP/1.1\r\nHost: %s\r\n", addr)
	closedWithin("slowloris headers", c, "X-Drip: 1\r\n")

	c = dial()
	fmt.Fprintf(c, "POST /api/v1/deployments HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", addr)
	closedWithin("slow body", c, "{")

	c = dial()
	fmt.Fprintf(c, "GET /livez HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %v, %v; want 200", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	closedWithin("idle keep-alive", c, "")

	// The stream: pings and events keep flowing for 10× the server's timeouts.
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(n.HTTPURL(), "http")+"/api/v1/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var pings, deployments atomic.Int64
	ws.SetPingHandler(func(data string) error {
		pings.Add(1)
		return ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readErr := make(chan error, 1)
	go func() {
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				readErr <- err
				return
			}
			for _, line := range bytes.Split(data, []byte("\n")) {
				var m struct{ Type string }
				if json.Unmarshal(line, &m) == nil && m.Type == "deployment" {
					deployments.Add(1)
				}
			}
		}
	}()
	run := 10 * h.WriteTimeout
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	end := time.After(run)
	for i := 0; ; i++ {
		select {
		case err := <-readErr:
			t.Fatalf("the stream ended after %d deployments: %v", i, err)
		case <-end:
		case <-tick.C:
			body := fmt.Sprintf(`{"service":"checkout","baseline":"1.4.2","canary":"1.5.%d"}`, i)
			// A connection of its own each: a kept-alive one is closed by the 0.5 s idle
			// timeout, and a POST sent as the server closes it is not retried (EOF).
			req, err := http.NewRequest(http.MethodPost, n.HTTPURL()+"/api/v1/deployments", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Close = true
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("POST a deployment from loopback as JSON: got %s; want 202", resp.Status)
			}
			continue
		}
		break
	}
	if p, d := pings.Load(), deployments.Load(); p < 3 || d < 10 {
		t.Fatalf("got %d pings and %d deployment events over %s; want the stream alive throughout", p, d, run)
	}
	for _, reason := range []string{"slow", "ping_timeout"} {
		if got := counterOf(n, `herd_web_clients_dropped_total{reason="`+reason+`"}`); got != 0 {
			t.Errorf("got %d stream clients dropped as %s; want 0", got, reason)
		}
	}
	t.Logf("stream alive for %s (server read/write/idle timeouts %s/%s/%s): %d pings, %d deployment events",
		run, h.ReadTimeout, h.WriteTimeout, h.IdleTimeout, pings.Load(), deployments.Load())
}
