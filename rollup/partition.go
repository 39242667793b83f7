package rollup

// Partitioned rollup workers.
//
// NATS maps every agent subject herd.in.<service>.<version> to one of a fixed number of
// partition subjects herd.p.<n>.<service>.<version>; each partition has exactly one owner at a
// time, recorded as a lease in a JetStream KV bucket. Leases runs the leases of one worker;
// Partitioned keeps one Rollup per owned partition.
//
// # Leases
//
// Key p.<n> holds the lease of partition n: the owner's worker id, an epoch incremented on every
// change of owner, and Expires, the wall-clock instant the owner's lease ends unless renewed.
// A worker claims a free or expired key with a compare-and-set on the revision it observed
// (Create for a key never written, Update otherwise): of two claimers, the second gets a
// revision mismatch. The owner renews each lease every Heartbeat with the same compare-and-set.
//
// Expiry is judged on each worker's own monotonic clock, never by comparing two machines'
// clocks: a claimer treats a lease as expired once it has seen no new revision for TTL since
// it first observed the current one. The owner stops counting on a lease at TTL − Margin after
// it sent its last successful renewal, which was before any claimer observed it, so the owner
// has let go (by at least Margin) before anyone can claim.
//
// Key w.<id> is a worker's heartbeat; a worker counts the heartbeats renewed within TTL (itself
// included) and aims at ⌈partitions / workers⌉ leases: it claims free and expired partitions
// below that and releases the excess above it, so that leases rebalance when workers join or
// leave. A worker that stops cleanly releases its leases (an Update to a free value) and
// deletes its heartbeat, so others take over at once; the leases of a dead worker are taken
// over TTL after their last renewal.
//
// # Exactness across a change of owner
//
// Every lease has a span of windows it may publish, [FromCut, UntilCut): FromCut is From
// rounded up to the window grid, where From ≥ the previous lease's Until; UntilCut is Until
// rounded up, where Until is the lease's current Expires while held and the release instant
// (or, for a lost lease, the last Expires written) after. Since From_next ≥ Until_prev, the
// spans of successive owners of a partition never overlap, whatever the clocks of the two
// workers: both read the same number from the KV store. A window (group, start) is therefore
// published by at most one owner and no batch is counted twice, even if a worker that lost its
// lease without noticing (a paused or partitioned process) keeps running: its span stops
// growing when it can no longer renew.
//
// After a release the old owner keeps receiving and merging the windows of its span (start <
// UntilCut) until they close (UntilCut + Lateness), while the new owner merges windows from
// FromCut on: a clean hand-over within one window interval loses nothing. Windows between the
// two cuts, and the open windows of a worker that died, are lost; they are missing from the
// output, never partial duplicates.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/proto"
)

// LeaseConfig configures Leases. Start from DefaultLeaseConfig or RegisterFlags.
type LeaseConfig struct {
	// Bucket is the JetStream KV bucket holding the leases; Leases creates it if missing.
	Bucket string
	// Partitions is the number of partitions; it must equal the subject mapping's.
	Partitions int
	// WorkerID names this worker; it must be unique among running workers (default:
	// hostname, pid and a random suffix).
	WorkerID string
	// TTL is how long a lease lasts without renewal: a dead worker's partitions are owned
	// again within about TTL + Tick.
	TTL time.Duration
	// Heartbeat is how often leases and the worker's heartbeat are renewed.
	Heartbeat time.Duration
	// Margin is how much earlier than TTL after a renewal the owner gives a lease up; it
	// absorbs the time a renewal takes to reach other workers.
	Margin time.Duration
	// Tick is the period of the claim and expiry checks.
	Tick time.Duration
	// Replicas of the bucket (1 for a single server, 3 for a cluster that survives the loss
	// of a server).
	Replicas int
}

// DefaultLeaseConfig returns the defaults that RegisterFlags registers (WorkerID empty).
func DefaultLeaseConfig() LeaseConfig {
	return LeaseConfig{
		Bucket:     "herd_leases",
		Partitions: proto.Partitions,
		TTL:        1500 * time.Millisecond,
		Heartbeat:  400 * time.Millisecond,
		Margin:     300 * time.Millisecond,
		Tick:       100 * time.Millisecond,
		Replicas:   1,
	}
}

// RegisterFlags registers the -leases.* flags and -worker.id on fs, writing into c.
func (c *LeaseConfig) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultLeaseConfig()
	fs.StringVar(&c.Bucket, "leases.bucket", d.Bucket, "JetStream KV `bucket` of the partition leases (default herd_leases)")
	fs.IntVar(&c.Partitions, "leases.partitions", d.Partitions, "number of partitions; must equal the NATS subject mapping's (count, default 64)")
	fs.StringVar(&c.WorkerID, "worker.id", "", "unique `id` of this rollup worker (default hostname-pid-random)")
	fs.DurationVar(&c.TTL, "leases.ttl", d.TTL, "a partition lease lasts this long without renewal; a dead worker's partitions move after it (duration, default 1.5s)")
	fs.DurationVar(&c.Heartbeat, "leases.heartbeat", d.Heartbeat, "how often leases are renewed (duration, default 400ms)")
	fs.DurationVar(&c.Margin, "leases.margin", d.Margin, "an owner gives a lease up this long before others may claim it (duration, default 300ms)")
	fs.DurationVar(&c.Tick, "leases.tick", d.Tick, "period of the claim and expiry checks (duration, default 100ms)")
	fs.IntVar(&c.Replicas, "leases.replicas", d.Replicas, "replicas of the lease bucket: 1, or 3 in a NATS cluster (count, default 1)")
}

