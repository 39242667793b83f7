package lease

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/natstest"
)

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
	e, err := m.kv.Get(t.Context(), partKey(p))
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.decode(e.Value())
	if !ok {
		t.Fatalf("key %s holds %q; want a lease value", partKey(p), e.Value())
	}
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
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t, natstest.Options{JetStream: true})))
	if err != nil {
		t.Fatal(err)
	}
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
	js, err := jetstream.New(natstest.Connect(t, natstest.RunServer(t, natstest.Options{JetStream: true})))
	if err != nil {
		t.Fatal(err)
	}
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
