package alert

import (
	"math"

	"github.com/herd-dev/herd/proto"
)

// dkwMinCount is t_min of the time-uniform DKW band: a group's band is used once it holds
// this many observations, and holds for every later t at once.
const dkwMinCount = 100

// dkwC returns the constant C_α of the time-uniform DKW band. It is the line through the
// published values C = 8.12 (α = .05), 9.28 (.01), 10.94 (.001), which it reproduces to the
// second decimal: C_α = 5.96 + 0.721·ln(1/α).
func dkwC(alpha float64) float64 { return 5.96 + 0.721*math.Log(1/alpha) }

// dkwEpsilon returns the half-width of the time-uniform DKW band after t observations:
// ε_t = 0.85·sqrt((ln(1 + ln(t/t_min)) + C_α)/t), and 1 (no information) below t_min.
// With probability ≥ 1−α the empirical CDF stays within ε_t of the true CDF at every edge for
// every t ≥ t_min.
func dkwEpsilon(t, alpha float64) float64 {
	if t < dkwMinCount {
		return 1
	}
	return 0.85 * math.Sqrt((math.Log(1+math.Log(t/dkwMinCount))+dkwC(alpha))/t)
}

// dkwTest is the secondary whole-distribution latency test: it flags when the canary's
// empirical CDF sits below the baseline's (the canary is slower) by more than ε_A + ε_B +
// margin at some bucket edge. Each band has level alpha/2, so under "same distribution" the
// flag is raised with probability ≤ alpha, and 1{flagged}/alpha is an e-process.
//
// A dkwTest is not safe for concurrent use.
type dkwTest struct {
	alpha  float64 // level of both bands together
	margin float64 // CDF distance tolerated beyond the bands
	a, b   proto.Histogram

	flagged bool
	// At the last check (or the flagging one): the largest F_A−F_B, where, and the bands.
	gap, edgeSeconds, band float64
}

// add merges one window's latency histograms of baseline a and canary b.
func (d *dkwTest) add(a, b *proto.Histogram) {
	if a != nil {
		d.a.Merge(a)
	}
	if b != nil {
		d.b.Merge(b)
	}
}

// check updates the gap and reports whether the test is flagged (it stays flagged).
func (d *dkwTest) check() bool {
	if d.flagged {
		return true
	}
	ta, tb := float64(d.a.Count), float64(d.b.Count)
	if ta < dkwMinCount || tb < dkwMinCount {
		return false
	}
	d.band = dkwEpsilon(ta, d.alpha/2) + dkwEpsilon(tb, d.alpha/2)
	pa, pb := &d.a.Positive, &d.b.Positive
	if len(pa.Counts) == 0 || len(pb.Counts) == 0 {
		return false
	}
	lo := min(int(pa.Offset), int(pb.Offset))
	hi := max(int(pa.Offset)+len(pa.Counts), int(pb.Offset)+len(pb.Counts))
	// F(edge i) = share of observations below BucketLower(i).
	ca := float64(d.a.Count - pa.Total())
	cb := float64(d.b.Count - pb.Total())
	d.gap, d.edgeSeconds = math.Inf(-1), 0
	for i := lo; i < hi; i++ {
		if g := ca/ta - cb/tb; g > d.gap {
			d.gap, d.edgeSeconds = g, proto.BucketLower(i)
		}
		ca += float64(bucketAt(pa, i))
		cb += float64(bucketAt(pb, i))
	}
	d.flagged = d.gap > d.band+d.margin
	return d.flagged
}

// bucketAt returns the count of bucket i of b (0 outside its range).
func bucketAt(b *proto.Buckets, i int) uint64 {
	k := i - int(b.Offset)
	if k < 0 || k >= len(b.Counts) {
		return 0
	}
	return b.Counts[k]
}
