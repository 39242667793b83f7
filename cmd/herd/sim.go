package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/herd-dev/herd/ingest"
)

// simFlags are the flags of `herd sim`, shared with `herd bench`.
type simFlags struct {
	natsURL                   string
	services, versions        listFlag
	instances                 int
	canaryShare               float64
	rps, errorRate            float64
	latencyMedian, latencyP99 time.Duration
	lifetimeMin, lifetimeMax  time.Duration
	interval, duration        time.Duration
	seed                      uint64
}

func (s *simFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.natsURL, "nats", "nats://127.0.0.1:4222", "NATS server `URL`s to publish to, comma-separated")
	fs.Var(&s.services, "services", "simulated `services`, comma-separated or repeated (default checkout)")
	fs.Var(&s.versions, "versions", "`versions` of every service, comma-separated; the last one is the canary (default 1.4.2,1.5.0)")
	fs.IntVar(&s.instances, "instances", 200, "instances alive at any time, over all groups (count)")
	fs.Float64Var(&s.canaryShare, "canary-share", 0.2, "share of each service's instances that run the last version (fraction)")
	fs.Float64Var(&s.rps, "rps", 20, "requests per second of each instance (rate)")
	fs.Float64Var(&s.errorRate, "error-rate", 0.005, "probability that a request fails (fraction)")
	fs.DurationVar(&s.latencyMedian, "latency-median", 40*time.Millisecond, "median request latency (duration)")
	fs.DurationVar(&s.latencyP99, "latency-p99", 200*time.Millisecond, "99th percentile request latency (duration)")
	fs.DurationVar(&s.lifetimeMin, "lifetime-min", 2*time.Second, "shortest instance lifetime; an ended instance is replaced at once (duration)")
	fs.DurationVar(&s.lifetimeMax, "lifetime-max", 10*time.Second, "longest instance lifetime (duration)")
	fs.DurationVar(&s.interval, "interval", ingest.DefaultInterval, "batch interval of every instance (duration)")
	fs.DurationVar(&s.duration, "duration", 0, "how long to run; 0 runs until interrupted (duration)")
	fs.Uint64Var(&s.seed, "seed", 1, "random seed; the same seed gives the same traffic")
}

// groups spreads the instances over services and versions.
func (s *simFlags) groups() ([]groupSpec, error) {
	services, versions := []string(s.services), []string(s.versions)
	if len(services) == 0 {
		services = []string{"checkout"}
	}
	if len(versions) == 0 {
		versions = []string{"1.4.2", "1.5.0"}
	}
	if s.instances < len(services)*len(versions) {
		return nil, fmt.Errorf("%w: -instances %d is fewer than one per group (%d groups)", errUsage, s.instances, len(services)*len(versions))
	}
	if !(s.canaryShare > 0 && s.canaryShare < 1) && len(versions) > 1 {
		return nil, fmt.Errorf("%w: -canary-share %v must be between 0 and 1", errUsage, s.canaryShare)
	}
	perService := s.instances / len(services)
	var out []groupSpec
	for i, svc := range services {
		n := perService
		if i < s.instances%len(services) {
			n++
		}
		canary := 0
		if len(versions) > 1 {
			canary = max(1, int(float64(n)*s.canaryShare+0.5))
		}
		rest := n - canary
		for j, v := range versions {
			k := rest / max(1, len(versions)-1)
			if j < rest%max(1, len(versions)-1) {
				k++
			}
			if j == len(versions)-1 && len(versions) > 1 {
				k = canary
			}
			if len(versions) == 1 {
				k = n
			}
			out = append(out, groupSpec{Service: svc, Version: v, Instances: max(1, k), RPS: s.rps,
				ErrorRate: s.errorRate, LatencyMedian: s.latencyMedian, LatencyP99: s.latencyP99})
		}
	}
	return out, nil
}

func simCommand() command {
	return command{
		name:  "sim",
		usage: "--nats URL [--instances N] [--duration D] [--seed S] [flags]",
		short: "run a simulated fleet of churning instances that publish through the agent library",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var s simFlags
			s.register(fs)
			return func(ctx context.Context) error {
				groups, err := s.groups()
				if err != nil {
					return err
				}
				nc, err := connectNATS(s.natsURL, "herd-sim", e.logger)
				if err != nil {
					return err
				}
				defer nc.Close()
				f, err := newFleet(fleetConfig{Groups: groups, LifetimeMin: s.lifetimeMin, LifetimeMax: s.lifetimeMax,
					Interval: s.interval, Seed: s.seed, Publish: nc.Publish, Logger: e.logger})
				if err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				var end time.Time
				if s.duration > 0 {
					end = time.Now().Add(s.duration)
				}
				e.logger.Info("sim running", "groups", len(groups), "instances", s.instances, "duration", s.duration, "nats", redactURLs(s.natsURL))
				if err := f.Run(ctx, end); err != nil {
					return err
				}
				// Everything counted was handed to the client; make sure the server has it.
				if err := nc.FlushTimeout(10 * time.Second); err != nil {
					return fmt.Errorf("cannot flush the last batches to NATS: %w", err)
				}
				out, _ := json.Marshal(map[string]any{"groups": f.Totals()})
				fmt.Fprintln(e.stdout, string(out))
				return nil
			}
		},
	}
}
