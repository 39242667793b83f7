package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Window is the merged result of all instances of one group (service, version) over one
// aligned interval [StartMs, EndMs). Rollup workers publish it as JSON on
// herd.rollup.<service>.<escaped version> when it closes (see docs/wire-format.md).
type Window struct {
	Service string `json:"service"`
	Version string `json:"version"`
	StartMs int64  `json:"start_unix_ms"`
	EndMs   int64  `json:"end_unix_ms"`
	// Instances is the number of distinct instances whose batches were merged.
	Instances int `json:"instances"`
	// InstancesStarted counts instances seen for the first time in this window;
	// InstancesStopped counts final batches merged into it.
	InstancesStarted int `json:"instances_started"`
	InstancesStopped int `json:"instances_stopped"`
	// ClosedMs is when the window was closed, unix milliseconds.
	ClosedMs int64          `json:"closed_unix_ms"`
	Series   []WindowSeries `json:"series"`

	// WarmupMs is the per-instance warm-up the rollup applied, in milliseconds: Warm and
	// Halves merge only batches of instances running for at least that long (batch End −
	// InstanceStart ≥ warm-up). 0 means the rollup produced neither; read Series then.
	WarmupMs int64 `json:"warmup_ms,omitempty"`
	// SplitSeries names the series (by name, with any labels) that Warm and Halves carry;
	// ["*"] means every series. Read-only: it is shared between windows.
	SplitSeries []string `json:"split_series,omitempty"`
	// WarmInstances is the number of distinct warm instances merged into Warm; it is
	// HalfInstances[0] + HalfInstances[1].
	WarmInstances int `json:"warm_instances,omitempty"`
	// Warm holds the SplitSeries of Series merged from warm instances only. It is exactly
	// the merge of Halves[0] and Halves[1].
	Warm []WindowSeries `json:"warm,omitempty"`
	// Halves splits Warm in two by a stable hash of the instance id (see HalfOf): half h
	// holds the series of the warm instances with HalfOf(id) == h. Consumers compare the two
	// halves of one group as an A/A check.
	Halves [2][]WindowSeries `json:"halves,omitzero"`
	// HalfInstances counts the distinct warm instances merged into each half.
	HalfInstances [2]int `json:"half_instances,omitzero"`
	// Buckets, when present, splits Warm finer than Halves: NumBuckets entries, bucket b
	// holding the series of the warm instances with BucketOf(id) == b, so that half h is the
	// merge of the buckets b with b/(NumBuckets/2) == h. The detector estimates how much
	// instances of one version differ from them (docs/detector.md, "Margin from the
	// dispersion"). Optional: a producer may leave it out, and readers then fall back to an
	// assumed spread.
	Buckets [][]WindowSeries `json:"buckets,omitempty"`
	// BucketInstances counts the distinct warm instances merged into each bucket; it has
	// the length of Buckets.
	BucketInstances []int `json:"bucket_instances,omitempty"`

	// Correction marks a correction to a window published before: it carries only the
	// batches that reached the rollup after the window [StartMs, EndMs) of the group had
	// closed (an agent's reconnect buffer after an outage or a restart), merged like a
	// window, with Instances, InstancesStarted and InstancesStopped counting those batches'
	// instances. A window's full data is the sum of the window and every correction with the
	// same group and StartMs; corrections are never replacements. Readers that decide on
	// each window as it closes (the detector) may skip them; readers that total (history,
	// exports, `herd tail`) add them. Absent (false) in every ordinary window.
	Correction bool `json:"correction,omitempty"`
}

// HalfOf returns the half (0 or 1) of Window.Halves that the instance with this id
// contributes to: the top bit of (lo ^ hi) · 0x9e3779b97f4a7c15 (mod 2^64), where lo and hi
// are the id's first and last 8 bytes read little-endian. It depends on the id only, so an
// instance stays in one half in every window and on every rollup worker.
func HalfOf(id [16]byte) int {
	lo := binary.LittleEndian.Uint64(id[:8])
	hi := binary.LittleEndian.Uint64(id[8:])
	return int(((lo ^ hi) * 0x9e3779b97f4a7c15) >> 63)
}

