package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/jsretry"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// Reasons of herd_rollup_partition_moves_total.
const (
	MoveAcquiredFree    = "acquired_free"    // claimed a free or never used partition
	MoveAcquiredExpired = "acquired_expired" // took over an expired lease (a stuck owner) or a dead owner's (its connection gone)
	MoveReleased        = "released"         // released to rebalance
	MoveShutdown        = "shutdown"         // released on clean shutdown
	MoveLostExpired     = "lost_expired"     // could not renew in time
	MoveLostTaken       = "lost_taken"       // another worker holds it (a renewal was refused)
)

var moveReasons = []string{MoveAcquiredFree, MoveAcquiredExpired, MoveReleased, MoveShutdown, MoveLostExpired, MoveLostTaken}

// Manager acquires, renews and releases one worker's partition leases in a JetStream KV
// bucket (see the package documentation for the protocol). Claims, releases and the view of
// the bucket are handled on the goroutine running Run, and the callbacks are called from it;
// renewals of the held leases and of the worker's heartbeat run on a goroutine of their own
// (the renewer), so that they never wait behind claims, callbacks or the watch. The KV
// writes of one round run concurrently (at most maxInFlight at once).
type Manager struct {
	cfg       Config
	js        jetstream.JetStream
	onAcquire func(*Lease)
	onRelease func(*Lease)
	logger    *slog.Logger

	moves     map[string]*metrics.Counter
	kvErrors  *metrics.Counter
	renewLate *metrics.Counter
	probes    map[string]*metrics.Counter
	ownedN    atomic.Int64
	workersN  atomic.Int64
	steps     atomic.Int64 // rounds of step run, for tests
	// renewGapMax is the longest time between two successful renewals of a lease, in
	// nanoseconds, since the manager started.
	renewGapMax atomic.Int64
	// held is the leases to renew (the renewer's copy of owned), replaced by ownedChanged.
	held atomic.Pointer[[]*Lease]
	// lost carries leases the renewer found taken to Run's goroutine, which ends them.
	lost chan lostLease

	// abandoned ends when Abandon is called.
	abandoned context.Context
	abandon   context.CancelFunc

	ownedMu sync.Mutex // Guards ownedSnap.
	// ownedSnap is the sorted list of owned partitions, for Owned.
	ownedSnap []int

	// Owned by the Run goroutine.
	kv         jetstream.KeyValue
	parts      []keyView
	workers    map[string]keyView
	owned      map[int]*Lease
	claimAfter time.Time
	// dead holds the workers whose connection a probe found gone, with when; their leases
	// are claimable at once. A worker leaves it when its heartbeat is renewed again.
	dead map[string]time.Time
}

