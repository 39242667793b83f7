package alert

import (
	"math"
)

// grid holds the alternatives of the mixture e-process as multiples of the margin ψ0. It
// starts close to ψ0 (which the measured dispersion between instances sets, so that ψ0 is
// tight) and is densest where evidence is slow to come: small effects. Effects beyond 30×
// ψ0 are still caught by the 30× alternative within a window or two.
var grid = [...]float64{1.1, 1.25, 1.5, 2, 3, 5, 10, 30}

// gridWeights are the mixture weights w_j of the alternatives (they sum to 1): most on 1.5–3×
// ψ0, where a regression takes longest to show, least on the ends (next to ψ0 nothing is
// detected within a comparison anyway; beyond 10× the evidence comes within a window or two
// whatever the weight).
var gridWeights = [len(grid)]float64{0.08, 0.12, 0.16, 0.18, 0.16, 0.12, 0.1, 0.08}

// logGridWeights are ln w_j.
var logGridWeights = func() (l [len(grid)]float64) {
	for j, w := range gridWeights {
		l[j] = math.Log(w)
	}
	return l
}()

// maxLogE caps reported log e-values so that exp stays finite (JSON cannot carry +Inf).
const maxLogE = 700

// EProcess is the conditional-binomial mixture e-process of herd's detector for one count
// metric (errors, or requests slower than a frozen threshold) of a canary B against a
// baseline A.
//
// For window k with n_A, n_B requests and e_A, e_B events, π = n_B/(n_A+n_B) and
// q(ψ) = πψ/(πψ+1−π). Conditional on m = e_A+e_B, e_B ~ Binomial(m, q(ψ)) where ψ is the
// canary/baseline event-rate ratio. The log likelihood ratio of ψ_j against the margin ψ0 is
//
//	ℓ_k(ψ_j) = e_B·ln(q(ψ_j)/q(ψ0)) + e_A·ln((1−q(ψ_j))/(1−q(ψ0)))
//	         = e_B·ln(ψ_j/ψ0) − m·[ln(1+π(ψ_j−1)) − ln(1+π(ψ0−1))]
//
// (the second form needs one logarithm per alternative), and the e-process is
// E_t = Σ_j w_j·exp(Σ_{k≤t} ℓ_k(ψ_j)) with ψ_j = ψ0×{1.1, 1.25, 1.5, 2, 3, 5, 10, 30} and
// w_j = {.08, .12, .16, .18, .16, .12, .1, .08}, kept in log space. Under any ψ ≤ ψ0 it is a nonnegative supermartingale with
// E_0 = 1, so by Ville's inequality P(∃t: E_t ≥ 1/α) ≤ α.
//
// Bounded evidence per block (UpdateBlock). A burst of errors on one instance for a second
// or two must not look like a regression of the version. The windows are grouped in blocks
// (of time), and within a block the likelihood ratio each alternative gathers may lift its
// running product at most by its allowance a_b above the larger of the product before the
// block and 1: the factor of block b is min(Π_{k∈b} LR_k(ψ_j), e^{a_b}/min(P_{b−1}, 1)), P_{b−1}
// the product over the blocks before. The allowance works like a token bucket: it grows by
// ln C every block (C the cap, SetBlockCap) up to capBlocks·ln C, and what a block lifted the
// product above max(P, 1) is taken off it. The allowance and P_{b−1} are fixed before block b
// (predictable), and inside a block min(martingale, constant) is a supermartingale, so the
// product over blocks of such factors is one too and Ville's bound still holds: the bound
// only ever lowers E_t. A burst touching b blocks lifts every alternative to at most
// (capBlocks + b − 1)·ln C above the larger of where it stood and 0, whereas a regression keeps
// adding ln C a block. The evidence against a regression that a long healthy stretch piled up
// (at high traffic tens of nats) is won back at the windows' own rate, as without a bound; the
// saved allowance lets a moderate effect's lumpy blocks (a few events a second) count in full.
//
// An EProcess is not safe for concurrent use.
type EProcess struct {
	psi0     float64
	psi      [len(grid)]float64 // ψ_j
	logRatio [len(grid)]float64 // ln(ψ_j/ψ0)
	sums     [len(grid)]float64 // Σ over closed blocks of min(block log LR, logCap)
	block    [len(grid)]float64 // the open block's log LR (uncapped)
	blockID  int64
	logCap   [len(grid)]float64 // per alternative: min(ln C, capEvents·ln(ψ_j/ψ0)); +Inf: no cap
	// tokens is each alternative's allowance for the open block: what it may still rise above
	// the larger of its closed blocks' sum and 0 (see EProcess); it refills by logCap[j] a
	// block up to capBlocks·logCap[j].
	tokens [len(grid)]float64
}

