package proto

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"
	"unsafe"
)

// Decoder reads batches. It interns the strings it sees (bounded in number and bytes), so
// decoding a stream of batches with recurring names allocates nothing in steady state.
//
// Memory is bounded by the input: one Decode call allocates at most DecodeAllocPerByte ×
// len(data) + DecodeAllocBase bytes, and the histogram buckets a batch creates count against
// BucketBudget(len(data)) before they are allocated. The Batch decoded into keeps its slices
// for the next call; once it holds more than shrinkFactor times what the recent batches
// needed (and more than shrinkFloor), Decode gives the excess back, so an outlier batch,
// refused or not, leaves no lasting footprint. The accounting follows the Batch last decoded
// into: use one Batch per Decoder. A Decoder is not safe for concurrent use.
type Decoder struct {
	strs        []string
	intern      map[string]string
	internBytes int // bytes of the strings in intern

	// budget is how many dense histogram buckets the batch being decoded may still create.
	budget int

	// Capacity accounting of the Batch last decoded into (last), in bytes of the backing
	// arrays of its series, labels and bucket counts: held is what it keeps, need what the
	// current Decode uses, peak[0] and peak[1] the largest need of an accepted batch in the
	// current and the previous epoch of shrinkEpoch calls.
	last    *Batch
	held    int
	need    int
	peak    [2]int
	decodes int
}

const (
	// maxInterned and maxInternedBytes bound the Decoder's string cache; it is replaced by
	// an empty one when full (clearing a map would keep its memory).
	maxInterned      = 1 << 16
	maxInternedBytes = 1 << 20

	// A Batch may keep shrinkFactor times the largest need of the last shrinkEpoch to
	// 2×shrinkEpoch accepted batches, and always shrinkFloor bytes.
	shrinkEpoch  = 256
	shrinkFactor = 4
	shrinkFloor  = 1 << 20

	seriesSize = int(unsafe.Sizeof(Series{}))
	labelSize  = int(unsafe.Sizeof(Label{}))
	countSize  = int(unsafe.Sizeof(uint64(0)))
)

// Decode decodes data into b, reusing b's slices. On error b holds partial garbage and the
// error is a *DecodeError naming the reason. Decode never panics and never reads or allocates
// beyond what the bounded lengths in data allow (see Decoder).
func (d *Decoder) Decode(data []byte, b *Batch) error {
	if d.last != b {
		d.last = b
		d.held = heldBytes(b)
		d.peak = [2]int{}
	}
	d.need = 0
	err := d.decode(data, b)
	if err == nil {
		d.peak[0] = max(d.peak[0], d.need)
	}
	if d.held > max(shrinkFloor, shrinkFactor*max(d.peak[0], d.peak[1])) {
		d.shrink(b, err == nil)
	}
	d.decodes++
	if d.decodes%shrinkEpoch == 0 {
		d.peak[1], d.peak[0] = d.peak[0], 0
	}
	return err
}

// heldBytes returns the bytes of the backing arrays b's series slots hold.
func heldBytes(b *Batch) int {
	all := b.Series[:cap(b.Series)]
	n := cap(all) * seriesSize
	for i := range all {
		s := &all[i]
		n += cap(s.Labels)*labelSize + (cap(s.Hist.Positive.Counts)+cap(s.Hist.Negative.Counts))*countSize
	}
	return n
}

// shrink gives back what b holds beyond what it uses: the series slots after the last one in
// use, and label and bucket arrays more than twice as long as their content. keep tells
// whether b's content (an accepted batch) must survive; otherwise every slot is released.
func (d *Decoder) shrink(b *Batch, keep bool) {
	if !keep {
		b.Series = b.Series[:0]
	}
	n := len(b.Series)
	if cap(b.Series) > 2*n {
		b.Series = append([]Series(nil), b.Series...)
	}
	all := b.Series[:cap(b.Series)]
	for i := range all {
		s := &all[i]
		if i >= n {
			*s = Series{}
			continue
		}
		s.Labels = trimmed(s.Labels)
		s.Hist.Positive.Counts = trimmed(s.Hist.Positive.Counts)
		s.Hist.Negative.Counts = trimmed(s.Hist.Negative.Counts)
	}
	d.held = heldBytes(b)
}

// trimmed returns s, or a copy of it without spare capacity if s holds more than twice its
// length (and more than a few elements).
func trimmed[T any](s []T) []T {
	if cap(s) <= 2*len(s)+8 {
		return s
	}
	if len(s) == 0 {
		return nil
	}
	return append([]T(nil), s...)
}

