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
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

func benchCommand() command {
	return command{
		name:  "bench",
		usage: "ingest [flags]   (see 'herd bench <what> --help')",
		short: "run reproducible end-to-end benchmarks",
		raw: func(ctx context.Context, e *env, args []string) error {
			if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
				w := e.stdout // help asked for goes to stdout, a missing argument to stderr
				if len(args) == 0 {
					w = e.stderr
				}
				fmt.Fprintln(w, "usage: herd bench ingest [--instances N] [--duration D] [--rps R]\n"+
					"       herd bench detect [flags]\n\nRun 'herd bench <what> --help' for its flags.")
				if len(args) == 0 {
					return errUsage
				}
				return nil
			}
			switch args[0] {
			case "ingest":
				return benchIngest(ctx, e, args[1:])
			case "detect":
				return benchDetect(ctx, e, args[1:])
			}
			return fmt.Errorf("%w: unknown benchmark %q: herd bench ingest | detect", errUsage, args[0])
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
	WindowDelayP99 float64 `json:"window_delay_p99_ms"`
}

// benchIngest runs serve and a fleet in one process and reports throughput, CPU and loss.
func benchIngest(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("herd bench ingest", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	instances := fs.Int("instances", 5000, "simulated instances (count)")
	duration := fs.Duration("duration", 30*time.Second, "how long the fleet publishes (duration)")
	rps := fs.Float64("rps", 20, "requests per second per instance (rate)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg := defaultStackConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", tempDir(), "127.0.0.1:0"
	defer os.RemoveAll(cfg.DataDir)
	if err := cfg.validate(); err != nil {
		return err
	}
	s, err := newStack(cfg, e.logger)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.run(runCtx) }()

	wc, err := nats.Connect(s.NATSURL())
	if err != nil {
		stop()
		return err
	}
	defer wc.Close()
	var mu sync.Mutex
	var windows int
	var delays []time.Duration
	got := map[[2]string]uint64{}
	if _, err := wc.Subscribe(proto.SubjectRollupAll, func(m *nats.Msg) {
		at := time.Now()
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		windows++
		delays = append(delays, at.Sub(time.UnixMilli(w.EndMs)))
		if r := w.Find(proto.SeriesRequests); r != nil {
			got[[2]string{w.Service, w.Version}] += uint64(r.Value)
		}
	}); err != nil {
		stop()
		return err
	}
	_ = wc.Flush()

	pc, err := nats.Connect(s.NATSURL())
	if err != nil {
		stop()
		return err
	}
	defer pc.Close()
	sf := simFlags{instances: *instances, canaryShare: 0.2, rps: *rps, errorRate: 0.005,
		latencyMedian: 40 * time.Millisecond, latencyP99: 200 * time.Millisecond}
	sf.services = listFlag{"checkout", "search", "cart", "auth"}
	groups, err := sf.spread()
	if err != nil {
		stop()
		return err
	}
	f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: 20 * time.Second, LifetimeMax: 60 * time.Second,
		Interval: ingest.DefaultInterval, Seed: 1, Publish: pc.Publish, Logger: e.logger})
	if err != nil {
		stop()
		return err
	}
	cpu0 := cpuTime()
	t0 := time.Now()
	if err := f.Run(ctx, t0.Add(*duration)); err != nil {
		stop()
		return err
	}
	_ = pc.FlushTimeout(10 * time.Second)
	elapsed := time.Since(t0)
	cpu := cpuTime() - cpu0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	stop()
	if err := <-done; err != nil {
		return err
	}
	st := s.roll.Stats()
	ist := s.intake.Stats()
	r := benchIngestReport{Instances: *instances, IntervalMs: ingest.DefaultInterval.Milliseconds(), Seconds: elapsed.Seconds(),
		CPUSeconds: cpu.Seconds(), CPUCores: cpu.Seconds() / elapsed.Seconds(), HeapMiB: float64(ms.HeapInuse) / (1 << 20),
		MaxRSSMiB: maxRSSMiB(), GOMAXPROCS: runtime.GOMAXPROCS(0), RollupRefused: st.Refused(), IntakeRefused: ist.Refused()}
	var want uint64
	// Let the last windows arrive.
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		var have uint64
		for _, v := range got {
			have += v
		}
		mu.Unlock()
		want = 0
		for _, t := range f.Totals() {
			want += t.Requests
			r.BatchesSent += t.BatchesSent
			r.BatchesUnsent += t.BatchesUnsent
		}
		r.LostRequests = int64(want) - int64(have)
		if r.LostRequests == 0 || time.Now().After(deadline) {
			break
		}
		r.BatchesSent, r.BatchesUnsent = 0, 0
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	r.WindowsReceived = windows
	r.WindowDelayP99 = float64(percentile(delays, 0.99)) / 1e6
	mu.Unlock()
	r.BatchesPerSec = float64(r.BatchesSent) / elapsed.Seconds()
	r.SamplesPerSec = float64(st.Samples) / elapsed.Seconds()
	r.Exact = r.LostRequests == 0 && r.BatchesUnsent == 0
	out, _ := json.Marshal(r)
	fmt.Fprintln(e.stdout, string(out))
	return nil
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
