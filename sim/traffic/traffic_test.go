package traffic

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestPoissonMoments(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(5, 6))
	for _, lam := range []float64{0.3, 4, 25, 400} {
		const n = 20000
		var s, s2 float64
		for range n {
			x := Poisson(r, lam)
			s += x
			s2 += x * x
		}
		mean := s / n
		variance := s2/n - mean*mean
		if math.Abs(mean-lam) > 4*math.Sqrt(lam/n) || math.Abs(variance/lam-1) > 0.05 {
			t.Errorf("Poisson(%g): got mean %.3f variance %.3f; want both ≈ %g", lam, mean, variance, lam)
		}
	}
	for _, lam := range []float64{0, -1, math.NaN()} {
		if got := Poisson(r, lam); got != 0 {
			t.Errorf("Poisson(%g): got %g; want 0", lam, got)
		}
	}
}

// TestRequests checks one generator of an instance's interval: Poisson count, Bernoulli
// errors, log-normal latency with the configured median and 99th percentile.
func TestRequests(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	m := LogNormal(40*time.Millisecond, 200*time.Millisecond, 1)
	var lats []time.Duration
	var failed int
	const intervals, mean, errRate = 2000, 25.0, 0.1
	for range intervals {
		Requests(r, mean, errRate, m, func(d time.Duration, f bool) {
			lats = append(lats, d)
			if f {
				failed++
			}
		})
	}
	n := float64(len(lats))
	if want := intervals * mean; math.Abs(n-want) > 4*math.Sqrt(want) {
		t.Errorf("requests: got %.0f; want ≈ %.0f", n, want)
	}
	if got := float64(failed) / n; math.Abs(got-errRate) > 4*math.Sqrt(errRate*(1-errRate)/n) {
		t.Errorf("error ratio: got %.4f; want ≈ %g", got, errRate)
	}
	slices.Sort(lats)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 40 * time.Millisecond}, {0.99, 200 * time.Millisecond}} {
		got := lats[int(c.q*n)]
		if ratio := float64(got) / float64(c.want); ratio < 0.93 || ratio > 1.07 {
			t.Errorf("latency p%g: got %s; want ≈ %s", 100*c.q, got, c.want)
		}
	}
	// A latency factor scales every latency.
	slow := LogNormal(40*time.Millisecond, 200*time.Millisecond, 3)
	if got, want := slow.CDF(0.120), m.CDF(0.040); math.Abs(got-want) > 1e-12 {
		t.Errorf("cdf at 3× the median with factor 3: got %g; want %g", got, want)
	}
}
