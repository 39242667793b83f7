package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/herd-dev/herd/alert"
)

// benchDetect runs the detector's statistical benchmark on simulated time and prints a table
// and, with --json, the JSON report.
func benchDetect(_ context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("herd bench detect", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	trials := fs.Int("trials", 1000, "seeded trials per scenario and canary share (count)")
	duration := fs.Duration("duration", 10*time.Minute, "simulated comparison time of a trial (duration)")
	rps := fs.Float64("rps", 2000, "total request rate of the service (rate)")
	shares := fs.String("shares", "0.05,0.2", "canary traffic shares, comma-separated (fractions)")
	scenarios := fs.String("scenarios", "", "scenarios, comma-separated (default all)")
	seed := fs.Uint64("seed", 1, "random seed")
	asJSON := fs.Bool("json", false, "print the JSON report after the table")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg := alert.BenchConfig{Trials: *trials, Duration: *duration, RPS: *rps, Seed: *seed}
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
	rep, err := alert.Bench(cfg)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := rep.WriteTable(e.stdout); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "(%s wall time)\n", time.Since(start).Round(time.Second))
	if *asJSON {
		return rep.WriteJSON(e.stdout)
	}
	return nil
}