// Validate checks c and names the offending flag.
func (c *LeaseConfig) Validate() error {
	switch {
	case c.Bucket == "" || strings.ContainsAny(c.Bucket, ". *>\t\r\n"):
		return fmt.Errorf("-leases.bucket %q must be a non-empty name without '.', '*', '>' or spaces", c.Bucket)
	case c.Partitions < 1 || c.Partitions > 4096:
		return fmt.Errorf("-leases.partitions %d must be between 1 and 4096", c.Partitions)
	case strings.ContainsAny(c.WorkerID, ". *>\t\r\n"):
		return fmt.Errorf("-worker.id %q must not hold '.', '*', '>' or spaces", c.WorkerID)
	case c.Margin <= 0 || c.TTL <= c.Margin:
		return fmt.Errorf("-leases.margin %s must be positive and shorter than -leases.ttl %s", c.Margin, c.TTL)
	case c.Heartbeat <= 0 || 2*c.Heartbeat > c.TTL-c.Margin:
		return fmt.Errorf("-leases.heartbeat %s must be positive and at most half of -leases.ttl − -leases.margin (%s)", c.Heartbeat, c.TTL-c.Margin)
	case c.Tick <= 0 || c.Tick > c.Heartbeat:
		return fmt.Errorf("-leases.tick %s must be positive and at most -leases.heartbeat %s", c.Tick, c.Heartbeat)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("-leases.replicas %d must be between 1 and 5", c.Replicas)
	}
	return nil
}

// DefaultWorkerID returns hostname-pid-<8 random hex digits>.
func DefaultWorkerID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "worker"
	}
	h = strings.NewReplacer(".", "-", " ", "-", "*", "-", ">", "-").Replace(h)
	return h + "-" + strconv.Itoa(os.Getpid()) + "-" + uuid.NewString()[:8]
}

// Lease is one worker's ownership of one partition. Leases creates it; its fields are
// read-only and its methods goroutine-safe.
type Lease struct {
	// Partition is the partition owned.
	Partition int
	// Epoch counts the owners the partition had, this one included.
	Epoch uint64
	// From is when the ownership began: no earlier than the previous owner's Until.
	From time.Time
	// Previous is the previous owner's Until as recorded in the store (zero for a partition
	// never owned before).
	Previous time.Time

	until    atomic.Int64 // unix nanos: Expires while held, the end after
	released atomic.Bool
	done     chan struct{}

	// Owned by the Leases goroutine.
	rev      uint64
	sent     time.Time // when the last successful write was sent (monotonic)
	deadline time.Time // sent + TTL − Margin
}

// Until returns the end of the ownership: while the lease is held, the instant it expires
// unless renewed (it moves forward with every renewal); after Done, the final end. No later
// owner's From is before it.
func (l *Lease) Until() time.Time { return time.Unix(0, l.until.Load()) }

// Released reports whether the lease has ended (released or lost).
func (l *Lease) Released() bool { return l.released.Load() }

// Done is closed when the lease has ended; Until is final from then on.
func (l *Lease) Done() <-chan struct{} { return l.done }

// end marks the lease ended at until.
func (l *Lease) end(until time.Time) {
	if l.released.Swap(true) {
		return
	}
	l.until.Store(until.UnixNano())
	close(l.done)
}

// leaseValue is what key p.<n> holds. Worker is empty for a released lease.
type leaseValue struct {
	Worker    string `json:"worker"`
	Epoch     uint64 `json:"epoch"`
	ExpiresMs int64  `json:"expires_unix_ms"`
}

// keyView is a worker's view of one key, from the watch and its own writes.
type keyView struct {
	exists bool
	rev    uint64
	val    leaseValue
	seen   time.Time // when rev was first observed (monotonic)
}

// Reasons of herd_rollup_partition_moves_total.
const (
	MoveAcquiredFree    = "acquired_free"    // claimed a free or never used partition
	MoveAcquiredExpired = "acquired_expired" // took over an expired lease (a dead or stuck owner)
	MoveReleased        = "released"         // released to rebalance
	MoveShutdown        = "shutdown"         // released on clean shutdown
	MoveLostExpired     = "lost_expired"     // could not renew in time
	MoveLostTaken       = "lost_taken"       // another worker holds it (a renewal was refused)
)

var moveReasons = []string{MoveAcquiredFree, MoveAcquiredExpired, MoveReleased, MoveShutdown, MoveLostExpired, MoveLostTaken}

// Leases acquires, renews and releases one worker's partition leases in a JetStream KV bucket
// (see the package documentation of partition.go for the protocol). All state changes happen
// on the goroutine running Run, and the callbacks are called from it; the KV writes of one
// round run concurrently (at most maxInFlight at once), and Run applies their results after
// the last one returned.
type Leases struct {
	cfg       LeaseConfig
	js        jetstream.JetStream
	onAcquire func(*Lease)
	onRelease func(*Lease)
	logger    *slog.Logger

	set       *metrics.Set
	moves     map[string]*metrics.Counter
	kvErrors  *metrics.Counter
	ownedN    atomic.Int64
	workersN  atomic.Int64
	abandoned atomic.Bool
	abandon   chan struct{}
	abandonMu sync.Once

	ownedMu sync.Mutex // Guards ownedSnap.
	// ownedSnap is the sorted list of owned partitions, for Owned.
	ownedSnap []int

	// Owned by the Run goroutine.
	kv         jetstream.KeyValue
	parts      []keyView
	workers    map[string]keyView
	owned      map[int]*Lease
	hbRev      uint64
	hbSent     time.Time
	claimAfter time.Time
}

