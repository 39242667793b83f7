package graph

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/herd-dev/herd/sim"
)

// BenchConfig is the graph `herd bench detect --graph-trials` deploys its callers from: 50
// services, sized at 25 requests per second per instance and at most 20 instances, so that
// callers run a few to 20 baseline instances.
func BenchConfig(seed uint64) Config {
	return Config{Services: 50, RPSPerInstance: 25, MaxInstances: 20, Seed: seed}
}

// BenchServices returns the services that call others, as sim.BenchDetectGraph deploys them,
// sorted by name.
func (g *Graph) BenchServices() []sim.EdgeBenchService {
	var out []sim.EdgeBenchService
	for _, s := range g.Services {
		if calls := g.Calls[s.Name]; len(calls) > 0 {
			out = append(out, sim.EdgeBenchService{Name: s.Name, RPS: s.RPS, Instances: s.Instances, Calls: slices.Clone(calls)})
		}
	}
	slices.SortFunc(out, func(a, b sim.EdgeBenchService) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// BenchDetect runs sim.BenchDetectGraph on the callers of a graph generated from gc.
func BenchDetect(gc Config, cfg sim.GraphDetectConfig) (*sim.DetectReport, error) {
	g, err := New(gc)
	if err != nil {
		return nil, fmt.Errorf("cannot run graph detector bench: %w", err)
	}
	cfg.Services = g.BenchServices()
	return sim.BenchDetectGraph(cfg)
}
