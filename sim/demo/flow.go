package demo

import (
	"time"

	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/graph"
)

// The demo's request flow: web → checkout → payments and inventory, beside a generated
// graph of graphServices services (when Config.Graph is set or a flow scenario runs).
const (
	demoEntry     = "web"
	demoPayments  = "payments"
	demoInventory = "inventory"
	graphServices = 24
)

// flowScenario reports whether a scenario regresses the canary's calls rather than its RED.
func flowScenario(s string) bool { return s == "fanout" || s == "downstream" }

// flowGroups returns the groups and calls of the demo's request flow around checkout, whose
// baseline and canary groups the caller already has: the entry that calls checkout, its two
// dependencies, and a generated graph of other services.
func (d *demo) flowGroups() ([]sim.Group, map[string][]sim.Edge, error) {
	g, err := graph.New(graph.Config{Services: graphServices, EntryRPS: 600, RPSPerInstance: 60, MaxInstances: 3, Seed: d.cfg.Seed})
	if err != nil {
		return nil, nil, err
	}
	groups := g.Groups("1.0.0", 0.002, 10*time.Millisecond, 60*time.Millisecond)
	calls := g.Calls
	checkoutRPS := float64(d.cfg.Baseline) * d.cfg.RPS // the canary's share comes on top
	calls[demoEntry] = []sim.Edge{{Callee: demoService, PerRequest: 1, ErrorRate: d.cfg.ErrorRate,
		LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond}}
	calls[demoService] = []sim.Edge{
		{Callee: demoPayments, PerRequest: 1, ErrorRate: 0.005, LatencyMedian: 12 * time.Millisecond, LatencyP99: 60 * time.Millisecond},
		{Callee: demoInventory, PerRequest: 2, ErrorRate: 0.002, LatencyMedian: 4 * time.Millisecond, LatencyP99: 20 * time.Millisecond},
	}
	if d.cfg.Scenario == "downstream" {
		// In this story checkout's mesh proxy retries a failed payments call once: payments
		// sees every attempt, checkout's edge only the calls that failed twice. (Without a
		// regression the few calls that fail twice could not show the canary as good as the
		// baseline: the other stories call payments directly.)
		calls[demoService][0].Retries = 1
	}
	groups = append(groups,
		sim.Group{Service: demoEntry, Version: "3.2.0", Instances: 6, RPS: checkoutRPS / 6, ErrorRate: 0.002,
			LatencyMedian: 60 * time.Millisecond, LatencyP99: 300 * time.Millisecond},
		sim.Group{Service: demoPayments, Version: "7.1.0", Instances: 6, RPS: checkoutRPS / 6, ErrorRate: 0.005,
			LatencyMedian: 12 * time.Millisecond, LatencyP99: 60 * time.Millisecond},
		sim.Group{Service: demoInventory, Version: "2.9.4", Instances: 6, RPS: 2 * checkoutRPS / 6, ErrorRate: 0.002,
			LatencyMedian: 4 * time.Millisecond, LatencyP99: 20 * time.Millisecond},
	)
	return groups, calls, nil
}

// flowOnset applies a flow scenario's regression to the canary: fanout makes it call
// payments 5× per request; downstream makes payments fail 5× as often on its requests, which
// the proxy's retry mostly hides from checkout's edge but not from payments' errors by caller
// (the blast radius). Its own RED stays as it was.
func flowOnset(canary *sim.GroupState, scenario string) {
	switch scenario {
	case "fanout":
		canary.SetFanout(demoPayments, 5)
	case "downstream":
		canary.SetEdgeErrorRate(demoPayments, 5*canary.EdgeErrorRate(demoPayments))
	}
}
