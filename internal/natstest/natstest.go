// Package natstest starts real nats-servers for herd's tests, in process and on random
// ports, stopped by the test's cleanup (like nats-server's own test.RunServer).
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/embednats"
)

// Options are the server settings a test may change; the zero value is a plain server.
type Options struct {
	// JetStream enables JetStream with its store in a temporary directory (or StoreDir).
	JetStream bool
	StoreDir  string
	// MaxPayload bounds one message (0: the server's default, 1 MiB).
	MaxPayload int32
	// Mapping applies herd's partition subject mapping (herd.in.> → herd.p.<n>.>).
	Mapping bool
}

// RunServer starts a nats-server on 127.0.0.1 and a random port and stops it when the test
// ends.
func RunServer(t testing.TB, o Options) *server.Server {
	t.Helper()
	if o.JetStream && o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	s, err := embednats.Start(embednats.Config{Port: -1, JetStream: o.JetStream, StoreDir: o.StoreDir, MaxPayload: o.MaxPayload})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embednats.Shutdown(s) })
	if o.Mapping {
		if err := embednats.ApplyMapping(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// RunServerOptions starts a server with opts as they are (say, one node of
// embednats.ClusterOptions, for a test that starts a cluster's nodes one at a time), waits
// until it accepts connections and stops it when the test ends. It sets opts.NoSigs: a
// test's server never handles the process's signals. opts is the server's from then on.
func RunServerOptions(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoSigs = true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("cannot create nats-server %s: %v", opts.ServerName, err)
	}
	go s.Start()
	t.Cleanup(func() { embednats.Shutdown(s) })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-server %s is not ready for connections after 10s", opts.ServerName)
	}
	return s
}

// RunCluster starts n nats-servers joined by routes, as embednats.StartCluster does (JetStream
// and the partition mapping on each, random client ports), and stops them when the test ends.
func RunCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	servers, err := embednats.StartCluster(n, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			embednats.Shutdown(s)
		}
	})
	return servers
}

// Shutdown stops s and waits for it before the test ends, as a server crash or restart
// does. To restart on the same data, a test then calls RunServer with the same StoreDir.
// Stopping a server twice does nothing, so the test's cleanup may find s stopped.
func Shutdown(s *server.Server) { embednats.Shutdown(s) }

// Connect connects a client to s and closes it when the test ends.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("cannot connect to %s: %v", s.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}
