package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/embednats"
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
	// embedded server's listener, once the intake has subscribed; then the held inputs in
	// order.
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
	if err := n.listen(&r); err != nil {
		r.fail(err)
		n.live.release()
	} else {
		n.replay(ctx)
		n.live.release()
		if n.det != nil {
			r.start("detector", outCtx, n.det.Run)
		}
		n.serveHTTP(&r)
		n.ready.Store(true)
		close(n.readyc)
	}
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
	for _, hs := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{n.httpSrv, n.httpLn}, {n.opsSrv, n.opsLn}} {
		if hs.srv != nil {
			shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = hs.srv.Shutdown(shutCtx)
			cancel()
			_ = hs.ln.Close() // not served when Run failed before ready
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
		rollCtx, stopRoll := context.WithCancel(context.Background())
		n.intakeRun = n.runIntake(r, n.intake)
		r.start("rollup", rollCtx, n.roll.Run)
		return func() {
			n.intakeRun.stop() // every buffered batch is merged
			n.roll.Flush()
			stopRoll()
		}
	case n.worker != nil:
		return n.worker.start(r)
	}
	return func() {}
}

// intakeRun is one running intake.
type intakeRun struct {
	in     *ingest.Intake
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
}

// runIntake runs in on a goroutine of r.
func (n *Node) runIntake(r *runner, in *ingest.Intake) *intakeRun {
	ctx, cancel := context.WithCancel(context.Background())
	ir := &intakeRun{in: in, cancel: cancel, done: make(chan struct{})}
	r.wg.Go(func() {
		defer close(ir.done)
		if err := in.Run(ctx); err != nil {
			r.fail(fmt.Errorf("intake: %w", err))
		}
	})
	return ir
}

// subscribed waits until the intake's subscription is registered with the server; false if
// its Run ended first (and reported why).
func (ir *intakeRun) subscribed() bool {
	select {
	case <-ir.in.Ready():
		return true
	case <-ir.done:
		return false
	}
}

// stop stops the intake and waits until it has handled what it had buffered.
func (ir *intakeRun) stop() {
	ir.cancel()
	<-ir.done
}

// listen opens the embedded server's client listener once the intake (if any) has
// subscribed, so that no batch an agent publishes finds the server without a subscriber,
// however soon after the port opens the agent connects; then it moves the intake to a
// loopback TCP connection (see startEmbedded).
func (n *Node) listen(r *runner) error {
	if n.ns == nil || embednats.Listening(n.ns) {
		return nil
	}
	if n.intakeRun != nil && !n.intakeRun.subscribed() {
		return errors.New("the intake did not subscribe; not opening the NATS listener")
	}
	if err := embednats.Listen(n.ns); err != nil {
		return err
	}
	n.logger.Info("NATS listening", "url", n.ns.ClientURL())
	if n.intakeRun != nil && n.intakeOpts != nil {
		n.handover(r)
	}
	return nil
}

// handover moves the intake from the node's in-process connection to a loopback TCP
// connection of its own. Both intakes are members of one queue group (IntakeConfig.Queue),
// which gives each batch to one member: the new intake subscribes, then the first drains,
// so every batch is taken exactly once, in at most two goroutines for a moment (the
// rollup's dedup tolerates the reordering). On failure the intake stays in process.
func (n *Node) handover(r *runner) {
	nc, err := bus.Connect(bus.Client{URLs: n.ns.ClientURL()}, n.cfg.Name+"-intake", n.metrics, n.logger, n.intakeOpts...)
	if err != nil {
		n.logger.Warn("the intake stays on the in-process connection", "err", err)
		return
	}
	in, err := ingest.NewIntake(n.cfg.Intake, n.intakeM, nc, n.roll.Add, n.logger.With("component", "intake"))
	if err != nil {
		nc.Close()
		n.logger.Warn("the intake stays on the in-process connection", "err", err)
		return
	}
	next := n.runIntake(r, in)
	if !next.subscribed() {
		nc.Close() // next's Run has failed and reported it: the node stops
		return
	}
	n.intakeRun.stop()
	n.intakeNC, n.intake, n.intakeRun = nc, in, next
}

// serveHTTP serves the HTTP listeners on goroutines of r.
func (n *Node) serveHTTP(r *runner) {
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
