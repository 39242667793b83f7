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

// TestLimiterBoundsHandlersOverIntakes runs three intakes of four workers each, sharing a
// Limiter of two slots, on the batches of 12 groups: every batch is handled, and never more
// than two handlers run at once over all intakes.
func TestLimiterBoundsHandlersOverIntakes(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	lim, err := NewLimiter(2)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu           sync.Mutex
		seen, active int
		peak         int
	)
	handle := func(*proto.Batch) {
		mu.Lock()
		active++
		peak = max(peak, active)
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // a handler that takes a while, so handlers overlap
		mu.Lock()
		active--
		seen++
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 3 {
		// Not a queue group: every intake gets every batch, so each is handled three times.
		cfg := IntakeConfig{Workers: 4, Limiter: lim}
		in, err := NewIntake(cfg, nil, nc, handle, quiet)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := in.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		<-in.Ready()
	}
	const groups, batches = 12, 50
	for seq := range uint64(batches) {
		for g := range groups {
			svc := fmt.Sprintf("svc%d", g)
			if err := nc.Publish("herd.in."+svc+".1", encodeRED(t, svc, "1", seq)); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkfor.Within(t, 20*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if seen != 3*groups*batches {
			return fmt.Errorf("handled %d batches; want %d", seen, 3*groups*batches)
		}
		return nil
	})
	cancel()
	wg.Wait()
	if peak > 2 {
		t.Errorf("got %d handlers at once; want at most the limiter's 2", peak)
	}
	if peak < 2 {
		t.Errorf("got %d handler at once at most; want the limiter's 2 slots used", peak)
	}
	if _, err := NewLimiter(0); err == nil {
		t.Errorf("NewLimiter(0): got nil error; want one")
	}
}
