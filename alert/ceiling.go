package alert

import "math"

// The error-ceiling guard (guard_error_ceiling) rolls a canary back at once when its error
// ratio is above the ceiling c (0.5) while the baseline's stays below c/2 — a crash loop or a
// broken release that fails most requests. It decides on few requests, so it is a test with
// its own share of α (alphaGuard), not a threshold on a noisy ratio: at low traffic with a
// high baseline error ratio a second of ten requests with five errors must not roll back.
//
// The canary's windows are grouped in blocks of one second from its first window. Test b
// (1, 2, …) starts with block b and reads blocks b and b+1: over their windows it computes
// the likelihood ratio of the canary's errors e among n requests under a mixture of error
// ratios p_j = c + (1−c)·{0.5, 0.75, 0.9, 0.98} against the ratio c (alternatives well above
// the ceiling: a retry storm at 60 % errors for two seconds is not what it is for):
//
//	L_b = Σ_j ¼ · (p_j/c)^e · ((1−p_j)/(1−c))^(n−e)
//
// Under any error ratio ≤ c, L_b is a nonnegative supermartingale over its windows with mean
// ≤ 1, so it reaches 1/α_b with probability ≤ α_b at any of them (Ville). With α_b =
// α·alphaGuard/(b(b+1)), which sum to α·alphaGuard over all tests, the guard fires on a
// canary whose error ratio stays ≤ c with probability ≤ α·alphaGuard over the whole
// comparison: the lower confidence bound of the canary's error ratio has crossed the ceiling.
// Two tests overlap at every window (the one started with this block and the one before), so
// a crash loop that begins late in a block is not cut off at its end. A crash loop (90 %
// errors) needs about 20 requests.

// ceilingAlts are the alternatives of the guard as fractions of the way from c to 1.
var ceilingAlts = [...]float64{0.5, 0.75, 0.9, 0.98}

// ceilingGuard is one comparison's error-ceiling test. The Detector's mutex guards it.
type ceilingGuard struct {
	block          int64   // index of the open block, 1-based; 0 before the first window
	n, e           float64 // requests and errors of the canary in the open block
	prevN, prevE   float64 // the same in the block before (0 if it had no window)
	firedN, firedE float64 // the counts of the test that fired (see fired)
}

// add adds a canary window starting at startMs to the block it belongs to (blocks of one
// second from firstMs).
func (g *ceilingGuard) add(startMs, firstMs int64, n, e float64) {
	b := (startMs-firstMs)/1000 + 1
	if b != g.block {
		g.prevN, g.prevE = 0, 0
		if b == g.block+1 {
			g.prevN, g.prevE = g.n, g.e
		}
		g.block, g.n, g.e = b, 0, 0
	}
	g.n += n
	g.e += min(e, n)
}

// fired reports whether one of the two open tests reached its threshold against the ceiling
// c at level alpha, and leaves its counts in firedN and firedE.
func (g *ceilingGuard) fired(c, alpha float64) bool {
	if g.block == 0 {
		return false
	}
	if logE(c, g.n, g.e) >= logThreshold(g.block, alpha) {
		g.firedN, g.firedE = g.n, g.e
		return true
	}
	if g.block > 1 && logE(c, g.n+g.prevN, g.e+g.prevE) >= logThreshold(g.block-1, alpha) {
		g.firedN, g.firedE = g.n+g.prevN, g.e+g.prevE
		return true
	}
	return false
}

// logE returns ln L of e errors among n requests against the ceiling c (−Inf when c ≥ 1: no
// ratio is above it).
func logE(c, n, e float64) float64 {
	if !(c < 1) || n == 0 {
		return math.Inf(-1)
	}
	var terms [len(ceilingAlts)]float64
	for j, f := range ceilingAlts {
		p := c + (1-c)*f
		terms[j] = e*math.Log(p/c) + (n-e)*math.Log((1-p)/(1-c))
	}
	return logSumExp(terms[:]) - math.Log(float64(len(ceilingAlts)))
}

// logThreshold returns ln(1/α_b) of test b.
func logThreshold(b int64, alpha float64) float64 {
	f := float64(max(b, 1))
	return math.Log(f*(f+1)) - math.Log(alpha*alphaGuard)
}
