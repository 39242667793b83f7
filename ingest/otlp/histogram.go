package otlp

import (
	"math"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
)

// Scales of exponential histograms the receiver takes: those the OpenTelemetry data model
// allows.
const (
	minScale = -10
	maxScale = 20
)

// maxRawBuckets bounds the buckets of one side of one exponential data point, and so the
// state a cumulative series keeps (SDKs default to 160).
const maxRawBuckets = 2048

// herdScale is the OpenTelemetry scale whose buckets are herd's (see proto.Gamma).
const herdScale = 5

// herdIndex maps bucket k of an exponential histogram of the given scale to a herd bucket.
// Bucket k covers (2^(k·2^-s), 2^((k+1)·2^-s)]; herd bucket i covers [2^(i/32), 2^((i+1)/32)).
//   - s = 5: i = k (the same bucket; a value exactly on a boundary is in the lower bucket
//     for OpenTelemetry and the upper one for herd).
//   - s > 5: 2^(s-5) buckets tile one herd bucket: i = k >> (s-5), exact.
//   - s < 5: one bucket spans m = 2^(5-s) herd buckets k·m … k·m+m-1; its count goes to the
//     middle one, i = k·m + m/2.
func herdIndex(k int, scale int32) int {
	switch {
	case scale == herdScale:
		return k
	case scale > herdScale:
		return k >> (scale - herdScale)
	default:
		m := 1 << (herdScale - scale)
		return k*m + m/2
	}
}

// expBuckets is one side of an exponential histogram: counts[j] is bucket offset+j.
type expBuckets struct {
	offset int
	counts []uint64
}

// downscale merges b's buckets by 2^d (d ≥ 0): bucket k becomes bucket k >> d. Scales
// change rarely (an SDK lowers its scale when the range of values grows), so it allocates.
func (b *expBuckets) downscale(d int32) {
	if d == 0 || len(b.counts) == 0 {
		return
	}
	lo := b.offset >> d
	out := make([]uint64, (b.offset+len(b.counts)-1)>>d-lo+1)
	for j, c := range b.counts {
		out[(b.offset+j)>>d-lo] += c
	}
	b.offset, b.counts = lo, out
}

// sub subtracts p from b (both at one scale). It reports false if a count of p exceeds b's.
func (b *expBuckets) sub(p *expBuckets) bool {
	for j, c := range p.counts {
		if c == 0 {
			continue
		}
		k := p.offset + j - b.offset
		if k < 0 || k >= len(b.counts) || b.counts[k] < c {
			return false
		}
		b.counts[k] -= c
	}
	return true
}

// expHist is an exponential histogram point in the receiver's own form.
type expHist struct {
	scale    int32
	zero     uint64
	sum      float64
	pos, neg expBuckets
}

// copyFrom makes h a copy of o, reusing h's memory.
func (h *expHist) copyFrom(o *expHist) {
	h.scale, h.zero, h.sum = o.scale, o.zero, o.sum
	h.pos.offset, h.pos.counts = o.pos.offset, append(h.pos.counts[:0], o.pos.counts...)
	h.neg.offset, h.neg.counts = o.neg.offset, append(h.neg.counts[:0], o.neg.counts...)
}

// deltaFrom sets h = cur - prev, at the coarser of the two scales. It reports false if prev
// is not an earlier state of cur (a reset); h is then undefined.
func (h *expHist) deltaFrom(cur, prev *expHist, scratch *expHist) bool {
	if cur.zero < prev.zero {
		return false
	}
	h.copyFrom(cur)
	p := scratch
	p.copyFrom(prev)
	s := min(h.scale, p.scale)
	h.pos.downscale(h.scale - s)
	h.neg.downscale(h.scale - s)
	p.pos.downscale(p.scale - s)
	p.neg.downscale(p.scale - s)
	h.scale = s
	h.zero -= p.zero
	h.sum -= p.sum
	return h.pos.sub(&p.pos) && h.neg.sub(&p.neg)
}

