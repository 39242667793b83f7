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
	var rt *e2eReport
	if o.e2e > 0 {
		if rt, err = benchE2E(ctx, e, o.e2e, o.seed); err != nil {
			return err
		}
		rt.writeTable(e.stdout)
	}
	if o.json {
		if err := rep.WriteJSON(e.stdout); err != nil {
			return err
		}
		if real != nil {
			if err := real.WriteJSON(e.stdout); err != nil {
				return err
			}
		}
		if flow != nil {
			if err := flow.WriteJSON(e.stdout); err != nil {
				return err
			}
		}
		if rt != nil {
			b, _ := json.Marshal(rt)
			fmt.Fprintln(e.stdout, string(b))
		}
	}
	return nil
}

// e2eTrial is one real-time trial of `herd bench detect --e2e`.
type e2eTrial struct {
	Scenario string `json:"scenario"`
	Seed     uint64 `json:"seed"`
	Outcome  string `json:"outcome"`
	// DetectMs is the deciding window's end minus the onset; WebhookMs the webhook's receipt
	// minus the onset; OverheadMs the receipt minus the deciding window's end (the pipeline's
	// own delay: lateness, closing, detector, delivery).
	DetectMs   int64 `json:"detect_ms"`
	WebhookMs  int64 `json:"webhook_ms"`
	OverheadMs int64 `json:"overhead_ms"`
}

type e2eReport struct {
	Trials        []e2eTrial `json:"trials"`
	OverheadP50Ms int64      `json:"overhead_p50_ms"`
	OverheadP99Ms int64      `json:"overhead_p99_ms"`
	OverheadMaxMs int64      `json:"overhead_max_ms"`
}

// benchE2E runs the demo's story n times per regression scenario, in real time, and measures
// the pipeline overhead from the deciding window's end to the webhook's receipt.
func benchE2E(ctx context.Context, e *env, n int, seed uint64) (*e2eReport, error) {
	rep := &e2eReport{}
	var overheads []time.Duration
	for _, sc := range []string{"crash", "errors", "latency"} {
		for i := range n {
			d := demo.DefaultConfig()
			d.Scenario, d.Seed, d.Duration, d.JSON = sc, seed+uint64(i), 40*time.Second, true
			d.DeployAfter, d.OnsetAfter = 2*time.Second, 7*time.Second
			d.Node.HTTPListen = "127.0.0.1:0"
			d.Logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
			res, err := demo.Run(ctx, d)
			if err != nil {
				return nil, fmt.Errorf("end-to-end trial %s #%d: %w", sc, i, err)
			}
			t := e2eTrial{Scenario: sc, Seed: d.Seed, Outcome: "none"}
			if res.Verdict != nil && !res.WebhookAt.IsZero() {
				end := time.UnixMilli(res.Verdict.UnixMs)
				t.Outcome = string(res.Verdict.State)
				t.DetectMs = end.Sub(res.Onset).Milliseconds()
				t.WebhookMs = res.WebhookAt.Sub(res.Onset).Milliseconds()
				t.OverheadMs = res.WebhookAt.Sub(end).Milliseconds()
				overheads = append(overheads, res.WebhookAt.Sub(end))
			}
			rep.Trials = append(rep.Trials, t)
		}
	}
	rep.OverheadP50Ms = percentile(overheads, 0.5).Milliseconds()
	rep.OverheadP99Ms = percentile(overheads, 0.99).Milliseconds()
	rep.OverheadMaxMs = percentile(overheads, 1).Milliseconds()
	return rep, nil
}

func (r *e2eReport) writeTable(w io.Writer) {
	fmt.Fprintln(w, "\nreal-time end-to-end trials (agent library → NATS → rollup → detector → webhook receiver)")
	fmt.Fprintf(w, "%-9s %6s %-9s %12s %12s %14s\n", "scenario", "seed", "outcome", "detect_ms", "webhook_ms", "overhead_ms")
	for _, t := range r.Trials {
		fmt.Fprintf(w, "%-9s %6d %-9s %12d %12d %14d\n", t.Scenario, t.Seed, t.Outcome, t.DetectMs, t.WebhookMs, t.OverheadMs)
	}
	fmt.Fprintf(w, "pipeline overhead (webhook receipt − deciding window end): p50 %d ms, p99 %d ms, max %d ms\n",
		r.OverheadP50Ms, r.OverheadP99Ms, r.OverheadMaxMs)
}
