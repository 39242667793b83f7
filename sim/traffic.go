package sim

import (
	"math"
	"math/rand/v2"
	"time"
)

// poisson draws a Poisson(lam) variate: inversion for small means, Hörmann's PTRS
// transformed rejection (exact) for lam ≥ 10. A mean that is not positive (or NaN) gives 0.
func poisson(r *rand.Rand, lam float64) float64 {
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

// latencyModel is a simulated latency distribution in seconds: log-normal with the given
// median and log-sd, scaled by scale, with a fraction tailFrac of requests delayed by
// tailShift seconds.
type latencyModel struct {
	median, sigma, scale, tailFrac, tailShift float64
}

// logNormal returns the model of a log-normal latency with the given median and 99th
// percentile (p99 ≥ median > 0), scaled by factor.
func logNormal(median, p99 time.Duration, factor float64) latencyModel {
	return latencyModel{median: median.Seconds(), sigma: math.Log(float64(p99)/float64(median)) / z99, scale: factor}
}

// cdf is the model's distribution function at x seconds.
func (m latencyModel) cdf(x float64) float64 {
	f := func(y float64) float64 {
		if y <= 0 {
			return 0
		}
		return 0.5 * math.Erfc(-math.Log(y/(m.median*m.scale))/(m.sigma*math.Sqrt2))
	}
	return (1-m.tailFrac)*f(x) + m.tailFrac*f(x-m.tailShift)
}

// draw draws one latency in seconds.
func (m latencyModel) draw(r *rand.Rand) float64 {
	x := m.median * m.scale * math.Exp(m.sigma*r.NormFloat64())
	if m.tailFrac > 0 && r.Float64() < m.tailFrac {
		x += m.tailShift
	}
	return x
}

// requests draws one interval of an instance's requests: Poisson(mean) arrivals, each failing
// with probability errRate (Bernoulli) and taking a latency drawn from m; observe receives
// every request.
func requests(r *rand.Rand, mean, errRate float64, m latencyModel, observe func(latency time.Duration, failed bool)) {
	n := int(poisson(r, mean))
	for range n {
		lat := m.draw(r)
		observe(time.Duration(lat*1e9), r.Float64() < errRate)
	}
}
