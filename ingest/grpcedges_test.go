package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/proto"
)

// testService answers with the status a request asks for; its streams send one response per
// requested parameter first, and a stream asking for none waits for the client to go away.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
	baggage chan []string // the baggage of every call, when not nil
}

func (s *testService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.seen(ctx)
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testgrpc.SimpleResponse{}, nil
}

func (s *testService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, ss grpc.ServerStreamingServer[testgrpc.StreamingOutputCallResponse]) error {
	s.seen(ss.Context())
	if len(req.ResponseParameters) == 0 {
		<-ss.Context().Done()
		return status.FromContextError(ss.Context().Err()).Err()
	}
	for range req.ResponseParameters {
		if err := ss.Send(&testgrpc.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return status.Error(codes.Code(st.Code), st.Message)
	}
	return nil
}

func (s *testService) StreamingInputCall(ss grpc.ClientStreamingServer[testgrpc.StreamingInputCallRequest, testgrpc.StreamingInputCallResponse]) error {
	s.seen(ss.Context())
	n := 0
	for {
		if _, err := ss.Recv(); errors.Is(err, io.EOF) {
			return ss.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(n)})
		} else if err != nil {
			return err
		}
		n++
	}
}

func (s *testService) seen(ctx context.Context) {
	if s.baggage == nil {
		return
	}
	md, _ := metadata.FromIncomingContext(ctx)
	select {
	case s.baggage <- md.Get(metadataBaggage):
	default:
	}
}

// startGRPC serves svc with in's interceptors on a random port and returns its address.
func startGRPC(t *testing.T, svc *testService, in *Inbound) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(in.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(in.StreamServerInterceptor()))
	testgrpc.RegisterTestServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ln.Addr().String()
}

// dial returns a client connection to addr through opts.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// seriesWant is a series' expected total over a client's batches.
type seriesWant struct {
	name   string
	labels []proto.Label
	want   float64
}

// flushUntil flushes c at increasing times until the totals of the series over its batches
// are the wanted ones (calls end on other goroutines: a cancelled stream, the server's side).
func flushUntil(t *testing.T, c *Client, rec *recorder, start time.Time, wants []seriesWant) {
	t.Helper()
	k := 0
	checkfor.Within(t, 5*time.Second, 5*time.Millisecond, func() error {
		k++
		if err := c.Flush(start.Add(time.Duration(k)*time.Second), false); err != nil {
			return err
		}
		bs := rec.all()
		for _, w := range wants {
			got := 0.0
			for i := range bs {
				if v := seriesValue(&bs[i], w.name, w.labels...); v > 0 {
					got += v
				}
			}
			if got != w.want {
				return fmt.Errorf("%s: got %v; want %v", proto.SeriesString(w.name, w.labels), got, w.want)
			}
		}
		return nil
	})
}

// TestEdgesGRPC makes unary and streaming calls through the client interceptors of a caller
// to a real gRPC server with the server interceptors, and checks both sides: the caller's
// edge (calls, server-fault codes as errors, latency count) and the callee's RED split by the
// caller group named in the baggage metadata.
func TestEdgesGRPC(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	var callerRec, calleeRec recorder
	caller, err := NewClient(ClientConfig{Service: "checkout", Version: "1.5.0+build/7", Publish: callerRec.publish, Start: start, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	callee := newTestClient(t, &calleeRec, start)
	in := callee.Inbound(0)
	svc := &testService{baggage: make(chan []string, 1)}
	addr := startGRPC(t, svc, in)

	edges := caller.Edges(EdgeConfig{GRPCCallee: func(target, method string) string {
		if target != "passthrough:///"+addr || !strings.HasPrefix(method, "/grpc.testing.TestService/") {
			return "Wrong Target"
		}
		return "payments"
	}})
	cc := dial(t, addr, grpc.WithUnaryInterceptor(edges.UnaryClientInterceptor()), grpc.WithStreamInterceptor(edges.StreamClientInterceptor()))
	client := testgrpc.NewTestServiceClient(cc)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "baggage", "user=alice")

	// 10 unary calls: 2 Internal (errors), 1 NotFound (the caller's fault, not an error).
	for i := range 10 {
		req := &testgrpc.SimpleRequest{}
		want := codes.OK
		switch i {
		case 0, 5:
			want = codes.Internal
		case 7:
			want = codes.NotFound
		}
		if want != codes.OK {
			req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(want), Message: "boom"}
		}
		_, err := client.UnaryCall(ctx, req)
		if got := status.Code(err); got != want {
			t.Fatalf("unary call %d: got %v; want %v", i, got, want)
		}
		if i == 0 {
			if got, want := <-svc.baggage, []string{"user=alice", "herd.caller=checkout,herd.caller_version=1.5.0%2Bbuild%2F7"}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("baggage metadata: got %q; want %q", got, want)
			}
		}
	}
	// 3 streams read to their end: one ends Unavailable (an error).
	for i := range 3 {
		req := &testgrpc.StreamingOutputCallRequest{ResponseParameters: make([]*testgrpc.ResponseParameters, 3)}
		want := codes.OK
		if i == 1 {
			want = codes.Unavailable
			req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(want)}
		}
		st, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			if _, err = st.Recv(); err != nil {
				break
			}
			n++
		}
		ok := errors.Is(err, io.EOF)
		if want != codes.OK {
			ok = status.Code(err) == want
		}
		if n != 3 || !ok {
			t.Fatalf("stream %d: got %d responses and %v; want 3 and %v", i, n, err, want)
		}
	}
	// A client-streaming call: one call when its answer arrives.
	cs, err := client.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := cs.Send(&testgrpc.StreamingInputCallRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if resp, err := cs.CloseAndRecv(); err != nil || resp.AggregatedPayloadSize != 3 {
		t.Fatalf("client stream: got %v, %v; want 3 messages counted", resp, err)
	}
	// A stream the caller cancels without reading it: one call, Canceled (not an error).
	cctx, cancel := context.WithCancel(ctx)
	if _, err := client.StreamingOutputCall(cctx, &testgrpc.StreamingOutputCallRequest{}); err != nil {
		t.Fatal(err)
	}
	<-svc.baggage // the server has it
	cancel()
	// A plain client's call counts under the unknown caller.
	if _, err := testgrpc.NewTestServiceClient(dial(t, addr)).UnaryCall(context.Background(), &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}

	edge := proto.EdgeLabels(proto.EdgeKey{Callee: "payments"})
	flushUntil(t, caller, &callerRec, start, []seriesWant{
		{proto.SeriesEdgeCalls, edge, 15}, {proto.SeriesEdgeErrors, edge, 3}, {proto.SeriesEdgeLatency, edge, 15},
	})
	from := []proto.Label{{Name: proto.LabelCaller, Value: "checkout"}, {Name: proto.LabelCallerVersion, Value: "1.5.0+build/7"}}
	unknown := []proto.Label{{Name: proto.LabelCaller, Value: proto.CallerUnknown}}
	flushUntil(t, callee, &calleeRec, start, []seriesWant{
		{proto.SeriesInboundRequests, from, 15}, {proto.SeriesInboundErrors, from, 3},
		{proto.SeriesInboundRequests, unknown, 1}, {proto.SeriesInboundErrors, unknown, 0},
		{proto.SeriesRequests, nil, 16}, {proto.SeriesErrors, nil, 3}, {proto.SeriesLatency, nil, 16},
	})
	if got := in.Unknown(); got != 1 {
		t.Errorf("unknown callers: got %d; want 1", got)
	}
	if got := edges.Overflow(); got != 0 {
		t.Errorf("overflow: got %d; want 0", got)
	}
}

