package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/node"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

// benchCommands are the benchmarks `herd bench <what>` runs.
func benchCommands() []command {
	return []command{benchIngestCommand(), benchLoadCommand(), benchDetectCommand()}
}

func benchCommand() command {
	return command{
		name:  "bench",
		usage: "ingest|load|detect [flags]   (see 'herd bench <what> --help')",
		short: "run reproducible end-to-end benchmarks",
		raw: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 && args[0] != "-h" && args[0] != "--help" {
				for _, c := range benchCommands() {
					if c.name == "bench "+args[0] {
						if code := runCommand(ctx, c, args[1:], e); code != 0 {
							return errExit(code)
						}
						return nil
					}
				}
				return fmt.Errorf("%w: unknown benchmark %q: herd bench ingest | load | detect", errUsage, args[0])
			}
			w := e.stdout // help asked for goes to stdout, a missing argument to stderr
			if len(args) == 0 {
				w = e.stderr
			}
			fmt.Fprintln(w, "usage: herd bench <what> [flags]\n\nbenchmarks:")
			for _, c := range benchCommands() {
				fmt.Fprintf(w, "  %-14s %s\n", c.name, c.short)
			}
			fmt.Fprintln(w, "\nRun 'herd bench <what> --help' for its flags.")
			if len(args) == 0 {
				return errUsage
			}
			return nil
		},
	}
}

// benchIngestReport is what `herd bench ingest` prints as JSON.
type benchIngestReport struct {
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

func benchIngestCommand() command {
	return command{
		name:  "bench ingest",
		usage: "[--instances N] [--duration D] [--rps R]",
		short: "run herd serve and a simulated fleet in one process; report throughput, CPU and loss as JSON",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			instances := fs.Int("instances", 5000, "simulated instances (count)")
			duration := fs.Duration("duration", 30*time.Second, "how long the fleet publishes (duration)")
			rps := fs.Float64("rps", 20, "requests per second per instance (rate)")
			conns := fs.Int("conns", 8, "NATS connections the fleet publishes over (count)")
			return func(ctx context.Context) error { return benchIngest(ctx, e, *instances, *duration, *rps, *conns) }
		},
	}
}

// windowCollector sums the requests of every window it sees and records each window's delay
// (arrival − window end).
type windowCollector struct {
	mu          sync.Mutex // Guards the fields below.
	windows     int
	corrections int
	delays      []time.Duration
	got         map[[2]string]uint64
}

func (c *windowCollector) add(w *proto.Window) {
	at := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.Correction {
		c.corrections++
	} else {
		c.windows++
		c.delays = append(c.delays, at.Sub(time.UnixMilli(w.EndMs)))
	}
	if r := w.Find(proto.SeriesRequests); r != nil {
		c.got[[2]string{w.Service, w.Version}] += uint64(r.Value)
	}
}

func (c *windowCollector) requests() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for _, v := range c.got {
		n += v
	}
	return n
}

