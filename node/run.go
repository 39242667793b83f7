package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/herd-dev/herd/internal/bus"
)

// Run runs the node until ctx is done or a component fails, then stops it in data-flow order
// (see the package doc) and returns the first failure. Every goroutine it started has exited
// when it returns; the NATS connection and the embedded server are closed.
func (n *Node) Run(ctx context.Context) error {
	r := runner{errc: make(chan error, 8)}
	outCtx, stopOut := context.WithCancel(context.Background())
	defer stopOut()
	// Outputs first; then the subscriptions and inputs, whose windows, verdicts and
	// deployments are held back while the history is replayed into the outputs; then the
	// held inputs in order.
	if n.dl != nil {
		r.start("delivery", outCtx, n.dl.Run)
	}
	if n.web != nil {
		r.start("web", outCtx, n.web.Run)
	}
	sub, err := n.subscribe()
	if err != nil {
		stopOut()
		r.wg.Wait()
		if n.otlp != nil {
			n.otlp.Close()
		}
		n.stopNATS()
		return err
	}
	stopInputs := n.startInputs(&r)
	stopOTLP := n.startOTLP(&r)
	n.replay(ctx)
	n.live.release()
	if n.det != nil {
		r.start("detector", outCtx, n.det.Run)
	}
	for _, hs := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{n.httpSrv, n.httpLn}, {n.opsSrv, n.opsLn}} {
		if hs.srv == nil {
			continue
		}
		r.wg.Go(func() {
			if err := hs.srv.Serve(hs.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.fail(fmt.Errorf("http: %w", err))
			}
		})
	}
	n.ready.Store(true)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-r.errc:
	}
	n.ready.Store(false)
	stopOTLP()   // every OTLP request in flight is published, before the intake drains
	stopInputs() // every batch received is merged, every window closed and published
	sub.Unsubscribe()
	stopOut()
	for _, srv := range []*http.Server{n.httpSrv, n.opsSrv} {
		if srv != nil {
			shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(shutCtx)
			cancel()
		}
	}
	r.wg.Wait()
	n.stopNATS()
	return runErr
}

// runner owns the goroutines of Run.
type runner struct {
	wg   sync.WaitGroup
	errc chan error // the first failures; Run returns the first
}

// start runs f(ctx) on a goroutine of r; a failure is reported as name's.
func (r *runner) start(name string, ctx context.Context, f func(context.Context) error) {
	r.wg.Go(func() {
		if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
			r.fail(fmt.Errorf("%s: %w", name, err))
		}
	})
}

// fail reports a failure; past the channel's capacity further failures are dropped (Run
// returns the first one only).
func (r *runner) fail(err error) {
	select {
	case r.errc <- err:
	default:
	}
}

// subscribe takes from NATS what no local role produces: deployments always (announcements
// reach every detector through NATS), windows without a local rollup, verdicts without a
// local detector.
func (n *Node) subscribe() (*bus.Subscription, error) {
	if n.det == nil && n.web == nil {
		return &bus.Subscription{}, nil
	}
	var skip []string
	if n.roll != nil {
		skip = append(skip, bus.KindWindow)
	}
	if n.det != nil {
		skip = append(skip, bus.KindVerdict)
	}
	return bus.Subscribe(n.nc, n.dec, skip...)
}

// startInputs starts the intake and rollup (ingest role) or the leases and partitions
// (rollup worker) and returns the function that stops them in order: stop taking batches,
// merge what was received, close and publish the open windows.
func (n *Node) startInputs(r *runner) (stop func()) {
	switch {
	case n.intake != nil:
		intakeCtx, stopIntake := context.WithCancel(context.Background())
		rollCtx, stopRoll := context.WithCancel(context.Background())
		intakeDone := make(chan struct{})
		r.wg.Go(func() {
			defer close(intakeDone)
			if err := n.intake.Run(intakeCtx); err != nil {
				r.fail(fmt.Errorf("intake: %w", err))
			}
		})
		r.start("rollup", rollCtx, n.roll.Run)
		return func() {
			stopIntake()
			<-intakeDone // every buffered batch is merged
			n.roll.Flush()
			stopRoll()
		}
	case n.worker != nil:
		return n.worker.start(r)
	}
	return func() {}
}

// stopNATS drains the connection (pending publications reach the server) and stops the
// embedded server.
func (n *Node) stopNATS() {
	if n.worker == nil || !n.worker.crashed.Load() {
		if err := bus.Drain(n.nc, 5*time.Second); err != nil {
			n.logger.Warn("cannot stop cleanly", "err", err)
		}
	}
	n.closeNATS()
}
