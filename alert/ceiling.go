package alert

import "math"

// The error-ceiling guard (guard_error_ceiling) rolls a canary back at once when its error
// ratio is above the ceiling c (0.5) while the baseline's stays below c/2 — a crash loop or a
// broken release that fails most requests. It decides on few requests, so it is a test with
// its own share of α (alphaGuard), not a threshold on a noisy ratio: at low traffic with a
// high baseline error ratio a second of ten requests with five errors must not roll back.
//
// The canary's windows are grouped in blocks of one second from its first window. In block b
// (1, 2, …) the guard computes the likelihood ratio of its errors e among n requests under a
// mixture of error ratios p_j = c + (1−c)·{0.25, 0.5, 0.75, 0.95} against the ratio c:
//
//	L_b = Σ_j ¼ · (p_j/c)^e · ((1−p_j)/(1−c))^(n−e)
//
// Under any error ratio ≤ c, L_b is a nonnegative supermartingale over the block's windows
// with mean ≤ 1, so it reaches 1/α_b with probability ≤ α_b at any window of the block
// (Ville). With α_b = α·alphaGuard/(b(b+1)), which sum to α·alphaGuard over all blocks, the
// guard fires on a canary whose error ratio stays ≤ c with probability ≤ α·alphaGuard over
// the whole comparison: the lower confidence bound of the canary's error ratio has crossed
// the ceiling. A crash loop (90 % errors) needs about 20 requests in its first second.

// ceilingAlts are the alternatives of the guard as fractions of the way from c to 1.
var ceilingAlts = [...]float64{0.25, 0.5, 0.75, 0.95}

// ceilingGuard is one comparison's error-ceiling test. The Detector's mutex guards it.
type ceilingGuard struct {
	block int64   // index of the open block, 1-based; 0 before the first window
	n, e  float64 // requests and errors of the canary in the open block
}

// add adds a canary window starting at startMs to the block it belongs to (blocks of one
// second from firstMs).
func (g *ceilingGuard) add(startMs, firstMs int64, n, e float64) {
	b := (startMs-firstMs)/1000 + 1
	if b != g.block {
		g.block, g.n, g.e = b, 0, 0
	}
	g.n += n
	g.e += min(e, n)
}

// logE returns ln L_b of the open block against the ceiling c (−Inf when c ≥ 1: no ratio is
// above it).
func (g *ceilingGuard) logE(c float64) float64 {
	if !(c < 1) || g.n == 0 {
		return math.Inf(-1)
	}
	var terms [len(ceilingAlts)]float64
	for j, f := range ceilingAlts {
		p := c + (1-c)*f
		terms[j] = g.e*math.Log(p/c) + (g.n-g.e)*math.Log((1-p)/(1-c))
	}
	return logSumExp(terms[:]) - math.Log(float64(len(ceilingAlts)))
}

// logThreshold returns ln(1/α_b) of the open block.
func (g *ceilingGuard) logThreshold(alpha float64) float64 {
	b := float64(max(g.block, 1))
	return math.Log(b*(b+1)) - math.Log(alpha*alphaGuard)
}
