package proto

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"
)

// rawBatch returns the header and string table of a batch by hand, up to the series count:
// strs[0] is the service and strs[1] the version.
func rawBatch(strs []string) []byte {
	data := []byte{'h', 'b', FormatVersion, 0}
	data = append(data, make([]byte, 16)...)
	data = binary.AppendVarint(data, 1)  // instance start
	data = binary.AppendUvarint(data, 0) // seq
	data = binary.AppendVarint(data, 1)  // start
	data = binary.AppendUvarint(data, 1) // length
	data = binary.AppendUvarint(data, uint64(len(strs)))
	for _, s := range strs {
		data = binary.AppendUvarint(data, uint64(len(s)))
		data = append(data, s...)
	}
	return append(data, 0, 1)
}

// TestDecodeAllocBound decodes the worst shapes for each part of a batch and checks that
// no Decode allocates more than DecodeAllocPerByte × len + DecodeAllocBase.
func TestDecodeAllocBound(t *testing.T) {
	cases := map[string][]byte{}

	strs := []string{"a", "1"}
	for i := 0; len(strs) < MaxStrings; i++ {
		strs = append(strs, fmt.Sprintf("%x", i))
	}
	cases["distinct strings"] = binary.AppendUvarint(rawBatch(strs), 0)

	data := binary.AppendUvarint(rawBatch([]string{"a", "1", "x"}), MaxSeries)
	for range MaxSeries {
		data = append(data, 2, 0, byte(KindCounter))
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(1))
	}
	cases["counters"] = data

	strs = []string{"a", "1", "x"}
	for i := range MaxLabels {
		strs = append(strs, fmt.Sprintf("l%02d", i))
	}
	data = binary.AppendUvarint(rawBatch(strs), 1000)
	for range 1000 {
		data = append(data, 2, MaxLabels)
		for j := range MaxLabels {
			data = append(data, byte(3+j), 0)
		}
		data = append(data, byte(KindCounter))
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(1))
	}
	cases["labels"] = data

	for _, n := range []int{1, 2, 3, 30, 1000, MaxSeries} {
		cases[fmt.Sprintf("%d far-span histograms", n)] = farSpans(n)
	}

	for name, data := range cases {
		var d Decoder
		var b Batch
		var err error
		alloc := allocated(func() { err = d.Decode(data, &b) })
		limit := uint64(DecodeAllocPerByte*len(data) + DecodeAllocBase)
		t.Logf("%s: %d bytes, allocated %d (%.1f per byte), err %v", name, len(data), alloc, float64(alloc)/float64(len(data)), err)
		if alloc > limit {
			t.Errorf("%s: decoding %d bytes allocated %d; want at most %d", name, len(data), alloc, limit)
		}
	}
}

func TestBucketBudget(t *testing.T) {
	// Two histograms of MaxBuckets on one side fit the base budget of any batch; the
	// third exceeds it unless the batch is long enough to pay for it.
	var d Decoder
	var b Batch
	if err := d.Decode(farSpans(2), &b); err != nil {
		t.Fatalf("two far-span histograms: %v", err)
	}
	if got := len(b.Series[1].Hist.Positive.Counts); got != MaxBuckets {
		t.Errorf("dense buckets: got %d; want %d", got, MaxBuckets)
	}
	err := d.Decode(farSpans(3), &b)
	if Reason(err) != "histogram_span" {
		t.Fatalf("three far-span histograms in %d bytes: got %v; want histogram_span", len(farSpans(3)), err)
	}

	// One side wider than MaxBuckets is refused whatever the budget.
	data := binary.AppendUvarint(rawBatch([]string{"a", "1", "x"}), 1)
	data = append(data, 2, 0, byte(KindHistogram), 2)
	data = binary.LittleEndian.AppendUint64(data, 0)
	data = append(data, 0, 2, 0, 1, 2)
	data = binary.AppendVarint(data, MaxBuckets-1) // the second span starts at MaxBuckets
	data = append(data, 1, 0, 0)
	if err := d.Decode(data, &b); Reason(err) != "histogram_span" {
		t.Errorf("side of %d buckets: got %v; want histogram_span", MaxBuckets+1, err)
	}

	// The encoder refuses what the decoder would.
	in := testBatch()
	in.Series = in.Series[:0]
	for i := range 3 {
		s := Series{Name: fmt.Sprint("h", i), Kind: KindHistogram}
		s.Hist.Positive.Add(0, 1)
		s.Hist.Positive.Add(MaxBuckets-1, 1)
		s.Hist.Count = 2
		in.Series = append(in.Series, s)
	}
	var e Encoder
	if _, err := e.Append(nil, in); Reason(err) != "histogram_span" {
		t.Errorf("encoding three far-span histograms: got %v; want histogram_span", err)
	}
	in.Series = in.Series[:2]
	if _, err := e.Append(nil, in); err != nil {
		t.Errorf("encoding two far-span histograms: %v", err)
	}
}

