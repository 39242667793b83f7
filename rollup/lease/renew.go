package lease

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lostLease is a held lease the renewer found written by someone else, with the key as read
// back, for Run's goroutine to end and apply.
type lostLease struct {
	ls *Lease
	r  kvResult
}

// renew runs the renewer until ctx is done: every Tick it renews the worker's heartbeat and
// each held lease whose last renewal was sent Heartbeat ago or more. It runs on a goroutine
// of its own so that renewals never wait for claims, callbacks or the watch on Run's
// goroutine, and each write runs on a goroutine of its own (one at most per lease and one
// for the heartbeat) so that a slow answer holds up only its own lease. It touches only the
// leases (under their locks) and hands leases it finds taken to Run through l.lost. It
// returns after every write it started returned.
func (l *Manager) renew(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var hbSent atomic.Int64 // unix nanos of the last successful heartbeat
	var hbBusy atomic.Bool
	tick := time.NewTicker(l.cfg.Tick)
	defer tick.Stop()
	for {
		now := time.Now()
		if now.UnixNano()-hbSent.Load() >= int64(l.cfg.Heartbeat) && hbBusy.CompareAndSwap(false, true) {
			wg.Go(func() {
				defer hbBusy.Store(false)
				if r := l.writeHeartbeat(ctx); r.err != nil {
					l.kvErrors.Inc()
					l.logger.Debug("cannot renew the worker heartbeat", "err", r.err)
				} else {
					hbSent.Store(r.sent.UnixNano())
				}
			})
		}
		if held := l.held.Load(); held != nil {
			for _, ls := range *held {
				if _, sent, _ := ls.state(); ls.Released() || now.Sub(sent) < l.cfg.Heartbeat || !ls.renewing.CompareAndSwap(false, true) {
					continue
				}
				wg.Go(func() {
					defer ls.renewing.Store(false)
					var r kvResult
					l.renewOne(ctx, ls, &r)
					l.applyRenew(ls, &r)
				})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// writeHeartbeat writes the worker's heartbeat key; it touches no state.
func (l *Manager) writeHeartbeat(ctx context.Context) kvResult {
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	r := kvResult{sent: time.Now()}
	r.rev, r.err = l.kv.Put(cctx, workerKey(l.cfg.WorkerID), []byte(strconv.FormatInt(r.sent.UnixMilli(), 10)))
	return r
}

// renewOne writes the renewal of ls, a compare-and-set on the revision last known. A
// renewal may take until TTL past the lease's deadline (step keeps a lease whose renewal is
// in flight that long): giving up earlier only to send the same write again would load a
// slow server more.
func (l *Manager) renewOne(ctx context.Context, ls *Lease, r *kvResult) {
	ls.write.Lock()
	defer ls.write.Unlock()
	if ls.Released() {
		r.err = errReleased
		return
	}
	rev, _, deadline := ls.state()
	r.sent = time.Now()
	// Never before the Until already acknowledged (a wall clock stepped back): Until, and
	// the span published, only grow while the lease is held.
	r.wall, _ = l.expiry(r.sent)
	if u := ls.Until(); u.After(r.wall) {
		r.wall = u
	}
	cctx, cancel := context.WithTimeout(ctx, max(l.cfg.Heartbeat, time.Until(deadline.Add(l.cfg.TTL))))
	r.rev, r.err = l.kv.Update(cctx, partKey(ls.partition), l.encode(ls.epoch, l.cfg.WorkerID, r.wall), rev)
	cancel()
	switch {
	case r.err == nil:
		// Record the revision written before the write lock is released: a release waiting
		// for the lock compare-and-sets on it, and would fail on the one this renewal
		// replaced. Until and the deadline move in applyRenew.
		ls.adopt(r.rev)
	case errors.Is(r.err, jetstream.ErrKeyRevisionMismatch):
		l.readBack(ctx, ls.partition, r)
	}
}

// decode decodes a lease value; ok is false for a value that is not one.
func (l *Manager) decode(b []byte) (v leaseValue, ok bool) {
	return v, json.Unmarshal(b, &v) == nil
}

// errReleased marks a renewal not sent because the lease ended meanwhile.
var errReleased = errors.New("lease ended")

// applyRenew applies the renewal of a held lease; it is safe for concurrent use.
func (l *Manager) applyRenew(ls *Lease, r *kvResult) {
	switch {
	case errors.Is(r.err, errReleased):
	case errors.Is(r.err, jetstream.ErrKeyRevisionMismatch):
		if r.read && r.readErr == nil && r.entry.Operation() == jetstream.KeyValuePut {
			if v, ok := l.decode(r.entry.Value()); ok && v.Worker == l.cfg.WorkerID && v.Epoch == ls.epoch {
				// An earlier renewal of ours that timed out was applied: adopt its
				// revision and renew again on the next round.
				ls.adopt(r.entry.Revision())
				return
			}
		}
		if r.read && r.readErr != nil && !errors.Is(r.readErr, jetstream.ErrKeyNotFound) {
			l.kvErrors.Inc() // cannot tell: the deadline decides
			return
		}
		// Someone else wrote the key: Run's goroutine ends the lease. The channel holds
		// one entry per partition, so this never blocks for long.
		select {
		case l.lost <- lostLease{ls: ls, r: *r}:
		default:
			l.kvErrors.Inc() // Run is behind; the deadline or the watch ends the lease
		}
	case r.err != nil:
		// A timeout may or may not have been applied: keep the old deadline; if the write
		// landed, the watch or the next renewal's read-back adopts its revision.
		l.kvErrors.Inc()
		l.logger.Debug("cannot renew lease", "partition", ls.partition, "err", r.err)
	default:
		_, deadline := l.expiry(r.sent)
		gap := ls.renewed(r.rev, r.sent, r.wall, deadline)
		if gap >= 2*l.cfg.Heartbeat {
			l.renewLate.Inc()
		}
		for {
			old := l.renewGapMax.Load()
			if int64(gap) <= old || l.renewGapMax.CompareAndSwap(old, int64(gap)) {
				break
			}
		}
	}
}

// Results of herd_rollup_lease_probes_total.
const (
	probeAlive   = "alive"   // the worker answered or is subscribed: it keeps its leases
	probeDead    = "dead"    // no subscriber: the worker's connection is gone
	probeTimeout = "timeout" // no answer in time: treated as alive
)

var probeResults = []string{probeAlive, probeDead, probeTimeout}

// aliveSubject is the subject on which worker id answers probes while its NATS connection is
// up.
func (l *Manager) aliveSubject(id string) string {
	return "herd.leases." + l.cfg.Bucket + ".alive." + id
}

// subscribeAlive answers the probes of other workers; the answer is sent from the NATS
// client's own goroutine, so a busy worker answers as long as its connection is up.
func (l *Manager) subscribeAlive() (*nats.Subscription, error) {
	nc := l.js.Conn()
	sub, err := nc.Subscribe(l.aliveSubject(l.cfg.WorkerID), func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		l.kvErrors.Inc()
		return nil, err
	}
	return sub, nil
}

// isDead reports whether a probe found worker id's connection gone.
func (l *Manager) isDead(id string) bool {
	_, dead := l.dead[id]
	return dead
}

// probeSilent asks NATS, for every other worker whose heartbeat has not changed for
// ProbeAfter (but less than TTL, after which its leases expire anyway), whether it is still
// subscribed to its probe subject. The server answers "no responders" at once when the
// worker's connection is gone: the worker is then dead and its leases are claimed without
// waiting for TTL. That is safe even if the worker runs on, cut off: a claim's From is no
// earlier than the Expires the previous owner wrote, which bounds what it may publish.
func (l *Manager) probeSilent(ctx context.Context, now time.Time) {
	var ids []string
	for id, v := range l.workers {
		if age := now.Sub(v.seen); age >= l.cfg.ProbeAfter && age < l.cfg.TTL && !l.isDead(id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	nc := l.js.Conn()
	res := make([]error, len(ids))
	inParallel(len(ids), func(i int) {
		cctx, cancel := context.WithTimeout(ctx, l.cfg.Tick)
		defer cancel()
		_, res[i] = nc.RequestWithContext(cctx, l.aliveSubject(ids[i]), nil)
	})
	for i, id := range ids {
		switch {
		case res[i] == nil:
			l.probes[probeAlive].Inc()
		case errors.Is(res[i], nats.ErrNoResponders):
			l.probes[probeDead].Inc()
			l.dead[id] = now
			l.logger.Info("worker's connection is gone; taking its leases over", "worker", id)
		default:
			l.probes[probeTimeout].Inc()
		}
	}
}
