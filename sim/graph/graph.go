// Package graph generates a simulated service graph for herd's simulator: services in tiers
// (entry, mid, backend, data), each calling a few services of the tiers below, with the
// request rates the calls imply. `herd sim --graph` and `herd demo`'s flow scenarios run it:
// every request of a service fans out along its edges (sim.Edge).
package graph

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/herd-dev/herd/sim"
)

// Config configures a graph. Zero fields take the defaults in brackets.
type Config struct {
	// Services is the number of services [30].
	Services int
	// Callees is the mean number of services a service of a tier above the data tier calls
	// [3]; every service below the entry tier has at least one caller.
	Callees float64
	// EntryRPS is the total request rate into the entry tier [2000].
	EntryRPS float64
	// RPSPerInstance sizes the services: a service runs ceil(rate / RPSPerInstance)
	// instances, between 1 and MaxInstances [100; 8].
	RPSPerInstance float64
	MaxInstances   int
	// Seed fixes the graph.
	Seed uint64
}

// Service is one service of a graph.
type Service struct {
	Name string
	// Domain groups services (the first part of the name), like a namespace.
	Domain string
	// Tier is 0 for the entry tier and grows towards the data tier.
	Tier int
	// RPS is the service's total request rate (entry traffic plus its callers' calls);
	// Instances how many instances serve it.
	RPS       float64
	Instances int
}

// Graph is a generated service graph.
type Graph struct {
	Services []Service
	// Calls are the outbound edges by caller service, for sim.FleetConfig.Calls.
	Calls map[string][]sim.Edge
}

// tierShare is the share of the services in each tier, entry first.
var tierShare = [...]float64{0.1, 0.25, 0.35, 0.3}

var (
	domains = []string{"shop", "user", "pay", "search", "ads", "ship", "auth", "media", "mail", "geo",
		"rec", "cart", "order", "price", "stock", "review", "promo", "fraud", "tax", "notify"}
	roles = [len(tierShare)][]string{
		{"web", "bff", "gateway"},
		{"api", "orchestrator", "svc"},
		{"core", "engine", "worker", "rules"},
		{"db", "cache", "store", "queue", "index"},
	}
	perRequest = []float64{0.2, 0.5, 1, 1, 1, 2, 3}
)