func TestCountsAgainstRemainingInput(t *testing.T) {
	// Counts that promise more than the input holds are refused before allocating.
	for name, data := range map[string][]byte{
		"strings": binary.AppendUvarint(rawBatch(nil)[:len(rawBatch(nil))-3], MaxStrings),
		"series":  binary.AppendUvarint(rawBatch([]string{"a", "1"}), MaxSeries),
		"labels":  append(binary.AppendUvarint(rawBatch([]string{"a", "1", "x"}), 1), 2, MaxLabels),
		"spans":   binary.AppendUvarint(append(binary.AppendUvarint(rawBatch([]string{"a", "1", "x"}), 1), 2, 0, byte(KindHistogram), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), MaxSpans),
	} {
		var d Decoder
		var b Batch
		var err error
		alloc := allocated(func() { err = d.Decode(data, &b) })
		if Reason(err) != "truncated" {
			t.Errorf("%s: got %v; want truncated", name, err)
		}
		if alloc > 4096 {
			t.Errorf("%s: refusing %d bytes allocated %d", name, len(data), alloc)
		}
	}
}

// TestDecoderShrinks checks that the Batch decoded into gives back the memory of an outlier:
// at once for a refused one, within two epochs for an accepted one.
func TestDecoderShrinks(t *testing.T) {
	var e Encoder
	normal, err := e.Append(nil, testBatch())
	if err != nil {
		t.Fatal(err)
	}
	// An accepted outlier: 600 histograms of 1000 buckets each (4.8 MB of counts).
	big := testBatch()
	big.Series = big.Series[:0]
	for i := range 600 {
		s := Series{Name: fmt.Sprint("h", i), Kind: KindHistogram}
		for k := range 1000 {
			s.Hist.Positive.Add(k, 1)
		}
		s.Hist.Count = 1000
		big.Series = append(big.Series, s)
	}
	outlier, err := e.Append(nil, big)
	if err != nil {
		t.Fatal(err)
	}

	var d Decoder
	var b Batch
	for range 10 {
		if err := d.Decode(normal, &b); err != nil {
			t.Fatal(err)
		}
	}
	base := heldBytes(&b)
	if err := d.Decode(outlier, &b); err != nil {
		t.Fatal(err)
	}
	if got := heldBytes(&b); got < 600*1000*8 {
		t.Fatalf("outlier decoded into %d bytes; want at least %d", got, 600*1000*8)
	}
	for range 2 * shrinkEpoch {
		if err := d.Decode(normal, &b); err != nil {
			t.Fatal(err)
		}
	}
	if got := heldBytes(&b); got > shrinkFloor {
		t.Errorf("after %d normal batches the batch holds %d bytes (%d before the outlier); want at most %d",
			2*shrinkEpoch, got, base, shrinkFloor)
	}
	if d.held != heldBytes(&b) {
		t.Errorf("accounted %d bytes; the batch holds %d", d.held, heldBytes(&b))
	}

	// A refused outlier is given back by the Decode that refuses it.
	if err := d.Decode(farSpans(MaxSeries), &b); Reason(err) != "histogram_span" {
		t.Fatalf("got %v; want histogram_span", err)
	}
	if got := heldBytes(&b); got > shrinkFloor {
		t.Errorf("after a refused outlier the batch holds %d bytes; want at most %d", got, shrinkFloor)
	}
	// And the next batch decodes normally.
	if err := d.Decode(normal, &b); err != nil || len(b.Series) != len(testBatch().Series) {
		t.Errorf("after the outlier: got %d series, err %v", len(b.Series), err)
	}
}

func TestDecoderInternBounded(t *testing.T) {
	var d Decoder
	var b Batch
	long := make([]byte, MaxStringBytes)
	for i := range long {
		long[i] = 'a'
	}
	for k := range 4 * maxInternedBytes / (MaxStringBytes * 1000) {
		strs := []string{"a", "1"}
		for i := range 1000 {
			s := fmt.Sprintf("%d-%d-", k, i)
			strs = append(strs, s+string(long[len(s):]))
		}
		if err := d.Decode(binary.AppendUvarint(rawBatch(strs), 0), &b); err != nil {
			t.Fatal(err)
		}
		if d.internBytes > maxInternedBytes {
			t.Fatalf("intern cache holds %d bytes; want at most %d", d.internBytes, maxInternedBytes)
		}
	}
}
