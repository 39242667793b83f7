package jsretry_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/jsretry"
)

func ExampleDo() {
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

	// Create a bucket, retrying every 400 ms for at most a minute while JetStream does not
	// answer yet; a server without JetStream fails at once.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var kv jetstream.KeyValue
	err = jsretry.Do(ctx, 400*time.Millisecond, func(ctx context.Context) error {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "example", Storage: jetstream.MemoryStorage})
		return err
	}, func(err error) {
		slog.Warn("cannot create the bucket yet; retrying", "err", err)
	})
	if err != nil {
		fmt.Println("cannot create the bucket:", err)
		return
	}
	fmt.Println("bucket", kv.Bucket(), "ready")
	// Output: bucket example ready
}