// New returns the lease manager of worker cfg.WorkerID (DefaultWorkerID if empty) using js.
// onAcquire is called with each lease acquired, onRelease with each lease after it ended
// (released or lost); both run on Run's goroutine and should return quickly. It starts
// nothing.
//
// New registers the manager's self-metrics in set: herd_rollup_partition_moves_total{reason}
// (Move* constants), herd_rollup_lease_kv_errors_total, herd_rollup_lease_renew_late_total,
// herd_rollup_lease_renew_gap_max_seconds, herd_rollup_lease_probes_total{result},
// herd_rollup_partitions_owned and herd_rollup_workers_live. The set must not hold them already (one Manager per set); nil
// registers them in a private set. logger should carry component=leases; nil discards logs.
func New(cfg Config, set *metrics.Set, js jetstream.JetStream, onAcquire, onRelease func(*Lease), logger *slog.Logger) (*Manager, error) {
	if cfg.WorkerID == "" {
		cfg.WorkerID = DefaultWorkerID()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create lease manager: %w", err)
	}
	if js == nil || onAcquire == nil || onRelease == nil {
		return nil, errors.New("cannot create lease manager: nil JetStream or callback")
	}
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(leaseHelp)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Manager{
		cfg: cfg, js: js, onAcquire: onAcquire, onRelease: onRelease, logger: logger,
		moves:   map[string]*metrics.Counter{},
		parts:   make([]keyView, proto.Partitions),
		workers: map[string]keyView{},
		owned:   map[int]*Lease{},
		dead:    map[string]time.Time{},
		probes:  map[string]*metrics.Counter{},
		lost:    make(chan lostLease, proto.Partitions),
	}
	l.abandoned, l.abandon = context.WithCancel(context.Background())
	for _, r := range moveReasons {
		l.moves[r] = set.NewCounter(`herd_rollup_partition_moves_total{reason="` + r + `"}`)
	}
	l.kvErrors = set.NewCounter("herd_rollup_lease_kv_errors_total")
	l.renewLate = set.NewCounter("herd_rollup_lease_renew_late_total")
	set.NewGauge("herd_rollup_lease_renew_gap_max_seconds", func() float64 { return time.Duration(l.renewGapMax.Load()).Seconds() })
	for _, r := range probeResults {
		l.probes[r] = set.NewCounter(`herd_rollup_lease_probes_total{result="` + r + `"}`)
	}
	set.NewGauge("herd_rollup_partitions_owned", func() float64 { return float64(l.ownedN.Load()) })
	set.NewGauge("herd_rollup_workers_live", func() float64 { return float64(l.workersN.Load()) })
	return l, nil
}

// WorkerID returns the worker's id.
func (l *Manager) WorkerID() string { return l.cfg.WorkerID }

// Moves returns the ownership changes of this worker so far, by reason (Move* constants).
func (l *Manager) Moves() map[string]uint64 {
	out := make(map[string]uint64, len(l.moves))
	for r, c := range l.moves {
		out[r] = c.Get()
	}
	return out
}

// RenewLate returns how many lease renewals were sent late: 2 × Heartbeat or more after the
// lease's previous successful renewal (a starved process or a slow server).
func (l *Manager) RenewLate() uint64 { return l.renewLate.Get() }

// RenewGapMax returns the longest time between two successful renewals of one lease so far.
func (l *Manager) RenewGapMax() time.Duration { return time.Duration(l.renewGapMax.Load()) }

// Owned returns the partitions held, sorted.
func (l *Manager) Owned() []int {
	l.ownedMu.Lock()
	defer l.ownedMu.Unlock()
	return slices.Clone(l.ownedSnap)
}

// Abandon makes Run return at once without releasing anything, as if the process died:
// its leases expire after TTL. Tests use it to simulate a crash.
func (l *Manager) Abandon() { l.abandon() }