// New generates a graph.
func New(cfg Config) (*Graph, error) {
	cfg.Services = cmp.Or(cfg.Services, 30)
	cfg.Callees = cmp.Or(cfg.Callees, 3)
	cfg.EntryRPS = cmp.Or(cfg.EntryRPS, 2000)
	cfg.RPSPerInstance = cmp.Or(cfg.RPSPerInstance, 100)
	cfg.MaxInstances = cmp.Or(cfg.MaxInstances, 8)
	switch {
	case cfg.Services < len(tierShare) || cfg.Services > 10_000:
		return nil, fmt.Errorf("cannot generate graph: %d services is not in [%d, 10000]", cfg.Services, len(tierShare))
	case !(cfg.Callees > 0) || cfg.Callees > 100:
		return nil, fmt.Errorf("cannot generate graph: %g callees per service is not in (0, 100]", cfg.Callees)
	case !(cfg.EntryRPS > 0) || math.IsInf(cfg.EntryRPS, 1) || !(cfg.RPSPerInstance > 0) || math.IsInf(cfg.RPSPerInstance, 1):
		return nil, errors.New("cannot generate graph: request rates must be finite and > 0")
	case cfg.MaxInstances < 1:
		return nil, fmt.Errorf("cannot generate graph: max instances %d is less than 1", cfg.MaxInstances)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	g := &Graph{Calls: map[string][]sim.Edge{}}
	// Tier sizes: each at least 1, the data tier takes the rounding.
	sizes := make([]int, len(tierShare))
	left := cfg.Services
	for t := range len(tierShare) - 1 {
		sizes[t] = max(1, int(math.Round(float64(cfg.Services)*tierShare[t])))
		left -= sizes[t]
	}
	sizes[len(sizes)-1] = left
	if left < 1 {
		return nil, fmt.Errorf("cannot generate graph: %d services are too few for %d tiers", cfg.Services, len(tierShare))
	}
	used := map[string]bool{}
	var tiers [len(tierShare)][]int // service indexes by tier
	for t, n := range sizes {
		for i := range n {
			d := domains[(i+t*7)%len(domains)]
			name := d + "-" + roles[t][(i/len(domains))%len(roles[t])]
			for k := 2; used[name]; k++ {
				name = fmt.Sprintf("%s-%s-%d", d, roles[t][(i/len(domains))%len(roles[t])], k)
			}
			used[name] = true
			tiers[t] = append(tiers[t], len(g.Services))
			g.Services = append(g.Services, Service{Name: name, Domain: d, Tier: t})
		}
	}
	// Edges: callees mostly from the next tier, some further down; same domain preferred.
	called := make([]bool, len(g.Services))
	addEdge := func(from, to int) {
		caller, callee := g.Services[from].Name, g.Services[to].Name
		for _, e := range g.Calls[caller] {
			if e.Callee == callee {
				return
			}
		}
		med := time.Duration(2+rng.IntN(30)) * time.Millisecond
		if g.Services[to].Tier == len(tierShare)-1 {
			med = time.Duration(500+rng.IntN(3000)) * time.Microsecond
		}
		g.Calls[caller] = append(g.Calls[caller], sim.Edge{Callee: callee,
			PerRequest: perRequest[rng.IntN(len(perRequest))], ErrorRate: 0.001 + 0.004*rng.Float64(),
			LatencyMedian: med, LatencyP99: med * 5})
		called[to] = true
	}
	for t := range len(tierShare) - 1 {
		for _, from := range tiers[t] {
			k := max(1, int(math.Round(cfg.Callees*(0.5+rng.Float64()))))
			for range k {
				dt := t + 1
				if rng.Float64() < 0.3 && t+2 < len(tierShare) {
					dt = t + 2
				}
				// Same domain if the tier has one, else any.
				cands := tiers[dt]
				var same []int
				for _, c := range cands {
					if g.Services[c].Domain == g.Services[from].Domain {
						same = append(same, c)
					}
				}
				if len(same) > 0 && rng.Float64() < 0.6 {
					cands = same
				}
				addEdge(from, cands[rng.IntN(len(cands))])
			}
		}
	}
	for t := 1; t < len(tierShare); t++ {
		for _, to := range tiers[t] {
			if !called[to] {
				addEdge(tiers[t-1][rng.IntN(len(tiers[t-1]))], to)
			}
		}
	}
	// Rates, tier by tier: entry traffic split evenly, then what callers call.
	for _, i := range tiers[0] {
		g.Services[i].RPS = cfg.EntryRPS / float64(len(tiers[0]))
	}
	index := map[string]int{}
	for i, s := range g.Services {
		index[s.Name] = i
	}
	for t := range len(tierShare) {
		for _, i := range tiers[t] {
			s := &g.Services[i]
			s.Instances = min(cfg.MaxInstances, max(1, int(math.Ceil(s.RPS/cfg.RPSPerInstance))))
			for _, e := range g.Calls[s.Name] {
				g.Services[index[e.Callee]].RPS += s.RPS * e.PerRequest
			}
		}
	}
	return g, nil
}

// Edges returns the number of edges.
func (g *Graph) Edges() int {
	n := 0
	for _, es := range g.Calls {
		n += len(es)
	}
	return n
}

// Service returns the service with this name, or nil.
func (g *Graph) Service(name string) *Service {
	for i := range g.Services {
		if g.Services[i].Name == name {
			return &g.Services[i]
		}
	}
	return nil
}

// Groups returns one simulated group per service, all at version, each instance serving
// the service's rate divided among its instances with errorRate and the latency given.
func (g *Graph) Groups(version string, errorRate float64, median, p99 time.Duration) []sim.Group {
	out := make([]sim.Group, 0, len(g.Services))
	for _, s := range g.Services {
		out = append(out, sim.Group{Service: s.Name, Version: version, Instances: s.Instances,
			RPS: s.RPS / float64(s.Instances), ErrorRate: errorRate, LatencyMedian: median, LatencyP99: p99})
	}
	slices.SortFunc(out, func(a, b sim.Group) int { return cmp.Compare(a.Service, b.Service) })
	return out
}
