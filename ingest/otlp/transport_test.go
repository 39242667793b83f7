package otlp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/otlptest"
)

// TestToken checks that with a token the SDK's exports carrying it are taken, and requests
// without it are refused over both transports and counted.
func TestToken(t *testing.T) {
	t.Parallel()
	sums := newBatchSums()
	r := startReceiver(t, Config{Token: "s3cret"}, sums.publish)
	ctx := context.Background()
	var rec otlptest.Recorded
	for _, tr := range []string{"http", "grpc"} {
		ep := r.HTTPAddr()
		if tr == "grpc" {
			ep = r.GRPCAddr()
		}
		in, err := otlptest.Start(ctx, otlptest.Config{Transport: tr, Endpoint: ep, Service: "checkout", Version: "1", Instance: tr, Token: "s3cret"})
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			in.Serve(ctx, 200, 0.01)
			rec.Add("1", 200)
		}
		if err := in.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for s, want := range rec.Sums()["1"] {
		if got := sums.get("1", s); got != want {
			t.Errorf("%s: got %v; want %v", s, got, want)
		}
	}

	body, err := pmetricotlp.NewExportRequestFromMetrics(seedRequest("checkout", "1", "x", 1)).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range []string{"", "Bearer wrong"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+r.HTTPAddr()+PathMetrics, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/x-protobuf")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("HTTP with Authorization %q: status %d; want 401", auth, resp.StatusCode)
		}
	}
	cc, err := grpc.NewClient(r.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = pmetricotlp.NewGRPCClient(cc).Export(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer wrong"),
		pmetricotlp.NewExportRequestFromMetrics(seedRequest("checkout", "1", "x", 1)))
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("gRPC with a wrong token: %v; want Unauthenticated", err)
	}
	if got := r.Stats().RequestsRefused[ReasonUnauthorized]; got != 3 {
		t.Errorf("unauthorized requests counted: %d; want 3", got)
	}
}

// TestLoopbackOnlyWithoutToken checks the rule for a receiver without a token.
func TestLoopbackOnlyWithoutToken(t *testing.T) {
	r := &Receiver{}
	for _, tc := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 5}, true},
		{&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5}, false},
		{&net.UnixAddr{Name: "@x"}, false},
		{nil, false},
	} {
		if got := r.authorized("", tc.addr); got != tc.want {
			t.Errorf("authorized from %v without a token = %v; want %v", tc.addr, got, tc.want)
		}
	}
}

// TestMaxConns checks that a connection over the bound is closed at once and counted, and
// that a slot freed is taken again.
func TestMaxConns(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, Config{MaxConns: 2}, newBatchSums().publish)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", r.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := dial(), dial()
	defer a.Close()
	checkfor.Within(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := r.conns.Load(); n != 2 {
			return errorf("%d connections open; want 2", n)
		}
		return nil
	})
	c := dial()
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("third connection: read succeeded; want it closed")
	}
	if got := r.Stats().RequestsRefused[ReasonConnections]; got != 1 {
		t.Errorf("too_many_connections: %d; want 1", got)
	}
	b.Close()
	checkfor.Within(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := r.conns.Load(); n != 1 {
			return errorf("%d connections open after one closed; want 1", n)
		}
		return nil
	})
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
