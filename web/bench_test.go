package web

import (
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkApplyWindow measures the hub's per-window work: summarize, ring insert, encode
// once and queue to 100 clients watching the service.
func BenchmarkApplyWindow(b *testing.B) {
	srv, err := New(testConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for range 100 {
		c := &client{srv: srv, service: "checkout", notify: make(chan struct{}, 1), done: make(chan struct{})}
		srv.clients[c] = struct{}{}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	g := demoGroups()[0]
	w := makeWindow(rng, g, 20, 1000, 250*time.Millisecond)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.EndMs = int64(i+1) * 250
		srv.apply(input{w: w})
		if i%512 == 0 {
			for c := range srv.clients {
				c.queue = c.queue[:0]
			}
		}
	}
}

// BenchmarkEncodeWindowEvent measures encoding one window event.
func BenchmarkEncodeWindowEvent(b *testing.B) {
	p := point{EndMs: 1_780_000_000_000, Instances: 20, Requests: 512, Errors: 3, P50: 0.0301, P90: 0.0442, P99: 0.0611, ClosedMs: 1_780_000_000_500}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = encodeWindowEvent(uint64(i), "checkout", "1.4.2", &p)
	}
}

// BenchmarkSnapshot measures a one-service snapshot of 5 minutes of two groups.
func BenchmarkSnapshot(b *testing.B) {
	srv, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	f := newFeeder(srv, 250*time.Millisecond, demoGroups()[:2]...)
	end := time.Now().UnixMilli() / 250 * 250
	for t := end - 300_000; t <= end; t += 250 {
		f.mu.Lock()
		for _, g := range f.groups {
			srv.apply(input{w: makeWindow(f.rng, g, g.instances, t, 250*time.Millisecond)})
		}
		f.mu.Unlock()
	}
	b.ReportAllocs()
	for b.Loop() {
		srv.mu.RLock()
		sn := srv.snapshotLocked("checkout", 300_000, time.Now())
		srv.mu.RUnlock()
		b.SetBytes(int64(len(sn.encode(250))))
	}
}
