package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"

	"github.com/herd-dev/herd/sim/demo"
)

func demoCommand() command {
	return command{
		name:  "demo",
		usage: "[--scenario errors|latency|crash|good|fanout|downstream] [--graph] [--seed N] [--duration D] [--json]",
		short: "run herd with a simulated fleet and a canary: steady v1 → canary v2 → regression → rollback",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			d := demo.DefaultConfig()
			nodeFlags(fs, &d.Node, d.Node.Roles, e.getenv)
			fs.StringVar(&d.Scenario, "scenario", d.Scenario, "what goes wrong with the canary: errors, latency, crash, good, fanout (calls a dependency 5× per request) or downstream (its calls make a dependency fail)")
			fs.BoolVar(&d.Graph, "graph", false, "run the request flow around checkout and a generated service graph (always on for fanout and downstream)")
			fs.Uint64Var(&d.Seed, "seed", d.Seed, "random seed of the simulated fleet")
			fs.DurationVar(&d.Duration, "duration", 0, "stop after this long; 0 keeps running after the story until interrupted (duration)")
			fs.BoolVar(&d.JSON, "json", false, "print one JSON event per line instead of the timeline")
			fs.IntVar(&d.Baseline, "baseline-instances", d.Baseline, "instances of the baseline version (count)")
			fs.IntVar(&d.Canary, "canary-instances", d.Canary, "instances of the canary version (count)")
			fs.Float64Var(&d.ErrorRate, "error-rate", d.ErrorRate, "probability that a request of the checkout service fails, before any regression (fraction)")
			fs.Float64Var(&d.RPS, "rps", d.RPS, "requests per second per instance (rate)")
			fs.DurationVar(&d.DeployAfter, "deploy-after", d.DeployAfter, "when the canary is deployed, after start (duration)")
			fs.DurationVar(&d.OnsetAfter, "onset-after", d.OnsetAfter, "when the canary regresses, after its deploy (duration)")
			verbose := fs.Bool("v", false, "log herd's components at info level on stderr (warnings only without it)")
			return func(ctx context.Context) error {
				if _, ok := demo.Scenarios[d.Scenario]; !ok {
					return fmt.Errorf("%w: -scenario %q: want errors, latency, crash, good, fanout or downstream", errUsage, d.Scenario)
				}
				d.Out, d.Logger = e.stdout, e.logger
				if !*verbose {
					d.Logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
				}
				if err := d.Node.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				_, err := demo.Run(ctx, d)
				return err
			}
		},
	}
}