func (d *Decoder) decode(data []byte, b *Batch) error {
	if len(data) > MaxBatchBytes {
		return decodeErr("oversized", "%d bytes, limit %d", len(data), MaxBatchBytes)
	}
	r := reader{buf: data}
	if len(data) < 4 {
		return decodeErr("truncated", "%d bytes is shorter than the header", len(data))
	}
	if data[0] != magic[0] || data[1] != magic[1] {
		return decodeErr("bad_magic", "first bytes %#x %#x", data[0], data[1])
	}
	if data[2] != FormatVersion {
		return decodeErr("unknown_version", "format version %d, this herd reads %d", data[2], FormatVersion)
	}
	flags := data[3]
	if flags&^flagFinal != 0 {
		return decodeErr("bad_flags", "unknown flags %#x", flags)
	}
	r.off = 4
	d.budget = BucketBudget(len(data))
	b.Final = flags&flagFinal != 0
	if !r.bytes(b.Instance[:]) {
		return r.err("instance id")
	}
	var ok bool
	var u uint64
	if b.InstanceStart, ok = r.varint(); !ok {
		return r.err("instance start")
	}
	if b.Seq, ok = r.uvarint(); !ok {
		return r.err("sequence")
	}
	if b.Start, ok = r.varint(); !ok {
		return r.err("interval start")
	}
	if u, ok = r.uvarint(); !ok {
		return r.err("interval length")
	}
	if u == 0 || u > MaxInterval || b.Start > math.MaxInt64-int64(u) {
		return decodeErr("bad_interval", "interval length %d ns", u)
	}
	b.End = b.Start + int64(u)

	if u, ok = r.uvarint(); !ok {
		return r.err("string count")
	}
	if u > MaxStrings {
		return decodeErr("too_many_strings", "%d strings, limit %d", u, MaxStrings)
	}
	if int(u)*minStringBytes > r.remaining() {
		return r.err(fmt.Sprintf("string table of %d strings", u))
	}
	d.strs = slices.Grow(d.strs[:0], int(u))
	for range u {
		l, ok := r.uvarint()
		if !ok {
			return r.err("string length")
		}
		if l > MaxStringBytes {
			return decodeErr("bad_string", "string of %d bytes, limit %d", l, MaxStringBytes)
		}
		raw, ok := r.next(int(l))
		if !ok {
			return r.err("string")
		}
		if !utf8.Valid(raw) {
			return decodeErr("bad_string", "string %d is not UTF-8", len(d.strs))
		}
		s, hit := d.intern[string(raw)]
		if !hit {
			if d.intern == nil || len(d.intern) >= maxInterned || d.internBytes+len(raw) > maxInternedBytes {
				d.intern = make(map[string]string)
				d.internBytes = 0
			}
			s = string(raw)
			d.intern[s] = s
			d.internBytes += len(s)
		}
		d.strs = append(d.strs, s)
	}
	var err error
	if b.Service, err = d.str(&r, "service"); err != nil {
		return err
	}
	if b.Version, err = d.str(&r, "version"); err != nil {
		return err
	}
	if err := ValidService(b.Service); err != nil {
		return decodeErr("bad_token", "%v", err)
	}
	if err := ValidVersion(b.Version); err != nil {
		return decodeErr("bad_token", "%v", err)
	}
	if u, ok = r.uvarint(); !ok {
		return r.err("series count")
	}
	if u > MaxSeries {
		return decodeErr("too_many_series", "%d series, limit %d", u, MaxSeries)
	}
	if int(u)*minSeriesBytes > r.remaining() {
		return r.err(fmt.Sprintf("%d series", u))
	}
	if n := int(u); cap(b.Series) < n {
		// Grow once to the exact size, keeping the old slots' label and bucket arrays.
		grown := make([]Series, n)
		d.held += (n - cap(b.Series)) * seriesSize
		copy(grown, b.Series[:cap(b.Series)])
		b.Series = grown
	}
	b.Series = b.Series[:0]
	d.need += int(u) * seriesSize
	for range u {
		b.Series = b.Series[:len(b.Series)+1]
		if err := d.series(&r, &b.Series[len(b.Series)-1]); err != nil {
			return err
		}
	}
	if r.off != len(data) {
		return decodeErr("trailing_bytes", "%d bytes after the last series", len(data)-r.off)
	}
	return nil
}

