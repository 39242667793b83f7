package otlp

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/herd-dev/herd/proto"
)

// otelIndex is the OpenTelemetry exponential histogram bucket of v > 0 at a scale: the k with
// base^k < v ≤ base^(k+1), base = 2^(2^-scale).
func otelIndex(v float64, scale int32) int {
	return int(math.Ceil(math.Log2(v)*math.Exp2(float64(scale)))) - 1
}

// TestHerdIndexExact checks that at scales ≥ 5 every OpenTelemetry bucket maps onto the herd
// bucket that holds its values, and below 5 onto a herd bucket inside its range.
func TestHerdIndexExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		v := math.Exp(rng.Float64()*60 - 30) // 1e-13 … 1e13
		want := proto.BucketIndex(v)
		if proto.BucketLower(want) == v {
			continue // on a shared boundary: OpenTelemetry's bucket is the lower one
		}
		for scale := int32(5); scale <= maxScale; scale++ {
			if got := herdIndex(otelIndex(v, scale), scale); got != want {
				t.Fatalf("v=%g scale %d: herd bucket %d; want %d", v, scale, got, want)
			}
		}
		for scale := int32(minScale); scale < 5; scale++ {
			k := otelIndex(v, scale)
			m := 1 << (5 - scale)
			if got := herdIndex(k, scale); got < k*m || got >= (k+1)*m {
				t.Fatalf("v=%g scale %d: herd bucket %d outside the source bucket's herd range [%d, %d)", v, scale, got, k*m, (k+1)*m)
			}
		}
	}
}

// TestExpDeltaAcrossScales checks that a cumulative exponential histogram whose scale drops
// between two points yields the exact delta at the coarser scale.
func TestExpDeltaAcrossScales(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var first, all []float64
	for range 500 {
		first = append(first, math.Exp(rng.Float64()*4))
	}
	all = append(all, first...)
	for range 700 {
		all = append(all, math.Exp(rng.Float64()*12-4))
	}
	build := func(vals []float64, scale int32) *expHist {
		h := &expHist{scale: scale}
		counts := map[int]uint64{}
		lo, hi := math.MaxInt, math.MinInt
		for _, v := range vals {
			k := otelIndex(v, scale)
			counts[k]++
			lo, hi = min(lo, k), max(hi, k)
			h.sum += v
		}
		h.pos.offset = lo
		h.pos.counts = make([]uint64, hi-lo+1)
		for k, c := range counts {
			h.pos.counts[k-lo] = c
		}
		return h
	}
	prev, cur := build(first, 8), build(all, 6)
	var d, scratch expHist
	if !d.deltaFrom(cur, prev, &scratch) {
		t.Fatal("deltaFrom reported a reset; want a delta")
	}
	want := build(all[len(first):], 6)
	var got, exp proto.Histogram
	if !d.toHerd(&got) || !want.toHerd(&exp) {
		t.Fatal("toHerd failed")
	}
	if got.Count != 700 || got.Count != exp.Count || got.Positive.Offset != exp.Positive.Offset || len(got.Positive.Counts) != len(exp.Positive.Counts) {
		t.Fatalf("delta count %d offset %d len %d; want %d, %d, %d", got.Count, got.Positive.Offset, len(got.Positive.Counts), exp.Count, exp.Positive.Offset, len(exp.Positive.Counts))
	}
	for i := range got.Positive.Counts {
		if got.Positive.Counts[i] != exp.Positive.Counts[i] {
			t.Fatalf("bucket %d: got %d; want %d", int(got.Positive.Offset)+i, got.Positive.Counts[i], exp.Positive.Counts[i])
		}
	}
	// A count that went down is a reset.
	if d.deltaFrom(prev, cur, &scratch) {
		t.Error("deltaFrom(smaller, larger) = true; want a reset")
	}
}
