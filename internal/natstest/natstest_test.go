package natstest

import (
	"testing"
	"time"
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
