package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/graph"
)

// simFlags are the flags of `herd sim`.
type simFlags struct {
	nats                      bus.Client
	services, versions        listFlag
	instances                 int
	canaryShare               float64
	rps, errorRate            float64
	latencyMedian, latencyP99 time.Duration
	lifetimeMin, lifetimeMax  time.Duration
	interval, duration        time.Duration
	seed                      uint64
	graph                     int
	graphCallees              float64
}

func (s *simFlags) register(fs *flag.FlagSet) {
	natsFlags(fs, &s.nats, defaultNATSURL)
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
	fs.IntVar(&s.graph, "graph", 0, "simulate a generated service graph of this many services instead of -services (each request fans out along its edges; 0: off) (count)")
	fs.Float64Var(&s.graphCallees, "graph-callees", 3, "mean callees per service of the generated graph (count)")
}

// graphGroups generates the -graph service graph: one group per service at the first
// version, sized by its request rate, and the calls of each service.
func (s *simFlags) graphGroups() ([]sim.Group, map[string][]sim.Edge, error) {
	g, err := graph.New(graph.Config{Services: s.graph, Callees: s.graphCallees, EntryRPS: s.rps * float64(s.instances) / 4,
		RPSPerInstance: s.rps, MaxInstances: max(1, s.instances/s.graph), Seed: s.seed})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: -graph %d, -graph-callees %v: %v", errUsage, s.graph, s.graphCallees, err)
	}
	version := "1.0.0"
	if len(s.versions) > 0 {
		version = s.versions[0]
	}
	return g.Groups(version, s.errorRate, s.latencyMedian, s.latencyP99), g.Calls, nil
}

// edgeTotal is one edge's line of `herd sim`'s JSON.
type edgeTotal struct {
	Service   string `json:"service"`
	Version   string `json:"version"`
	Callee    string `json:"callee"`
	Operation string `json:"operation,omitempty"`
	sim.EdgeTotals
}

// spread spreads the instances over services and versions (see sim.Spread).
func (s *simFlags) spread() ([]sim.Group, error) {
	groups, err := sim.Spread(sim.SpreadConfig{Services: s.services, Versions: s.versions, Instances: s.instances,
		CanaryShare: s.canaryShare, RPS: s.rps, ErrorRate: s.errorRate, LatencyMedian: s.latencyMedian, LatencyP99: s.latencyP99})
	if err != nil {
		return nil, fmt.Errorf("%w: -instances %d, -canary-share %v: %v", errUsage, s.instances, s.canaryShare, err)
	}
	return groups, nil
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
				var groups []sim.Group
				var calls map[string][]sim.Edge
				var err error
				if s.graph > 0 {
					groups, calls, err = s.graphGroups()
				} else {
					groups, err = s.spread()
				}
				if err != nil {
					return err
				}
				if err := s.nats.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				nc, err := bus.Connect(s.nats, "herd-sim", nil, e.logger)
				if err != nil {
					return err
				}
				defer nc.Close()
				f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, Calls: calls, LifetimeMin: s.lifetimeMin, LifetimeMax: s.lifetimeMax,
					Interval: s.interval, Seed: s.seed, Publish: nc.Publish, Logger: e.logger})
				if err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				var end time.Time
				if s.duration > 0 {
					end = time.Now().Add(s.duration)
				}
				e.logger.Info("sim running", "groups", len(groups), "instances", s.instances, "duration", s.duration, "nats", bus.RedactURLs(s.nats.URLs))
				if err := f.Run(ctx, end); err != nil {
					return err
				}
				// Everything counted was handed to the client; make sure the server has it.
				if err := nc.FlushTimeout(10 * time.Second); err != nil {
					return fmt.Errorf("cannot flush the last batches to NATS: %w", err)
				}
				res := map[string]any{"groups": f.Totals()}
				if s.graph > 0 {
					edges := []edgeTotal{}
					for id, t := range f.EdgeTotals() {
						edges = append(edges, edgeTotal{id.Service, id.Version, id.Edge.Callee, id.Edge.Operation, t})
					}
					slices.SortFunc(edges, func(a, b edgeTotal) int {
						return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Callee, b.Callee))
					})
					res["edges"] = edges
				}
				out, _ := json.Marshal(res)
				fmt.Fprintln(e.stdout, string(out))
				return nil
			}
		},
	}
}
