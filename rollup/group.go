package rollup

import (
	"cmp"
	"container/list"
	"math"
	"slices"
	"strings"
	"unsafe"

	"github.com/herd-dev/herd/proto"
)

// groupKey identifies a group: a service and one of its versions (the raw version string).
type groupKey struct {
	service, version string
}

// group is the rollup state of one (service, version). Guarded by Rollup.mu.
type group struct {
	key groupKey

	// The series table: ids index series; a window's accumulators are indexed by the same ids,
	// so a series key is hashed once per sample and windows hold dense slices.
	ids    map[string]int32
	series []seriesInfo
	free   []int32 // ids of deleted series, reused first, lowest first (from the end)
	// idsPeak is the most entries ids held since it was built: a Go map keeps its memory
	// after deletes, so compact rebuilds it once it holds far fewer.
	idsPeak int

	// windows are the open windows, sorted by start.
	windows []*window
	// exp are the batches expected in the windows not closed yet, by window index,
	// ascending (see complete.go).
	exp []expect
	// next is the start of the first window interval not yet closed (unix nanos).
	next int64
	// lastData is the end of the newest closed window that had at least one merged batch.
	// Empty windows are emitted while their end is within InstanceTTL of it.
	lastData int64

	// Admission (see admit.go): the group's service, when it last had a batch merged (unix
	// nanos, local clock), how many it had (up to 2), and its elements in the table's and the
	// service's lists.
	svc              *serviceState
	lastBatch        int64
	batches          int
	inAll, inService *list.Element
}

func newGroup(k groupKey, next int64) *group {
	return &group{
		key:      k,
		ids:      make(map[string]int32),
		next:     next,
		lastData: math.MinInt64 / 2,
	}
}

// seriesInfo describes one series of a group. The name and labels are copies owned by the
// group; label slices are shared, read-only, with every emitted window.
type seriesInfo struct {
	key      string // the map key; "" for a free slot
	name     string
	labels   proto.Labels
	kind     proto.Kind
	split    bool  // carried by Window.Warm, Window.Halves and Window.Buckets (Config.SplitSeries)
	lastUsed int64 // unix nanos of the last merge
}

// addSeries enters s (whose key is key) into the table and returns its id.
func (g *group) addSeries(key string, s *proto.Series, split bool) int32 {
	info := seriesInfo{key: key, name: strings.Clone(s.Name), kind: s.Kind, split: split}
	if len(s.Labels) > 0 {
		info.labels = make(proto.Labels, len(s.Labels))
		for i, l := range s.Labels {
			info.labels[i] = proto.Label{Name: strings.Clone(l.Name), Value: strings.Clone(l.Value)}
		}
	}
	var id int32
	if n := len(g.free); n > 0 {
		id = g.free[n-1]
		g.free = g.free[:n-1]
		g.series[id] = info
	} else {
		id = int32(len(g.series))
		g.series = append(g.series, info)
	}
	g.ids[key] = id
	g.idsPeak = max(g.idsPeak, len(g.ids))
	return id
}

// sweepSeries deletes series unused since before cutoff that no open window holds, and
// returns how many it deleted.
func (g *group) sweepSeries(cutoff int64) int {
	n := 0
	for id := range g.series {
		info := &g.series[id]
		if info.key == "" || info.lastUsed >= cutoff || g.openHolds(int32(id)) {
			continue
		}
		delete(g.ids, info.key)
		*info = seriesInfo{}
		g.free = append(g.free, int32(id))
		n++
	}
	if n > 0 {
		g.compact()
	}
	return n
}

// compact gives back the memory of deleted series, so a group that once held many series (a
// label flood refused at MaxSeriesPerGroup, say) does not keep their table: free ids at the
// end of the table are dropped, a table or free list four times longer than its content is
// copied, and the id map is rebuilt once it holds a quarter of its peak. Free ids are reused
// lowest first, so the end of the table frees up.
func (g *group) compact() {
	end := len(g.series)
	for end > 0 && g.series[end-1].key == "" {
		end--
	}
	if end < len(g.series) {
		clear(g.series[end:])
		g.series = g.series[:end]
		g.free = slices.DeleteFunc(g.free, func(id int32) bool { return int(id) >= end })
	}
	slices.SortFunc(g.free, func(a, b int32) int { return cmp.Compare(b, a) })
	g.series = trimmed(g.series)
	g.free = trimmed(g.free)
	if g.idsPeak > max(64, 4*len(g.ids)) {
		ids := make(map[string]int32, len(g.ids))
		for k, id := range g.ids {
			ids[k] = id
		}
		g.ids, g.idsPeak = ids, len(ids)
	}
}

