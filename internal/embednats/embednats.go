// Package embednats starts an in-process nats-server, for `herd serve`, `herd demo` and
// tests, with the settings herd needs (no signal handlers, JetStream on request).
package embednats

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config selects how the embedded server listens and stores.
type Config struct {
	// Host and Port of the client listener; Port -1 picks a random free port.
	Host string
	Port int
	// JetStream enables JetStream with its store under StoreDir (a temporary directory if
	// empty).
	JetStream bool
	StoreDir  string
	// MaxPayload bounds one message (0: the server's default, 1 MiB).
	MaxPayload int32
}

// Start starts a server and waits until it accepts connections. The caller stops it with
// Shutdown (server.Server.Shutdown then WaitForShutdown).
func Start(cfg Config) (*server.Server, error) {
	opts := &server.Options{
		Host:       cfg.Host,
		Port:       cfg.Port,
		NoSigs:     true, // herd handles signals; the server would otherwise os.Exit
		NoLog:      true,
		JetStream:  cfg.JetStream,
		StoreDir:   cfg.StoreDir,
		MaxPayload: cfg.MaxPayload,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cannot create embedded nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded nats-server did not become ready within 10s (is " +
			net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)) + " free?)")
	}
	return s, nil
}

// Shutdown stops s and waits for it.
func Shutdown(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// Connect opens an in-process client connection to s with herd's usual options.
func Connect(s *server.Server, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s)}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to embedded nats-server: %w", err)
	}
	return nc, nil
}