// toHerd sets dst to h in herd buckets. It reports false if a bucket falls outside herd's
// bounds.
func (h *expHist) toHerd(dst *proto.Histogram) bool {
	dst.Reset()
	dst.ZeroCount = h.zero
	total := h.zero
	for _, side := range []struct {
		src *expBuckets
		dst *proto.Buckets
	}{{&h.pos, &dst.Positive}, {&h.neg, &dst.Negative}} {
		for j, c := range side.src.counts {
			if c == 0 {
				continue
			}
			if !side.dst.Add(herdIndex(side.src.offset+j, h.scale), c) {
				return false
			}
			total += c
		}
	}
	dst.Count = total
	dst.Sum = h.sum
	return !math.IsNaN(h.sum) && !math.IsInf(h.sum, 0)
}

// explicitHist is an explicit-bucket histogram point: counts[i] observations in
// (bounds[i-1], bounds[i]], the last one above the last bound.
type explicitHist struct {
	bounds []float64
	counts []uint64
	sum    float64
}

func (h *explicitHist) copyFrom(o *explicitHist) {
	h.bounds = append(h.bounds[:0], o.bounds...)
	h.counts = append(h.counts[:0], o.counts...)
	h.sum = o.sum
}

// deltaFrom sets h = cur - prev. It reports false if the bounds changed or a count
// decreased (a reset).
func (h *explicitHist) deltaFrom(cur, prev *explicitHist) bool {
	if len(cur.bounds) != len(prev.bounds) || len(cur.counts) != len(prev.counts) {
		return false
	}
	for i, b := range cur.bounds {
		if b != prev.bounds[i] {
			return false
		}
	}
	h.copyFrom(cur)
	for i, c := range prev.counts {
		if h.counts[i] < c {
			return false
		}
		h.counts[i] -= c
	}
	h.sum -= prev.sum
	return true
}

// toHerd places each bucket's count at a representative value of its bounds (see
// ingest.ClassicRepresentative), the bounds and the sum taken in units of unit (1: as they
// are; 0.001: milliseconds made seconds). It reports false for bounds that are not increasing
// or a count that cannot be placed.
func (h *explicitHist) toHerd(dst *proto.Histogram, unit float64) bool {
	dst.Reset()
	if len(h.counts) != len(h.bounds)+1 {
		return false
	}
	lo := math.Inf(-1)
	for i, c := range h.counts {
		hi := math.Inf(1)
		if i < len(h.bounds) {
			hi = h.bounds[i] * unit
			if math.IsNaN(hi) || math.IsInf(hi, 0) || hi <= lo {
				return false
			}
		}
		if c > 0 {
			v := ingest.ClassicRepresentative(lo, hi, i == 0)
			if math.IsInf(v, 0) { // no finite bound at all
				v = 0
			}
			if !dst.Observe(v, c) {
				return false
			}
		}
		lo = hi
	}
	dst.Sum = h.sum * unit
	return !math.IsNaN(dst.Sum) && !math.IsInf(dst.Sum, 0)
}

// toSeconds rescales h, whose values are in units of unit seconds, to seconds: each bucket's
// count moves to the bucket holding its representative value times unit. The mapping is
// monotone and counts stay exact; quantiles keep herd's relative accuracy within a bucket.
func toSeconds(h *proto.Histogram, unit float64) {
	var out proto.Histogram
	out.ZeroCount = h.ZeroCount
	for _, side := range []struct {
		src  *proto.Buckets
		sign float64
	}{{&h.Positive, 1}, {&h.Negative, -1}} {
		for k, n := range side.src.Counts {
			if n > 0 && !out.Observe(side.sign*proto.BucketValue(int(side.src.Offset)+k)*unit, n) {
				out.ZeroCount += n // beyond the bucket bounds: cannot happen for unit ≤ 1
				out.Count += n
			}
		}
	}
	out.Count = h.Count
	out.Sum = h.Sum * unit
	h.CopyFrom(&out)
}
