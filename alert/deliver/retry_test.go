package deliver

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// bubble runs a receiver and a Deliverer inside a synctest bubble, on an in-memory network,
// and tears both down before the bubble ends.
type bubble struct {
	rc   *recorder
	d    *Deliverer
	stop func()
}

func newBubble(t *testing.T, rc *recorder, cfg Config) *bubble {
	t.Helper()
	pn := newPipeNet()
	srv := &http.Server{Handler: rc}
	go srv.Serve(pn)
	cfg.Webhooks = []string{"http://receiver.test/hook"}
	cfg.WebhookSecrets = []string{testSecret}
	d := newTestDeliverer(t, cfg, nil)
	tr := &http.Transport{DialContext: pn.DialContext}
	d.client.Transport = tr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return &bubble{rc: rc, d: d, stop: func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		srv.Close()
		tr.CloseIdleConnections()
	}}
}

func TestRetrySchedule(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const fails = 5
		rc := &recorder{statuses: []int{503, 500, 429, 408, 502, 200}}
		b := newBubble(t, rc, Config{})
		defer b.stop()
		v := testVerdict(proto.StateRollback)
		t0 := time.Now()
		if err := b.d.Decide(v); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()

		reqs := rc.requests()
		if len(reqs) != fails+1 {
			t.Fatalf("got %d attempts; want %d", len(reqs), fails+1)
		}
		want := []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
		for i, r := range reqs {
			got := r.at.Sub(t0)
			if lo, hi := want[i]*9/10, want[i]*11/10; got < lo || got > hi {
				t.Errorf("attempt %d at %s; want %s ±10 %%", i+1, got, want[i])
			}
			if id := r.header.Get("webhook-id"); id != v.DecisionID {
				t.Errorf("attempt %d: got webhook-id %q; want %q", i+1, id, v.DecisionID)
			}
		}
		dec, _ := b.d.Decision(v.DecisionID)
		if dec.Status != "delivered" {
			t.Errorf("got status %q; want delivered", dec.Status)
		}
		var outcomes []string
		for _, row := range dec.Deliveries {
			outcomes = append(outcomes, fmt.Sprintf("%d:%d:%s", row.Attempt, row.Status, row.Outcome))
		}
		if got, want := fmt.Sprint(outcomes), "[1:503:retry 2:500:retry 3:429:retry 4:408:retry 5:502:retry 6:200:done]"; got != want {
			t.Errorf("got rows %s; want %s", got, want)
		}
	})
}

func TestRetryEscalatesThenGivesUp(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rc := &recorder{statuses: []int{500}}
		b := newBubble(t, rc, Config{MaxRetry: 2 * time.Minute})
		defer b.stop()
		v := testVerdict(proto.StateRollback)
		t0 := time.Now()
		if err := b.d.Decide(v); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		dec, _ := b.d.Decision(v.DecisionID)
		if dec.Status != "escalated" || len(dec.Deliveries) != 6 || dec.Deliveries[5].Outcome != outcomeEscalated {
			t.Fatalf("after 5 s: got status %q with %d rows; want escalated with 6, the last escalated", dec.Status, len(dec.Deliveries))
		}
		if got := b.d.escalations.Get(); got != 1 {
			t.Errorf("got %d escalations; want 1", got)
		}
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		reqs := rc.requests()
		// After 4 s the gaps double from 4 s up to 60 s: 8, 16, 32, 64→60, 120 s (±10 %).
		wantAt := []time.Duration{8, 16, 32, 64, 124}
		for i, w := range wantAt {
			w *= time.Second
			got := reqs[6+i].at.Sub(t0)
			if got < w*85/100 || got > w*115/100 {
				t.Errorf("attempt %d at %s; want about %s", 7+i, got, w)
			}
		}
		dec, _ = b.d.Decision(v.DecisionID)
		last := dec.Deliveries[len(dec.Deliveries)-1]
		if dec.Status != "failed" || last.Outcome != outcomeFailed {
			t.Errorf("after 5 min: got status %q, last outcome %q; want failed, failed", dec.Status, last.Outcome)
		}
		if len(reqs) != len(dec.Deliveries) {
			t.Errorf("got %d requests and %d rows; want equal", len(reqs), len(dec.Deliveries))
		}
		if got := b.d.escalations.Get(); got != 1 {
			t.Errorf("got %d escalations; want 1", got)
		}
	})
}

func TestStatusHandling(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		status  int
		attempt int
		outcome string
		result  string
	}{
		{200, 1, "done", "delivered"},
		{204, 1, "done", "delivered"},
		{409, 1, "done", "delivered"},
		{400, 1, "failed", "failed"},
		{401, 1, "failed", "failed"},
		{403, 1, "failed", "failed"},
		{404, 1, "failed", "failed"},
		{422, 1, "failed", "failed"},
		{302, 1, "failed", "failed"},
		{408, 2, "done", "delivered"},
		{425, 2, "done", "delivered"},
		{429, 2, "done", "delivered"},
		{500, 2, "done", "delivered"},
		{503, 2, "done", "delivered"},
	} {
		t.Run(fmt.Sprint(c.status), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				rc := &recorder{statuses: []int{c.status, 200}}
				b := newBubble(t, rc, Config{})
				defer b.stop()
				v := testVerdict(proto.StateRollback)
				if err := b.d.Decide(v); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Second)
				synctest.Wait()
				dec, _ := b.d.Decision(v.DecisionID)
				if n := len(dec.Deliveries); n != c.attempt {
					t.Fatalf("got %d attempts; want %d", n, c.attempt)
				}
				last := dec.Deliveries[c.attempt-1]
				if last.Outcome != c.outcome || dec.Status != c.result {
					t.Errorf("got outcome %q status %q; want %q %q", last.Outcome, dec.Status, c.outcome, c.result)
				}
				if got := len(rc.requests()); got != c.attempt {
					t.Errorf("got %d requests; want %d", got, c.attempt)
				}
			})
		})
	}
}

func TestHangingReceiverTimesOut(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rc := &recorder{hang: true}
		b := newBubble(t, rc, Config{Timeout: 2 * time.Second})
		defer b.stop()
		v := testVerdict(proto.StateRollback)
		if err := b.d.Decide(v); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2*time.Second + 100*time.Millisecond)
		synctest.Wait()
		dec, _ := b.d.Decision(v.DecisionID)
		if len(dec.Deliveries) != 1 {
			t.Fatalf("got %d rows after 2.1 s; want 1", len(dec.Deliveries))
		}
		row := dec.Deliveries[0]
		if row.Outcome != outcomeRetry || row.Status != 0 || row.DurationMs != 2000 || row.Error == "" {
			t.Errorf("got row %+v; want a 2000 ms retry with status 0 and an error", row)
		}
		rc.mu.Lock()
		rc.hang = false
		rc.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		dec, _ = b.d.Decision(v.DecisionID)
		if dec.Status != "delivered" || len(dec.Deliveries) != 2 {
			t.Errorf("got status %q with %d rows; want delivered with 2", dec.Status, len(dec.Deliveries))
		}
	})
}