// NumBuckets is the number of Window.Buckets.
const NumBuckets = 16

// BucketOf returns the bucket (0 … NumBuckets−1) of Window.Buckets that the instance with
// this id contributes to: the top four bits of the product HalfOf takes the top bit of, so
// BucketOf(id)/(NumBuckets/2) == HalfOf(id).
func BucketOf(id [16]byte) int {
	lo := binary.LittleEndian.Uint64(id[:8])
	hi := binary.LittleEndian.Uint64(id[8:])
	return int(((lo ^ hi) * 0x9e3779b97f4a7c15) >> 60)
}

// FindWarm returns the series of Warm with the given name and no labels, or nil.
func (w *Window) FindWarm(name string) *WindowSeries {
	for i := range w.Warm {
		if s := &w.Warm[i]; s.Name == name && len(s.Labels) == 0 {
			return s
		}
	}
	return nil
}

// Splits reports whether Warm and Halves carry the series named name (true when the
// rollup applied a warm-up and name is among SplitSeries or SplitSeries is ["*"]).
func (w *Window) Splits(name string) bool {
	if w.WarmupMs <= 0 {
		return false
	}
	for _, n := range w.SplitSeries {
		if n == name || n == "*" {
			return true
		}
	}
	return false
}

// Find returns the series with the given name and no labels, or nil.
func (w *Window) Find(name string) *WindowSeries {
	for i := range w.Series {
		if s := &w.Series[i]; s.Name == name && len(s.Labels) == 0 {
			return s
		}
	}
	return nil
}

// WindowSeries is one merged series of a Window.
//
//   - counter: Value is the sum of the instances' deltas.
//   - gauge: Value is the mean of the reporting instances' values; Sum, Min, Max and Count
//     (the number of reporting instances) are set too.
//   - histogram: Hist is the exact merge of the instances' sketches; Count and Sum repeat its
//     totals and P50, P90, P99 are its quantiles, for readers that do not need the buckets.
type WindowSeries struct {
	Name   string     `json:"name"`
	Labels Labels     `json:"labels,omitempty"`
	Kind   Kind       `json:"kind"`
	Value  float64    `json:"value"`
	Sum    float64    `json:"sum,omitempty"`
	Min    float64    `json:"min,omitempty"`
	Max    float64    `json:"max,omitempty"`
	Count  uint64     `json:"count,omitempty"`
	P50    float64    `json:"p50,omitempty"`
	P90    float64    `json:"p90,omitempty"`
	P99    float64    `json:"p99,omitempty"`
	Hist   *Histogram `json:"hist,omitempty"`
}

// Labels are sorted, unique labels. In JSON they are an object {"name": "value", …}.
type Labels []Label

// MarshalJSON writes the labels as a JSON object with keys in sorted order.
func (ls Labels) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(l.Name)
		v, _ := json.Marshal(l.Value)
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads a JSON object into sorted labels.
func (ls *Labels) UnmarshalJSON(data []byte) error {
	var m map[string]string
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("cannot decode labels: %w", err)
	}
	out := make(Labels, 0, len(m))
	for k, v := range m {
		out = append(out, Label{Name: k, Value: v})
	}
	slices.SortFunc(out, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	*ls = out
	return nil
}

// histogramJSON is the JSON form of a Histogram.
type histogramJSON struct {
	Count     uint64   `json:"count"`
	Sum       float64  `json:"sum"`
	ZeroCount uint64   `json:"zero,omitempty"`
	Positive  *Buckets `json:"positive,omitempty"`
	Negative  *Buckets `json:"negative,omitempty"`
}

// bucketsJSON is the JSON form of Buckets.
type bucketsJSON struct {
	Offset int32    `json:"offset"`
	Counts []uint64 `json:"counts"`
}