func (d *Decoder) str(r *reader, what string) (string, error) {
	i, ok := r.uvarint()
	if !ok {
		return "", r.err(what)
	}
	if i >= uint64(len(d.strs)) {
		return "", decodeErr("bad_index", "%s string index %d, table has %d", what, i, len(d.strs))
	}
	return d.strs[i], nil
}

func (d *Decoder) series(r *reader, s *Series) error {
	var err error
	if s.Name, err = d.str(r, "series name"); err != nil {
		return err
	}
	if s.Name == "" {
		return decodeErr("bad_string", "empty series name")
	}
	n, ok := r.uvarint()
	if !ok {
		return r.err("label count")
	}
	if n > MaxLabels {
		return decodeErr("too_many_labels", "series %s has %d labels, limit %d", clip(s.Name), n, MaxLabels)
	}
	if int(n)*minLabelBytes > r.remaining() {
		return r.err(fmt.Sprintf("%d labels", n))
	}
	if cap(s.Labels) < int(n) {
		d.held += (int(n) - cap(s.Labels)) * labelSize
		s.Labels = make([]Label, 0, n)
	}
	s.Labels = s.Labels[:0]
	d.need += int(n) * labelSize
	for range n {
		var l Label
		if l.Name, err = d.str(r, "label name"); err != nil {
			return err
		}
		if l.Value, err = d.str(r, "label value"); err != nil {
			return err
		}
		if l.Name == "" || (len(s.Labels) > 0 && s.Labels[len(s.Labels)-1].Name >= l.Name) {
			return decodeErr("bad_labels", "labels of series %s are not sorted, unique and non-empty", clip(s.Name))
		}
		s.Labels = append(s.Labels, l)
	}
	k, ok := r.byte()
	if !ok {
		return r.err("kind")
	}
	s.Kind = Kind(k)
	s.Value = 0
	switch s.Kind {
	case KindCounter, KindGauge:
		bits, ok := r.uint64()
		if !ok {
			return r.err("value")
		}
		s.Value = math.Float64frombits(bits)
		if math.IsNaN(s.Value) || math.IsInf(s.Value, 0) || (s.Kind == KindCounter && s.Value < 0) {
			return decodeErr("bad_value", "%s %s value %v", s.Kind, clip(s.Name), s.Value)
		}
		s.Hist.Reset()
	case KindHistogram:
		return d.histogram(r, s)
	default:
		return decodeErr("bad_kind", "series %s has kind %d", clip(s.Name), k)
	}
	return nil
}

func (d *Decoder) histogram(r *reader, s *Series) error {
	h := &s.Hist
	h.Reset()
	var ok bool
	if h.Count, ok = r.uvarint(); !ok {
		return r.err("histogram count")
	}
	bits, ok := r.uint64()
	if !ok {
		return r.err("histogram sum")
	}
	h.Sum = math.Float64frombits(bits)
	if math.IsNaN(h.Sum) || math.IsInf(h.Sum, 0) {
		return decodeErr("bad_histogram", "histogram %s sum is not finite", clip(s.Name))
	}
	if h.ZeroCount, ok = r.uvarint(); !ok {
		return r.err("histogram zero count")
	}
	if h.ZeroCount > MaxCount {
		return decodeErr("bad_histogram", "histogram %s zero count too large", clip(s.Name))
	}
	total := h.ZeroCount
	for side, b := range []*Buckets{&h.Positive, &h.Negative} {
		n, err := d.readBuckets(r, b, s.Name, side)
		if err != nil {
			return err
		}
		total += n
	}
	if total != h.Count {
		return decodeErr("bad_histogram", "histogram %s count %d, buckets hold %d", clip(s.Name), h.Count, total)
	}
	return nil
}

// sideNames names the histogram sides in errors.
var sideNames = [2]string{"positive", "negative"}

