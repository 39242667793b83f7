package sim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/herd-dev/herd/sim"
)

// A fleet of 20 instances of checkout, 20 % of them on the canary 1.5.0, publishing through a
// function (in herd, (*nats.Conn).Publish) for a second; then the canary regresses.
func Example() {
	groups, err := sim.Spread(sim.SpreadConfig{Instances: 20, CanaryShare: 0.2, RPS: 50, ErrorRate: 0.005,
		LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, g := range groups {
		fmt.Printf("%s %s: %d instances\n", g.Service, g.Version, g.Instances)
	}
	f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: 5 * time.Second, LifetimeMax: 30 * time.Second,
		Seed: 1, Publish: func(subject string, data []byte) error { return nil }})
	if err != nil {
		fmt.Println(err)
		return
	}
	canary := f.Group("checkout", "1.5.0")
	canary.SetErrorRate(0.05) // from the next interval on
	if err := f.Run(context.Background(), time.Now().Add(time.Second)); err != nil {
		fmt.Println(err)
		return
	}
	for _, t := range f.Totals() {
		fmt.Printf("%s %s: published requests: %t\n", t.Service, t.Version, t.Requests > 0)
	}
	// Output:
	// checkout 1.4.2: 16 instances
	// checkout 1.5.0: 4 instances
	// checkout 1.4.2: published requests: true
	// checkout 1.5.0: published requests: true
}

// The detector benchmark, small: ten seeded trials of a minute per scenario and share.
func ExampleBenchDetect() {
	rep, err := sim.BenchDetect(sim.DetectConfig{Trials: 10, Duration: time.Minute, Shares: []float64{0.2},
		Scenarios: []string{"crash-loop"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	r := rep.Results[0]
	fmt.Printf("%s at %g %%: %d/%d rolled back, decided by %v\n", r.Scenario, 100*r.Share, r.Rollbacks, r.Trials, r.Decisive)
	// Output:
	// crash-loop at 20 %: 10/10 rolled back, decided by map[guard_error_ceiling:10]
}