// NewLeases returns the lease manager of worker cfg.WorkerID using js. onAcquire is called
// with each lease acquired, onRelease with each lease after it ended (released or lost); both
// run on Run's goroutine and should return quickly. It starts nothing. logger should carry
// component=leases; nil discards logs.
func NewLeases(cfg LeaseConfig, js jetstream.JetStream, onAcquire, onRelease func(*Lease), logger *slog.Logger) (*Leases, error) {
	if cfg.WorkerID == "" {
		cfg.WorkerID = DefaultWorkerID()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create leases: %w", err)
	}
	if js == nil || onAcquire == nil || onRelease == nil {
		return nil, errors.New("cannot create leases: nil JetStream or callback")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Leases{
		cfg: cfg, js: js, onAcquire: onAcquire, onRelease: onRelease, logger: logger,
		set:     metrics.NewSet(),
		moves:   map[string]*metrics.Counter{},
		abandon: make(chan struct{}),
		parts:   make([]keyView, cfg.Partitions),
		workers: map[string]keyView{},
		owned:   map[int]*Lease{},
	}
	for _, r := range moveReasons {
		l.moves[r] = l.set.NewCounter(`herd_rollup_partition_moves_total{reason="` + r + `"}`)
	}
	l.kvErrors = l.set.NewCounter("herd_rollup_lease_kv_errors_total")
	l.set.NewGauge("herd_rollup_partitions_owned", func() float64 { return float64(l.ownedN.Load()) })
	l.set.NewGauge("herd_rollup_workers_live", func() float64 { return float64(l.workersN.Load()) })
	return l, nil
}

// WorkerID returns the worker's id.
func (l *Leases) WorkerID() string { return l.cfg.WorkerID }

// Metrics returns the lease manager's self-metrics.
func (l *Leases) Metrics() *metrics.Set { return l.set }

// Moves returns the ownership changes of this worker so far, by reason (Move* constants).
func (l *Leases) Moves() map[string]uint64 {
	out := make(map[string]uint64, len(l.moves))
	for r, c := range l.moves {
		out[r] = c.Get()
	}
	return out
}

// Owned returns the partitions held, sorted.
func (l *Leases) Owned() []int {
	l.ownedMu.Lock()
	defer l.ownedMu.Unlock()
	return slices.Clone(l.ownedSnap)
}

// Abandon makes Run return at once without releasing anything, as if the process died:
// its leases expire after TTL. Tests use it to simulate a crash.
func (l *Leases) Abandon() {
	l.abandonMu.Do(func() {
		l.abandoned.Store(true)
		close(l.abandon)
	})
}

// Run creates or binds the bucket (retrying while JetStream is not available), registers the
// worker's heartbeat and manages the leases until ctx is done. Then it releases every lease
// and deletes the heartbeat, so that other workers take over at once, and returns nil; ends
// of leases are reported to onRelease before Run returns. After Abandon it returns without
// releasing.
func (l *Leases) Run(ctx context.Context) error {
	defer l.ownedN.Store(0)
	if err := l.bind(ctx); err != nil {
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
	l.heartbeat(ctx, time.Now())
	// Give other workers' heartbeats a moment to arrive before the first claims, so that a
	// pool starting together does not first pile every partition on one worker.
	l.claimAfter = time.Now().Add(l.cfg.Heartbeat)
	l.logger.Info("lease manager started", "worker", l.cfg.WorkerID, "bucket", l.cfg.Bucket, "partitions", l.cfg.Partitions)

	tick := time.NewTicker(l.cfg.Tick)
	defer tick.Stop()
	updates := w.Updates()
	for {
		select {
		case <-ctx.Done():
			l.shutdown()
			return nil
		case <-l.abandon:
			l.logger.Warn("lease manager abandoned its leases", "worker", l.cfg.WorkerID, "partitions", len(l.owned))
			return nil
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
		}
	}
}

// sleep waits d or until ctx is done or the manager is abandoned; it reports whether d passed.
func (l *Leases) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-l.abandon:
		return false
	case <-t.C:
		return true
	}
}

// bind creates or binds the bucket, retrying: JetStream API calls made before a cluster has
// a meta leader get no reply.
func (l *Leases) bind(ctx context.Context) error {
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
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		kv, err := l.js.CreateOrUpdateKeyValue(cctx, cfg)
		cancel()
		if err == nil {
			l.kv = kv
			return nil
		}
		l.kvErrors.Inc()
		l.logger.Warn("cannot create the lease bucket; retrying", "bucket", l.cfg.Bucket, "err", err)
		if !l.sleep(ctx, l.cfg.Heartbeat) {
			if l.abandoned.Load() {
				return nil
			}
			return fmt.Errorf("cannot create lease bucket %s: %w", l.cfg.Bucket, err)
		}
	}
}

func partKey(p int) string       { return "p." + strconv.Itoa(p) }
func workerKey(id string) string { return "w." + id }

// observe applies one watched entry to the view.
func (l *Leases) observe(e jetstream.KeyValueEntry, now time.Time) {
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
		if ls := l.owned[p]; ls != nil && e.Revision() > ls.rev {
			if exists && val.Worker == l.cfg.WorkerID && val.Epoch == ls.Epoch {
				// A renewal that timed out but was applied: adopt its revision. Until
				// and the deadline stay at the earlier, safe values.
				ls.rev = e.Revision()
				return
			}
			// Someone wrote our lease: it is not ours any more.
			l.lose(ls, MoveLostTaken)
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
		}
	}
}

