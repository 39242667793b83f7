package ingest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// TestIntakeWorkersKeepGroupOrder runs an intake with four workers on the batches of 16
// groups: every batch is handed on once, the batches of one group in the order they were
// published, and the handler sees batches of different groups at the same time.
func TestIntakeWorkersKeepGroupOrder(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	var (
		mu      sync.Mutex
		last    = map[string]uint64{}
		seen    int
		bad     []string
		active  int
		overlap bool
	)
	in, err := NewIntake(IntakeConfig{Workers: 4}, nil, nc, func(b *proto.Batch) {
		mu.Lock()
		active++
		overlap = overlap || active > 1
		if prev, ok := last[b.Service]; ok && b.Seq != prev+1 {
			bad = append(bad, fmt.Sprintf("%s: seq %d after %d", b.Service, b.Seq, prev))
		}
		last[b.Service] = b.Seq
		seen++
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // a handler that takes a while, so workers overlap
		mu.Lock()
		active--
		mu.Unlock()
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	<-in.Ready()
	const groups, batches = 16, 100
	for seq := range uint64(batches) {
		for g := range groups {
			svc := fmt.Sprintf("svc%d", g)
			if err := nc.Publish("herd.in."+svc+".1", encodeRED(t, svc, "1", seq)); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if seen != groups*batches {
			return fmt.Errorf("handled %d batches; want %d", seen, groups*batches)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Errorf("out of order: %s", b)
	}
	if !overlap {
		t.Errorf("the handler never ran twice at once; want workers in parallel")
	}
	if st := in.Stats(); st.Batches != groups*batches || st.Refused() != 0 {
		t.Errorf("got %d batches, %d refused; want %d, 0", st.Batches, st.Refused(), groups*batches)
	}
}