// trimmed returns s, or a copy of it without spare capacity if s holds more than four times
// its length (and more than a few elements).
func trimmed[T any](s []T) []T {
	if cap(s) <= 4*len(s)+16 {
		return s
	}
	return slices.Clone(s)
}

func (g *group) openHolds(id int32) bool {
	for _, w := range g.windows {
		if int(id) < len(w.accs) && w.accs[id].n > 0 {
			return true
		}
	}
	return false
}

// window is one window of a group. While open it is in group.windows and guarded by
// Rollup.mu; once closed it is detached and read only by the goroutine emitting it, then
// recycled, keeping its memory.
type window struct {
	start   int64 // unix nanos
	accs    []acc // indexed by series id
	touched []int32
	// meta[i] describes series touched[i], so a detached window needs no group state.
	meta []seriesMeta
	// parts[b] accumulates the split series of the warm instances of bucket b
	// (proto.BucketOf), indexed by series id like accs but grown only to the highest split
	// series id merged into it; a split series touched in a bucket is in touched too. Halves
	// and Warm are their merges, built at close.
	parts [proto.NumBuckets][]acc
	// split is the Rollup's warm aggregate description, so a detached window needs no
	// Rollup state to build Warm, Halves and Buckets.
	split split
	// Instance counts (see proto.Window).
	instances, started, stopped int
	// lastAdd is when the last batch was merged (unix nanos, local clock).
	lastAdd int64
	// partInstances[b] counts the distinct warm instances merged into parts[b].
	partInstances [proto.NumBuckets]int
	// buckets is the dense histogram buckets of the accumulators in use (counted against
	// Config.MaxWindowBuckets); held is the bucket capacity of every accumulator, which
	// stays across reuse.
	buckets, held int
}

// seriesMeta is what a window result needs of a series; label slices are read-only.
type seriesMeta struct {
	name   string
	labels proto.Labels
	kind   proto.Kind
}

// acc accumulates one series in one window.
type acc struct {
	n             uint64 // samples merged; 0 means untouched
	sum, min, max float64
	hist          proto.Histogram
}

// MaxSum bounds the magnitude of every sum a window accumulates (counter values, gauge sums,
// histogram sums; in the window and in each warm bucket): a sample that would take one beyond
// it is refused as "overflow" and the rest of its batch merged. So a window's values stay
// finite, even the warm aggregate that adds proto.NumBuckets buckets (at most 16·MaxSum), and
// every window can be encoded.
const MaxSum = 1e300

// maxHistCount bounds a window's histogram count, and so each of its buckets, far enough
// from uint64 overflow that the warm aggregate can add its buckets (whose counts are parts
// of the window's).
const maxHistCount = 1 << 62

// acc returns the accumulator of series id, growing the slice to size (the group's table
// length) if needed.
func (w *window) acc(id int32, size int) *acc { return growAcc(&w.accs, id, size) }

// partAcc returns the accumulator of split series id in warm bucket b, growing the slice to
// id+1 if needed: only split series are merged there, so a bucket does not hold the whole
// series table.
func (w *window) partAcc(b int, id int32) *acc { return growAcc(&w.parts[b], id, int(id)+1) }

func growAcc(accs *[]acc, id int32, size int) *acc {
	if int(id) >= len(*accs) {
		if size <= int(id) {
			size = int(id) + 1
		}
		if cap(*accs) >= size {
			*accs = (*accs)[:size]
		} else {
			*accs = append((*accs)[:cap(*accs)], make([]acc, size-cap(*accs))...)
		}
	}
	return &(*accs)[id]
}

// refusal returns why a sample s of kind k cannot be merged into a, or "".
func (a *acc) refusal(k proto.Kind, s *proto.Series) string {
	switch k {
	case proto.KindCounter, proto.KindGauge:
		if !(math.Abs(a.sum+s.Value) <= MaxSum) {
			return ReasonOverflow
		}
	case proto.KindHistogram:
		if !(math.Abs(a.hist.Sum+s.Hist.Sum) <= MaxSum) || s.Hist.Count > maxHistCount-a.hist.Count {
			return ReasonOverflow
		}
		if mergedLen(&a.hist.Positive, &s.Hist.Positive) > proto.MaxBuckets ||
			mergedLen(&a.hist.Negative, &s.Hist.Negative) > proto.MaxBuckets {
			return ReasonBadHistogram
		}
	}
	return ""
}

