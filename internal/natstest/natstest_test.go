package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRunServer(t *testing.T) {
	t.Parallel()
	s := RunServer(t, Options{JetStream: true})
	nc := Connect(t, s)
	sub, err := nc.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("x", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil || string(m.Data) != "hello" {
		t.Fatalf("got %v, %v; want the message published", m, err)
	}
	if !s.JetStreamEnabled() {
		t.Error("JetStream is off; want on")
	}
}

// TestRestartOnStoreDir stops a JetStream server early and starts another on its store: the
// second finds the first's data, and the first's cleanup finds it stopped.
func TestRestartOnStoreDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	s := RunServer(t, Options{JetStream: true, StoreDir: dir})
	js, err := jetstream.New(Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "natstest", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	Shutdown(s)
	if s.Running() {
		t.Fatal("the server runs after Shutdown; want it stopped")
	}

	s = RunServer(t, Options{JetStream: true, StoreDir: dir})
	js, err = jetstream.New(Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if kv, err = js.KeyValue(ctx, "natstest"); err != nil {
		t.Fatalf("the bucket is gone after the restart: %v", err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "kept" {
		t.Fatalf("got %v, %v; want the value stored before the restart", e, err)
	}
}

func TestRunServerOptions(t *testing.T) {
	t.Parallel()
	s := RunServerOptions(t, &server.Options{ServerName: "natstest", Host: "127.0.0.1", Port: -1, NoLog: true})
	if s.Name() != "natstest" {
		t.Errorf("got server name %q; want natstest", s.Name())
	}
	if err := Connect(t, s).Flush(); err != nil {
		t.Fatalf("cannot reach the server: %v", err)
	}
}
