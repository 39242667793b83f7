package ingest

import (
	"context"
	"errors"
	"io"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// gRPC request flow: client interceptors record each call as an edge like the RoundTripper
// and add the caller group's W3C baggage entry to the outgoing metadata; server interceptors
// record the served calls' RED split by that caller group like Inbound.Handler.
//
// A call fails when its status code is a server-side fault, the gRPC counterpart of a 5xx:
// Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable or DataLoss (the codes
// OpenTelemetry's RPC conventions count as server errors). A client that cancels its call, or a
// status such as NotFound or InvalidArgument, is not an error of the callee.

// metadataBaggage is the metadata key of W3C baggage (gRPC metadata keys are lower case).
const metadataBaggage = "baggage"

// GRPCFailed reports whether a call that ended with err (nil: OK) counts as failed: its status
// code is Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable or DataLoss. An error
// that carries no gRPC status is Unknown, but context.Canceled is Canceled and
// context.DeadlineExceeded is DeadlineExceeded.
func GRPCFailed(err error) bool {
	switch grpcCode(err) {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		return true
	}
	return false
}

// grpcCode returns the status code of err.
func grpcCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}

// grpcEdge returns the edge of an outbound call on a connection to target.
func (e *Edges) grpcEdge(target, method string) (callee, op string) {
	if e.cfg.GRPCCallee != nil {
		callee = e.cfg.GRPCCallee(target, method)
	} else {
		callee = targetCallee(target)
	}
	if e.cfg.GRPCOperation != nil {
		op = e.cfg.GRPCOperation(method)
	}
	return callee, op
}

// targetCallee returns the first DNS label of a gRPC target's host: "payments" for
// "dns:///payments.shop.svc:443", "payments:50051" or "dns://10.0.0.2/payments.shop:443".
func targetCallee(target string) string {
	endpoint := target
	if i := strings.Index(target, "://"); i > 0 {
		if u, err := url.Parse(target); err == nil && u.Opaque == "" {
			endpoint = strings.TrimPrefix(u.Path, "/")
		}
	}
	return hostCallee(endpoint)
}

// withBaggage returns ctx with the caller group's baggage entry appended to its outgoing
// metadata; an earlier baggage value stays, and herd's entry, being last, wins.
func (e *Edges) withBaggage(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, metadataBaggage, callerBaggage(e.c.cfg.Service, e.c.cfg.Version))
}

// UnaryClientInterceptor returns a gRPC client interceptor (grpc.WithUnaryInterceptor) that
// records every unary call as a call on its edge (callee from EdgeConfig.GRPCCallee or the
// connection's target) with its latency and whether it failed (GRPCFailed), and adds the
// caller's group to the call's W3C baggage metadata so that the callee's
// Inbound.UnaryServerInterceptor can split its RED by caller.
func (e *Edges) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		callee, op := e.grpcEdge(cc.Target(), method)
		start := time.Now()
		err := invoker(e.withBaggage(ctx), method, req, reply, cc, opts...)
		e.Observe(callee, op, time.Since(start), GRPCFailed(err))
		return err
	}
}

// StreamClientInterceptor returns a gRPC client interceptor (grpc.WithStreamInterceptor) that
// records every stream as one call on its edge, like UnaryClientInterceptor, when it ends:
// when RecvMsg returns io.EOF (OK) or an error (or the one answer of a client-streaming call),
// when opening it fails, or when the call's context is done first (its latency is then the time until then). A stream the caller
// neither reads to its end nor cancels is never recorded (gRPC leaks it too).
func (e *Edges) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		callee, op := e.grpcEdge(cc.Target(), method)
		start := time.Now()
		cs, err := streamer(e.withBaggage(ctx), desc, cc, method, opts...)
		if err != nil {
			e.Observe(callee, op, time.Since(start), GRPCFailed(err))
			return nil, err
		}
		s := &edgeStream{ClientStream: cs, single: !desc.ServerStreams}
		s.end = func(err error) {
			if s.done.CompareAndSwap(false, true) {
				e.Observe(callee, op, time.Since(start), GRPCFailed(err))
			}
		}
		s.stop = context.AfterFunc(ctx, func() { s.end(ctx.Err()) })
		return s, nil
	}
}

// edgeStream records its stream's call once, when it ends.
type edgeStream struct {
	grpc.ClientStream
	// single: the server answers with one message (a client-streaming call), so the stream
	// has ended when RecvMsg returns it.
	single bool
	done   atomic.Bool
	end    func(error)
	stop   func() bool // stops the context watch
}

func (s *edgeStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil || s.single {
		s.stop()
		if errors.Is(err, io.EOF) {
			s.end(nil)
		} else {
			s.end(err)
		}
	}
	return err
}

// Server side.

// callerFromMetadata returns the caller group named by the herd baggage of a served call's
// incoming metadata.
func callerFromMetadata(ctx context.Context) (service, version string) {
	md, _ := metadata.FromIncomingContext(ctx)
	service, version, _ = CallerFromBaggage(md.Get(metadataBaggage))
	return service, version
}

// UnaryServerInterceptor returns a gRPC server interceptor (grpc.ChainUnaryInterceptor) that
// records every unary call it serves: the RED and the requests and errors split by the caller
// group named in the call's baggage metadata (proto.CallerUnknown without). A call fails when
// GRPCFailed says so or the handler panics; a panic is re-raised after it is recorded.
func (in *Inbound) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		service, version := callerFromMetadata(ctx)
		start := time.Now()
		failed := true
		defer func() { in.Observe(service, version, time.Since(start), failed) }()
		resp, err = handler(ctx, req)
		failed = GRPCFailed(err)
		return resp, err
	}
}

// StreamServerInterceptor returns a gRPC server interceptor (grpc.ChainStreamInterceptor)
// that records every stream it serves as one request, like UnaryServerInterceptor, when the
// handler returns; its latency is the stream's duration.
func (in *Inbound) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		service, version := callerFromMetadata(ss.Context())
		start := time.Now()
		failed := true
		defer func() { in.Observe(service, version, time.Since(start), failed) }()
		err = handler(srv, ss)
		failed = GRPCFailed(err)
		return err
	}
}
