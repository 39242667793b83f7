package deliver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/proto"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	return slog.New(slog.DiscardHandler)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// testVerdict returns a final verdict with a fresh decision id.
func testVerdict(state proto.State) proto.Verdict {
	return proto.Verdict{
		Service:    "checkout",
		Baseline:   "1.4.1",
		Canary:     "1.4.2",
		State:      state,
		UnixMs:     1767225607800,
		StartedMs:  1767225600000,
		DecisionID: uuid.NewString(),
		Sentence:   "errors 3.1× baseline, 99 % CS [1.8, 5.4], decided after 7.8 s",
		Evidence: proto.Evidence{
			Alpha: 0.01, EValue: 142.5, Threshold: 100, Decisive: "errors",
			Tests: []proto.TestEvidence{{
				Name: "errors", EValue: 142.5, Weight: 1,
				BaselineN: 296400, BaselineE: 1482, CanaryN: 15600, CanaryE: 242,
				Effect: 3.1, CSLow: 1.8, CSHigh: 5.4,
			}},
			Windows: 31, FirstMs: 1767225600000, LastMs: 1767225607750,
			CanaryInstances: 2, BaselineInstances: 38,
		},
	}
}

// newTestDeliverer validates cfg and builds a Deliverer on a FileStore in a temporary
// directory unless store is given.
func newTestDeliverer(t *testing.T, cfg Config, store Store) *Deliverer {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MaxRetry == 0 {
		cfg.MaxRetry = time.Hour
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("cannot validate config: %v", err)
	}
	if store == nil {
		fs, err := NewFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		store = fs
	}
	d, err := New(cfg, nil, store, testLogger(t))
	if err != nil {
		t.Fatalf("cannot create deliverer: %v", err)
	}
	return d
}

// startRun runs d until the returned stop function is called; stop waits for Run.
func startRun(t *testing.T, d *Deliverer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: got error %v; want nil", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// pipeNet is an in-memory network for HTTP inside a synctest bubble: connections are
// net.Pipe pairs, so blocked reads are durably blocked and the fake clock can advance.
type pipeNet struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeNet() *pipeNet {
	return &pipeNet{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (p *pipeNet) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

func (p *pipeNet) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *pipeNet) Addr() net.Addr { return pipeAddr{} }

func (p *pipeNet) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case p.conns <- s:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

var _ io.Closer = (*pipeNet)(nil)