// liveWorkers counts the workers whose heartbeat changed within TTL, this one included, and
// forgets workers silent for ten TTLs.
func (l *Leases) liveWorkers(now time.Time) int {
	n := 1
	for id, v := range l.workers {
		age := now.Sub(v.seen)
		switch {
		case age < l.cfg.TTL:
			n++
		case age > 10*l.cfg.TTL:
			delete(l.workers, id)
		}
	}
	l.workersN.Store(int64(n))
	return n
}

// maxInFlight bounds the KV operations one step has in flight at once. Each operation waits
// for a replicated write, so a worker holding many leases renews them all within about one
// round trip instead of one round trip each, even when the CPU is starved.
const maxInFlight = 16

// inParallel calls op(0) … op(n−1), each on its own goroutine and at most maxInFlight at a
// time, and returns when all returned. An op must not touch the manager's state: it fills
// its own result, which the caller applies on Run's goroutine afterwards.
func inParallel(n int, op func(i int)) {
	if n == 1 {
		op(0)
		return
	}
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			op(i)
		})
	}
	wg.Wait()
}

// kvResult is the outcome of one KV write of a step, applied on Run's goroutine.
type kvResult struct {
	sent time.Time // when the write was sent
	rev  uint64
	err  error
	// After a failed compare-and-set, the key read back (see readBack).
	read    bool
	entry   jetstream.KeyValueEntry
	readErr error
}

// readBack re-reads key p after a failed compare-and-set, in case the watch is behind or the
// key aged out of the bucket; applyRead applies the result.
func (l *Leases) readBack(ctx context.Context, p int, r *kvResult) {
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	r.read = true
	r.entry, r.readErr = l.kv.Get(cctx, partKey(p))
}

// applyRead applies what readBack read of key p.
func (l *Leases) applyRead(p int, r *kvResult) {
	switch {
	case !r.read:
	case errors.Is(r.readErr, jetstream.ErrKeyNotFound):
		l.parts[p] = keyView{}
	case r.readErr != nil:
		l.kvErrors.Inc()
	default:
		l.observe(r.entry, time.Now())
	}
}

// step runs one round: expire, renew, rebalance, claim. The writes of each phase are issued
// concurrently (inParallel) and their results applied in partition order afterwards.
func (l *Leases) step(ctx context.Context, now time.Time) {
	for _, ls := range l.sortedOwned() {
		if !now.Before(ls.deadline) {
			l.lose(ls, MoveLostExpired)
		}
	}
	l.renewAll(ctx, now)
	n := l.liveWorkers(now)
	target := (l.cfg.Partitions + n - 1) / n
	if extra := len(l.owned) - target; extra > 0 {
		owned := l.sortedOwned()
		l.releaseAll(ctx, owned[len(owned)-extra:], MoveReleased)
		return
	}
	if len(l.owned) >= target || now.Before(l.claimAfter) {
		return
	}
	// Start at a worker-specific offset so that claimers mostly try different keys.
	h := fnv.New32a()
	_, _ = h.Write([]byte(l.cfg.WorkerID))
	off := int(h.Sum32() % uint32(l.cfg.Partitions))
	// Claim as many as are missing at once; retry with the next candidates for the claims
	// that failed.
	i := 0
	for ctx.Err() == nil {
		need := target - len(l.owned)
		var ps []int
		var reasons []string
		for ; i < l.cfg.Partitions && len(ps) < need; i++ {
			p := (off + i) % l.cfg.Partitions
			if l.owned[p] != nil {
				continue
			}
			v := l.parts[p]
			switch {
			case !v.exists || v.val.Worker == "":
				ps, reasons = append(ps, p), append(reasons, MoveAcquiredFree)
			case time.Since(v.seen) >= l.cfg.TTL:
				ps, reasons = append(ps, p), append(reasons, MoveAcquiredExpired)
			}
		}
		if len(ps) == 0 {
			return
		}
		l.claimAll(ctx, ps, reasons)
	}
}

func (l *Leases) sortedOwned() []*Lease {
	out := make([]*Lease, 0, len(l.owned))
	for _, ls := range l.owned {
		out = append(out, ls)
	}
	slices.SortFunc(out, func(a, b *Lease) int { return a.Partition - b.Partition })
	return out
}

func (l *Leases) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() != nil {
		ctx = context.Background() // shutting down: releases still get their time
	}
	return context.WithTimeout(ctx, l.cfg.Heartbeat)
}

// heartbeat renews the worker's heartbeat key.
func (l *Leases) heartbeat(ctx context.Context, now time.Time) {
	l.applyHeartbeat(now, l.writeHeartbeat(ctx))
}

// writeHeartbeat writes the worker's heartbeat key; it touches no state.
func (l *Leases) writeHeartbeat(ctx context.Context) kvResult {
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	r := kvResult{sent: time.Now()}
	r.rev, r.err = l.kv.Put(cctx, workerKey(l.cfg.WorkerID), []byte(strconv.FormatInt(r.sent.UnixMilli(), 10)))
	return r
}

func (l *Leases) applyHeartbeat(now time.Time, r kvResult) {
	if r.err != nil {
		l.kvErrors.Inc()
		l.logger.Debug("cannot renew the worker heartbeat", "err", r.err)
		return
	}
	l.hbRev, l.hbSent = r.rev, now
}

