package node

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/rollup/lease"
)

// worker is the partitioned rollup role: leases decide which partitions it owns; for each,
// an intake subscribed to herd.p.<n>.> feeds that partition's rollup, and closed windows are
// published on herd.rollup.<service>.<version>.
type worker struct {
	n       *Node
	leases  *lease.Manager
	parts   *rollup.Partitioned
	crashed atomic.Bool
	// intakeMetrics are shared by every partition's intake: the families count over all
	// partitions, past and present, without summing at scrape time.
	intakeMetrics *ingest.IntakeMetrics
	// limit bounds the partitions' intake handlers running at once to the cores, so that
	// lease renewals never queue behind one busy goroutine per partition.
	limit *ingest.Limiter
}

func newWorker(n *Node) (*worker, error) {
	w := &worker{n: n, intakeMetrics: ingest.NewIntakeMetrics(n.metrics)}
	var err error
	if w.limit, err = ingest.NewLimiter(runtime.GOMAXPROCS(0)); err != nil {
		return nil, err
	}
	w.parts, err = rollup.NewPartitioned(n.cfg.Rollup, rollup.NewMetrics(n.metrics), w.source, n.emit, n.logger.With("component", "rollup"))
	if err != nil {
		return nil, err
	}
	acquire := func(l *lease.Lease) { w.parts.Acquire(l) }
	release := func(l *lease.Lease) { w.parts.Release(l) }
	w.leases, err = lease.New(n.cfg.Leases, n.metrics, n.js, acquire, release, n.logger.With("component", "leases"))
	if err != nil {
		return nil, err
	}
	return w, nil
}

// source runs an intake on partition p's subject until ctx is done (rollup.Source).
func (w *worker) source(ctx context.Context, p int, add func(*proto.Batch)) error {
	cfg := ingest.DefaultIntakeConfig()
	cfg.Subject = proto.PartitionSubject(p)
	cfg.Prefix = proto.PartitionSubjectPrefix(p)
	cfg.DrainTimeout = w.n.cfg.DrainTimeout
	cfg.Limiter = w.limit
	// One partition's share: a quarter of serve's single intake buffer each (a worker may
	// own all 64 partitions, though its busy ones are few).
	cfg.PendingMsgs, cfg.PendingBytes = ingest.DefaultPendingMsgs/2, ingest.DefaultPendingBytes/4
	in, err := ingest.NewIntake(cfg, w.intakeMetrics, w.n.nc, add, w.n.logger.With("component", "intake", "partition", p))
	if err != nil {
		return err
	}
	return in.Run(ctx)
}

// start starts the partitions and the leases, and returns the function that stops them in
// order: release the leases (others take over at once), let the released partitions publish
// the windows of their spans and stop their intakes, then stop what is left.
func (w *worker) start(r *runner) (stop func()) {
	partsCtx, stopParts := context.WithCancel(context.Background())
	leasesCtx, stopLeases := context.WithCancel(context.Background())
	leasesDone := make(chan struct{})
	r.start("partitions", partsCtx, w.parts.Run)
	r.wg.Go(func() {
		defer close(leasesDone)
		if err := w.leases.Run(leasesCtx); err != nil {
			r.fail(fmt.Errorf("leases: %w", err))
		}
	})
	return func() {
		stopLeases()
		<-leasesDone
		if !w.crashed.Load() {
			// A released partition keeps merging its span's windows until they close.
			cfg := w.n.cfg
			wait := cfg.Rollup.Window + cfg.Rollup.Lateness + cfg.DrainTimeout + 2*time.Second
			wctx, cancel := context.WithTimeout(context.Background(), wait)
			if err := w.parts.Wait(wctx); err != nil {
				w.n.logger.Warn("partitions did not wind down in time", "running", w.parts.Running(), "waited", wait)
			}
			cancel()
		}
		stopParts()
	}
}

// Crash makes a partitioned rollup worker stop as if its process died: leases are abandoned
// (they expire after the TTL) and the NATS connection closes without draining, so nothing
// more is published; Run then returns promptly. Tests of failover use it. It does nothing on
// a node without the rollup role.
func (n *Node) Crash() {
	if n.worker == nil {
		return
	}
	n.worker.crashed.Store(true)
	n.worker.leases.Abandon()
	n.nc.Close()
}
