package lease_test

import (
	"context"
	"fmt"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/rollup/lease"
)

// A *lease.Lease is what rollup.Partitioned needs of a lease.
var _ rollup.Lease = (*lease.Lease)(nil)

func ExampleNew() {
	s, err := embednats.Start(embednats.Config{Port: -1, JetStream: true})
	if err != nil {
		panic(err)
	}
	defer embednats.Shutdown(s)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// A worker alone owns every partition. A rollup worker starts a partition's rollup in
	// onAcquire (rollup.Partitioned.Acquire) and lets it wind down in onRelease.
	owned := make(chan int, proto.Partitions)
	cfg := lease.DefaultConfig()
	cfg.WorkerID = "example"
	m, err := lease.New(cfg, metrics.NewSet(), js,
		func(l *lease.Lease) { owned <- l.Partition() },
		func(l *lease.Lease) {},
		nil)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for range proto.Partitions {
		<-owned
	}
	fmt.Println(m.WorkerID(), "owns", len(m.Owned()), "partitions")
	cancel() // releases every lease, so that other workers take over at once
	if err := <-done; err != nil {
		panic(err)
	}
	fmt.Println("released:", m.Moves()[lease.MoveShutdown])
	// Output:
	// example owns 64 partitions
	// released: 64
}