func (l *Leases) encode(epoch uint64, worker string, expires time.Time) []byte {
	b, err := json.Marshal(leaseValue{Worker: worker, Epoch: epoch, ExpiresMs: expires.UnixMilli()})
	if err != nil {
		panic("BUG: cannot encode a lease value: " + err.Error())
	}
	return b
}

// expiry returns the wall-clock and monotonic ends of a lease written at sent. The wall value
// is truncated to the millisecond it is stored with, so the owner and the next owner compute
// their cuts from the same number.
func (l *Leases) expiry(sent time.Time) (wall, deadline time.Time) {
	d := l.cfg.TTL - l.cfg.Margin
	wallMs := sent.Add(d).UnixMilli()
	return time.UnixMilli(wallMs), sent.Add(d)
}

// claimAll tries to acquire partitions ps (for reasons), each with a compare-and-set on the
// revision observed before the step's writes.
func (l *Leases) claimAll(ctx context.Context, ps []int, reasons []string) {
	views := make([]keyView, len(ps))
	for i, p := range ps {
		views[i] = l.parts[p]
	}
	res := make([]kvResult, len(ps))
	inParallel(len(ps), func(i int) {
		p, v, r := ps[i], views[i], &res[i]
		r.sent = time.Now()
		wall, _ := l.expiry(r.sent)
		data := l.encode(v.val.Epoch+1, l.cfg.WorkerID, wall)
		cctx, cancel := l.opCtx(ctx)
		if v.rev == 0 {
			r.rev, r.err = l.kv.Create(cctx, partKey(p), data)
		} else {
			r.rev, r.err = l.kv.Update(cctx, partKey(p), data, v.rev)
		}
		cancel()
		if r.err != nil {
			l.readBack(ctx, p, r)
		}
	})
	for i, p := range ps {
		l.applyClaim(p, views[i], reasons[i], &res[i])
	}
}

// applyClaim applies the claim of partition p, whose key was v before the claim.
func (l *Leases) applyClaim(p int, v keyView, reason string, r *kvResult) {
	if r.err != nil {
		if !errors.Is(r.err, jetstream.ErrKeyExists) && !errors.Is(r.err, jetstream.ErrKeyRevisionMismatch) {
			l.kvErrors.Inc()
			l.logger.Debug("cannot claim partition", "partition", p, "err", r.err)
		}
		l.applyRead(p, r)
		return
	}
	ls := &Lease{Partition: p, Epoch: v.val.Epoch + 1, done: make(chan struct{})}
	wall, deadline := l.expiry(r.sent)
	// The previous lease, at the revision we replaced, ended no later than its Expires.
	from := time.Now()
	if v.exists {
		ls.Previous = time.UnixMilli(v.val.ExpiresMs)
		if ls.Previous.After(from) {
			from = ls.Previous
		}
	}
	ls.From = from
	ls.rev, ls.sent, ls.deadline = r.rev, r.sent, deadline
	ls.until.Store(wall.UnixNano())
	l.parts[p] = keyView{exists: true, rev: r.rev, val: leaseValue{Worker: l.cfg.WorkerID, Epoch: ls.Epoch, ExpiresMs: wall.UnixMilli()}, seen: r.sent}
	l.owned[p] = ls
	l.ownedChanged()
	l.moves[reason].Inc()
	l.logger.Info("partition acquired", "partition", p, "epoch", ls.Epoch, "reason", reason, "previous_owner", v.val.Worker)
	l.onAcquire(ls)
}

// renewAll renews the worker's heartbeat if due and every held lease whose last renewal was
// sent Heartbeat ago or more.
func (l *Leases) renewAll(ctx context.Context, now time.Time) {
	var due []*Lease
	for _, ls := range l.sortedOwned() {
		if time.Since(ls.sent) >= l.cfg.Heartbeat {
			due = append(due, ls)
		}
	}
	hb := now.Sub(l.hbSent) >= l.cfg.Heartbeat
	// Slot 0 is the heartbeat, so that it never queues behind the leases.
	res := make([]kvResult, len(due)+1)
	inParallel(len(res), func(i int) {
		if i == 0 {
			if hb {
				res[0] = l.writeHeartbeat(ctx)
			}
			return
		}
		ls, r := due[i-1], &res[i]
		r.sent = time.Now()
		wall, _ := l.expiry(r.sent)
		cctx, cancel := l.opCtx(ctx)
		r.rev, r.err = l.kv.Update(cctx, partKey(ls.Partition), l.encode(ls.Epoch, l.cfg.WorkerID, wall), ls.rev)
		cancel()
		if errors.Is(r.err, jetstream.ErrKeyRevisionMismatch) {
			l.readBack(ctx, ls.Partition, r)
		}
	})
	if hb {
		l.applyHeartbeat(now, res[0])
	}
	for i, ls := range due {
		l.applyRenew(ls, &res[i+1])
	}
}

// applyRenew applies the renewal of a held lease.
func (l *Leases) applyRenew(ls *Lease, r *kvResult) {
	if r.err != nil {
		if errors.Is(r.err, jetstream.ErrKeyRevisionMismatch) {
			l.lose(ls, MoveLostTaken)
			l.applyRead(ls.Partition, r)
			return
		}
		// A timeout may or may not have been applied: keep the old deadline; if the write
		// landed, the next renewal gets a revision mismatch and the lease is lost.
		l.kvErrors.Inc()
		l.logger.Debug("cannot renew lease", "partition", ls.Partition, "err", r.err)
		return
	}
	wall, deadline := l.expiry(r.sent)
	ls.rev, ls.sent, ls.deadline = r.rev, r.sent, deadline
	ls.until.Store(wall.UnixNano())
	v := &l.parts[ls.Partition]
	if r.rev > v.rev {
		*v = keyView{exists: true, rev: r.rev, val: leaseValue{Worker: l.cfg.WorkerID, Epoch: ls.Epoch, ExpiresMs: wall.UnixMilli()}, seen: r.sent}
	}
}

