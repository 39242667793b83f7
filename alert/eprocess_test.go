package alert

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/herd-dev/herd/sim/traffic"
)

// TestEProcessHandComputed checks one window with e_A = 1, e_B = 3, π = 0.5, ψ0 = 1.
//
// q(ψ) = ψ/(ψ+1), q(1) = 1/2, so the likelihood ratio of ψ against 1 is
//
//	(2q)^3·(2(1−q))^1 = 16ψ³/(ψ+1)⁴:
//	ψ = 1.1:  16·1.331/19.4481        = 1.095017
//	ψ = 1.25: 16·1.953125/25.62890625 = 1.219326
//	ψ = 1.5:  16·3.375/39.0625        = 1.382400
//	ψ = 2:    16·8/81                 = 1.580247
//	ψ = 3:    16·27/256               = 1.687500
//	ψ = 5:    16·125/1296             = 1.543210
//	ψ = 10:   16·1000/14641           = 1.092822
//	ψ = 30:   16·27000/923521         = 0.467771
//
// and E = Σ_j w_j·LR(ψ_j) = 1.341438 with the grid's weights
// {.08, .12, .16, .18, .16, .12, .1, .08}.
func TestEProcessHandComputed(t *testing.T) {
	t.Parallel()
	p := NewEProcess(1)
	p.Update(100, 100, 1, 3)
	if got, want := math.Exp(p.LogE()), 1.341438; math.Abs(got-want) > 1e-5 {
		t.Fatalf("E after one window: got %.6f; want %.6f", got, want)
	}
	// The same window again: each ratio squares. E = Σ w_j·LR_j².
	lrs := []float64{1.095017, 1.219326, 1.382400, 1.580247, 1.687500, 1.543210, 1.092822, 0.467771}
	var want float64
	for j, lr := range lrs {
		want += gridWeights[j] * lr * lr
	}
	p.Update(100, 100, 1, 3)
	if got := math.Exp(p.LogE()); math.Abs(got-want) > 1e-4 {
		t.Fatalf("E after two windows: got %.6f; want %.6f", got, want)
	}
}

// TestEProcessMargin: with ψ0 = 2 and π = 0.5, q(ψ) = ψ/(ψ+1) and q(2) = 2/3; one window
// with e_A = 0, e_B = 1 gives LR(ψ) = q(ψ)/q(2) = 1.5·ψ/(ψ+1) at ψ = 2·g for each grid g.
func TestEProcessMargin(t *testing.T) {
	t.Parallel()
	p := NewEProcess(2)
	p.Update(10, 10, 0, 1)
	var want float64
	for j, g := range grid {
		psi := 2 * g
		want += gridWeights[j] * 1.5 * psi / (psi + 1)
	}
	if got := math.Exp(p.LogE()); math.Abs(got-want) > 1e-9 {
		t.Fatalf("E: got %.9f; want %.9f", got, want)
	}
}

func TestEProcessIgnoresEmptyWindows(t *testing.T) {
	t.Parallel()
	p := NewEProcess(1)
	for _, c := range [][4]float64{{0, 10, 0, 5}, {10, 0, 5, 0}, {10, 10, 0, 0}} {
		p.Update(c[0], c[1], c[2], c[3])
	}
	if got := p.LogE(); math.Abs(got) > 1e-12 {
		t.Fatalf("ln E after empty windows: got %g; want 0", got)
	}
}

func TestLogSumExp(t *testing.T) {
	t.Parallel()
	if got, want := logSumExp([]float64{1000, 1000}), 1000+math.Ln2; math.Abs(got-want) > 1e-9 {
		t.Fatalf("logSumExp(1000, 1000): got %g; want %g", got, want)
	}
	if got := logSumExp(nil); !math.IsInf(got, -1) {
		t.Fatalf("logSumExp(): got %g; want -Inf", got)
	}
	if got, want := logSumExp([]float64{math.Log(2), math.Log(3)}), math.Log(5); math.Abs(got-want) > 1e-12 {
		t.Fatalf("logSumExp(ln 2, ln 3): got %g; want %g", got, want)
	}
}

