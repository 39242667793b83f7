package sim

import (
	"math"
	"sync/atomic"
	"time"
)

// Group describes one simulated (service, version) group: how many instances it keeps alive
// and the traffic each of them serves.
type Group struct {
	Service string
	Version string
	// Instances is how many instances the group keeps alive: an instance that ends is
	// replaced at once.
	Instances int
	// RPS is the request rate of each instance (Poisson arrivals).
	RPS float64
	// ErrorRate is the probability that a request fails (Bernoulli).
	ErrorRate float64
	// Latency is log-normal with this median and 99th percentile (0 < median ≤ p99).
	LatencyMedian, LatencyP99 time.Duration
}

// GroupState is the live state of a group of a running Fleet: knobs a scenario turns while
// the fleet runs (target instances, error rate, latency factor, crash loop) and the number of
// live instances. It is safe for concurrent use; a change takes effect at the fleet's next
// interval boundary.
type GroupState struct {
	spec   Group
	target atomic.Int64  // instances to keep alive
	errPPM atomic.Int64  // error rate in parts per million
	slowK  atomic.Uint64 // latency factor, float64 bits
	// crash makes every instance of the group fail its requests and end at the next boundary;
	// replacements do the same (a crash loop).
	crash atomic.Bool
	live  atomic.Int64 // instances currently alive
	edges edgeKnobs    // the service's calls and their knobs (edges.go)
}

func newGroupState(spec Group) *GroupState {
	g := &GroupState{spec: spec}
	g.SetTarget(spec.Instances)
	g.SetErrorRate(spec.ErrorRate)
	g.SetLatencyFactor(1)
	return g
}

// Spec returns the group as configured, whatever the knobs say now.
func (g *GroupState) Spec() Group { return g.spec }

// SetTarget sets how many instances the group keeps alive (a negative n counts as 0): extra
// instances stop at the next boundary, missing ones start.
func (g *GroupState) SetTarget(n int) { g.target.Store(int64(max(n, 0))) }

// Target returns how many instances the group keeps alive.
func (g *GroupState) Target() int { return int(g.target.Load()) }

// SetErrorRate sets the probability that a request fails, clamped to [0, 1] (NaN counts as 0),
// with a resolution of one in a million.
func (g *GroupState) SetErrorRate(r float64) {
	if !(r > 0) {
		r = 0
	}
	g.errPPM.Store(int64(math.Round(min(r, 1) * 1e6)))
}

// ErrorRate returns the probability that a request fails.
func (g *GroupState) ErrorRate() float64 { return float64(g.errPPM.Load()) / 1e6 }

// SetLatencyFactor multiplies every latency of the group by f (1 is the configured latency).
// A factor that is not a positive finite number is ignored.
func (g *GroupState) SetLatencyFactor(f float64) {
	if !(f > 0) || math.IsInf(f, 1) {
		return
	}
	g.slowK.Store(math.Float64bits(f))
}

// LatencyFactor returns the factor every latency of the group is multiplied by.
func (g *GroupState) LatencyFactor() float64 { return math.Float64frombits(g.slowK.Load()) }

// SetCrash turns the group's crash loop on or off. While it is on, every instance fails all its
// requests and ends at the next boundary, and every replacement ends at its first.
func (g *GroupState) SetCrash(on bool) { g.crash.Store(on) }

// Crashing reports whether the group's crash loop is on.
func (g *GroupState) Crashing() bool { return g.crash.Load() }

// Live returns the number of the group's instances alive now.
func (g *GroupState) Live() int { return int(g.live.Load()) }
