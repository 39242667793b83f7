package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// Decoding limits. A batch that exceeds one is refused with the reason in parentheses.
const (
	MaxBatchBytes  = 1 << 20 // whole encoded batch ("oversized")
	MaxStrings     = 4096    // string table entries ("too_many_strings")
	MaxStringBytes = 1024    // one string ("bad_string")
	MaxSeries      = 4096    // series in one batch ("too_many_series")
	MaxLabels      = 32      // labels of one series ("too_many_labels")
	MaxSpans       = 256     // bucket spans of one histogram side ("bad_histogram")
	MaxCount       = 1 << 53 // one bucket count, exactly representable as float64 ("bad_histogram")
	MaxInterval    = 3600e9  // End - Start in nanoseconds ("bad_interval")

	// BucketBudgetBase and BucketsPerByte bound the histogram buckets one batch makes a
	// decoder hold (see BucketBudget; "histogram_span"). The base lets any one histogram use
	// both sides' full MaxBuckets range.
	BucketBudgetBase = 2 * MaxBuckets
	BucketsPerByte   = 4
)

// BucketBudget returns how many dense histogram buckets a batch of n encoded bytes may
// create: the dense ranges of all its histogram sides added up, the empty buckets between
// spans included (they cost no input bytes, but the decoded form holds them). A batch over
// the budget is refused with reason "histogram_span", before the buckets are allocated.
func BucketBudget(n int) int { return BucketBudgetBase + BucketsPerByte*n }

// Smallest encodings of the repeated parts of a batch. A count that promises more parts
// than the remaining input can hold is refused as "truncated" before anything is allocated
// for it.
const (
	minStringBytes = 1  // uvarint length 0
	minSeriesBytes = 11 // name, nlabels, kind, f64 value (a histogram takes at least 15)
	minLabelBytes  = 2  // name and value indexes
	minSpanBytes   = 3  // offset, length, one count
)

// DecodeAllocPerByte and DecodeAllocBase bound what one Decode call allocates, whatever data
// holds: at most DecodeAllocPerByte × len(data) + DecodeAllocBase bytes (FuzzDecode checks
// it). The worst cases are about 45 bytes per input byte for a table of distinct short
// strings (the Decoder's intern cache), 8 bytes per budgeted bucket (32 per input byte, plus
// 128 KiB for BucketBudgetBase), 16 per byte for labels and 13 for series; every array is
// sized once, exactly, from counts checked against the remaining input. (A Decode that gives
// an outlier's memory back copies, on top, at most what the batch it decoded holds.)
const (
	DecodeAllocPerByte = 64
	DecodeAllocBase    = 256 << 10
)

// magic starts every batch: "hb" (herd batch).
var magic = [2]byte{'h', 'b'}

const flagFinal = 1

// DecodeError is the error of a batch that cannot be decoded. Reason is a short bounded label
// for counters (see the Max* constants and docs/wire-format.md for the full list).
type DecodeError struct {
	Reason string
	Detail string
}

func (e *DecodeError) Error() string {
	return "cannot decode batch: " + e.Reason + ": " + e.Detail
}

