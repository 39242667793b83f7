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

	"github.com/herd-dev/herd/sim"
)

// benchDetect runs the detector's statistical benchmark on simulated time and prints a table
// and, with --json, the JSON report.
func benchDetect(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("herd bench detect", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	trials := fs.Int("trials", 1000, "seeded trials per scenario and canary share (count)")
	duration := fs.Duration("duration", 10*time.Minute, "simulated comparison time of a trial (duration)")
	rps := fs.Float64("rps", 2000, "total request rate of the service (rate)")
	shares := fs.String("shares", "0.05,0.2", "canary traffic shares, comma-separated (fractions)")
	scenarios := fs.String("scenarios", "", "scenarios, comma-separated (default all)")
	seed := fs.Uint64("seed", 1, "random seed")
	asJSON := fs.Bool("json", false, "print the JSON report after the table")
	e2e := fs.Int("e2e", 3, "real-time end-to-end trials per regression scenario (crash, errors, latency) through agent library → NATS → rollup → detector → webhook receiver (count; 0 skips)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg := sim.DetectConfig{Trials: *trials, Duration: *duration, RPS: *rps, Seed: *seed}
	for _, s := range strings.Split(*shares, ",") {
		var f float64
		if _, err := fmt.Sscan(strings.TrimSpace(s), &f); err != nil {
			return fmt.Errorf("%w: -shares %q: %v", errUsage, s, err)
		}
		cfg.Shares = append(cfg.Shares, f)
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
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
	var rt *e2eReport
	if *e2e > 0 {
		if rt, err = benchE2E(ctx, e, *e2e, *seed); err != nil {
			return err
		}
		rt.writeTable(e.stdout)
	}
	if *asJSON {
		if err := rep.WriteJSON(e.stdout); err != nil {
			return err
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
	quiet := &env{stdout: io.Discard, stderr: e.stderr, getenv: e.getenv,
		logger: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	rep := &e2eReport{}
	var overheads []time.Duration
	for _, sc := range []string{"crash", "errors", "latency"} {
		for i := range n {
			d := demo{stack: defaultStackConfig(), scenario: sc, seed: seed + uint64(i), duration: 40 * time.Second,
				json: true, baseline: 20, canary: 8, rps: 100, errorRate: 0.01,
				deployAfter: 2 * time.Second, onsetAfter: 7 * time.Second, out: quiet}
			d.stack.NATSListen, d.stack.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
			d.stack.Detect.MinExposure = 20 * time.Second
			if err := d.run(ctx); err != nil {
				return nil, fmt.Errorf("end-to-end trial %s #%d: %w", sc, i, err)
			}
			t := e2eTrial{Scenario: sc, Seed: d.seed, Outcome: "none"}
			if d.verdict != nil && !d.webhookAt.IsZero() {
				end := time.UnixMilli(d.verdict.UnixMs)
				t.Outcome = string(d.verdict.State)
				t.DetectMs = end.Sub(d.onset).Milliseconds()
				t.WebhookMs = d.webhookAt.Sub(d.onset).Milliseconds()
				t.OverheadMs = d.webhookAt.Sub(end).Milliseconds()
				overheads = append(overheads, d.webhookAt.Sub(end))
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
