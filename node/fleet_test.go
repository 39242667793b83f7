package node

import (
	"fmt"
	"slices"

	"github.com/herd-dev/herd/internal/checkfor"

	"testing"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/sim"
)

// testGroup is a group of the tests' steady fleets: n instances at 100 rps each, 1 % errors,
// latency median 40 ms and p99 200 ms.
func testGroup(service, version string, n int) sim.Group {
	return sim.Group{Service: service, Version: version, Instances: n, RPS: 100, ErrorRate: 0.01,
		LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond}
}

// steadyFleet builds a fleet of groups whose instances live one to two minutes (no churn
// within a test), batching every 250 ms through publish.
func steadyFleet(t *testing.T, publish ingest.PublishFunc, seed uint64, groups ...sim.Group) *sim.Fleet {
	t.Helper()
	f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: time.Minute, LifetimeMax: 2 * time.Minute,
		Interval: 250 * time.Millisecond, Seed: seed, Publish: publish, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// churnFleet builds a churning fleet spread by sc (traffic fields left zero take 20 rps per
// instance, 1 % errors, latency median 40 ms and p99 200 ms) whose instances live between
// lifeMin and lifeMax, batching every 250 ms through publish.
func churnFleet(t *testing.T, publish ingest.PublishFunc, seed uint64, sc sim.SpreadConfig, lifeMin, lifeMax time.Duration) *sim.Fleet {
	t.Helper()
	if sc.RPS == 0 {
		sc.RPS, sc.ErrorRate, sc.LatencyMedian, sc.LatencyP99 = 20, 0.01, 40*time.Millisecond, 200*time.Millisecond
	}
	groups, err := sim.Spread(sc)
	if err != nil {
		t.Fatal(err)
	}
	f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: lifeMin, LifetimeMax: lifeMax,
		Interval: 250 * time.Millisecond, Seed: seed, Publish: publish, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
