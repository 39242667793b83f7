// Package embednats starts an in-process nats-server, for `herd serve`, `herd demo` and
// tests, with the settings herd needs (no signal handlers, JetStream on request), and
// optionally secured: identities with per-service publish permissions for agents, TLS, and a
// loopback-only monitoring listener (see Security).
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
	// MaxPending bounds what the server buffers for one client before it cuts the client as
	// a slow consumer (0: the server's default, 64 MiB). The server counts those cuts
	// (server.Server.NumSlowConsumers).
	MaxPending int64
	// Security holds authentication, TLS and monitoring; the zero value has none of them.
	Security Security
	// DeferListen starts the server without its client listener: only in-process clients
	// (Connect) reach it until Listen opens the listener. A process that must subscribe
	// before any remote client can publish (so that nothing published is dropped for want of
	// a subscriber) subscribes in process first, then calls Listen.
	DeferListen bool
}

// Start starts a server and waits until it accepts connections. The caller stops it with
// Shutdown (server.Server.Shutdown then WaitForShutdown).
func Start(cfg Config) (*server.Server, error) {
	sec := cfg.Security
	if err := sec.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{
		Host:       cfg.Host,
		Port:       cfg.Port,
		NoSigs:     true, // herd handles signals; the server would otherwise os.Exit
		NoLog:      true,
		JetStream:  cfg.JetStream,
		StoreDir:   cfg.StoreDir,
		MaxPayload: cfg.MaxPayload,
		MaxPending: cfg.MaxPending,
		DontListen: cfg.DeferListen,
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if err := sec.apply(opts); err != nil {
		return nil, err
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cannot create embedded nats-server: %w", err)
	}
	if sec.Auth != nil {
		if err := configureAgents(s); err != nil {
			return nil, err
		}
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		Shutdown(s)
		return nil, errors.New("embedded nats-server did not become ready within 10s (is " +
			net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)) + " or the monitoring port free?)")
	}
	if sec.Auth != nil && cfg.JetStream {
		// With an account besides the global one, nats-server enables JetStream only for
		// accounts configured for it, and the global account cannot be configured; herd's
		// streams and buckets live there (as without authentication), so enable it now. An
		// external client that asks JetStream in the moment before gets an error and retries.
		if err := s.GlobalAccount().EnableJetStream(nil, nil); err != nil {
			Shutdown(s)
			return nil, fmt.Errorf("cannot enable JetStream on the embedded nats-server: %w", err)
		}
	}
	return s, nil
}

// Listen opens the client listener of a server started with DeferListen and returns once it
// accepts connections; then s.ClientURL has the real port. It is an error to call it twice.
func Listen(s *server.Server) error {
	if s.Addr() != nil {
		return errors.New("the embedded nats-server listens already")
	}
	s.AcceptLoop(make(chan struct{})) // returns once the listener is set up, or failed
	if s.Addr() == nil {
		return fmt.Errorf("cannot listen for NATS clients on %s (is the port free?)", s.ClientURL())
	}
	return nil
}

// Listening reports whether s has its client listener open.
func Listening(s *server.Server) bool { return s.Addr() != nil }

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