// TestEProcessNullRate checks Ville's bound empirically: under ψ = ψ0 with few events per
// window, the e-process crosses 1/α = 100 in at most ~α of the runs.
func TestEProcessNullRate(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 7))
	const runs, windows = 2000, 400
	crossed := 0
	for range runs {
		p := NewEProcess(1)
		for range windows {
			eA, eB := traffic.Poisson(r, 2.4), traffic.Poisson(r, 0.125)
			p.Update(475, 25, eA, eB)
			if p.LogE() >= math.Log(100) {
				crossed++
				break
			}
		}
	}
	if rate := float64(crossed) / runs; rate > 0.015 {
		t.Fatalf("null crossing rate: got %.4f; want ≤ 0.01 (+ sampling slack)", rate)
	}
}

func TestConfSeqCoversTruth(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	var logs [csN]float64
	for _, psi := range []float64{1, 3} {
		var cs ConfSeq
		var nA, nB, eA, eB float64
		for range 2000 {
			a, b := traffic.Poisson(r, 475*0.01), traffic.Poisson(r, 25*0.01*psi)
			latticeLogs(25.0/500, &logs)
			cs.Update(a+b, b, &logs)
			nA, nB, eA, eB = nA+475, nB+25, eA+a, eB+b
		}
		lo, hi, ok := cs.Bounds(0.01)
		if !ok || !(lo < psi && psi < hi) {
			t.Fatalf("ψ=%g: got CS [%g, %g] ok=%v; want it to contain ψ", psi, lo, hi, ok)
		}
		if hi/lo > 3 {
			t.Fatalf("ψ=%g: got CS [%g, %g]; want narrower than ×3 after 2000 windows", psi, lo, hi)
		}
		if est := rateRatio(nA, nB, eA, eB); math.Abs(math.Log(est/psi)) > 0.3 {
			t.Fatalf("ψ=%g: got estimate %g; want within 30 %%", psi, est)
		}
	}
}

func TestConfSeqNoData(t *testing.T) {
	t.Parallel()
	var cs ConfSeq
	lo, hi, ok := cs.Bounds(0.01)
	if !ok || lo != 0 || hi != csX[csN-1] {
		t.Fatalf("empty CS: got [%g, %g] ok=%v; want [0, %g] ok", lo, hi, ok, csX[csN-1])
	}
}

func TestRateRatio(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ nA, nB, eA, eB, want float64 }{
		{1000, 100, 5, 1.5, 3},
		{1000, 100, 0, 1, 30},   // (1.5/100)/(0.5/1000)
		{0, 100, 0, 1, 1},       // no baseline requests
		{1000, 100, 10, 0, 0.5}, // (0.5/100)/(10.5/1000) ≈ 0.476
	} {
		got := rateRatio(c.nA, c.nB, c.eA, c.eB)
		if math.Abs(got-c.want) > 0.03 {
			t.Errorf("rateRatio(%v): got %g; want %g", c, got, c.want)
		}
	}
}

func BenchmarkEProcessUpdate(b *testing.B) {
	p := NewEProcess(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.Update(475, 25, float64(i%5), float64(i%2))
	}
}

func BenchmarkConfSeqUpdate(b *testing.B) {
	var cs ConfSeq
	var logs [csN]float64
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		latticeLogs(0.05+float64(i%7)*1e-3, &logs)
		cs.Update(3, float64(i%2), &logs)
	}
}

// TestEventsNeeded checks the worked example of docs/detector.md: ψ = 3 against ψ0 = 1.36 at
// π = 0.05. q(3) = 0.15/1.1 = 0.13636, q(1.36) = 0.068/1.018 = 0.066798;
// KL = 0.13636·ln(0.13636/0.066798) + 0.86364·ln(0.86364/0.93320) = 0.097325 − 0.066900
// = 0.030425 nats per event; the threshold ln(100) − ln(0.5) + ln 8 = 7.3778 needs ≈ 242.5.
func TestEventsNeeded(t *testing.T) {
	t.Parallel()
	got := eventsNeeded(3, 1.36, 0.05, math.Log(100)-math.Log(0.5))
	if math.Abs(got-242.5) > 1 {
		t.Fatalf("eventsNeeded: got %.1f; want ≈ 242.5", got)
	}
	if got := eventsNeeded(1, 1.36, 0.05, 5); !math.IsInf(got, 1) {
		t.Fatalf("eventsNeeded below the margin: got %g; want +Inf", got)
	}
}