// growth returns how many dense buckets merging histogram o adds to a.
func (a *acc) growth(o *proto.Histogram) int {
	h := &a.hist
	return mergedLen(&h.Positive, &o.Positive) - len(h.Positive.Counts) +
		mergedLen(&h.Negative, &o.Negative) - len(h.Negative.Counts)
}

// mergedLen returns the dense length of the union of a's and b's ranges.
func mergedLen(a, b *proto.Buckets) int {
	switch {
	case len(b.Counts) == 0:
		return len(a.Counts)
	case len(a.Counts) == 0:
		return len(b.Counts)
	}
	lo := min(int(a.Offset), int(b.Offset))
	hi := max(int(a.Offset)+len(a.Counts), int(b.Offset)+len(b.Counts))
	return hi - lo
}

// histCap returns the bucket capacity h holds.
func histCap(h *proto.Histogram) int { return cap(h.Positive.Counts) + cap(h.Negative.Counts) }

// add merges a sample of kind k into a, reporting false when a histogram could not be
// merged. The caller checked refusal first.
func (a *acc) add(k proto.Kind, s *proto.Series) bool {
	switch k {
	case proto.KindCounter:
		a.sum += s.Value
	case proto.KindGauge:
		if a.n == 0 || s.Value < a.min {
			a.min = s.Value
		}
		if a.n == 0 || s.Value > a.max {
			a.max = s.Value
		}
		a.sum += s.Value
	case proto.KindHistogram:
		if !a.hist.Merge(&s.Hist) {
			return false
		}
	}
	a.n++
	return true
}

func (a *acc) clear() {
	a.n, a.sum, a.min, a.max = 0, 0, 0, 0
	a.hist.Reset()
}

// windowKeepBuckets is the bucket capacity a recycled window may always keep; beyond it,
// and beyond twice what its last use needed, reset gives the excess back.
const windowKeepBuckets = 1 << 15

// reset empties w for reuse. A window that held far more bucket capacity than its last use
// needed (an outlier: one group's wide histograms, or capacity gathered over many uses)
// gives the excess back, so recycled windows do not keep an outlier's memory.
func (w *window) reset() {
	if w.held > max(windowKeepBuckets, 2*w.buckets) {
		w.shrink()
	}
	for _, id := range w.touched {
		w.accs[id].clear()
		for b := range w.parts {
			if int(id) < len(w.parts[b]) && w.parts[b][id].n > 0 {
				w.parts[b][id].clear()
			}
		}
	}
	w.touched = w.touched[:0]
	clear(w.meta) // drop references to deleted series' strings
	w.meta = w.meta[:0]
	w.instances, w.started, w.stopped = 0, 0, 0
	w.lastAdd = 0
	w.partInstances = [proto.NumBuckets]int{}
	w.buckets = 0
}

// shrink drops the bucket arrays of w's accumulators that hold more than twice their
// content, and recounts w.held.
func (w *window) shrink() {
	w.held = 0
	for _, accs := range append([][]acc{w.accs}, w.parts[:]...) {
		for i := range accs {
			h := &accs[i].hist
			for _, b := range []*proto.Buckets{&h.Positive, &h.Negative} {
				if cap(b.Counts) > 2*len(b.Counts)+16 {
					b.Counts = nil
				}
			}
			w.held += histCap(h)
		}
	}
}

// bytes estimates the memory w keeps while recycled.
func (w *window) bytes() int {
	n := cap(w.accs)
	for b := range w.parts {
		n += cap(w.parts[b])
	}
	return n*int(unsafe.Sizeof(acc{})) + 8*w.held +
		cap(w.touched)*4 + cap(w.meta)*int(unsafe.Sizeof(seriesMeta{}))
}

// findWindow returns the open window starting at start, or nil.
func (g *group) findWindow(start int64) *window {
	// Few windows are open (lateness + future / window); the newest is the usual hit.
	for i := len(g.windows) - 1; i >= 0; i-- {
		if w := g.windows[i]; w.start == start {
			return w
		} else if w.start < start {
			return nil
		}
	}
	return nil
}

