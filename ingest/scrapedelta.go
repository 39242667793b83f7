package ingest

import (
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/herd-dev/herd/proto"
)

// Baseline is what a scraper knows of its target's cumulative values, handed to the scraper
// that takes the target over (a pod relabelled into another group): the successor's first
// scrape then counts from these values, so nothing is lost or counted twice across the
// change.
type Baseline struct {
	primed bool
	state  map[string]*scrapeSeries
}

// Handover returns the scraper's baseline. Call it after Run has returned (the final scrape
// is done); the scraper must not be used afterwards.
func (s *Scraper) Handover() *Baseline {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &Baseline{primed: s.primed, state: s.state}
	s.state = make(map[string]*scrapeSeries)
	return b
}

// Adopt takes over a predecessor's baseline, re-registering its series on this scraper's
// client. Call it before the first scrape; a nil b is ignored.
func (s *Scraper) Adopt(b *Baseline) {
	if b == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.primed = s.primed || b.primed
	for k, old := range b.state {
		if len(s.state) >= s.cfg.MaxSeries {
			break
		}
		st := &scrapeSeries{kind: old.kind, prev: old.prev, lastSeen: old.lastSeen}
		st.prevH.CopyFrom(&old.prevH)
		s.register(st, old.name, old.labels)
		s.state[k] = st
	}
}

func (s *Scraper) counter(name string, v float64, now time.Time) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		s.skip("bad_value")
		return
	}
	st, isNew := s.series(name, proto.KindCounter, now)
	if st == nil {
		return
	}
	var d float64
	switch {
	case isNew:
		if s.primed {
			d = v
		}
	case v < st.prev:
		s.resets.Inc()
		d = v
	default:
		d = v - st.prev
	}
	st.prev = v
	if d > 0 {
		st.counter.Add(d)
	}
}

func (s *Scraper) gaugeValue(name string, v float64, now time.Time) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		s.skip("bad_value")
		return
	}
	if st, _ := s.series(name, proto.KindGauge, now); st != nil {
		st.gauge.Set(v)
	}
}

func (s *Scraper) histogram(name string, h *dto.Histogram, now time.Time) {
	if h == nil {
		s.skip("bad_histogram")
		return
	}
	cur := &s.scratch
	var reason string
	if isNative(h) {
		reason = nativeToHerd(cur, h)
		if reason == "unsupported_schema" && len(h.GetBucket()) > 0 {
			reason = classicToHerd(cur, h)
		}
	} else {
		reason = classicToHerd(cur, h)
	}
	if reason != "" {
		s.skip(reason)
		return
	}
	st, isNew := s.series(name, proto.KindHistogram, now)
	if st == nil {
		return
	}
	d := &s.delta
	switch {
	case isNew:
		if s.primed {
			d.CopyFrom(cur)
		} else {
			d.Reset()
		}
	case !histSub(d, cur, &st.prevH):
		s.resets.Inc()
		d.CopyFrom(cur)
	}
	st.prevH.CopyFrom(cur)
	if d.Count > 0 {
		st.hist.merge(d)
	}
}

// isNative reports whether h carries native (exponential) buckets.
func isNative(h *dto.Histogram) bool {
	return h.Schema != nil || h.GetZeroThreshold() > 0 || len(h.GetPositiveSpan()) > 0 || len(h.GetNegativeSpan()) > 0
}

// herdIndex maps bucket j of a native histogram of the given schema to a herd bucket, and
// reports whether the mapping is exact (up to which side of a shared boundary an exact
// boundary value falls: Prometheus buckets are (lower, upper], herd's [lower, upper)).
//
// Schema s bucket j covers (2^((j-1)·2^-s), 2^(j·2^-s)]; herd bucket i covers
// [2^(i/32), 2^((i+1)/32)).
//   - s = 5: i = j-1.
//   - s > 5: m = 2^(s-5) source buckets tile one herd bucket: i = floor((j-1)/m).
//   - s < 5: one source bucket spans k = 2^(5-s) herd buckets (j-1)·k … j·k-1; its count
//     goes to the herd bucket at its geometric midpoint, i = (j-1)·k + k/2.
func herdIndex(j int, schema int32) int {
	switch {
	case schema == 5:
		return j - 1
	case schema > 5:
		m := 1 << (schema - 5)
		return floorDiv(j-1, m)
	default:
		k := 1 << (5 - schema)
		return (j-1)*k + k/2
	}
}

