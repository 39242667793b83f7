package node

import (
	"slices"
	"sync"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// TestGateHoldsThenReleasesInOrder checks that inputs arriving during a replay are applied
// after it, in arrival order, and directly once the gate is open; past the bound they are
// counted, not held.
func TestGateHoldsThenReleasesInOrder(t *testing.T) {
	lightParallel(t)
	g := gate{dropped: metrics.NewSet().NewCounter("dropped_total")}
	var mu sync.Mutex
	var got []int
	add := func(i int) func() { return func() { mu.Lock(); got = append(got, i); mu.Unlock() } }
	for i := range 5 {
		g.do(add(i))
	}
	if len(got) != 0 {
		t.Fatalf("applied %v before the release; want nothing", got)
	}
	if g.isOpen() {
		t.Fatal("gate open before the release")
	}
	g.release()
	if !g.isOpen() {
		t.Fatal("gate closed after the release")
	}
	g.do(add(5))
	if want := []int{0, 1, 2, 3, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("got %v; want %v", got, want)
	}

	full := gate{dropped: metrics.NewSet().NewCounter("dropped_total"), held: make([]func(), maxHeld)}
	full.do(add(6))
	if full.dropped.Get() != 1 || len(full.held) != maxHeld {
		t.Errorf("over the bound: dropped %d, held %d; want 1 dropped and %d held", full.dropped.Get(), len(full.held), maxHeld)
	}
}
