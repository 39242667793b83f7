package lease

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/proto"
)

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
	wall time.Time // the Expires written (claims and renewals)
	rev  uint64
	err  error
	// After a failed compare-and-set, the key read back (see readBack).
	read    bool
	entry   jetstream.KeyValueEntry
	readErr error
}

// readBack re-reads key p after a failed compare-and-set, in case the watch is behind or the
// key aged out of the bucket; applyRead applies the result.
func (l *Manager) readBack(ctx context.Context, p int, r *kvResult) {
	cctx, cancel := l.opCtx(ctx)
	defer cancel()
	r.read = true
	r.entry, r.readErr = l.kv.Get(cctx, partKey(p))
}

// applyRead applies what readBack read of key p.
func (l *Manager) applyRead(p int, r *kvResult) {
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

// step runs one round: expire, probe silent workers, rebalance, claim (the renewer renews).
// The writes of each phase are issued concurrently (inParallel) and their results applied in
// partition order afterwards.
func (l *Manager) step(ctx context.Context, now time.Time) {
	for _, ls := range l.sortedOwned() {
		_, _, deadline := ls.state()
		if now.Before(deadline) {
			continue
		}
		// A renewal still in flight may yet be applied: its compare-and-set then proves that
		// nobody wrote the key meanwhile, and the lease goes on. Until stays at the last
		// acknowledged Expires, so nothing beyond it is published while we wait; a later
		// owner's From is at least the Expires it replaced, ours or the renewal's. Wait at
		// most TTL past the deadline.
		if ls.renewing.Load() && now.Before(deadline.Add(l.cfg.TTL)) {
			continue
		}
		l.lose(ls, MoveLostExpired)
	}
	l.probeSilent(ctx, now)
	n := l.liveWorkers(now)
	target := (proto.Partitions + n - 1) / n
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
	off := int(h.Sum32() % uint32(proto.Partitions))
	// Claim as many as are missing at once; retry with the next candidates for the claims
	// that failed.
	i := 0
	for ctx.Err() == nil {
		need := target - len(l.owned)
		var ps []int
		var reasons []string
		for ; i < proto.Partitions && len(ps) < need; i++ {
			p := (off + i) % proto.Partitions
			if l.owned[p] != nil {
				continue
			}
			v := l.parts[p]
			switch {
			case !v.exists || v.val.Worker == "":
				ps, reasons = append(ps, p), append(reasons, MoveAcquiredFree)
			case time.Since(v.seen) >= l.cfg.TTL:
				ps, reasons = append(ps, p), append(reasons, MoveAcquiredExpired)
			case l.isDead(v.val.Worker):
				ps, reasons = append(ps, p), append(reasons, MoveAcquiredExpired)
			}
		}
		if len(ps) == 0 {
			return
		}
		l.claimAll(ctx, ps, reasons)
	}
}

func (l *Manager) encode(epoch uint64, worker string, expires time.Time) []byte {
	b, err := json.Marshal(leaseValue{Worker: worker, Epoch: epoch, ExpiresMs: expires.UnixMilli()})
	if err != nil {
		panic("BUG: cannot encode a lease value: " + err.Error())
	}
	return b
}

// expiry returns the wall-clock and monotonic ends of a lease written at sent. The wall value
// is truncated to the millisecond it is stored with, so the owner and the next owner compute
// their cuts from the same number.
func (l *Manager) expiry(sent time.Time) (wall, deadline time.Time) {
	d := l.cfg.TTL - l.cfg.Margin
	wallMs := sent.Add(d).UnixMilli()
	return time.UnixMilli(wallMs), sent.Add(d)
}

// ceilMilli returns t rounded up to the millisecond, the precision Expires is stored with.
func ceilMilli(t time.Time) time.Time {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return time.UnixMilli(ms)
}

// claimExpiry returns the Expires a claim sent at sent writes over the key v: the usual
// expiry, but never before the previous owner's Expires. A lease's Until is then never
// before its From, whatever the clocks of the two workers, so every Expires the lease
// writes, and so the next owner's From, is at least the previous owner's Until.
func (l *Manager) claimExpiry(sent time.Time, v keyView) time.Time {
	wall, _ := l.expiry(sent)
	if prev := time.UnixMilli(v.val.ExpiresMs); v.exists && prev.After(wall) {
		return prev
	}
	return wall
}

// claimAll tries to acquire partitions ps (for reasons), each with a compare-and-set on the
// revision observed before the step's writes.
func (l *Manager) claimAll(ctx context.Context, ps []int, reasons []string) {
	views := make([]keyView, len(ps))
	for i, p := range ps {
		views[i] = l.parts[p]
	}
	res := make([]kvResult, len(ps))
	inParallel(len(ps), func(i int) {
		p, v, r := ps[i], views[i], &res[i]
		r.sent = time.Now()
		r.wall = l.claimExpiry(r.sent, v)
		data := l.encode(v.val.Epoch+1, l.cfg.WorkerID, r.wall)
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
func (l *Manager) applyClaim(p int, v keyView, reason string, r *kvResult) {
	if r.err != nil {
		if !errors.Is(r.err, jetstream.ErrKeyExists) && !errors.Is(r.err, jetstream.ErrKeyRevisionMismatch) {
			l.kvErrors.Inc()
			l.logger.Debug("cannot claim partition", "partition", p, "err", r.err)
		}
		l.applyRead(p, r)
		return
	}
	ls := &Lease{partition: p, epoch: v.val.Epoch + 1, done: make(chan struct{})}
	_, deadline := l.expiry(r.sent)
	wall := r.wall
	// The previous lease, at the revision we replaced, ended no later than its Expires.
	from := time.Now()
	if v.exists {
		ls.previous = time.UnixMilli(v.val.ExpiresMs)
		if ls.previous.After(from) {
			from = ls.previous
		}
	}
	ls.from = from
	ls.rev, ls.sent, ls.deadline = r.rev, r.sent, deadline // not shared yet: no lock
	ls.until.Store(wall.UnixNano())
	l.parts[p] = keyView{exists: true, rev: r.rev, val: leaseValue{Worker: l.cfg.WorkerID, Epoch: ls.epoch, ExpiresMs: wall.UnixMilli()}, seen: r.sent}
	l.owned[p] = ls
	l.ownedChanged()
	l.moves[reason].Inc()
	l.logger.Info("partition acquired", "partition", p, "epoch", ls.epoch, "reason", reason, "previous_owner", v.val.Worker)
	l.onAcquire(ls)
}

// releaseAll ends held leases now and writes their keys free, so other workers can claim
// them at once. Each lease's Until is fixed before its write is sent (see releaseUntil).
func (l *Manager) releaseAll(ctx context.Context, lss []*Lease, reason string) {
	if len(lss) == 0 {
		return
	}
	untils := make([]time.Time, len(lss))
	for i, ls := range lss {
		until := releaseUntil(ls, time.Now())
		ls.end(until)
		delete(l.owned, ls.partition)
		untils[i] = until
	}
	l.ownedChanged()
	res := make([]kvResult, len(lss))
	inParallel(len(lss), func(i int) {
		// Wait for a renewal in flight: the release is compare-and-set on its revision.
		lss[i].write.Lock()
		defer lss[i].write.Unlock()
		l.releaseOne(ctx, lss[i], untils[i], &res[i])
	})
	for i, ls := range lss {
		r := &res[i]
		if r.err != nil {
			l.kvErrors.Inc()
			l.logger.Debug("cannot write a released lease; it expires instead", "partition", ls.partition, "err", r.err)
		} else if v := &l.parts[ls.partition]; r.rev > v.rev {
			*v = keyView{exists: true, rev: r.rev, val: leaseValue{Epoch: ls.epoch, ExpiresMs: untils[i].UnixMilli()}, seen: time.Now()}
		}
		l.moves[reason].Inc()
		l.logger.Info("partition released", "partition", ls.partition, "epoch", ls.epoch, "reason", reason)
		l.onRelease(ls)
	}
}

// releaseAttempts bounds the compare-and-sets of one release (see releaseOne).
const releaseAttempts = 3

// releaseOne writes the key of ls, which has ended at until, free: a compare-and-set on the
// revision last known, with ls.write held. A renewal of this lease may have been applied
// without this worker knowing its revision: one that timed out, or was canceled when the
// worker began to stop, after it was sent. The compare-and-set then fails, and the key, read
// back, still holds this lease (this worker, this epoch): nobody else wrote it, so the
// release is sent again on the revision read. A key holding anything else is left alone; so
// is a key that cannot be read: the lease then expires instead.
func (l *Manager) releaseOne(ctx context.Context, ls *Lease, until time.Time, r *kvResult) {
	rev, _, _ := ls.state()
	val := l.encode(ls.epoch, "", until)
	for attempt := 1; ; attempt++ {
		cctx, cancel := l.opCtx(ctx)
		r.rev, r.err = l.kv.Update(cctx, partKey(ls.partition), val, rev)
		cancel()
		if !errors.Is(r.err, jetstream.ErrKeyRevisionMismatch) || attempt == releaseAttempts {
			return
		}
		var rb kvResult
		l.readBack(ctx, ls.partition, &rb)
		if rb.readErr != nil || rb.entry.Operation() != jetstream.KeyValuePut {
			return
		}
		if v, ok := l.decode(rb.entry.Value()); !ok || v.Worker != l.cfg.WorkerID || v.Epoch != ls.epoch {
			return
		}
		// A read served by a replica that lags may return the revision just refused: the
		// next attempt then fails the same way and reads again.
		rev = max(rev, rb.entry.Revision())
	}
}

// releaseUntil returns the Until of ls released at now, the Expires its release writes: now
// (rounded up to the stored millisecond), but never later than what others were told (the
// lease's Until) and never before the lease's From. A lease taken over from an owner whose
// Expires lay ahead (a dead worker's, claimed at once) begins in the future; released
// before that, it ends where it began, with an empty span. Ending it earlier would let the
// next owner begin before the previous owner's Until: both would publish the windows between.
func releaseUntil(ls *Lease, now time.Time) time.Time {
	until := time.UnixMilli(now.UnixMilli() + 1)
	if u := ls.Until(); until.After(u) {
		until = u
	}
	if from := ceilMilli(ls.From()); until.Before(from) {
		until = from
	}
	return until
}

// lose ends a lease this worker can no longer count on: its Until stays the last Expires
// written, which no later owner's From precedes.
func (l *Manager) lose(ls *Lease, reason string) {
	ls.end(ls.Until())
	delete(l.owned, ls.partition)
	l.ownedChanged()
	l.moves[reason].Inc()
	l.logger.Warn("partition lease lost", "partition", ls.partition, "epoch", ls.epoch, "reason", reason)
	l.onRelease(ls)
}