// Run creates or binds the bucket (retrying while JetStream does not answer), registers the
// worker's heartbeat and manages the leases until ctx is done. Then it releases every lease
// and deletes the heartbeat, so that other workers take over at once, and returns nil; ends
// of leases are reported to onRelease before Run returns. After Abandon it returns without
// releasing. It returns an error if the bucket cannot be bound: JetStream is not enabled, or
// ctx ended first.
func (l *Manager) Run(ctx context.Context) error {
	defer l.ownedN.Store(0)
	if err := l.bind(ctx); err != nil {
		if l.abandoned.Err() != nil {
			return nil
		}
		return err
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var w jetstream.KeyWatcher
	for {
		var err error
		w, err = l.kv.WatchAll(wctx)
		if err == nil {
			break
		}
		l.kvErrors.Inc()
		l.logger.Warn("cannot watch the lease bucket; retrying", "bucket", l.cfg.Bucket, "err", err)
		if !l.sleep(ctx, l.cfg.Heartbeat) {
			return nil
		}
	}
	defer func() { _ = w.Stop() }()
	alive, err := l.subscribeAlive()
	if err != nil {
		return err
	}
	defer func() { _ = alive.Unsubscribe() }()
	// The renewer writes the heartbeat first, then renews every held lease each Heartbeat.
	rctx, stopRenewer := context.WithCancel(context.Background())
	defer context.AfterFunc(l.abandoned, stopRenewer)()
	var renewer sync.WaitGroup
	defer renewer.Wait()
	defer stopRenewer()
	renewer.Go(func() { l.renew(rctx) })
	// Give other workers' heartbeats a moment to arrive before the first claims, so that a
	// pool starting together does not first pile every partition on one worker.
	l.claimAfter = time.Now().Add(l.cfg.Heartbeat)
	l.logger.Info("lease manager started", "worker", l.cfg.WorkerID, "bucket", l.cfg.Bucket, "partitions", proto.Partitions)

	tick := time.NewTicker(l.cfg.Tick)
	defer tick.Stop()
	updates := w.Updates()
	for {
		select {
		case <-ctx.Done():
			stopRenewer()
			renewer.Wait()
			l.shutdown()
			return nil
		case <-l.abandoned.Done():
			// As if the process died: no more answers to probes, no more renewals.
			_ = alive.Unsubscribe()
			l.logger.Warn("lease manager abandoned its leases", "worker", l.cfg.WorkerID, "partitions", len(l.owned))
			return nil
		case ll := <-l.lost:
			if l.owned[ll.ls.partition] == ll.ls {
				l.lose(ll.ls, MoveLostTaken)
			}
			l.applyRead(ll.ls.partition, &ll.r)
		case e, ok := <-updates:
			if !ok {
				updates = nil
				l.logger.Warn("lease bucket watch ended", "bucket", l.cfg.Bucket)
				continue
			}
			if e != nil {
				l.observe(e, time.Now())
			}
		case <-tick.C:
			l.step(ctx, time.Now())
			l.steps.Add(1)
		}
	}
}

// sleep waits d or until ctx is done or the manager is abandoned; it reports whether d passed.
func (l *Manager) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-l.abandoned.Done():
		return false
	case <-t.C:
		return true
	}
}

// bind creates or binds the bucket, retrying every Heartbeat while JetStream does not
// answer (a cluster without a meta leader yet) until ctx is done or the manager is
// abandoned.
func (l *Manager) bind(ctx context.Context) error {
	cfg := jetstream.KeyValueConfig{
		Bucket:      l.cfg.Bucket,
		Description: "herd rollup partition leases",
		History:     1,
		// Keys of dead workers and unused partitions age out; live keys are renewed far
		// more often.
		TTL:      max(time.Minute, 20*l.cfg.TTL),
		Replicas: l.cfg.Replicas,
		Storage:  jetstream.MemoryStorage,
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.abandoned, cancel)()
	err := jsretry.Do(ctx, l.cfg.Heartbeat, func(ctx context.Context) error {
		kv, err := l.js.CreateOrUpdateKeyValue(ctx, cfg)
		l.kv = kv
		return err
	}, func(err error) {
		l.kvErrors.Inc()
		l.logger.Warn("cannot create the lease bucket; retrying", "bucket", l.cfg.Bucket, "err", err)
	})
	if err != nil {
		l.kvErrors.Inc()
		return fmt.Errorf("cannot create lease bucket %s: %w", l.cfg.Bucket, err)
	}
	return nil
}

func partKey(p int) string       { return "p." + strconv.Itoa(p) }
func workerKey(id string) string { return "w." + id }