// TestEdgesGRPCBounded calls 100 distinct methods with the method as the operation through a
// client bounded to 4 edges: the first stay exact, the rest go to the other edge and are
// counted. The server does not know the methods: every call is Unimplemented, an error.
func TestEdgesGRPCBounded(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	var rec, srvRec recorder
	c := newTestClient(t, &rec, start)
	addr := startGRPC(t, &testService{}, newTestClient(t, &srvRec, start).Inbound(0))
	e := c.Edges(EdgeConfig{MaxCallees: 4, GRPCOperation: func(method string) string { return method },
		GRPCCallee: func(string, string) string { return "payments" }})
	cc := dial(t, addr, grpc.WithUnaryInterceptor(e.UnaryClientInterceptor()), grpc.WithStreamInterceptor(e.StreamClientInterceptor()))
	const n = 300
	for i := range n {
		err := cc.Invoke(context.Background(), fmt.Sprintf("/shop.Payments/M%d", i%100), &testgrpc.Empty{}, &testgrpc.Empty{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("call %d: got %v; want Unimplemented", i, err)
		}
	}
	// A stream that cannot be opened (the connection is closed) is one failed call.
	cc2 := dial(t, addr, grpc.WithStreamInterceptor(e.StreamClientInterceptor()))
	cc2.Close()
	if _, err := testgrpc.NewTestServiceClient(cc2).StreamingOutputCall(context.Background(), &testgrpc.StreamingOutputCallRequest{}); status.Code(err) != codes.Canceled {
		t.Fatalf("stream on a closed connection: got %v; want Canceled", err)
	}
	if err := c.Flush(start.Add(time.Second), false); err != nil {
		t.Fatal(err)
	}
	b := rec.all()[0]
	var calls, errs float64
	edges := 0
	for i := range b.Series {
		s := &b.Series[i]
		switch s.Name {
		case proto.SeriesEdgeCalls:
			calls += s.Value
			edges++
		case proto.SeriesEdgeErrors:
			errs += s.Value
		}
	}
	if calls != n+1 || errs != n || edges != 5 {
		t.Errorf("got %v calls, %v errors on %d edges; want %d, %d on 5 (4 and the other edge)", calls, errs, edges, n+1, n)
	}
	first := proto.EdgeLabels(proto.EdgeKey{Callee: "payments", Operation: "/shop.Payments/M0"})
	if got := seriesValue(&b, proto.SeriesEdgeCalls, first...); got != n/100 {
		t.Errorf("first edge calls: got %v; want %d", got, n/100)
	}
	// 96 of every 100 methods overflow, and the stream on the closed connection.
	if got, want := e.Overflow(), uint64(n*96/100+1); got != want {
		t.Errorf("overflow: got %d; want %d", got, want)
	}
}

func TestTargetCallee(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"dns:///payments.shop.svc.cluster.local:443", "payments"},
		{"payments:50051", "payments"},
		{"dns://10.0.0.2/Payments.shop:443", "payments"},
		{"passthrough:///inventory", "inventory"},
	} {
		if got := targetCallee(c.in); got != c.want {
			t.Errorf("targetCallee(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}
