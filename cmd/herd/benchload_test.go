package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/node"
)

// TestBenchLoadAgainstServe runs `herd bench load` against a node (embedded NATS, intake,
// rollup, detector, web): what it sent is exactly what the windows hold, and it read serve's
// CPU, RSS and counters from /metrics.
func TestBenchLoadAgainstServe(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs a fleet in real time")
	}
	cfg := node.DefaultConfig()
	cfg.NATSListen, cfg.HTTPListen, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	n, err := node.New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	}()
	<-n.Ready() // the NATS port opens once the intake has subscribed
	code, out, errOut := runHerd(t, nil, "bench", "load", "--nats", n.NATSURL(), "--instances", "40", "--conns", "3",
		"--duration", "2s", "--lifetime-min", "500ms", "--lifetime-max", "1s", "--serve-metrics", n.HTTPURL()+"/metrics")
	if code != 0 {
		t.Fatalf("herd bench load: exit %d, stderr %s", code, errOut)
	}
	var r benchLoadReport
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("bench load printed %q: %v", out, err)
	}
	if !r.Exact || r.LostRequests != 0 || r.RequestsSent == 0 || r.WindowsReceived == 0 {
		t.Errorf("got exact %v, %d of %d requests lost, %d windows; want exact, none lost, windows", r.Exact, r.LostRequests, r.RequestsSent, r.WindowsReceived)
	}
	if r.Serve == nil || r.Serve.CPUCores <= 0 || r.Serve.MaxRSSMiB <= 0 || r.Serve.WindowsEmitted == 0 {
		t.Errorf("got serve figures %+v; want CPU, RSS and windows read from /metrics", r.Serve)
	}
	if r.Behind == "herd" || r.Behind == "both" {
		t.Errorf("got herd behind: %s; want herd to keep up with 40 instances", r.Why)
	}
}

// TestBlame names the side that fell behind from each side's reasons.
func TestBlame(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		gen, herd, behind string
	}{
		{"", "", ""},
		{"generator missed 3 interval boundaries", "", "generator"},
		{"", "herd refused 5 batches as late", "herd"},
		{"generator missed 3 interval boundaries", "herd refused 5 batches as late", "both"},
	} {
		if got, why := blame(tc.gen, tc.herd); got != tc.behind || (got != "" && why == "") {
			t.Errorf("blame(%q, %q) = %q, %q; want %q and a reason", tc.gen, tc.herd, got, why, tc.behind)
		}
	}
	if why := genBehind(0, 50, 0, 100e6); why != "" {
		t.Errorf("generator on time: got %q; want no reason", why)
	}
	if why := herdBehind(&serveSample{SlowConsumer: 2}, 0); !strings.Contains(why, "slow consumer") {
		t.Errorf("herd dropping: got %q; want the slow-consumer drops named", why)
	}
	// A generator late only while blocked in Publish was held up by herd's NATS server.
	blocked := benchLoadReport{BoundariesMissed: 4, LagP99Ms: 900, OwnLagP99Ms: 20, PublishWaitS: 12}
	if got, why := blameLoad(&blocked, 100*time.Millisecond); got != "herd" || !strings.Contains(why, "waited 12.0 s in Publish") {
		t.Errorf("generator blocked in Publish: got %q, %q; want herd, with the wait named", got, why)
	}
	slow := benchLoadReport{BoundariesMissed: 4, LagP99Ms: 900, OwnLagP99Ms: 800, PublishWaitS: 1}
	if got, _ := blameLoad(&slow, 100*time.Millisecond); got != "generator" {
		t.Errorf("generator slow itself: got %q; want generator", got)
	}
}