// observe applies one watched entry to the view.
func (l *Manager) observe(e jetstream.KeyValueEntry, now time.Time) {
	key := e.Key()
	exists := e.Operation() == jetstream.KeyValuePut
	switch {
	case strings.HasPrefix(key, "p."):
		p, err := strconv.Atoi(key[2:])
		if err != nil || p < 0 || p >= len(l.parts) {
			return // a partition beyond this worker's count: a misconfigured peer
		}
		v := &l.parts[p]
		if e.Revision() <= v.rev {
			return // our own write, already applied
		}
		var val leaseValue
		if exists {
			if err := json.Unmarshal(e.Value(), &val); err != nil {
				l.logger.Warn("ignoring a bad lease value", "key", key, "err", err)
				return
			}
		}
		*v = keyView{exists: exists, rev: e.Revision(), val: val, seen: now}
		if ls := l.owned[p]; ls != nil {
			if rev, _, _ := ls.state(); e.Revision() > rev {
				if exists && val.Worker == l.cfg.WorkerID && val.Epoch == ls.epoch {
					// A renewal whose result the renewer has not applied yet, or that
					// timed out but was applied: adopt its revision.
					ls.adopt(e.Revision())
					return
				}
				// Someone wrote our lease: it is not ours any more.
				l.lose(ls, MoveLostTaken)
			}
		}
	case strings.HasPrefix(key, "w."):
		id := key[2:]
		if id == l.cfg.WorkerID {
			return
		}
		if !exists {
			delete(l.workers, id)
			return
		}
		if v, ok := l.workers[id]; !ok || e.Revision() > v.rev {
			l.workers[id] = keyView{exists: true, rev: e.Revision(), seen: now}
			delete(l.dead, id) // renewed: alive again (a reconnected worker)
		}
	}
}

// liveWorkers counts the workers whose heartbeat changed within TTL, this one included, and
// forgets workers silent for ten TTLs.
func (l *Manager) liveWorkers(now time.Time) int {
	n := 1
	for id, v := range l.workers {
		age := now.Sub(v.seen)
		_, dead := l.dead[id]
		switch {
		case dead:
		case age < l.cfg.TTL:
			n++
		case age > 10*l.cfg.TTL:
			delete(l.workers, id)
		}
	}
	for id, at := range l.dead {
		if now.Sub(at) > 10*l.cfg.TTL {
			delete(l.dead, id)
		}
	}
	l.workersN.Store(int64(n))
	return n
}

// shutdown releases every lease and deletes the heartbeat.
func (l *Manager) shutdown() {
	ctx := context.Background()
	l.releaseAll(ctx, l.sortedOwned(), MoveShutdown)
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	if err := l.kv.Delete(cctx, workerKey(l.cfg.WorkerID)); err != nil {
		l.kvErrors.Inc()
	}
	l.logger.Info("lease manager stopped", "worker", l.cfg.WorkerID)
}

func (l *Manager) ownedChanged() {
	ps := make([]int, 0, len(l.owned))
	for p := range l.owned {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	held := make([]*Lease, len(ps))
	for i, p := range ps {
		held[i] = l.owned[p]
	}
	l.held.Store(&held)
	l.ownedMu.Lock()
	l.ownedSnap = ps
	l.ownedMu.Unlock()
	l.ownedN.Store(int64(len(ps)))
}

func (l *Manager) sortedOwned() []*Lease {
	out := make([]*Lease, 0, len(l.owned))
	for _, ls := range l.owned {
		out = append(out, ls)
	}
	slices.SortFunc(out, func(a, b *Lease) int { return a.partition - b.partition })
	return out
}

func (l *Manager) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() != nil {
		ctx = context.Background() // shutting down: releases still get their time
	}
	return context.WithTimeout(ctx, l.cfg.Heartbeat)
}

// leaseHelp is the # HELP text of the lease families.
var leaseHelp = map[string]string{
	"herd_rollup_lease_kv_errors_total":       "Failed JetStream KV calls of the lease manager.",
	"herd_rollup_lease_renew_late_total":      "Lease renewals sent two heartbeats or more after the lease's previous renewal (a starved worker or a slow server).",
	"herd_rollup_lease_renew_gap_max_seconds": "Longest time between two successful renewals of one lease since the worker started.",
	"herd_rollup_lease_probes_total":          "Probes of silent workers' NATS connections, by result: alive, dead (leases taken over at once) or timeout (treated as alive).",
	"herd_rollup_partition_moves_total":       "Changes of a partition's owner seen by this worker, by reason.",
	"herd_rollup_partitions_owned":            "Partitions this worker holds a lease on.",
	"herd_rollup_workers_live":                "Rollup workers whose heartbeat is fresh, this one included.",
}
