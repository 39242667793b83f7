package ingest_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
)

// Example_gRPC records a gRPC service's request flow: the caller's client interceptors
// record its edge to the callee and name the caller group in the call's baggage, the
// callee's server interceptors record its requests by that caller group.
func Example_gRPC() {
	start := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	client := func(service, version string) *ingest.Client {
		c, err := ingest.NewClient(ingest.ClientConfig{Service: service, Version: version, Start: start,
			Publish: func(string, []byte) error { return nil }, // nc.Publish
			OnBatch: func(b *proto.Batch, _ error) {
				for _, s := range b.Series {
					if s.Kind == proto.KindCounter {
						fmt.Printf("%s %s: %s %v\n", b.Service, b.Version, s.String(), s.Value)
					}
				}
			}})
		if err != nil {
			panic(err)
		}
		return c
	}
	checkout, payments := client("checkout", "1.5.0"), client("payments", "7.1.0")

	// payments serves gRPC (here its health service) through the server interceptors.
	in := payments.Inbound(0)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(in.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(in.StreamServerInterceptor()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() { srv.Stop(); <-served }()

	// checkout calls it through the client interceptors; a real target names the callee
	// ("dns:///payments.shop.svc:443"), here GRPCCallee does.
	edges := checkout.Edges(ingest.EdgeConfig{GRPCCallee: func(target, method string) string { return "payments" }})
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(edges.UnaryClientInterceptor()), grpc.WithStreamInterceptor(edges.StreamClientInterceptor()))
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	for range 3 {
		if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			panic(err)
		}
	}
	_ = checkout.Flush(start.Add(time.Second), false)
	_ = payments.Flush(start.Add(time.Second), false)
	// Output:
	// checkout 1.5.0: herd_edge_calls_total{callee="payments"} 3
	// payments 7.1.0: requests_total 3
	// payments 7.1.0: herd_inbound_requests_total{caller="checkout",caller_version="1.5.0"} 3
}