// insertWindow adds w to the open windows, keeping them sorted by start.
func (g *group) insertWindow(w *window) {
	i := len(g.windows)
	for i > 0 && g.windows[i-1].start > w.start {
		i--
	}
	g.windows = slices.Insert(g.windows, i, w)
}

// split describes the warm aggregate a Rollup produces (zero: none).
type split struct {
	warmupMs int64
	names    []string // Config.SplitSeries, shared read-only by every window
}

// MaxBucketCells bounds what a window's instance buckets (proto.Window.Buckets) may hold: one
// cell per series entry plus one per dense histogram bucket, over the 16 buckets. The buckets
// repeat the split series up to 16 times more; a window whose buckets would hold more (many
// label sets of the split series, wide histograms) is published without them, so that its
// encoding stays near the size it had with Warm and Halves alone, and counted
// (herd_rollup_window_buckets_omitted_total). Readers then fall back to an assumed spread.
const MaxBucketCells = 1 << 14

// result builds the published form of w (of group k), counting buckets left out.
func (r *Rollup) result(w *window, k groupKey, closedNs int64) *proto.Window {
	out, omitted := w.result(k, r.w, closedNs)
	if omitted {
		r.m.bucketsOmitted.Inc()
	}
	return out
}

// result builds the published form of w (of group k), copying everything it keeps; omitted
// reports that the buckets were left out (MaxBucketCells).
func (w *window) result(k groupKey, windowLen, closedNs int64) (out *proto.Window, omitted bool) {
	out = &proto.Window{
		Service:          k.service,
		Version:          k.version,
		StartMs:          w.start / 1e6,
		EndMs:            (w.start + windowLen) / 1e6,
		Instances:        w.instances,
		InstancesStarted: w.started,
		InstancesStopped: w.stopped,
		ClosedMs:         closedNs / 1e6,
		Series:           make([]proto.WindowSeries, 0, len(w.touched)),
	}
	for i, id := range w.touched {
		out.Series = append(out.Series, seriesResult(&w.meta[i], &w.accs[id], nil))
	}
	slices.SortFunc(out.Series, compareSeries)
	if w.split.warmupMs <= 0 {
		return out, false
	}
	out.WarmupMs, out.SplitSeries = w.split.warmupMs, w.split.names
	const perHalf = proto.NumBuckets / 2
	out.BucketInstances = make([]int, proto.NumBuckets)
	for b, n := range w.partInstances {
		out.BucketInstances[b] = n
		out.HalfInstances[b/perHalf] += n
	}
	out.WarmInstances = out.HalfInstances[0] + out.HalfInstances[1]
	var nb [proto.NumBuckets]int
	var nh [2]int
	cells := 0
	for _, id := range w.touched {
		var in [2]bool
		for b := range nb {
			if a := w.part(b, id); a != nil {
				nb[b]++
				in[b/perHalf] = true
				cells += 1 + len(a.hist.Positive.Counts) + len(a.hist.Negative.Counts)
			}
		}
		for h := range in {
			if in[h] {
				nh[h]++
			}
		}
	}
	keep := cells <= MaxBucketCells
	if keep {
		out.Buckets = make([][]proto.WindowSeries, proto.NumBuckets)
		for b := range nb {
			if nb[b] > 0 {
				out.Buckets[b] = make([]proto.WindowSeries, 0, nb[b])
			}
		}
	} else {
		out.BucketInstances = nil
	}
	out.Halves[0] = make([]proto.WindowSeries, 0, nh[0])
	out.Halves[1] = make([]proto.WindowSeries, 0, nh[1])
	out.Warm = make([]proto.WindowSeries, 0, max(nh[0], nh[1]))
	for i, id := range w.touched {
		var all [proto.NumBuckets]*acc
		n := 0
		for h := range 2 {
			from := n
			for b := h * perHalf; b < (h+1)*perHalf; b++ {
				if a := w.part(b, id); a != nil {
					if keep {
						out.Buckets[b] = append(out.Buckets[b], seriesResult(&w.meta[i], a, nil))
					}
					all[n] = a
					n++
				}
			}
			if n > from {
				out.Halves[h] = append(out.Halves[h], mergedResult(&w.meta[i], all[from:n]))
			}
		}
		if n > 0 {
			out.Warm = append(out.Warm, mergedResult(&w.meta[i], all[:n]))
		}
	}
	slices.SortFunc(out.Warm, compareSeries)
	slices.SortFunc(out.Halves[0], compareSeries)
	slices.SortFunc(out.Halves[1], compareSeries)
	for _, ss := range out.Buckets {
		slices.SortFunc(ss, compareSeries)
	}
	return out, !keep
}

