package node

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/sim"
)

// TestDashboardFreshness runs a 1,000-instance fleet through serve and measures, with a
// websocket client of the dashboard's stream, how long after its end each window arrives.
func TestDashboardFreshness(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs a fleet in real time")
	}
	s, _ := testStack(t)
	url := "ws" + strings.TrimPrefix(s.HTTPURL(), "http") + "/api/v1/stream"
	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var lags []time.Duration
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			at := time.Now()
			for _, line := range bytes.Split(data, []byte("\n")) {
				var m struct {
					Type string    `json:"type"`
					P    []float64 `json:"p"`
				}
				if json.Unmarshal(line, &m) != nil || m.Type != "window" || len(m.P) == 0 {
					continue
				}
				mu.Lock()
				lags = append(lags, at.Sub(time.UnixMilli(int64(m.P[0]))))
				mu.Unlock()
			}
		}
	}()

	nc, err := nats.Connect(s.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	f := churnFleet(t, nc.Publish, 11, sim.SpreadConfig{Services: []string{"checkout", "search"}, Instances: 1000, CanaryShare: 0.2},
		2*time.Second, 10*time.Second)
	if err := f.Run(context.Background(), time.Now().Add(6*time.Second)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(lags) < 60 {
			return errorf("%d windows reached the websocket client; want ≥ 60", len(lags))
		}
		return nil
	})
	conn.Close()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	p50, p99 := percentile(lags, 0.5), percentile(lags, 0.99)
	t.Logf("window end → websocket client over %d windows (1,000 instances): p50 %s, p99 %s", len(lags), p50, p99)
	perftest.Within(t, "window end → dashboard stream p99", p99, time.Second)
}
