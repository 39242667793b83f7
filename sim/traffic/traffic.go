// Package traffic is the random traffic of herd's simulations: the one Poisson sampler, the
// latency model, and the closed windows of simulated (service, version) groups that the
// detector reads. Both the fleet simulator (package sim) and the detector's own tests (package
// alert) draw from it, so that a seed means the same traffic wherever it is used.
//
// It is a leaf: it imports the standard library and proto only, never alert or sim.
//
// Every function takes the *rand.Rand it draws from; the package keeps no random state and no
// global of its own, and its draws for a given source and arguments are part of its contract
// (seeded benchmarks and tests depend on them).
package traffic

import (
	"math"
	"math/rand/v2"
	"time"
)

// Poisson draws a Poisson(lam) variate from r: inversion for small means, Hörmann's PTRS
// transformed rejection (exact) for lam ≥ 10. A mean that is not positive (or NaN) gives 0.
func Poisson(r *rand.Rand, lam float64) float64 {
	if !(lam > 0) {
		return 0
	}
	if lam < 10 {
		// Inversion by sequential search.
		p := math.Exp(-lam)
		s, k := p, 0.0
		u := r.Float64()
		for u > s && k < 1000 {
			k++
			p *= lam / k
			s += p
		}
		return k
	}
	slam, loglam := math.Sqrt(lam), math.Log(lam)
	b := 0.931 + 2.53*slam
	a := -0.059 + 0.02483*b
	invAlpha := 1.1239 + 1.1328/(b-3.4)
	vr := 0.9277 - 3.6224/(b-2)
	for {
		u := r.Float64() - 0.5
		v := r.Float64()
		us := 0.5 - math.Abs(u)
		k := math.Floor((2*a/us+b)*u + lam + 0.43)
		if us >= 0.07 && v <= vr {
			return k
		}
		if k < 0 || (us < 0.013 && v > us) {
			continue
		}
		lg, _ := math.Lgamma(k + 1)
		if math.Log(v)+math.Log(invAlpha)-math.Log(a/(us*us)+b) <= -lam+k*loglam-lg {
			return k
		}
	}
}

// z99 is the standard normal's 99th percentile: a log-normal's p99 is median·exp(z99·σ).
const z99 = 2.3263

// LatencyModel is a simulated latency distribution in seconds: log-normal with median Median
// and log-sd Sigma, multiplied by Scale, with a share TailFrac of requests delayed by a further
// TailShift seconds. Scale must be positive; the zero TailFrac means no tail.
type LatencyModel struct {
	Median    float64 // seconds, > 0
	Sigma     float64 // log-sd, ≥ 0
	Scale     float64 // latency multiplier, > 0
	TailFrac  float64 // share of delayed requests, in [0, 1]
	TailShift float64 // delay of those requests, seconds
}

// LogNormal returns the model of a log-normal latency with the given median and 99th
// percentile (p99 ≥ median > 0), scaled by factor.
func LogNormal(median, p99 time.Duration, factor float64) LatencyModel {
	return LatencyModel{Median: median.Seconds(), Sigma: math.Log(float64(p99)/float64(median)) / z99, Scale: factor}
}

// CDF is the model's distribution function at x seconds.
func (m LatencyModel) CDF(x float64) float64 {
	f := func(y float64) float64 {
		if y <= 0 {
			return 0
		}
		return 0.5 * math.Erfc(-math.Log(y/(m.Median*m.Scale))/(m.Sigma*math.Sqrt2))
	}
	return (1-m.TailFrac)*f(x) + m.TailFrac*f(x-m.TailShift)
}

// Draw draws one latency in seconds from r.
func (m LatencyModel) Draw(r *rand.Rand) float64 {
	x := m.Median * m.Scale * math.Exp(m.Sigma*r.NormFloat64())
	if m.TailFrac > 0 && r.Float64() < m.TailFrac {
		x += m.TailShift
	}
	return x
}

// Requests draws one interval of an instance's requests from r: Poisson(mean) arrivals, each
// failing with probability errRate (Bernoulli) and taking a latency drawn from m. observe
// receives every request, in order, on the caller's goroutine.
func Requests(r *rand.Rand, mean, errRate float64, m LatencyModel, observe func(latency time.Duration, failed bool)) {
	n := int(Poisson(r, mean))
	for range n {
		lat := m.Draw(r)
		observe(time.Duration(lat*1e9), r.Float64() < errRate)
	}
}
