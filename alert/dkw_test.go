package alert

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/herd-dev/herd/proto"
)

func TestDKWConstant(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ alpha, want float64 }{{0.05, 8.12}, {0.01, 9.28}, {0.001, 10.94}} {
		if got := dkwC(c.alpha); math.Abs(got-c.want) > 0.01 {
			t.Errorf("C(%g): got %.3f; want %.2f", c.alpha, got, c.want)
		}
	}
}

func TestDKWEpsilon(t *testing.T) {
	t.Parallel()
	if got := dkwEpsilon(dkwMinCount-1, 0.01); got != 1 {
		t.Fatalf("ε below t_min: got %g; want 1", got)
	}
	// t = t_min: ln(1+ln 1) = 0, ε = 0.85·sqrt(9.28/100) ≈ 0.2589.
	if got, want := dkwEpsilon(dkwMinCount, 0.01), 0.85*math.Sqrt(dkwC(0.01)/100); math.Abs(got-want) > 1e-12 {
		t.Fatalf("ε(t_min): got %g; want %g", got, want)
	}
	if a, b := dkwEpsilon(1e4, 0.01), dkwEpsilon(1e6, 0.01); !(b < a) {
		t.Fatalf("ε must shrink with t: got ε(1e4)=%g, ε(1e6)=%g", a, b)
	}
}

func drawLatency(r *rand.Rand, h *proto.Histogram, n int, scale float64) {
	h.Reset()
	for range n {
		h.Observe(scale*0.05*math.Exp(0.5*r.NormFloat64()), 1)
	}
}

func TestDKWFlagsShiftNotSame(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	var a, b proto.Histogram
	for _, c := range []struct {
		scale float64
		want  bool
	}{{1, false}, {1.5, true}} {
		d := &dkwTest{alpha: 0.001, margin: 0.02}
		for range 40 {
			drawLatency(r, &a, 400, 1)
			drawLatency(r, &b, 100, c.scale)
			d.add(&a, &b)
			d.check()
		}
		if d.flagged != c.want {
			t.Errorf("scale %g: got flagged=%v (gap %.3f, band %.3f); want %v", c.scale, d.flagged, d.gap, d.band, c.want)
		}
	}
}