func decodeErr(reason, format string, args ...any) error {
	return &DecodeError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Reason returns the counter label of a decode error, or "other" for any other error.
func Reason(err error) string {
	if de, ok := errors.AsType[*DecodeError](err); ok {
		return de.Reason
	}
	return "other"
}

// Encoder writes batches in the binary format of docs/wire-format.md. It keeps a string table
// map between calls to avoid allocation; it is not safe for concurrent use.
type Encoder struct {
	index map[string]uint64
	strs  []string
}

// Append appends the encoding of b to dst. It returns an error, and dst unchanged, for a
// batch that a Decoder would refuse (bad tokens, unsorted labels, bad values, limits).
func (e *Encoder) Append(dst []byte, b *Batch) ([]byte, error) {
	if err := ValidService(b.Service); err != nil {
		return dst, decodeErr("bad_token", "%v", err)
	}
	if err := ValidVersion(b.Version); err != nil {
		return dst, decodeErr("bad_token", "%v", err)
	}
	if !(b.Start < b.End && b.End-b.Start <= MaxInterval) {
		return dst, decodeErr("bad_interval", "interval [%d, %d) is empty or longer than %d ns", b.Start, b.End, int64(MaxInterval))
	}
	if len(b.Series) > MaxSeries {
		return dst, decodeErr("too_many_series", "%d series, limit %d", len(b.Series), MaxSeries)
	}
	if e.index == nil {
		e.index = make(map[string]uint64)
	}
	clear(e.index)
	e.strs = e.strs[:0]
	e.intern(b.Service)
	e.intern(b.Version)
	for i := range b.Series {
		s := &b.Series[i]
		if err := checkSeries(s); err != nil {
			return dst, err
		}
		e.intern(s.Name)
		for _, l := range s.Labels {
			e.intern(l.Name)
			e.intern(l.Value)
		}
	}
	if len(e.strs) > MaxStrings {
		return dst, decodeErr("too_many_strings", "%d strings, limit %d", len(e.strs), MaxStrings)
	}
	start := len(dst)
	buckets := 0 // dense buckets a decoder will hold, for the bucket budget
	dst = append(dst, magic[0], magic[1], FormatVersion)
	var flags byte
	if b.Final {
		flags |= flagFinal
	}
	dst = append(dst, flags)
	dst = append(dst, b.Instance[:]...)
	dst = binary.AppendVarint(dst, b.InstanceStart)
	dst = binary.AppendUvarint(dst, b.Seq)
	dst = binary.AppendVarint(dst, b.Start)
	dst = binary.AppendUvarint(dst, uint64(b.End-b.Start))
	dst = binary.AppendUvarint(dst, uint64(len(e.strs)))
	for _, s := range e.strs {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	dst = binary.AppendUvarint(dst, e.index[b.Service])
	dst = binary.AppendUvarint(dst, e.index[b.Version])
	dst = binary.AppendUvarint(dst, uint64(len(b.Series)))
	for i := range b.Series {
		s := &b.Series[i]
		dst = binary.AppendUvarint(dst, e.index[s.Name])
		dst = binary.AppendUvarint(dst, uint64(len(s.Labels)))
		for _, l := range s.Labels {
			dst = binary.AppendUvarint(dst, e.index[l.Name])
			dst = binary.AppendUvarint(dst, e.index[l.Value])
		}
		dst = append(dst, byte(s.Kind))
		switch s.Kind {
		case KindCounter, KindGauge:
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(s.Value))
		case KindHistogram:
			h := &s.Hist
			dst = binary.AppendUvarint(dst, h.Count)
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.Sum))
			dst = binary.AppendUvarint(dst, h.ZeroCount)
			var n int
			dst, n = appendBuckets(dst, &h.Positive)
			buckets += n
			dst, n = appendBuckets(dst, &h.Negative)
			buckets += n
		}
	}
	if len(dst)-start > MaxBatchBytes {
		return dst[:start], decodeErr("oversized", "%d bytes, limit %d", len(dst)-start, MaxBatchBytes)
	}
	if buckets > BucketBudget(len(dst)-start) {
		return dst[:start], decodeErr("histogram_span", "histograms span %d buckets; a %d-byte batch may span %d",
			buckets, len(dst)-start, BucketBudget(len(dst)-start))
	}
	return dst, nil
}

func (e *Encoder) intern(s string) {
	if _, ok := e.index[s]; !ok {
		e.index[s] = uint64(len(e.strs))
		e.strs = append(e.strs, s)
	}
}

