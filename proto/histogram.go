package proto

import (
	"math"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// Gamma is the ratio between consecutive bucket boundaries shared by every herd sketch:
// 2^(1/32). Bucket i holds values in [Gamma^i, Gamma^(i+1)), which is bucket i of an
// OpenTelemetry exponential histogram at scale 5, (Gamma^i, Gamma^(i+1)], and bucket i+1 of a
// Prometheus native histogram of schema 5 (both put the boundary value in the lower bucket).
// The relative error of a quantile is (Gamma-1)/(Gamma+1) ≈ 1.08 %.
var Gamma = math.Exp2(1.0 / 32)

// Mapping is the DDSketch index mapping for Gamma. Every sketch herd builds uses it.
var Mapping = mustMapping()

func mustMapping() *mapping.LogarithmicMapping {
	m, err := mapping.NewLogarithmicMappingWithGamma(Gamma, 0)
	if err != nil {
		panic("BUG: cannot build the herd sketch mapping: " + err.Error())
	}
	return m
}

// MaxBucketIndex bounds the absolute bucket index of any histogram (|index| ≤ MaxBucketIndex).
// It covers every positive finite float64.
const MaxBucketIndex = 1 << 16

// MaxBuckets bounds the dense range of one bucket side (highest - lowest index + 1): with
// Gamma = 2^(1/32), 8192 buckets span a factor of 2^256.
const MaxBuckets = 8192

// NewSketch returns an empty DDSketch with herd's mapping and dense, never-collapsing stores.
func NewSketch() *ddsketch.DDSketch {
	return ddsketch.NewDDSketch(Mapping, store.NewDenseStore(), store.NewDenseStore())
}

// BucketIndex returns the bucket index of a positive value.
func BucketIndex(v float64) int { return Mapping.Index(v) }

// BucketLower returns the lower boundary of bucket i (inclusive).
func BucketLower(i int) float64 { return Mapping.LowerBound(i) }

// BucketValue returns the representative value of bucket i, as DDSketch reports quantiles.
func BucketValue(i int) float64 { return Mapping.Value(i) }

// Buckets is a dense run of bucket counts: Counts[k] is the count of bucket Offset+k.
type Buckets struct {
	Offset int32
	Counts []uint64
}

// Total returns the sum of the counts.
func (b *Buckets) Total() uint64 {
	var n uint64
	for _, c := range b.Counts {
		n += c
	}
	return n
}

// add adds n to bucket i, growing the dense range as needed. Callers check the range bounds.
func (b *Buckets) add(i int, n uint64) {
	if len(b.Counts) == 0 {
		b.Offset = int32(i)
		b.Counts = append(b.Counts[:0], n)
		return
	}
	lo := int(b.Offset)
	hi := lo + len(b.Counts) - 1
	switch {
	case i < lo:
		grow := lo - i
		b.Counts = append(b.Counts, make([]uint64, grow)...)
		copy(b.Counts[grow:], b.Counts[:len(b.Counts)-grow])
		clear(b.Counts[:grow])
		b.Offset = int32(i)
	case i > hi:
		b.Counts = append(b.Counts, make([]uint64, i-hi)...)
	}
	b.Counts[i-int(b.Offset)] += n
}

// merge adds o's counts into b.
func (b *Buckets) merge(o *Buckets) {
	if len(o.Counts) == 0 {
		return
	}
	// Grow once to cover both ranges, then add in place.
	b.add(int(o.Offset), 0)
	b.add(int(o.Offset)+len(o.Counts)-1, 0)
	dst := b.Counts[int(o.Offset)-int(b.Offset):]
	for k, c := range o.Counts {
		dst[k] += c
	}
}

// Histogram is a distribution with herd's fixed buckets (see Gamma). Values v > 0 go to
// Positive bucket BucketIndex(v), values v < 0 to Negative bucket BucketIndex(-v), zero (and
// values too small to index) to ZeroCount. Histograms merge exactly by adding counts.
//
// A Histogram is not safe for concurrent use.
type Histogram struct {
	Count     uint64  // Zero + Positive + Negative totals
	Sum       float64 // sum of the observed values
	ZeroCount uint64
	Positive  Buckets
	Negative  Buckets
}

// Reset empties h, keeping allocated memory.
func (h *Histogram) Reset() {
	h.Count, h.Sum, h.ZeroCount = 0, 0, 0
	h.Positive = Buckets{Counts: h.Positive.Counts[:0]}
	h.Negative = Buckets{Counts: h.Negative.Counts[:0]}
}

// Observe adds n observations of value v. It reports false, changing nothing, for NaN, ±Inf
// or a value whose bucket would exceed the bounds.
func (h *Histogram) Observe(v float64, n uint64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return false
	}
	min := Mapping.MinIndexableValue()
	b := &h.Positive
	av := v
	if v < 0 {
		b, av = &h.Negative, -v
	}
	if av <= min {
		h.ZeroCount += n
	} else {
		i := BucketIndex(av)
		if !b.fits(i) {
			return false
		}
		b.add(i, n)
	}
	h.Count += n
	h.Sum += v * float64(n)
	return true
}

