package node

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

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

	intakeMu sync.Mutex // Guards the fields below.
	intakes  map[*ingest.Intake]struct{}
	// intakeDone holds the totals of intakes that stopped.
	intakeDone ingest.IntakeStats
	set        *metrics.Set
}

func newWorker(n *Node) (*worker, error) {
	w := &worker{n: n, intakes: map[*ingest.Intake]struct{}{},
		intakeDone: ingest.IntakeStats{Dropped: map[string]uint64{}}, set: metrics.NewSet()}
	var err error
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
	w.set.NewGauge("herd_ingest_batches_total", func() float64 { return float64(w.intakeStats().Batches) })
	w.set.NewGauge("herd_ingest_bytes_total", func() float64 { return float64(w.intakeStats().Bytes) })
	w.set.NewGauge("herd_ingest_refused_total", func() float64 { return float64(w.intakeStats().Refused()) })
	return w, nil
}

// source runs an intake on partition p's subject until ctx is done (rollup.Source).
func (w *worker) source(ctx context.Context, p int, add func(*proto.Batch)) error {
	cfg := ingest.DefaultIntakeConfig()
	cfg.Subject = proto.PartitionSubject(p)
	cfg.Prefix = proto.PartitionSubjectPrefix(p)
	cfg.DrainTimeout = w.n.cfg.DrainTimeout
	in, err := ingest.NewIntake(cfg, w.n.nc, add, w.n.logger.With("component", "intake", "partition", p))
	if err != nil {
		return err
	}
	w.intakeMu.Lock()
	w.intakes[in] = struct{}{}
	w.intakeMu.Unlock()
	err = in.Run(ctx)
	w.intakeMu.Lock()
	delete(w.intakes, in)
	w.intakeDone = addIntakeStats(w.intakeDone, in.Stats())
	w.intakeMu.Unlock()
	return err
}

func addIntakeStats(a, b ingest.IntakeStats) ingest.IntakeStats {
	out := ingest.IntakeStats{Batches: a.Batches + b.Batches, Bytes: a.Bytes + b.Bytes, Dropped: map[string]uint64{}}
	for r, n := range a.Dropped {
		out.Dropped[r] += n
	}
	for r, n := range b.Dropped {
		out.Dropped[r] += n
	}
	return out
}

// intakeStats returns the totals over every partition's intake, past and present.
func (w *worker) intakeStats() ingest.IntakeStats {
	w.intakeMu.Lock()
	defer w.intakeMu.Unlock()
	st := addIntakeStats(ingest.IntakeStats{}, w.intakeDone)
	for in := range w.intakes {
		st = addIntakeStats(st, in.Stats())
	}
	return st
}

func (w *worker) writeMetrics(out io.Writer) {
	w.set.WritePrometheus(out)
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
