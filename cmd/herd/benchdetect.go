package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/demo"
	"github.com/herd-dev/herd/sim/graph"
)

func benchDetectCommand() command {
	return command{
		name:  "bench detect",
		usage: "[--trials N] [--scenarios S,...] [--shares F,...] [--realistic N] [--realistic-scenarios S,...] [--graph-trials N] [--e2e N] [--json]",
		short: "run the detector's statistical benchmark on simulated time, then real-time end-to-end trials",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var o benchDetectOptions
			fs.IntVar(&o.trials, "trials", 1000, "seeded trials per scenario and canary share (count)")
			fs.DurationVar(&o.duration, "duration", 10*time.Minute, "simulated comparison time of a trial (duration)")
			fs.Float64Var(&o.rps, "rps", 2000, "total request rate of the service (rate)")
			fs.StringVar(&o.shares, "shares", "0.05,0.2", "canary traffic shares, comma-separated (fractions)")
			fs.StringVar(&o.scenarios, "scenarios", "", "scenarios, comma-separated (default all)")
			fs.Uint64Var(&o.seed, "seed", 1, "random seed")
			fs.BoolVar(&o.json, "json", false, "print the JSON report after the table")
			fs.IntVar(&o.realistic, "realistic", 100, "trials per scenario of the realistic suite (fleet conditions, herd as shipped; the published figures use 1000; count; 0 skips)")
			fs.StringVar(&o.realScenarios, "realistic-scenarios", "", "realistic-suite scenarios, comma-separated (default all)")
			fs.DurationVar(&o.coldStart, "cold-start", alert.DefaultConfig().ColdStart, "the detector's -detect.cold-start in the realistic suite (duration; 0 compares latency from the start)")
			fs.IntVar(&o.graphTrials, "graph-trials", 200, "seeded trials per scenario and canary share of the request-flow suite on a generated 50-service graph (the published figures use 1000; count; 0 skips)")
			fs.StringVar(&o.graphScenarios, "graph-scenarios", "", "request-flow suite scenarios, comma-separated (default all: "+strings.Join(sim.GraphScenarios, ", ")+")")
			fs.IntVar(&o.e2e, "e2e", 3, "real-time end-to-end trials per regression scenario (crash, errors, latency) through agent library → NATS → rollup → detector → webhook receiver (count; 0 skips)")
			return func(ctx context.Context) error { return benchDetect(ctx, e, o) }
		},
	}
}

// benchDetectOptions are the flags of `herd bench detect`.
type benchDetectOptions struct {
	trials, e2e, realistic int
	realScenarios          string
	coldStart              time.Duration
	duration               time.Duration
	rps                    float64
	shares, scenarios      string
	seed                   uint64
	json                   bool
	// The request-flow suite on a service graph (sim.BenchDetectGraph).
	graphTrials    int
	graphScenarios string
}

// benchDetect runs the detector's statistical benchmark on simulated time and prints a table
// and, with --json, the JSON report.
func benchDetect(ctx context.Context, e *env, o benchDetectOptions) error {
	cfg := sim.DetectConfig{Trials: o.trials, Duration: o.duration, RPS: o.rps, Seed: o.seed}
	for _, s := range strings.Split(o.shares, ",") {
		var f float64
		if _, err := fmt.Sscan(strings.TrimSpace(s), &f); err != nil {
			return fmt.Errorf("%w: -shares %q: %v", errUsage, s, err)
		}
		cfg.Shares = append(cfg.Shares, f)
	}
	if o.scenarios != "" {
		cfg.Scenarios = strings.Split(o.scenarios, ",")
	}
	start := time.Now()
	rep, err := sim.BenchDetect(cfg)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := rep.WriteTable(e.stdout); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "(%s wall time)\n", time.Since(start).Round(time.Second))
	var real *sim.DetectReport
	if o.realistic > 0 {
		dc := alert.DefaultConfig()
		dc.ColdStart = o.coldStart
		rc := sim.RealisticConfig{Trials: o.realistic, Duration: o.duration, Seed: o.seed, Detector: &dc}
		if o.realScenarios != "" {
			rc.Scenarios = strings.Split(o.realScenarios, ",")
		}
		start := time.Now()
		if real, err = sim.BenchRealistic(rc); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if err := real.WriteTable(e.stdout); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "(%s wall time)\n", time.Since(start).Round(time.Second))
	}
	var flow *sim.DetectReport
	if o.graphTrials > 0 {
		gc := sim.GraphDetectConfig{Detect: sim.DetectConfig{Trials: o.graphTrials, Duration: o.duration, Shares: cfg.Shares, Seed: o.seed}}
		if o.graphScenarios != "" {
			gc.Scenarios = strings.Split(o.graphScenarios, ",")
		}
		start := time.Now()
		if flow, err = graph.BenchDetect(graph.BenchConfig(1), gc); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		fmt.Fprintln(e.stdout, "\nrequest flow on a generated 50-service graph (every caller deployed in turn; instance spread, bursts):")
		if err := flow.WriteTable(e.stdout); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "(%s wall time)\n", time.Since(start).Round(time.Second))
	}
	var rt *demo.E2EReport
	if o.e2e > 0 {
		logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		if rt, err = demo.BenchE2E(ctx, o.e2e, o.seed, logger); err != nil {
			return err
		}
		if err := rt.WriteTable(e.stdout); err != nil {
			return err
		}
	}
	if o.json {
		return writeDetectJSON(e.stdout, rt, rep, real, flow)
	}
	return nil
}

// writeDetectJSON prints the suites' JSON reports in order (nil ones skipped), then the
// end-to-end trials' (if not nil).
func writeDetectJSON(w io.Writer, rt *demo.E2EReport, reps ...*sim.DetectReport) error {
	for _, r := range reps {
		if r == nil {
			continue
		}
		if err := r.WriteJSON(w); err != nil {
			return err
		}
	}
	if rt != nil {
		b, _ := json.Marshal(rt)
		fmt.Fprintln(w, string(b))
	}
	return nil
}