// benchIngest runs serve and a fleet in one process and reports throughput, CPU and loss.
func benchIngest(ctx context.Context, e *env, instances int, duration time.Duration, rps float64, conns int) error {
	if conns < 1 {
		return fmt.Errorf("%w: -conns %d must be ≥ 1", errUsage, conns)
	}
	cfg := node.DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", tempDir(), "127.0.0.1:0"
	defer os.RemoveAll(cfg.DataDir)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	n, err := node.New(cfg, e.logger)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- n.Run(runCtx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		return err
	}
	// Windows are counted as a consumer of herd.rollup.> sees them, after NATS.
	col := &windowCollector{got: map[[2]string]uint64{}}
	wc, err := bus.Connect(bus.Client{URLs: n.NATSURL()}, "herd-bench-windows", nil, e.logger)
	if err != nil {
		return err
	}
	defer wc.Close()
	if _, err := bus.Subscribe(wc, bus.NewDecoder(bus.Handlers{Window: col.add}, nil)); err != nil {
		return err
	}

	var pcs []*nats.Conn
	defer func() {
		for _, pc := range pcs {
			pc.Close()
		}
	}()
	var pubs []ingest.PublishFunc
	for i := range conns {
		pc, err := bus.Connect(bus.Client{URLs: n.NATSURL()}, fmt.Sprintf("herd-bench-fleet-%d", i), nil, e.logger)
		if err != nil {
			return err
		}
		pcs = append(pcs, pc)
		pubs = append(pubs, pc.Publish)
	}
	lag := newLagRecorder(conns)
	groups, err := sim.Spread(sim.SpreadConfig{Services: []string{"checkout", "search", "cart", "auth"}, Instances: instances,
		CanaryShare: 0.2, RPS: rps, ErrorRate: 0.005, LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond})
	if err != nil {
		return fmt.Errorf("%w: -instances %d: %v", errUsage, instances, err)
	}
	f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: 20 * time.Second, LifetimeMax: 60 * time.Second,
		Interval: ingest.DefaultInterval, Seed: 1, Shards: conns, Publishers: pubs, OnInterval: lag.record, Logger: e.logger})
	if err != nil {
		return err
	}
	cpu0, t0 := cpuTime(), time.Now()
	if err := f.Run(ctx, t0.Add(duration)); err != nil {
		return err
	}
	for _, pc := range pcs {
		_ = pc.FlushTimeout(10 * time.Second)
	}
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	stop()
	if err := <-done; err != nil {
		return err
	}
	r := benchIngestReport{Instances: instances, IntervalMs: ingest.DefaultInterval.Milliseconds(), Seconds: elapsed.Seconds(),
		CPUSeconds: cpu.Seconds(), CPUCores: cpu.Seconds() / elapsed.Seconds(), HeapMiB: float64(ms.HeapInuse) / (1 << 20),
		MaxRSSMiB: maxRSSMiB(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		RollupRefused: n.Rollup().Stats().Refused(), IntakeRefused: n.Intake().Stats().Refused()}
	r.finish(f.Totals(), col, n.Rollup().Stats().Samples, elapsed)
	var g genReport
	lag.report(&g)
	r.Conns, r.BoundariesMissed, r.LagP99Ms = conns, g.BoundariesMissed, g.LagP99Ms
	if !r.Exact {
		st, in := n.Rollup().Stats(), n.Intake().Stats()
		s := &serveSample{RefusedLate: float64(st.RefusedBy["late"]), SlowConsumer: float64(in.Dropped[ingest.ReasonSlowConsumer])}
		r.Behind, r.Why = blame(genBehind(g.BoundariesMissed, g.LagP99Ms, r.BatchesUnsent, 100*time.Millisecond), herdBehind(s, r.LostRequests))
		if r.Behind == "" {
			r.Behind, r.Why = "unknown", fmt.Sprintf("%d requests missing; neither side reported falling behind", r.LostRequests)
		}
	}
	out, _ := json.Marshal(r)
	fmt.Fprintln(e.stdout, string(out))
	return nil
}

// finish fills in what the fleet sent and what the windows hold, waiting up to 3 s for the
// last windows to arrive.
func (r *benchIngestReport) finish(totals []sim.Totals, col *windowCollector, samples uint64, elapsed time.Duration) {
	var want uint64
	for _, t := range totals {
		want += t.Requests
		r.BatchesSent += t.BatchesSent
		r.BatchesUnsent += t.BatchesUnsent
	}
	for deadline := time.Now().Add(3 * time.Second); col.requests() != want && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	r.LostRequests = int64(want) - int64(col.requests())
	col.mu.Lock()
	r.WindowsReceived = col.windows
	r.WindowDelayP50 = float64(percentile(col.delays, 0.50)) / 1e6
	r.WindowDelayP99 = float64(percentile(col.delays, 0.99)) / 1e6
	col.mu.Unlock()
	r.BatchesPerSec = float64(r.BatchesSent) / elapsed.Seconds()
	r.SamplesPerSec = float64(samples) / elapsed.Seconds()
	r.Exact = r.LostRequests == 0 && r.BatchesUnsent == 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func maxRSSMiB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024 // Linux reports KiB
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func tempDir() string {
	d, err := os.MkdirTemp("", "herd-bench-")
	if err != nil {
		return os.TempDir()
	}
	return d
}