// releaseAll ends held leases now and writes their keys free, so other workers can claim
// them at once. Each lease's Until is fixed before its write is sent.
func (l *Leases) releaseAll(ctx context.Context, lss []*Lease, reason string) {
	if len(lss) == 0 {
		return
	}
	untils := make([]time.Time, len(lss))
	for i, ls := range lss {
		until := time.UnixMilli(time.Now().UnixMilli() + 1) // rounded up to the stored millisecond
		if u := ls.Until(); until.After(u) {
			until = u // never later than what others were told
		}
		ls.end(until)
		delete(l.owned, ls.Partition)
		untils[i] = until
	}
	l.ownedChanged()
	res := make([]kvResult, len(lss))
	inParallel(len(lss), func(i int) {
		ls, r := lss[i], &res[i]
		cctx, cancel := l.opCtx(ctx)
		r.rev, r.err = l.kv.Update(cctx, partKey(ls.Partition), l.encode(ls.Epoch, "", untils[i]), ls.rev)
		cancel()
	})
	for i, ls := range lss {
		r := &res[i]
		if r.err != nil {
			l.kvErrors.Inc()
			l.logger.Debug("cannot write a released lease; it expires instead", "partition", ls.Partition, "err", r.err)
		} else if v := &l.parts[ls.Partition]; r.rev > v.rev {
			*v = keyView{exists: true, rev: r.rev, val: leaseValue{Epoch: ls.Epoch, ExpiresMs: untils[i].UnixMilli()}, seen: time.Now()}
		}
		l.moves[reason].Inc()
		l.logger.Info("partition released", "partition", ls.Partition, "epoch", ls.Epoch, "reason", reason)
		l.onRelease(ls)
	}
}

// lose ends a lease this worker can no longer count on: its Until stays the last Expires
// written, which no later owner's From precedes.
func (l *Leases) lose(ls *Lease, reason string) {
	ls.end(ls.Until())
	delete(l.owned, ls.Partition)
	l.ownedChanged()
	l.moves[reason].Inc()
	l.logger.Warn("partition lease lost", "partition", ls.Partition, "epoch", ls.Epoch, "reason", reason)
	l.onRelease(ls)
}

// shutdown releases every lease and deletes the heartbeat.
func (l *Leases) shutdown() {
	ctx := context.Background()
	l.releaseAll(ctx, l.sortedOwned(), MoveShutdown)
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	if err := l.kv.Delete(cctx, workerKey(l.cfg.WorkerID)); err != nil {
		l.kvErrors.Inc()
	}
	l.logger.Info("lease manager stopped", "worker", l.cfg.WorkerID)
}

func (l *Leases) ownedChanged() {
	ps := make([]int, 0, len(l.owned))
	for p := range l.owned {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	l.ownedMu.Lock()
	l.ownedSnap = ps
	l.ownedMu.Unlock()
	l.ownedN.Store(int64(len(ps)))
}

// Source delivers the batches of partition p to add until ctx is done, then stops calling
// add and returns (draining what it buffered first). cmd/herd implements it with an intake
// subscribed to herd.p.<p>.>.
type Source func(ctx context.Context, p int, add func(*proto.Batch)) error

// Reasons of herd_rollup_partition_batches_skipped_total: batches of a window outside this
// owner's span. The neighbouring owner normally merges them; loss shows as windows missing
// from the output and as herd_rollup_partition_gap_windows_total.
const (
	SkipBeforeSpan = "before_span" // the window starts before the lease's FromCut
	SkipAfterSpan  = "after_span"  // the window starts at or after the ended lease's UntilCut
)

// Partitioned keeps one Rollup per owned partition, each fed by a Source and publishing only
// the windows of its lease's span (see the package documentation of partition.go). Its
// Acquire and Release methods are the callbacks of Leases.
type Partitioned struct {
	cfg    Config
	src    Source
	emit   Emit
	logger *slog.Logger
	w      int64 // window, nanos

	set       *metrics.Set
	skipped   map[string]*metrics.Counter
	discarded *metrics.Counter
	gaps      *metrics.Counter
	srcErrors *metrics.Counter

	mu    sync.Mutex // Guards the fields below.
	parts map[*Lease]*partition
	done  Stats // totals of partitions that ended
	base  context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	statsMu   sync.Mutex // Guards the cached sum.
	statsAt   time.Time
	statsLast Stats
}

// partition is one owned partition.
type partition struct {
	lease   *Lease
	roll    *Rollup
	fromCut int64
}

// NewPartitioned returns a Partitioned with rollups of cfg, fed by src, publishing to emit.
// It starts nothing until Acquire; Run must run for its lifetime. logger should carry
// component=rollup; nil discards logs.
func NewPartitioned(cfg Config, src Source, emit Emit, logger *slog.Logger) (*Partitioned, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create partitioned rollup: %w", err)
	}
	if src == nil || emit == nil {
		return nil, errors.New("cannot create partitioned rollup: nil source or emit")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, stop := context.WithCancel(context.Background())
	pr := &Partitioned{
		cfg: cfg, src: src, emit: emit, logger: logger, w: int64(cfg.Window),
		set:     metrics.NewSet(),
		skipped: map[string]*metrics.Counter{},
		parts:   map[*Lease]*partition{},
		base:    base,
		stop:    stop,
	}
	for _, r := range []string{SkipBeforeSpan, SkipAfterSpan} {
		pr.skipped[r] = pr.set.NewCounter(`herd_rollup_partition_batches_skipped_total{reason="` + r + `"}`)
	}
	pr.discarded = pr.set.NewCounter("herd_rollup_partition_windows_discarded_total")
	pr.gaps = pr.set.NewCounter("herd_rollup_partition_gap_windows_total")
	pr.srcErrors = pr.set.NewCounter("herd_rollup_partition_source_errors_total")
	pr.registerSums()
	return pr, nil
}

// ceilTo returns ⌈a/b⌉·b for b > 0.
func ceilTo(a, b int64) int64 { return -floorDiv(-a, b) * b }

// Acquire starts the rollup and the source of a newly acquired lease. It is Leases'
// onAcquire callback.
func (pr *Partitioned) Acquire(l *Lease) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.base.Err() != nil {
		return
	}
	pt := &partition{lease: l, fromCut: ceilTo(l.From.UnixNano(), pr.w)}
	roll, err := New(pr.cfg, func(w *proto.Window) { pr.emitFiltered(pt, w) }, pr.logger.With("partition", l.Partition))
	if err != nil {
		panic("BUG: rollup config validated but New failed: " + err.Error())
	}
	// Close every window before the cut: batches for them are refused as late.
	roll.Advance(time.Unix(0, pt.fromCut+int64(pr.cfg.Lateness)))
	pt.roll = roll
	if !l.Previous.IsZero() {
		if last := ceilTo(l.Previous.UnixNano(), pr.w); pt.fromCut > last {
			pr.gaps.Add(int((pt.fromCut - last) / pr.w))
		}
	}
	pr.parts[l] = pt
	pr.wg.Go(func() { pr.runPartition(pt) })
}

