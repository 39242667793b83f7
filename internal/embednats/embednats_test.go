package embednats

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestStartConnectPublish(t *testing.T) {
	t.Parallel()
	s, err := Start(Config{Port: -1, JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer Shutdown(s)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server knows the subscription from here on
		t.Fatal(err)
	}
	ip, err := Connect(s)
	if err != nil {
		t.Fatal(err)
	}
	defer ip.Close()
	if err := ip.Publish("x", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("got no message: %v", err)
	}
	if string(m.Data) != "hi" {
		t.Fatalf("got %q; want hi", m.Data)
	}
}
