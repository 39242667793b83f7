package node

import (
	"context"
	"fmt"

	"github.com/herd-dev/herd/ingest/otlp"
)

// newOTLP builds the OTLP receiver of the ingest role when Config.OTLP names a listener. It
// publishes the batches it makes on herd.in.<service>.<version>, through NATS like an agent,
// so they reach the intake (here, or a `herd rollup` worker's) by the same path.
func (n *Node) newOTLP() (err error) {
	if !n.cfg.OTLP.Enabled() {
		return nil
	}
	if n.otlp, err = otlp.New(n.cfg.OTLP, n.metrics, n.nc.Publish, n.logger.With("component", "otlp")); err != nil {
		return fmt.Errorf("cannot create the OTLP receiver: %w", err)
	}
	return nil
}

// startOTLP runs the OTLP receiver, if any, and returns the function that stops it and waits
// until every request in flight is published.
func (n *Node) startOTLP(r *runner) (stop func()) {
	if n.otlp == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.wg.Go(func() {
		defer close(done)
		if err := n.otlp.Run(ctx); err != nil {
			r.fail(fmt.Errorf("otlp: %w", err))
		}
	})
	return func() {
		cancel()
		<-done
	}
}

// OTLPHTTPURL is the base URL of the OTLP/HTTP listener (POST /v1/metrics), or "" without one.
func (n *Node) OTLPHTTPURL() string {
	if n.otlp == nil || n.otlp.HTTPAddr() == "" {
		return ""
	}
	return "http://" + n.otlp.HTTPAddr()
}

// OTLPGRPCAddr is host:port of the OTLP/gRPC listener, or "" without one.
func (n *Node) OTLPGRPCAddr() string {
	if n.otlp == nil {
		return ""
	}
	return n.otlp.GRPCAddr()
}

// OTLP returns the OTLP receiver, or nil.
func (n *Node) OTLP() *otlp.Receiver { return n.otlp }