// Release is Leases' onRelease callback. The partition of the ended lease winds down by
// itself (it watches Lease.Done): it merges and publishes the windows of its span until they
// close, then stops.
func (pr *Partitioned) Release(*Lease) {}

// runPartition runs a partition's rollup and source until its lease ended and its span's
// windows closed, or until Run stops.
func (pr *Partitioned) runPartition(pt *partition) {
	l := pt.lease
	ctx, cancel := context.WithCancel(pr.base)
	defer cancel()
	var wg sync.WaitGroup
	rollCtx, stopRoll := context.WithCancel(context.Background())
	wg.Go(func() { _ = pt.roll.Run(rollCtx) })
	srcCtx, stopSrc := context.WithCancel(ctx)
	srcDone := make(chan struct{})
	wg.Go(func() {
		defer close(srcDone)
		for {
			err := pr.src(srcCtx, l.Partition, func(b *proto.Batch) { pr.add(pt, b) })
			if srcCtx.Err() != nil {
				return
			}
			pr.srcErrors.Inc()
			pr.logger.Warn("partition source stopped; restarting it", "partition", l.Partition, "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-srcCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
	select {
	case <-l.Done():
		// Keep the span's windows until they close, then stop.
		closeAt := time.Unix(0, ceilTo(l.Until().UnixNano(), pr.w)+int64(pr.cfg.Lateness))
		t := time.NewTimer(time.Until(closeAt))
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	case <-ctx.Done():
	}
	stopSrc()
	<-srcDone
	stopRoll()
	wg.Wait()
	pt.roll.Advance(time.Now())
	pt.roll.Flush() // what is left is outside the span (or, on Run's stop, partial)
	pr.mu.Lock()
	st := pt.roll.Stats()
	st.Groups, st.Instances, st.Series = 0, 0, 0 // sizes count live partitions only
	pr.done = addStats(pr.done, st)
	delete(pr.parts, l)
	pr.mu.Unlock()
}

// add merges a batch of pt's partition if its window lies in the lease's span.
func (pr *Partitioned) add(pt *partition, b *proto.Batch) {
	start := floorDiv(b.End-1, pr.w) * pr.w
	if start < pt.fromCut {
		pr.skipped[SkipBeforeSpan].Inc()
		return
	}
	if pt.lease.Released() && start >= ceilTo(pt.lease.Until().UnixNano(), pr.w) {
		pr.skipped[SkipAfterSpan].Inc()
		return
	}
	pt.roll.Add(b)
}

// emitFiltered publishes a window of pt's rollup if it lies in the lease's span.
func (pr *Partitioned) emitFiltered(pt *partition, w *proto.Window) {
	start := w.StartMs * int64(time.Millisecond)
	if start < pt.fromCut || start >= ceilTo(pt.lease.Until().UnixNano(), pr.w) {
		pr.discarded.Inc()
		return
	}
	pr.emit(w)
}

// Run waits until ctx is done, then stops every partition at once (a partition whose lease is
// still held flushes its open windows of the span, partial ones included) and waits for them.
// Stop the Leases first (releasing the leases) and wait for Wait to let partitions wind down
// without loss.
func (pr *Partitioned) Run(ctx context.Context) error {
	<-ctx.Done()
	pr.mu.Lock()
	pr.stop()
	pr.mu.Unlock()
	pr.wg.Wait()
	return nil
}

// Wait waits until no partition runs (every lease ended and its windows closed), or until
// ctx is done.
func (pr *Partitioned) Wait(ctx context.Context) error {
	for {
		pr.mu.Lock()
		n := len(pr.parts)
		pr.mu.Unlock()
		if n == 0 {
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Running returns the number of partitions with a running rollup (held or winding down).
func (pr *Partitioned) Running() int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return len(pr.parts)
}

// Span is the span of windows a running partition publishes: the windows starting in
// [From, Until), the FromCut and UntilCut of the package documentation of partition.go.
type Span struct {
	// Partition is the partition.
	Partition int
	// From is the start of the first window published: the lease's From rounded up to the
	// window grid. Batches of earlier windows are skipped (SkipBeforeSpan).
	From time.Time
	// Until is the start of the first window not published: the lease's Until rounded up.
	// While the lease is held it moves forward with every renewal.
	Until time.Time
	// Held reports whether the lease is still held; a partition whose lease ended keeps
	// running until the windows of its span closed.
	Held bool
}

// Spans returns the spans of the running partitions, sorted by partition, then From. A
// partition appears once Acquire returned for its lease.
func (pr *Partitioned) Spans() []Span {
	pr.mu.Lock()
	out := make([]Span, 0, len(pr.parts))
	for _, pt := range pr.parts {
		held := !pt.lease.Released() // before Until, which is final once the lease ended
		out = append(out, Span{
			Partition: pt.lease.Partition,
			From:      time.Unix(0, pt.fromCut),
			Until:     time.Unix(0, ceilTo(pt.lease.Until().UnixNano(), pr.w)),
			Held:      held,
		})
	}
	pr.mu.Unlock()
	slices.SortFunc(out, func(a, b Span) int {
		if c := cmp.Compare(a.Partition, b.Partition); c != 0 {
			return c
		}
		return a.From.Compare(b.From)
	})
	return out
}

// PartitionStats are the totals of a Partitioned.
type PartitionStats struct {
	Stats            // summed over every partition's rollup, past and present
	Skipped          map[string]uint64
	WindowsDiscarded uint64 // windows outside a span, not published
	GapWindows       uint64 // window intervals between this worker's successive spans of a partition
}

// Stats returns the totals over all partitions, past and present.
func (pr *Partitioned) Stats() PartitionStats {
	pr.mu.Lock()
	st := addStats(Stats{}, pr.done)
	for _, pt := range pr.parts {
		st = addStats(st, pt.roll.Stats())
	}
	pr.mu.Unlock()
	ps := PartitionStats{Stats: st, Skipped: map[string]uint64{}, WindowsDiscarded: pr.discarded.Get(), GapWindows: pr.gaps.Get()}
	for r, c := range pr.skipped {
		ps.Skipped[r] = c.Get()
	}
	return ps
}

// Metrics returns the self-metrics: the herd_rollup_* totals summed over partitions and the
// herd_rollup_partition_* counters.
func (pr *Partitioned) Metrics() *metrics.Set { return pr.set }

// cachedStats returns Stats at most a second old, so a scrape sums the rollups once.
func (pr *Partitioned) cachedStats() Stats {
	pr.statsMu.Lock()
	defer pr.statsMu.Unlock()
	if time.Since(pr.statsAt) > time.Second {
		pr.statsLast = pr.Stats().Stats
		pr.statsAt = time.Now()
	}
	return pr.statsLast
}

func (pr *Partitioned) registerSums() {
	g := func(name string, f func(Stats) float64) {
		pr.set.NewGauge(name, func() float64 { return f(pr.cachedStats()) })
	}
	g("herd_rollup_batches_total", func(s Stats) float64 { return float64(s.Batches) })
	g("herd_rollup_batches_merged_total", func(s Stats) float64 { return float64(s.BatchesMerged) })
	for _, r := range batchReasons {
		g(`herd_rollup_batches_refused_total{reason="`+r+`"}`, func(s Stats) float64 { return float64(s.RefusedBy[r]) })
	}
	g("herd_rollup_samples_total", func(s Stats) float64 { return float64(s.Samples) })
	g("herd_rollup_batches_lost_total", func(s Stats) float64 { return float64(s.Lost) })
	g("herd_rollup_windows_emitted_total", func(s Stats) float64 { return float64(s.WindowsEmitted) })
	g("herd_rollup_groups", func(s Stats) float64 { return float64(s.Groups) })
	g("herd_rollup_instances", func(s Stats) float64 { return float64(s.Instances) })
	g("herd_rollup_series", func(s Stats) float64 { return float64(s.Series) })
}

// addStats returns a + b (sizes included).
func addStats(a, b Stats) Stats {
	sum := func(x, y map[string]uint64) map[string]uint64 {
		out := make(map[string]uint64, len(x)+len(y))
		for k, v := range x {
			out[k] += v
		}
		for k, v := range y {
			out[k] += v
		}
		return out
	}
	return Stats{
		Batches:             a.Batches + b.Batches,
		BatchesMerged:       a.BatchesMerged + b.BatchesMerged,
		RefusedBy:           sum(a.RefusedBy, b.RefusedBy),
		Samples:             a.Samples + b.Samples,
		SeriesRefused:       sum(a.SeriesRefused, b.SeriesRefused),
		Lost:                a.Lost + b.Lost,
		Forgotten:           sum(a.Forgotten, b.Forgotten),
		WindowsEmitted:      a.WindowsEmitted + b.WindowsEmitted,
		EmptyWindowsEmitted: a.EmptyWindowsEmitted + b.EmptyWindowsEmitted,
		TicksMissed:         a.TicksMissed + b.TicksMissed,
		Groups:              a.Groups + b.Groups,
		Instances:           a.Instances + b.Instances,
		Series:              a.Series + b.Series,
	}
}