// Add adds n to bucket i, growing the dense range as needed. It reports false, changing
// nothing, if bucket i would take b beyond MaxBucketIndex or MaxBuckets. It does not touch
// a Histogram's Count: callers keep that in step.
func (b *Buckets) Add(i int, n uint64) bool {
	if !b.fits(i) {
		return false
	}
	b.add(i, n)
	return true
}

// fits reports whether adding bucket i keeps b within the bounds.
func (b *Buckets) fits(i int) bool {
	if i > MaxBucketIndex || i < -MaxBucketIndex {
		return false
	}
	if len(b.Counts) == 0 {
		return true
	}
	lo, hi := int(b.Offset), int(b.Offset)+len(b.Counts)-1
	return max(hi, i)-min(lo, i)+1 <= MaxBuckets
}

// Merge adds o into h. It reports false, changing nothing, if the result would exceed the
// bucket bounds.
func (h *Histogram) Merge(o *Histogram) bool {
	if len(o.Positive.Counts) > 0 && (!h.Positive.fits(int(o.Positive.Offset)) ||
		!h.Positive.fits(int(o.Positive.Offset)+len(o.Positive.Counts)-1)) {
		return false
	}
	if len(o.Negative.Counts) > 0 && (!h.Negative.fits(int(o.Negative.Offset)) ||
		!h.Negative.fits(int(o.Negative.Offset)+len(o.Negative.Counts)-1)) {
		return false
	}
	h.Count += o.Count
	h.Sum += o.Sum
	h.ZeroCount += o.ZeroCount
	h.Positive.merge(&o.Positive)
	h.Negative.merge(&o.Negative)
	return true
}

// CopyFrom makes h an exact copy of o, reusing h's memory.
func (h *Histogram) CopyFrom(o *Histogram) {
	h.Count, h.Sum, h.ZeroCount = o.Count, o.Sum, o.ZeroCount
	h.Positive.Offset = o.Positive.Offset
	h.Positive.Counts = append(h.Positive.Counts[:0], o.Positive.Counts...)
	h.Negative.Offset = o.Negative.Offset
	h.Negative.Counts = append(h.Negative.Counts[:0], o.Negative.Counts...)
}

// Quantile returns the value at quantile q in [0, 1] the way DDSketch does (rank q·(count-1),
// bucket representative value), or NaN for an empty histogram or q outside [0, 1].
func (h *Histogram) Quantile(q float64) float64 {
	if h.Count == 0 || !(q >= 0 && q <= 1) {
		return math.NaN()
	}
	rank := float64(q * float64(h.Count-1))
	neg := float64(h.Negative.Total())
	if rank < neg {
		// Negative buckets are ordered by magnitude: the lowest value has the highest index.
		r := neg - 1 - rank
		return -BucketValue(h.Negative.keyAtRank(r))
	}
	rank -= neg
	if rank < float64(h.ZeroCount) {
		return 0
	}
	return BucketValue(h.Positive.keyAtRank(rank - float64(h.ZeroCount)))
}

// keyAtRank returns the index of the bucket holding the given 0-based rank.
func (b *Buckets) keyAtRank(rank float64) int {
	var n float64
	for k, c := range b.Counts {
		n += float64(c)
		if n > rank {
			return int(b.Offset) + k
		}
	}
	return int(b.Offset) + len(b.Counts) - 1
}

// CountAtOrAbove returns how many observations lie in positive buckets with index ≥ i, that is
// at or above BucketLower(i). Detectors freeze thresholds at bucket edges so the count is exact.
func (h *Histogram) CountAtOrAbove(i int) uint64 {
	var n uint64
	for k, c := range h.Positive.Counts {
		if int(h.Positive.Offset)+k >= i {
			n += c
		}
	}
	return n
}

// FromSketch sets h to the contents of a DDSketch built with NewSketch. Counts are rounded to
// the nearest integer. sum is the exact sum of the observed values, which a DDSketch does not
// keep.
func (h *Histogram) FromSketch(s *ddsketch.DDSketch, sum float64) {
	h.Reset()
	s.GetPositiveValueStore().ForEach(func(i int, c float64) bool {
		if n := uint64(math.Round(c)); n > 0 && h.Positive.fits(i) {
			h.Positive.add(i, n)
			h.Count += n
		}
		return false
	})
	s.GetNegativeValueStore().ForEach(func(i int, c float64) bool {
		if n := uint64(math.Round(c)); n > 0 && h.Negative.fits(i) {
			h.Negative.add(i, n)
			h.Count += n
		}
		return false
	})
	h.ZeroCount = uint64(math.Round(s.GetZeroCount()))
	h.Count += h.ZeroCount
	h.Sum = sum
}
