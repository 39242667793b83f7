package proto

import (
	"fmt"
	"strings"
)

// FormatVersion is the agent batch format version this package writes and reads.
// A batch whose version byte is higher is refused with reason "unknown_version".
const FormatVersion = 1

// Kind is the kind of a series in a batch or a window.
type Kind uint8

// Series kinds. The numeric values are part of the wire format.
const (
	// KindCounter is a non-negative delta of a monotonic counter over the batch interval.
	KindCounter Kind = 1
	// KindGauge is a point-in-time value.
	KindGauge Kind = 2
	// KindHistogram is a delta of a distribution over the batch interval, as sketch buckets.
	KindHistogram Kind = 3
)

// String returns the lower-case name used in JSON and logs.
func (k Kind) String() string {
	switch k {
	case KindCounter:
		return "counter"
	case KindGauge:
		return "gauge"
	case KindHistogram:
		return "histogram"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(b []byte) error {
	switch string(b) {
	case "counter":
		*k = KindCounter
	case "gauge":
		*k = KindGauge
	case "histogram":
		*k = KindHistogram
	default:
		return fmt.Errorf("unknown series kind %q", b)
	}
	return nil
}

// Series names the detector uses by default (the RED triple). The agent library's RED helper
// writes exactly these.
const (
	SeriesRequests = "requests_total"
	SeriesErrors   = "errors_total"
	SeriesLatency  = "latency_seconds"
)

// Label is one name=value pair of a series. Within a series labels are sorted by Name and
// names are unique.
type Label struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Series is one series of an agent batch.
type Series struct {
	Name   string
	Labels []Label // sorted by Name, unique names
	Kind   Kind
	// Value is the counter delta (finite, ≥ 0) or the gauge value (finite).
	Value float64
	// Hist is the histogram delta; used only when Kind is KindHistogram.
	Hist Histogram
}

// Key appends the canonical identity of the series (name and labels) to dst and returns it.
// Two series have the same key exactly when they have the same name and labels. The key is
// for map lookups only; its layout is not part of the wire format.
func (s *Series) Key(dst []byte) []byte {
	dst = append(dst, s.Name...)
	for _, l := range s.Labels {
		dst = append(dst, 0xff)
		dst = append(dst, l.Name...)
		dst = append(dst, 0xfe)
		dst = append(dst, l.Value...)
	}
	return dst
}

// String returns the series in Prometheus notation, e.g. requests_total{code="500"}.
func (s *Series) String() string { return SeriesString(s.Name, s.Labels) }

// SeriesString formats a name and labels in Prometheus notation.
func SeriesString(name string, labels []Label) string {
	if len(labels) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, l := range labels {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", l.Name, l.Value)
	}
	b.WriteByte('}')
	return b.String()
}

// Batch is what one agent instance publishes once per interval on herd.in.<service>.<version>:
// the deltas of all its series over [Start, End).
//
// A Batch filled by a Decoder shares slices with the Decoder's previous results; copy what
// must outlive the next Decode call.
type Batch struct {
	Service string // a valid service token (see ValidService)
	Version string // the real version string (see ValidVersion); escaped only in subjects
	// Instance is the random UUID of the agent instance (16 bytes).
	Instance [16]byte
	// InstanceStart is when the instance started, unix nanoseconds.
	InstanceStart int64
	// Seq numbers the instance's batches 0, 1, 2, …; gaps mean lost batches.
	Seq uint64
	// Start and End bound the interval the deltas cover, unix nanoseconds, Start < End.
	Start, End int64
	// Final is set on the last batch of an instance that is stopping.
	Final  bool
	Series []Series
}

// Reset clears b for reuse, keeping allocated slices.
func (b *Batch) Reset() {
	series := b.Series[:0]
	*b = Batch{Series: series}
}