// checkSeries applies the decoder's rules to one series before it is written.
func checkSeries(s *Series) error {
	if s.Name == "" || len(s.Name) > MaxStringBytes || !utf8.ValidString(s.Name) {
		return decodeErr("bad_string", "series name %q", clip(s.Name))
	}
	if len(s.Labels) > MaxLabels {
		return decodeErr("too_many_labels", "series %s has %d labels, limit %d", clip(s.Name), len(s.Labels), MaxLabels)
	}
	for j, l := range s.Labels {
		if l.Name == "" || len(l.Name) > MaxStringBytes || len(l.Value) > MaxStringBytes ||
			!utf8.ValidString(l.Name) || !utf8.ValidString(l.Value) {
			return decodeErr("bad_string", "label %q of series %s", clip(l.Name), clip(s.Name))
		}
		if j > 0 && s.Labels[j-1].Name >= l.Name {
			return decodeErr("bad_labels", "labels of series %s are not sorted and unique", clip(s.Name))
		}
	}
	switch s.Kind {
	case KindCounter:
		if !(s.Value >= 0) || math.IsInf(s.Value, 0) {
			return decodeErr("bad_value", "counter %s delta %v is not finite and ≥ 0", clip(s.Name), s.Value)
		}
	case KindGauge:
		if math.IsNaN(s.Value) || math.IsInf(s.Value, 0) {
			return decodeErr("bad_value", "gauge %s value %v is not finite", clip(s.Name), s.Value)
		}
	case KindHistogram:
		h := &s.Hist
		if math.IsNaN(h.Sum) || math.IsInf(h.Sum, 0) {
			return decodeErr("bad_histogram", "histogram %s sum is not finite", clip(s.Name))
		}
		if h.ZeroCount+h.Positive.Total()+h.Negative.Total() != h.Count {
			return decodeErr("bad_histogram", "histogram %s count %d is not the sum of its buckets", clip(s.Name), h.Count)
		}
		for _, b := range []*Buckets{&h.Positive, &h.Negative} {
			if int(b.Offset) < -MaxBucketIndex || int(b.Offset)+len(b.Counts)-1 > MaxBucketIndex {
				return decodeErr("bad_histogram", "histogram %s buckets out of range", clip(s.Name))
			}
			if len(b.Counts) > MaxBuckets {
				return decodeErr("histogram_span", "histogram %s spans %d buckets, limit %d", clip(s.Name), len(b.Counts), MaxBuckets)
			}
		}
	default:
		return decodeErr("bad_kind", "series %s has kind %d", clip(s.Name), s.Kind)
	}
	return nil
}

// appendBuckets writes the non-zero runs of b as spans and returns the number of dense
// buckets they decode to. A run of two or more zero buckets splits a span; a single zero
// bucket is cheaper to write as a count.
func appendBuckets(dst []byte, b *Buckets) ([]byte, int) {
	c := b.Counts
	type span struct{ lo, hi int } // indexes into c, inclusive
	var spans [MaxSpans]span
	n := 0
	for i := 0; i < len(c); {
		if c[i] == 0 {
			i++
			continue
		}
		lo := i
		hi := i
		for j := i + 1; j < len(c); j++ {
			if c[j] != 0 {
				hi = j
			} else if j+1 >= len(c) || c[j+1] == 0 {
				break
			}
		}
		if n == MaxSpans {
			// Too fragmented: merge into the last span (zeros are written as counts).
			spans[n-1].hi = hi
		} else {
			spans[n] = span{lo, hi}
			n++
		}
		i = hi + 1
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	prevEnd := 0
	var prev int64
	for k := 0; k < n; k++ {
		s := spans[k]
		if k == 0 {
			dst = binary.AppendVarint(dst, int64(int(b.Offset)+s.lo))
		} else {
			dst = binary.AppendVarint(dst, int64(s.lo-prevEnd))
		}
		dst = binary.AppendUvarint(dst, uint64(s.hi-s.lo+1))
		for _, v := range c[s.lo : s.hi+1] {
			dst = binary.AppendVarint(dst, int64(v)-prev)
			prev = int64(v)
		}
		prevEnd = s.hi + 1
	}
	if n == 0 {
		return dst, 0
	}
	return dst, spans[n-1].hi - spans[0].lo + 1
}