// MarshalJSON writes b as {"offset": i, "counts": […]}.
func (b Buckets) MarshalJSON() ([]byte, error) {
	return json.Marshal(bucketsJSON(b))
}

// UnmarshalJSON reads {"offset": i, "counts": […]}, checking the bounds.
func (b *Buckets) UnmarshalJSON(data []byte) error {
	var j bucketsJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("cannot decode buckets: %w", err)
	}
	if len(j.Counts) > MaxBuckets || int(j.Offset) < -MaxBucketIndex || int(j.Offset)+len(j.Counts)-1 > MaxBucketIndex {
		return fmt.Errorf("cannot decode buckets: offset %d with %d counts is out of range", j.Offset, len(j.Counts))
	}
	b.Offset, b.Counts = j.Offset, j.Counts
	return nil
}

// MarshalJSON writes h as {"count", "sum", "zero", "positive", "negative"}.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	j := histogramJSON{Count: h.Count, Sum: h.Sum, ZeroCount: h.ZeroCount}
	if len(h.Positive.Counts) > 0 {
		j.Positive = &h.Positive
	}
	if len(h.Negative.Counts) > 0 {
		j.Negative = &h.Negative
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the form MarshalJSON writes and checks that the count adds up.
func (h *Histogram) UnmarshalJSON(data []byte) error {
	var j histogramJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("cannot decode histogram: %w", err)
	}
	*h = Histogram{Count: j.Count, Sum: j.Sum, ZeroCount: j.ZeroCount}
	if j.Positive != nil {
		h.Positive = *j.Positive
	}
	if j.Negative != nil {
		h.Negative = *j.Negative
	}
	if h.ZeroCount+h.Positive.Total()+h.Negative.Total() != h.Count {
		return fmt.Errorf("cannot decode histogram: count %d is not the sum of its buckets", h.Count)
	}
	return nil
}

// SetQuantiles fills Count, Sum, P50, P90 and P99 of a histogram series from Hist.
func (s *WindowSeries) SetQuantiles() {
	if s.Hist == nil {
		return
	}
	s.Count, s.Sum = s.Hist.Count, s.Hist.Sum
	s.P50, s.P90, s.P99 = finite(s.Hist.Quantile(0.5)), finite(s.Hist.Quantile(0.9)), finite(s.Hist.Quantile(0.99))
}

func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// MarshalWindow encodes w as the JSON published on herd.rollup subjects.
func MarshalWindow(w *Window) ([]byte, error) {
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("cannot encode window %s/%s@%d: %w", w.Service, w.Version, w.StartMs, err)
	}
	return b, nil
}

// UnmarshalWindow decodes a window published on a herd.rollup subject and checks its group
// and that every series has a known kind.
func UnmarshalWindow(data []byte) (*Window, error) {
	var w Window
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("cannot decode window: %w", err)
	}
	if err := ValidService(w.Service); err != nil {
		return nil, fmt.Errorf("cannot decode window: %w", err)
	}
	if err := ValidVersion(w.Version); err != nil {
		return nil, fmt.Errorf("cannot decode window: %w", err)
	}
	if len(w.Buckets) > NumBuckets || len(w.BucketInstances) != len(w.Buckets) {
		return nil, fmt.Errorf("cannot decode window: %d buckets with %d instance counts; want at most %d, one count each",
			len(w.Buckets), len(w.BucketInstances), NumBuckets)
	}
	all := append([][]WindowSeries{w.Series, w.Warm, w.Halves[0], w.Halves[1]}, w.Buckets...)
	for _, ss := range all {
		for i := range ss {
			if k := ss[i].Kind; k != KindCounter && k != KindGauge && k != KindHistogram {
				return nil, fmt.Errorf("cannot decode window: series %q has no kind", ss[i].Name)
			}
		}
	}
	return &w, nil
}
