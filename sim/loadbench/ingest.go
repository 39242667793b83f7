package loadbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/node"
	"github.com/herd-dev/herd/sim"
)

// IngestConfig configures Ingest.
type IngestConfig struct {
	// Instances are the simulated instances, spread like Groups'.
	Instances int
	// Duration is how long the fleet publishes.
	Duration time.Duration
	// RPS is each instance's request rate.
	RPS float64
	// Conns is the number of NATS connections the fleet publishes over.
	Conns int
	// Logger logs herd's components and the fleet.
	Logger *slog.Logger
}

// IngestReport is what `herd bench ingest` prints as JSON.
type IngestReport struct {
	Instances       int     `json:"instances"`
	IntervalMs      int64   `json:"interval_ms"`
	Seconds         float64 `json:"seconds"`
	BatchesSent     uint64  `json:"batches_sent"`
	BatchesUnsent   uint64  `json:"batches_unsent"`
	BatchesPerSec   float64 `json:"batches_per_second"`
	SamplesPerSec   float64 `json:"samples_per_second"`
	WindowsReceived int     `json:"windows_received"`
	// Lost is the number of requests published that no window holds (0 when exact).
	LostRequests   int64   `json:"lost_requests"`
	RollupRefused  uint64  `json:"rollup_refused"`
	IntakeRefused  uint64  `json:"intake_refused"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	CPUCores       float64 `json:"cpu_cores_used"`
	MaxRSSMiB      float64 `json:"max_rss_mib"`
	HeapMiB        float64 `json:"heap_mib"`
	Exact          bool    `json:"exact"`
	GOMAXPROCS     int     `json:"gomaxprocs"`
	WindowDelayP50 float64 `json:"window_delay_p50_ms"`
	WindowDelayP99 float64 `json:"window_delay_p99_ms"`
	Corrections    int     `json:"corrections_received"`
	Conns          int     `json:"conns"`
	// The generator's publish lag (boundary → its last batch handed to NATS) and the
	// boundaries it skipped; Behind names the side that fell behind when not exact
	// ("generator", "herd", "both"), Why what showed it.
	BoundariesMissed int     `json:"gen_boundaries_missed"`
	LagP99Ms         float64 `json:"gen_publish_lag_p99_ms"`
	Behind           string  `json:"behind,omitempty"`
	Why              string  `json:"why,omitempty"`
}

// Ingest runs herd (a node with every role, its embedded NATS on a free port and its data in
// a temporary directory) and a fleet (sim.Fleet, lifetimes 20–60 s) in this process, and
// reports throughput, CPU and loss. The CPU and memory figures are the whole process's.
func Ingest(ctx context.Context, cfg IngestConfig) (*IngestReport, error) {
	if cfg.Conns < 1 {
		return nil, fmt.Errorf("%w: %d connections", ErrConfig, cfg.Conns)
	}
	logger := loggerOf(cfg.Logger)
	nc := node.DefaultConfig()
	dir, err := os.MkdirTemp("", "herd-bench-")
	if err != nil {
		return nil, fmt.Errorf("cannot create the data directory: %w", err)
	}
	defer os.RemoveAll(dir)
	nc.NATSListen, nc.DataDir, nc.HTTPListen = "127.0.0.1:0", dir, "127.0.0.1:0"
	if err := nc.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	n, err := node.New(nc, logger)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- n.Run(runCtx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		return nil, err
	}
	stopNode := func() error {
		stop()
		return <-done
	}
	// Windows are counted as a consumer of herd.rollup.> sees them, after NATS.
	col := NewCollector()
	wc, err := col.Subscribe(bus.Client{URLs: n.NATSURL()}, logger)
	if err != nil {
		return nil, errors.Join(err, stopNode())
	}
	defer wc.Close()
	g, err := Generate(ctx, GenConfig{NATS: bus.Client{URLs: n.NATSURL()}, Instances: cfg.Instances, Conns: cfg.Conns, RPS: cfg.RPS,
		Duration: cfg.Duration, LifetimeMin: 20 * time.Second, LifetimeMax: 60 * time.Second, Seed: 1, Logger: logger})
	if err != nil {
		return nil, errors.Join(err, stopNode())
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if err := stopNode(); err != nil {
		return nil, err
	}
	st, in := n.Rollup().Stats(), n.Intake().Stats()
	r := &IngestReport{Instances: cfg.Instances, IntervalMs: ingest.DefaultInterval.Milliseconds(), Seconds: g.Seconds,
		CPUSeconds: g.CPUSeconds, CPUCores: g.CPUCores, HeapMiB: float64(ms.HeapInuse) / (1 << 20),
		MaxRSSMiB: g.MaxRSSMiB, GOMAXPROCS: runtime.GOMAXPROCS(0), RollupRefused: st.Refused(), IntakeRefused: in.Refused(),
		Conns: cfg.Conns, BoundariesMissed: g.BoundariesMissed, LagP99Ms: g.LagP99Ms}
	r.finish(g.Totals, col, st.Samples)
	if !r.Exact {
		s := &ServeSample{RefusedLate: float64(st.RefusedBy["late"]), SlowConsumer: float64(in.Dropped[ingest.ReasonSlowConsumer])}
		r.Behind, r.Why = blame(genBehind(g.BoundariesMissed, g.LagP99Ms, r.BatchesUnsent, 100*time.Millisecond), herdBehind(s, r.LostRequests))
		if r.Behind == "" {
			r.Behind, r.Why = "unknown", fmt.Sprintf("%d requests missing; neither side reported falling behind", r.LostRequests)
		}
	}
	return r, nil
}

// finish fills in what the fleet sent and what the windows hold, waiting up to 3 s for the
// last windows to arrive.
func (r *IngestReport) finish(totals []sim.Totals, col *Collector, samples uint64) {
	var want uint64
	for _, t := range totals {
		want += t.Requests
		r.BatchesSent += t.BatchesSent
		r.BatchesUnsent += t.BatchesUnsent
	}
	r.LostRequests = col.Wait(want, 3*time.Second)
	seen := col.Seen()
	r.WindowsReceived, r.Corrections = seen.Windows, seen.Corrections
	r.WindowDelayP50, r.WindowDelayP99 = ms(seen.DelayP50), ms(seen.DelayP99)
	r.BatchesPerSec = float64(r.BatchesSent) / r.Seconds
	r.SamplesPerSec = float64(samples) / r.Seconds
	r.Exact = r.LostRequests == 0 && r.BatchesUnsent == 0
}