func floorDiv(a, b int) int {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// nativeToHerd sets dst to the cumulative contents of a native histogram in herd buckets.
// It returns a skip reason, or "".
func nativeToHerd(dst *proto.Histogram, h *dto.Histogram) string {
	schema := h.GetSchema()
	if schema < -4 || schema > 8 {
		return "unsupported_schema"
	}
	dst.Reset()
	zero := h.GetZeroCount()
	if zf := h.GetZeroCountFloat(); zf > 0 {
		zero = uint64(math.Round(zf))
	}
	dst.ZeroCount = zero
	total := zero
	sides := []struct {
		spans  []*dto.BucketSpan
		deltas []int64
		counts []float64
		dst    *proto.Buckets
	}{
		{h.GetPositiveSpan(), h.GetPositiveDelta(), h.GetPositiveCount(), &dst.Positive},
		{h.GetNegativeSpan(), h.GetNegativeDelta(), h.GetNegativeCount(), &dst.Negative},
	}
	for _, side := range sides {
		k := 0 // bucket number across spans
		var abs int64
		idx := 0
		for si, sp := range side.spans {
			if si == 0 {
				idx = int(sp.GetOffset())
			} else {
				idx += int(sp.GetOffset())
			}
			for range sp.GetLength() {
				var n uint64
				switch {
				case k < len(side.counts):
					c := side.counts[k]
					if !(c >= 0) || math.IsInf(c, 0) {
						return "bad_histogram"
					}
					n = uint64(math.Round(c))
				case k < len(side.deltas):
					abs += side.deltas[k]
					if abs < 0 {
						return "bad_histogram"
					}
					n = uint64(abs)
				default:
					return "bad_histogram"
				}
				if n > 0 {
					if !side.dst.Add(herdIndex(idx, schema), n) {
						return "bad_histogram"
					}
					total += n
				}
				k++
				idx++
			}
		}
	}
	dst.Count = total
	dst.Sum = h.GetSampleSum()
	if math.IsNaN(dst.Sum) || math.IsInf(dst.Sum, 0) {
		return "bad_value"
	}
	return ""
}

// ClassicRepresentative returns the value a classic (explicit-bounds) histogram bucket's
// count is placed at, for `herd agent`'s scraped Prometheus histograms and the OTLP
// receiver's explicit-bucket histograms alike: the geometric midpoint of (lo, hi] when lo > 0, the arithmetic midpoint when lo ≤ 0 (half the
// upper bound for a first bucket above zero), the upper bound for a first bucket at or below
// zero, and the last finite bound for the +Inf bucket.
func ClassicRepresentative(lo, hi float64, first bool) float64 {
	switch {
	case math.IsInf(hi, 1):
		return lo
	case first && hi > 0:
		return hi / 2
	case first:
		return hi
	case lo > 0:
		return math.Sqrt(lo * hi)
	}
	return (lo + hi) / 2
}

// classicToHerd sets dst to the cumulative contents of a classic bucket histogram placed at
// representative values. It returns a skip reason, or "".
func classicToHerd(dst *proto.Histogram, h *dto.Histogram) string {
	dst.Reset()
	bs := h.GetBucket()
	finite := 0
	for _, b := range bs {
		if !math.IsInf(b.GetUpperBound(), 1) {
			finite++
		}
	}
	if finite == 0 {
		return "bad_histogram"
	}
	var prevCum uint64
	lo := math.Inf(-1)
	for i, b := range bs {
		hi := b.GetUpperBound()
		cum := b.GetCumulativeCount()
		if cf := b.GetCumulativeCountFloat(); cf > 0 {
			cum = uint64(math.Round(cf))
		}
		if math.IsNaN(hi) || hi <= lo || cum < prevCum {
			return "bad_histogram"
		}
		if n := cum - prevCum; n > 0 {
			if !dst.Observe(ClassicRepresentative(lo, hi, i == 0), n) {
				return "bad_histogram"
			}
		}
		prevCum, lo = cum, hi
	}
	count := h.GetSampleCount()
	if cf := h.GetSampleCountFloat(); cf > 0 {
		count = uint64(math.Round(cf))
	}
	if count > prevCum && !math.IsInf(lo, 1) {
		// No +Inf bucket exposed: the rest lies above the last bound.
		if !dst.Observe(lo, count-prevCum) {
			return "bad_histogram"
		}
	}
	dst.Sum = h.GetSampleSum()
	if math.IsNaN(dst.Sum) || math.IsInf(dst.Sum, 0) {
		return "bad_value"
	}
	return ""
}

// histSub sets dst = cur - prev bucket by bucket. It reports false if any count of prev
// exceeds cur's (the target restarted or changed its buckets); dst is then undefined.
func histSub(dst, cur, prev *proto.Histogram) bool {
	if cur.Count < prev.Count || cur.ZeroCount < prev.ZeroCount {
		return false
	}
	dst.CopyFrom(cur)
	dst.Count -= prev.Count
	dst.ZeroCount -= prev.ZeroCount
	dst.Sum = cur.Sum - prev.Sum
	return bucketsSub(&dst.Positive, &prev.Positive) && bucketsSub(&dst.Negative, &prev.Negative)
}

func bucketsSub(d, p *proto.Buckets) bool {
	for k, c := range p.Counts {
		if c == 0 {
			continue
		}
		j := int(p.Offset) + k - int(d.Offset)
		if j < 0 || j >= len(d.Counts) || d.Counts[j] < c {
			return false
		}
		d.Counts[j] -= c
	}
	return true
}