// capBlocks is how many blocks' allowance an alternative may save up: a moderate effect's
// evidence comes in lumps (a few events a second), and an allowance saved in quiet blocks
// lets a lumpy block count in full, whereas the rate over any stretch stays bounded.
const capBlocks = 2

// capEvents bounds the block evidence of an alternative ψ_j close to ψ0 further, to what
// capEvents canary events more than expected would give it (capEvents·ln(ψ_j/ψ0)): a
// regression within a few per cent of ψ0 never gathers more in one block, whereas a burst
// would hand the alternatives next to ψ0 evidence that the windows after it hardly take
// back. It is per block of the comparison's (1 s).
const capEvents = 4

// NewEProcess returns an e-process with margin psi0 ≥ 1 (1 means "no worse than baseline").
func NewEProcess(psi0 float64) *EProcess {
	p := &EProcess{}
	p.init(psi0)
	return p
}

func (p *EProcess) init(psi0 float64) {
	p.psi0 = psi0
	p.blockID = 0
	for j, g := range grid {
		p.psi[j] = psi0 * g
		p.logRatio[j] = math.Log(g)
		p.sums[j] = 0
		p.block[j] = 0
		p.logCap[j] = math.Inf(1)
		p.tokens[j] = math.Inf(1)
	}
}

// SetBlockCap sets ln C, the log evidence per block each alternative's allowance grows by
// (see UpdateBlock; alternatives close to ψ0 get less, see capEvents); +Inf (the default)
// means no cap. Set it before the first update.
func (p *EProcess) SetBlockCap(logCap float64) {
	for j := range p.logCap {
		p.logCap[j] = min(logCap, capEvents*p.logRatio[j])
		p.tokens[j] = capBlocks * p.logCap[j]
	}
}

// Margin returns ψ0.
func (p *EProcess) Margin() float64 { return p.psi0 }

// Update adds one window: nA, nB requests and eA, eB events of baseline and canary.
// Windows with nA = 0, nB = 0 or no events add nothing. Its evidence is not capped: Update
// is UpdateBlock with every window a block of its own and no cap.
func (p *EProcess) Update(nA, nB, eA, eB float64) {
	if !(nA > 0 && nB > 0 && eA+eB > 0) {
		return
	}
	pi := nB / (nA + nB)
	m := eA + eB
	l0 := math.Log1p(pi * (p.psi0 - 1))
	for j := range p.psi {
		p.sums[j] += eB*p.logRatio[j] - m*(math.Log1p(pi*(p.psi[j]-1))-l0)
	}
}

// UpdateBlock adds one window of block id (block ids must not decrease): its log
// likelihood ratios add to the open block's, which counts at most ln C (SetBlockCap) per
// alternative; a new id closes the open block.
func (p *EProcess) UpdateBlock(id int64, nA, nB, eA, eB float64) {
	if !(nA > 0 && nB > 0 && eA+eB > 0) {
		return
	}
	if id != p.blockID {
		refill := float64(max(id-p.blockID, 1))
		for j := range p.block {
			gain := p.capped(j)
			used := max(p.sums[j]+gain-max(p.sums[j], 0), 0)
			p.sums[j] += gain
			p.block[j] = 0
			if !math.IsInf(p.logCap[j], 1) {
				p.tokens[j] = min(p.tokens[j]-used+refill*p.logCap[j], capBlocks*p.logCap[j])
			}
		}
		p.blockID = id
	}
	pi := nB / (nA + nB)
	m := eA + eB
	l0 := math.Log1p(pi * (p.psi0 - 1))
	for j := range p.psi {
		p.block[j] += eB*p.logRatio[j] - m*(math.Log1p(pi*(p.psi[j]-1))-l0)
	}
}

// capped returns the open block's log evidence of alternative j as it counts: at most its
// allowance above the larger of the closed blocks' sum and 0 (see EProcess).
func (p *EProcess) capped(j int) float64 {
	return min(p.block[j], p.tokens[j]-min(p.sums[j], 0))
}

// LogE returns ln E_t.
func (p *EProcess) LogE() float64 {
	var terms [len(grid)]float64
	for j := range terms {
		terms[j] = logGridWeights[j] + p.sums[j] + p.capped(j)
	}
	return min(logSumExp(terms[:]), maxLogE)
}

// E returns E_t (capped at e^700).
func (p *EProcess) E() float64 { return math.Exp(p.LogE()) }

// logSumExp returns ln Σ exp(x_i) without overflow; -Inf for an empty slice.
func logSumExp(xs []float64) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = max(m, x)
	}
	if math.IsInf(m, -1) {
		return m
	}
	var s float64
	for _, x := range xs {
		s += math.Exp(x - m)
	}
	return m + math.Log(s)
}

