package lease

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/natstest"
)

// runJetStream starts a nats-server with JetStream for the test and connects to it.
func runJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t, natstest.Options{JetStream: true})))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// idleManager returns a manager of worker id bound to the bucket but not running: the test
// drives its claims, renewals and releases. acquired receives its leases.
func idleManager(t *testing.T, js jetstream.JetStream, id string, acquired *[]*Lease) *Manager {
	t.Helper()
	cfg := DefaultConfig()
	cfg.WorkerID = id
	m, err := New(cfg, nil, js, func(l *Lease) { *acquired = append(*acquired, l) }, func(*Lease) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.bind(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m
}

// load reads key p into m's view, as the watch would.
func (l *Manager) load(ctx context.Context, p int) {
	var r kvResult
	l.readBack(ctx, p, &r)
	l.applyRead(p, &r)
}

// stored returns the Expires key p holds.
func stored(t *testing.T, m *Manager, p int) time.Time {
	t.Helper()
	v, _ := held(t, m, p)
	return time.UnixMilli(v.ExpiresMs)
}

// onlyLease returns the one lease in ls.
func onlyLease(t *testing.T, who string, ls []*Lease) *Lease {
	t.Helper()
	if len(ls) != 1 {
		t.Fatalf("%s acquired %d leases; want 1", who, len(ls))
	}
	return ls[0]
}

// TestReleaseBeforeFromKeepsSpansApart replays a hand-over seen when a NATS node went down:
// w0's connection was gone for a moment, w1 found it dead and took its lease over at once,
// from w0's Until, which lay ahead (w0 had renewed just before); w0's heartbeat came back, so
// w1 released the lease to rebalance, before it began; w2 (here; it was w0 itself) claimed it
// as free. Had the release ended the lease at the release instant, w2's From would have
// been before w0's Until, and the windows between published by both (w0's lease winds down
// publishing its span).
func TestReleaseBeforeFromKeepsSpansApart(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	ctx := t.Context()
	var got1, got2 []*Lease
	w1 := idleManager(t, js, "w1", &got1)
	w2 := idleManager(t, js, "w2", &got2)
	const p = 7

	// w0 renewed just now: its Until is TTL − Margin ahead.
	cfg := DefaultConfig()
	until0 := time.UnixMilli(time.Now().Add(cfg.TTL - cfg.Margin).UnixMilli())
	if _, err := w1.kv.Put(ctx, partKey(p), w1.encode(1, "w0", until0)); err != nil {
		t.Fatal(err)
	}
	w1.load(ctx, p)
	w1.dead["w0"] = time.Now() // a probe found its connection gone
	w1.claimAll(ctx, []int{p}, []string{MoveAcquiredExpired})
	l1 := onlyLease(t, "w1", got1)
	if !l1.From().Equal(until0) {
		t.Fatalf("w1's lease begins %s; want w0's Until %s", l1.From().Format(time.StampMilli), until0.Format(time.StampMilli))
	}

	w1.releaseAll(ctx, []*Lease{l1}, MoveReleased)
	if l1.Until().Before(l1.From()) {
		t.Errorf("w1's lease released before it began ends %s, before its From %s", l1.Until().Format(time.StampMilli), l1.From().Format(time.StampMilli))
	}
	if s := stored(t, w1, p); s.Before(until0) {
		t.Errorf("the release wrote Expires %s, before w0's Until %s", s.Format(time.StampMilli), until0.Format(time.StampMilli))
	}

	w2.load(ctx, p)
	w2.claimAll(ctx, []int{p}, []string{MoveAcquiredFree})
	l2 := onlyLease(t, "w2", got2)
	if l2.From().Before(until0) {
		t.Errorf("w2's lease begins %s, before w0's lease ends %s: both publish the windows between",
			l2.From().Format(time.StampMilli), until0.Format(time.StampMilli))
	}
	if l2.From().Before(l1.Until()) {
		t.Errorf("w2's lease begins %s, before w1's lease ends %s", l2.From().Format(time.StampMilli), l1.Until().Format(time.StampMilli))
	}
}

// TestReleaseUntil checks the end of a released lease: the release instant rounded up to
// the millisecond, but never after the lease's Until and never before its From.
func TestReleaseUntil(t *testing.T) {
	t.Parallel()
	t0 := time.UnixMilli(1_800_000_000_000)
	ms := time.Millisecond
	lease := func(from, until time.Time) *Lease {
		ls := &Lease{from: from, done: make(chan struct{})}
		ls.until.Store(until.UnixNano())
		return ls
	}
	for _, c := range []struct {
		name             string
		from, until, now time.Time
		want             time.Time
	}{
		{"held", t0, t0.Add(2500 * ms), t0.Add(time.Second), t0.Add(time.Second + ms)},
		{"past its until", t0, t0.Add(2500 * ms), t0.Add(3 * time.Second), t0.Add(2500 * ms)},
		{"before its from", t0.Add(2 * time.Second), t0.Add(2500 * ms), t0, t0.Add(2 * time.Second)},
		{"before a from between milliseconds", t0.Add(2*time.Second + 300*time.Microsecond), t0.Add(2500 * ms), t0, t0.Add(2*time.Second + ms)},
	} {
		if got := releaseUntil(lease(c.from, c.until), c.now); !got.Equal(c.want) {
			t.Errorf("%s: got %s; want %s", c.name, got.Format(time.StampMicro), c.want.Format(time.StampMicro))
		}
	}
}

// TestExpiresNeverBeforeFrom takes over a lease whose Until lies further ahead than a lease
// of this worker would last (the previous owner's clock is ahead): the claim and the
// renewals write Expires no earlier than that Until, so whoever claims the partition after
// this worker lost it begins after the previous owner's span.
func TestExpiresNeverBeforeFrom(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	ctx := t.Context()
	var got []*Lease
	w1 := idleManager(t, js, "w1", &got)
	const p = 3
	until0 := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli()) // w0's clock is a minute ahead
	if _, err := w1.kv.Put(ctx, partKey(p), w1.encode(4, "w0", until0)); err != nil {
		t.Fatal(err)
	}
	w1.load(ctx, p)
	w1.dead["w0"] = time.Now()
	w1.claimAll(ctx, []int{p}, []string{MoveAcquiredExpired})
	l1 := onlyLease(t, "w1", got)
	if l1.Until().Before(l1.From()) {
		t.Errorf("after the claim: Until %s before From %s", l1.Until().Format(time.StampMilli), l1.From().Format(time.StampMilli))
	}
	if s := stored(t, w1, p); s.Before(until0) {
		t.Errorf("the claim wrote Expires %s, before w0's Until %s", s.Format(time.StampMilli), until0.Format(time.StampMilli))
	}

	var r kvResult
	w1.renewOne(ctx, l1, &r)
	if r.err != nil {
		t.Fatal(r.err)
	}
	w1.applyRenew(l1, &r)
	if l1.Until().Before(until0) {
		t.Errorf("after a renewal: Until %s before w0's Until %s", l1.Until().Format(time.StampMilli), until0.Format(time.StampMilli))
	}
	if s := stored(t, w1, p); s.Before(until0) {
		t.Errorf("the renewal wrote Expires %s, before w0's Until %s", s.Format(time.StampMilli), until0.Format(time.StampMilli))
	}
}

// held returns the lease value key p holds and its revision.
func held(t *testing.T, m *Manager, p int) (leaseValue, uint64) {
	t.Helper()
	e, err := m.kv.Get(t.Context(), partKey(p))
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.decode(e.Value())
	if !ok {
		t.Fatalf("key %s holds %q; want a lease value", partKey(p), e.Value())
	}
	return v, e.Revision()
}

// checkReleasedFree checks that the release of ls wrote its key free, with the lease's final
// Until as Expires, and counted no KV error.
func checkReleasedFree(t *testing.T, m *Manager, ls *Lease) {
	t.Helper()
	v, _ := held(t, m, ls.Partition())
	if v.Worker != "" || v.Epoch != ls.Epoch() || !time.UnixMilli(v.ExpiresMs).Equal(ls.Until()) {
		t.Errorf("after the release key %s holds worker %q epoch %d expires %s; want it free at epoch %d, expiring at the lease's Until %s",
			partKey(ls.Partition()), v.Worker, v.Epoch, time.UnixMilli(v.ExpiresMs).Format(time.StampMilli), ls.Epoch(), ls.Until().Format(time.StampMilli))
	}
	if n := m.kvErrors.Get(); n != 0 {
		t.Errorf("got %d KV errors; want none", n)
	}
}

// TestReleaseRightAfterRenewal replays a rebalance seen on a three-node cluster: a worker
// that held every partition released two thirds of them when two workers joined, in the
// round its renewals were in flight. Each release waited for its lease's write lock and got
// it as soon as the renewal was answered, before the renewer recorded the revision written:
// the release's compare-and-set on the revision the renewal had replaced failed, the keys
// kept the old owner's leases, and the partitions had no owner until they expired, TTL
// later. The renewal now records its revision before it lets go of the lock.
func TestReleaseRightAfterRenewal(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	ctx := t.Context()
	var got []*Lease
	w1 := idleManager(t, js, "w1", &got)
	const p = 5
	w1.load(ctx, p)
	w1.claimAll(ctx, []int{p}, []string{MoveAcquiredFree})
	l1 := onlyLease(t, "w1", got)

	var r kvResult
	w1.renewOne(ctx, l1, &r) // answered and the lock let go; the renewer has yet to apply it
	if r.err != nil {
		t.Fatal(r.err)
	}
	if rev, _, _ := l1.state(); rev != r.rev {
		t.Errorf("the renewal wrote revision %d but the lease knows revision %d when its write lock is let go", r.rev, rev)
	}
	w1.releaseAll(ctx, []*Lease{l1}, MoveReleased)
	w1.applyRenew(l1, &r)
	checkReleasedFree(t, w1, l1)
}

// TestReleaseAfterUnansweredRenewal releases a lease whose last renewal was applied though
// the worker never learned its revision: it timed out, or, as when a worker stops, it was
// canceled after it was sent. The key still holds this worker's lease, so the release is
// sent again on the revision read back, and the partition is free at once instead of
// ownerless until the lease expires. A key another worker holds is left alone.
func TestReleaseAfterUnansweredRenewal(t *testing.T) {
	t.Parallel()
	js := runJetStream(t)
	ctx := t.Context()
	var got1, got2 []*Lease
	w1 := idleManager(t, js, "w1", &got1)
	w2 := idleManager(t, js, "w2", &got2)
	const p, q = 9, 10
	w1.load(ctx, p)
	w1.load(ctx, q)
	w1.claimAll(ctx, []int{p, q}, []string{MoveAcquiredFree, MoveAcquiredFree})
	if len(got1) != 2 {
		t.Fatalf("w1 acquired %d leases; want 2", len(got1))
	}
	lp, lq := got1[0], got1[1]

	// The renewal of p was applied, but its answer never reached w1.
	rev, sent, _ := lp.state()
	wall, _ := w1.expiry(sent.Add(w1.cfg.Heartbeat))
	if _, err := w1.kv.Update(ctx, partKey(p), w1.encode(lp.Epoch(), "w1", wall), rev); err != nil {
		t.Fatal(err)
	}
	// q was taken over by w2 (say w1 was thought dead): its key is w2's now.
	revQ, _, _ := lq.state()
	if _, err := w2.kv.Update(ctx, partKey(q), w2.encode(lq.Epoch()+1, "w2", wall), revQ); err != nil {
		t.Fatal(err)
	}

	w1.releaseAll(ctx, []*Lease{lp}, MoveReleased)
	checkReleasedFree(t, w1, lp)
	w2.load(ctx, p)
	w2.claimAll(ctx, []int{p}, []string{MoveAcquiredFree})
	if l2 := onlyLease(t, "w2", got2); l2.From().Before(lp.Until()) {
		t.Errorf("w2's lease begins %s, before w1's released lease ends %s", l2.From().Format(time.StampMilli), lp.Until().Format(time.StampMilli))
	}

	_, before := held(t, w1, q)
	w1.releaseAll(ctx, []*Lease{lq}, MoveReleased)
	if v, after := held(t, w1, q); v.Worker != "w2" || after != before {
		t.Errorf("after w1's release key %s holds worker %q at revision %d; want w2's lease at revision %d untouched", partKey(q), v.Worker, after, before)
	}
	if n := w1.kvErrors.Get(); n != 1 {
		t.Errorf("got %d KV errors; want 1, the release of the lease w2 holds", n)
	}
}
