package sim

import (
	"fmt"
	"time"
)

// SpreadConfig says how Spread lays out a fleet. Zero fields take the defaults in brackets.
type SpreadConfig struct {
	// Services are the simulated services [checkout].
	Services []string
	// Versions are the versions every service runs; the last one is the canary [1.4.2, 1.5.0].
	Versions []string
	// Instances is the number of instances over all groups; at least one per group.
	Instances int
	// CanaryShare is the share of each service's instances that run the canary, in (0, 1);
	// unused with a single version.
	CanaryShare float64
	// The traffic of every group (see Group).
	RPS, ErrorRate            float64
	LatencyMedian, LatencyP99 time.Duration
}

// Spread spreads c.Instances over services and versions: evenly over the services (the first
// ones take the remainder), then in each service round(n·CanaryShare) instances (at least 1) to
// the canary and the rest evenly over the other versions. Every group gets at least one
// instance and the traffic of c.
func Spread(c SpreadConfig) ([]Group, error) {
	services, versions := c.Services, c.Versions
	if len(services) == 0 {
		services = []string{"checkout"}
	}
	if len(versions) == 0 {
		versions = []string{"1.4.2", "1.5.0"}
	}
	if c.Instances < len(services)*len(versions) {
		return nil, fmt.Errorf("cannot spread %d instances over %d groups: fewer than one per group", c.Instances, len(services)*len(versions))
	}
	if !(c.CanaryShare > 0 && c.CanaryShare < 1) && len(versions) > 1 {
		return nil, fmt.Errorf("cannot spread instances: canary share %v is not between 0 and 1", c.CanaryShare)
	}
	perService := c.Instances / len(services)
	var out []Group
	for i, svc := range services {
		n := perService
		if i < c.Instances%len(services) {
			n++
		}
		canary := 0
		if len(versions) > 1 {
			canary = max(1, int(float64(n)*c.CanaryShare+0.5))
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
			out = append(out, Group{Service: svc, Version: v, Instances: max(1, k), RPS: c.RPS,
				ErrorRate: c.ErrorRate, LatencyMedian: c.LatencyMedian, LatencyP99: c.LatencyP99})
		}
	}
	return out, nil
}
