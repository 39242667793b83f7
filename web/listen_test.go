package web

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// TestLimitListener checks the connection cap: beyond maxConns a connection is answered 503
// and closed at once (counted); closing a kept connection frees its slot, once.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	ln := LimitListener(inner, 2, set, "http").(*limitListener)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	kept := []net.Conn{<-accepted, <-accepted}
	refused := dial()
	_ = refused.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(refused)
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 503 ") {
		t.Fatalf("got %q, %v from the third connection; want a 503 and EOF", b, err)
	}
	if got := ln.refused.Get(); got != 1 {
		t.Fatalf("got %d refused; want 1", got)
	}
	kept[0].Close()
	kept[0].Close() // a second Close frees nothing more
	if got := ln.open.Load(); got != 1 {
		t.Fatalf("got %d open after a close; want 1", got)
	}
	dial()
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the freed slot was not given to the next connection")
	}
	if got, acc := ln.open.Load(), ln.accepted.Get(); got != 2 || acc != 3 {
		t.Fatalf("got %d open, %d accepted; want 2, 3", got, acc)
	}
	if tcpConn(kept[1]) == nil {
		t.Fatal("cannot reach the TCP connection under a limited one")
	}
}

// TestLimitListenerHTTP serves HTTP through a capped listener: a request beyond the cap gets
// the 503 as a readable HTTP response, and one after a slot frees succeeds.
func TestLimitListenerHTTP(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, 1, metrics.NewSet(), "http")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }),
		ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-done
	}()
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := ln.(*limitListener).open.Load(); n != 1 {
			return fmt.Errorf("got %d open; want the idle connection", n)
		}
		return nil
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %v, %v beyond the cap; want 503", resp, err)
	}
	idle.Close()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("got %s; want 200", resp.Status)
		}
		return nil
	})
}
