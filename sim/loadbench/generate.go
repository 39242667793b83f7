package loadbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/load"
)

// ErrConfig marks an error in a configuration given to this package (a count below 1, a
// fleet that cannot be spread); `herd bench` reports it as a usage error.
var ErrConfig = errors.New("invalid benchmark configuration")

// GenConfig configures Generate: one process's share of the fleet.
type GenConfig struct {
	// NATS is where the fleet publishes.
	NATS bus.Client
	// Instances are kept alive at any time over four services, a fifth of each on the canary.
	Instances int
	// Conns is the number of NATS connections; each publishes the instances of one shard.
	Conns int
	// RPS is each instance's request rate.
	RPS float64
	// Duration is how long the fleet publishes.
	Duration time.Duration
	// LifetimeMin and LifetimeMax bound an instance's lifetime.
	LifetimeMin, LifetimeMax time.Duration
	// Seed seeds the traffic.
	Seed uint64
	// Templates is the number of batch bodies sim/load encodes once per group and reuses;
	// 0 draws and encodes every batch through a client (sim.Fleet), like `herd sim`.
	Templates int
	// Logger logs the connections and the fleet.
	Logger *slog.Logger
}

// GenReport is what one generator process sent and how far behind it was. Its JSON form is
// what a `herd bench load --child` process prints for its parent.
type GenReport struct {
	Totals           []sim.Totals `json:"totals"`
	Intervals        int          `json:"intervals"`
	BoundariesMissed int          `json:"boundaries_missed"`
	LagP50Ms         float64      `json:"publish_lag_p50_ms"`
	LagP99Ms         float64      `json:"publish_lag_p99_ms"`
	LagMaxMs         float64      `json:"publish_lag_max_ms"`
	OwnLagP99Ms      float64      `json:"own_lag_p99_ms"`
	PublishWaitS     float64      `json:"publish_wait_seconds"`
	CPUCores         float64      `json:"cpu_cores_used"`
	MaxRSSMiB        float64      `json:"max_rss_mib"`
	// Seconds and CPUSeconds are the wall and CPU time (of the whole process) from the
	// fleet's start until its last batches were flushed.
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// Groups returns the benchmarks' fleet: instances spread over the services checkout,
// search, cart and auth, a fifth of each on the canary, at rps requests per second each.
func Groups(instances int, rps float64) ([]sim.Group, error) {
	groups, err := sim.Spread(sim.SpreadConfig{Services: []string{"checkout", "search", "cart", "auth"}, Instances: instances,
		CanaryShare: 0.2, RPS: rps, ErrorRate: 0.005, LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond})
	if err != nil {
		return nil, fmt.Errorf("%w: %d instances: %v", ErrConfig, instances, err)
	}
	return groups, nil
}

// Generate runs a fleet of cfg.Instances over cfg.Conns connections for cfg.Duration and
// reports what it sent and how late it published. It returns once the last batches are
// flushed to NATS, or ctx is done.
func Generate(ctx context.Context, cfg GenConfig) (GenReport, error) {
	var r GenReport
	logger := loggerOf(cfg.Logger)
	if cfg.Conns < 1 {
		return r, fmt.Errorf("%w: %d connections", ErrConfig, cfg.Conns)
	}
	groups, err := Groups(cfg.Instances, cfg.RPS)
	if err != nil {
		return r, err
	}
	conns := make([]*nats.Conn, 0, cfg.Conns)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	pubs := make([]ingest.PublishFunc, 0, cfg.Conns)
	for i := range cfg.Conns {
		nc, err := bus.Connect(cfg.NATS, fmt.Sprintf("herd-bench-load-%d", i), nil, logger)
		if err != nil {
			return r, err
		}
		conns = append(conns, nc)
		pubs = append(pubs, nc.Publish)
	}
	lag := newLagRecorder(cfg.Conns)
	var run func(context.Context, time.Time) error
	var totals func() []sim.Totals
	if cfg.Templates > 0 {
		g, err := load.New(load.Config{Groups: groups, LifetimeMin: cfg.LifetimeMin, LifetimeMax: cfg.LifetimeMax, Interval: ingest.DefaultInterval,
			Seed: cfg.Seed, Publishers: pubs, Templates: cfg.Templates, OnInterval: lag.record, OnPublishWait: lag.waited})
		if err != nil {
			return r, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		run = func(ctx context.Context, end time.Time) error { g.Run(ctx, end); return nil }
		totals = g.Totals
	} else {
		f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: cfg.LifetimeMin, LifetimeMax: cfg.LifetimeMax,
			Interval: ingest.DefaultInterval, Seed: cfg.Seed, Shards: cfg.Conns, Publishers: pubs, OnInterval: lag.record, Logger: logger})
		if err != nil {
			return r, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		run, totals = f.Run, f.Totals
	}
	cpu0, t0 := cpuTime(), time.Now()
	if err := run(ctx, t0.Add(cfg.Duration)); err != nil {
		return r, err
	}
	for _, nc := range conns {
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			return r, fmt.Errorf("cannot flush the last batches to NATS: %w", err)
		}
	}
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	r.Seconds, r.CPUSeconds = elapsed.Seconds(), cpu.Seconds()
	r.CPUCores = cpu.Seconds() / elapsed.Seconds()
	r.MaxRSSMiB = maxRSSMiB()
	r.Totals = totals()
	lag.report(&r)
	return r, nil
}

// lagRecorder records, per shard, how long after each boundary the shard finished
// publishing, and the boundaries it skipped.
type lagRecorder struct {
	// By shard; each written by its shard's goroutine only.
	lags    [][]time.Duration
	own     [][]time.Duration // lags without the wait in Publish
	skipped []int
	wait    []time.Duration // the interval's wait in Publish, until recorded
	waitSum []time.Duration
}

func newLagRecorder(shards int) *lagRecorder {
	return &lagRecorder{lags: make([][]time.Duration, shards), own: make([][]time.Duration, shards), skipped: make([]int, shards),
		wait: make([]time.Duration, shards), waitSum: make([]time.Duration, shards)}
}

func (l *lagRecorder) record(shard int, boundary, done time.Time, skipped int) {
	lag := done.Sub(boundary)
	l.lags[shard] = append(l.lags[shard], lag)
	l.own[shard] = append(l.own[shard], max(0, lag-l.wait[shard]))
	l.waitSum[shard] += l.wait[shard]
	l.wait[shard] = 0
	l.skipped[shard] += skipped
}

// waited records how long shard's interval, recorded next, waited in Publish.
func (l *lagRecorder) waited(shard int, d time.Duration) { l.wait[shard] = d }

// report fills in r's lag figures; the shards have stopped.
func (l *lagRecorder) report(r *GenReport) {
	var all, own []time.Duration
	for i := range l.lags {
		all = append(all, l.lags[i]...)
		own = append(own, l.own[i]...)
		r.BoundariesMissed += l.skipped[i]
		r.PublishWaitS += l.waitSum[i].Seconds()
	}
	r.OwnLagP99Ms = ms(sim.Percentile(own, 0.99))
	r.Intervals = len(all)
	r.LagP50Ms = ms(sim.Percentile(all, 0.5))
	r.LagP99Ms = ms(sim.Percentile(all, 0.99))
	r.LagMaxMs = ms(sim.Percentile(all, 1))
}

// cpuTime returns the CPU time this process used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// maxRSSMiB returns this process's peak resident set size.
func maxRSSMiB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024 // Linux reports KiB
}