// readBuckets reads the spans of one side into b (dense) and returns the total count. A
// first pass reads the span headers and skips the counts, so the dense range is checked
// against MaxBuckets and the batch's bucket budget before it is allocated, once.
func (d *Decoder) readBuckets(r *reader, b *Buckets, name string, side int) (uint64, error) {
	n, ok := r.uvarint()
	if !ok {
		return 0, r.err("span count")
	}
	if n > MaxSpans {
		return 0, decodeErr("bad_histogram", "histogram %s has %d spans, limit %d", clip(name), n, MaxSpans)
	}
	if int(n)*minSpanBytes > r.remaining() {
		return 0, r.err(fmt.Sprintf("%d spans", n))
	}
	if n == 0 {
		return 0, nil
	}
	start := r.off
	lo, hi := 0, 0
	next := 0 // absolute index after the previous span
	for k := range n {
		off, ok := r.varint()
		if !ok {
			return 0, r.err("span offset")
		}
		l, ok := r.uvarint()
		if !ok {
			return 0, r.err("span length")
		}
		if l == 0 || l > MaxBuckets || (k > 0 && off < 0) || off > 2*MaxBucketIndex || off < -2*MaxBucketIndex {
			return 0, decodeErr("bad_histogram", "histogram %s span %d offset %d length %d", clip(name), k, off, l)
		}
		first := int(off)
		if k > 0 {
			first += next
		}
		last := first + int(l) - 1
		if first < -MaxBucketIndex || last > MaxBucketIndex {
			return 0, decodeErr("bad_histogram", "histogram %s buckets [%d, %d] out of range", clip(name), first, last)
		}
		if k == 0 {
			lo = first
		}
		hi = last
		if hi-lo+1 > MaxBuckets {
			return 0, decodeErr("histogram_span", "histogram %s %s buckets %d to %d span more than %d",
				clip(name), sideNames[side], lo, hi, MaxBuckets)
		}
		if !r.skipVarints(int(l)) {
			return 0, r.err("bucket count")
		}
		next = last + 1
	}
	size := hi - lo + 1
	if size > d.budget {
		return 0, decodeErr("histogram_span", "histogram %s: the batch's histograms span more than %d buckets, the budget of a %d-byte batch",
			clip(name), BucketBudget(len(r.buf)), len(r.buf))
	}
	d.budget -= size

	r.off = start
	if cap(b.Counts) < size {
		d.held += (size - cap(b.Counts)) * countSize
		b.Counts = make([]uint64, size)
	} else {
		b.Counts = b.Counts[:size]
		clear(b.Counts)
	}
	d.need += size * countSize
	b.Offset = int32(lo)
	var total uint64
	var prev int64
	next = 0
	for k := range n {
		off, _ := r.varint() // checked by the first pass
		l, _ := r.uvarint()
		first := int(off)
		if k > 0 {
			first += next
		}
		counts := b.Counts[first-lo : first-lo+int(l)]
		for j := range counts {
			dv, ok := r.varint()
			if !ok {
				return 0, r.err("bucket count")
			}
			v := prev + dv
			if (dv > 0 && v < prev) || v < 0 || v > MaxCount {
				return 0, decodeErr("bad_histogram", "histogram %s bucket count out of range", clip(name))
			}
			prev = v
			counts[j] = uint64(v)
			total += uint64(v)
			if total > MaxCount {
				return 0, decodeErr("bad_histogram", "histogram %s total count too large", clip(name))
			}
		}
		next = first + int(l)
	}
	return total, nil
}

// reader reads from buf with bounds checks; every method reports false instead of panicking.
type reader struct {
	buf []byte
	off int
}

func (r *reader) err(what string) error {
	return decodeErr("truncated", "%s at byte %d of %d", what, r.off, len(r.buf))
}

func (r *reader) remaining() int { return len(r.buf) - r.off }

// skipVarints advances past n varints without decoding them, reporting false if the input
// ends first.
func (r *reader) skipVarints(n int) bool {
	for n > 0 {
		if r.off >= len(r.buf) {
			return false
		}
		if r.buf[r.off] < 0x80 {
			n--
		}
		r.off++
	}
	return true
}

func (r *reader) next(n int) ([]byte, bool) {
	if n < 0 || n > len(r.buf)-r.off {
		return nil, false
	}
	b := r.buf[r.off : r.off+n]
	r.off += n
	return b, true
}

func (r *reader) bytes(dst []byte) bool {
	b, ok := r.next(len(dst))
	if ok {
		copy(dst, b)
	}
	return ok
}

func (r *reader) byte() (byte, bool) {
	if r.off >= len(r.buf) {
		return 0, false
	}
	c := r.buf[r.off]
	r.off++
	return c, true
}

func (r *reader) uint64() (uint64, bool) {
	b, ok := r.next(8)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b), true
}

func (r *reader) uvarint() (uint64, bool) {
	v, n := binary.Uvarint(r.buf[r.off:])
	if n <= 0 {
		return 0, false
	}
	r.off += n
	return v, true
}

func (r *reader) varint() (int64, bool) {
	v, n := binary.Varint(r.buf[r.off:])
	if n <= 0 {
		return 0, false
	}
	r.off += n
	return v, true
}