// The confidence sequence for ψ is computed on a lattice x_i = 2^(i/4), i = −24…40
// (1/64 … 1024).
const (
	csPerOctave = 4
	csLowExp    = -6 * csPerOctave
	csHighExp   = 10 * csPerOctave
	csN         = csHighExp - csLowExp + 1
)

// csSteps are the lattice offsets of the alternatives mixed around each candidate ψ, in both
// directions: ψ·2^(±d/4) for d in csSteps, each with weight 1/(2·len(csSteps)).
var csSteps = [...]int{1, 2, 4, 8, 16}

var (
	csX    [csN]float64 // lattice values
	csLogR = math.Ln2 / csPerOctave
	csLogW = -math.Log(2 * float64(len(csSteps)))
)

func init() {
	for i := range csX {
		csX[i] = math.Exp2(float64(i+csLowExp) / csPerOctave)
	}
}

// latticeLogs sets out[i] = ln(1+π(x_i−1)) for the lattice values x_i. One window's
// lattice logs serve every test whose π is the same.
func latticeLogs(pi float64, out *[csN]float64) {
	for i, x := range csX {
		out[i] = math.Log1p(pi * (x - 1))
	}
}

// ConfSeq is a confidence sequence for the event-rate ratio ψ of a count metric, built by
// inverting a family of e-processes.
//
// For every candidate ψ on the lattice 2^(i/4), E_t(ψ) = Σ_d w_d Π_k LR_k(ψ·r^d : ψ) mixes
// likelihood ratios of the same conditional binomial as EProcess against alternatives
// ψ·2^(±d/4), d ∈ {1, 2, 4, 8, 16}, on both sides of ψ. If ψ is the true ratio, E_t(ψ) is a
// nonnegative martingale with mean 1, so P(∃t: E_t(ψ) ≥ 1/α) ≤ α and
// CS_t = {ψ : E_t(ψ) < 1/α} covers the true ψ at all times with probability ≥ 1−α.
// With L_k(x) = ln(1+π_k(x−1)) the log likelihood ratio is
// e_B·ln(ψ'/ψ) − m·(L_k(ψ') − L_k(ψ)), so the sufficient statistics are Σe_B and
// S(x_i) = Σ_k m_k·L_k(x_i) on the lattice.
//
// Bounds reports the lattice points just outside the accepted ones, so the reported interval
// contains every accepted lattice point and errs by at most one lattice step (19 %) towards
// width.
//
// A ConfSeq is not safe for concurrent use.
type ConfSeq struct {
	eB float64
	s  [csN]float64
}

// Update adds one window with π = n_B/(n_A+n_B), m = e_A+e_B events of which eB in the
// canary; logs must be latticeLogs(π).
func (c *ConfSeq) Update(m, eB float64, logs *[csN]float64) {
	if m <= 0 {
		return
	}
	c.eB += eB
	for i := range c.s {
		c.s[i] += m * logs[i]
	}
}

// logE returns ln E_t(x_i).
func (c *ConfSeq) logE(i int) float64 {
	var terms [2 * len(csSteps)]float64
	k := 0
	for _, d := range csSteps {
		for _, j := range [2]int{i + d, i - d} {
			if j < 0 || j >= csN {
				// A missing alternative only lowers E_t(ψ): the set stays valid, a bit wider.
				continue
			}
			terms[k] = csLogW + c.eB*float64(j-i)*csLogR - (c.s[j] - c.s[i])
			k++
		}
	}
	return logSumExp(terms[:k])
}

// Bounds returns the confidence sequence [lo, hi] for ψ at level 1−alpha. lo is 0 when the
// lowest lattice point is accepted and hi is the highest lattice point (1024) when the
// highest is; ok is false when no lattice point is accepted (the data contradict the model,
// e.g. strongly overdispersed counts).
func (c *ConfSeq) Bounds(alpha float64) (lo, hi float64, ok bool) {
	th := math.Log(1 / alpha)
	first, last := -1, -1
	for i := range csN {
		if c.logE(i) < th {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return 0, 0, false
	}
	lo, hi = 0, csX[csN-1]
	if first > 0 {
		lo = csX[first-1]
	}
	if last < csN-1 {
		hi = csX[last+1]
	}
	return lo, hi, true
}

// rateRatio returns (eB/nB)/(eA/nA), adding 0.5 to both event counts when either is zero so
// that the estimate stays finite; 1 when there are no requests on one side.
func rateRatio(nA, nB, eA, eB float64) float64 {
	if nA <= 0 || nB <= 0 {
		return 1
	}
	if eA == 0 || eB == 0 {
		eA, eB = eA+0.5, eB+0.5
	}
	return (eB / nB) / (eA / nA)
}