// part returns the accumulator of series id in warm bucket b, or nil if it has no sample.
func (w *window) part(b int, id int32) *acc {
	if int(id) < len(w.parts[b]) && w.parts[b][id].n > 0 {
		return &w.parts[b][id]
	}
	return nil
}

// mergedResult returns the published form of the merge of as (at least one, each with a
// sample), copying the histograms (into one allocation per side: the union of their ranges).
func mergedResult(m *seriesMeta, as []*acc) proto.WindowSeries {
	if m.kind != proto.KindHistogram {
		sum := *as[0]
		for _, a := range as[1:] {
			sum.n += a.n
			sum.sum += a.sum
			sum.min, sum.max = min(sum.min, a.min), max(sum.max, a.max)
		}
		return seriesResult(m, &sum, nil)
	}
	if len(as) == 1 {
		return seriesResult(m, as[0], nil)
	}
	h := &proto.Histogram{
		Positive: cover(as, func(a *acc) *proto.Buckets { return &a.hist.Positive }),
		Negative: cover(as, func(a *acc) *proto.Buckets { return &a.hist.Negative }),
	}
	for _, a := range as {
		h.Merge(&a.hist) // within the window's bucket bounds, which every part's range lies in
	}
	s := proto.WindowSeries{Name: m.name, Labels: m.labels, Kind: m.kind, Hist: h}
	s.SetQuantiles()
	return s
}

// cover returns empty buckets spanning the union of the ranges side picks from as.
func cover(as []*acc, side func(*acc) *proto.Buckets) proto.Buckets {
	lo, hi := math.MaxInt, math.MinInt
	for _, a := range as {
		if b := side(a); len(b.Counts) > 0 {
			lo, hi = min(lo, int(b.Offset)), max(hi, int(b.Offset)+len(b.Counts))
		}
	}
	if lo >= hi {
		return proto.Buckets{}
	}
	return proto.Buckets{Offset: int32(lo), Counts: make([]uint64, hi-lo)}
}

// seriesResult returns the published form of the merge of a and b (b may be nil), copying
// the histogram.
func seriesResult(m *seriesMeta, a, b *acc) proto.WindowSeries {
	n, sum, lo, hi := a.n, a.sum, a.min, a.max
	if b != nil && b.n > 0 {
		if n == 0 {
			lo, hi = b.min, b.max
		} else {
			lo, hi = min(lo, b.min), max(hi, b.max)
		}
		n += b.n
		sum += b.sum
	}
	s := proto.WindowSeries{Name: m.name, Labels: m.labels, Kind: m.kind}
	switch m.kind {
	case proto.KindCounter:
		s.Value = sum
	case proto.KindGauge:
		s.Value = sum / float64(n)
		s.Sum, s.Min, s.Max, s.Count = sum, lo, hi, n
	case proto.KindHistogram:
		h := new(proto.Histogram)
		h.CopyFrom(&a.hist)
		if b != nil {
			h.Merge(&b.hist) // both merged within the bucket bounds, so their merge fits
		}
		s.Hist = h
		s.SetQuantiles()
	}
	return s
}

// compareSeries orders window series by name, then labels.
func compareSeries(a, b proto.WindowSeries) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	for i := 0; i < len(a.Labels) && i < len(b.Labels); i++ {
		if c := strings.Compare(a.Labels[i].Name, b.Labels[i].Name); c != 0 {
			return c
		}
		if c := strings.Compare(a.Labels[i].Value, b.Labels[i].Value); c != 0 {
			return c
		}
	}
	return len(a.Labels) - len(b.Labels)
}

// emptyResult builds the published form of an interval of group k without batches.
// It carries no warm aggregate (WarmupMs 0): there is nothing to split.
func emptyResult(k groupKey, start, windowLen, closedNs int64) *proto.Window {
	return &proto.Window{
		Service:  k.service,
		Version:  k.version,
		StartMs:  start / 1e6,
		EndMs:    (start + windowLen) / 1e6,
		ClosedMs: closedNs / 1e6,
		Series:   []proto.WindowSeries{},
	}
}
