package rollup

import (
	"math"
	"slices"
	"strings"

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
	free   []int32 // ids of deleted series, reused first

	// windows are the open windows, sorted by start.
	windows []*window
	// next is the start of the first window interval not yet closed (unix nanos).
	next int64
	// lastData is the end of the newest closed window that had at least one merged batch.
	// Empty windows are emitted while their end is within InstanceTTL of it.
	lastData int64

	seriesFullLogged bool
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
	split    bool  // carried by Window.Warm and Window.Halves (Config.SplitSeries)
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
	return n
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
	// halves[h] accumulates the split series of the warm instances of half h, indexed by
	// series id like accs; a split series touched in a half is in touched too. Warm is
	// their merge, built at close.
	halves [2][]acc
	// split is the Rollup's warm aggregate description, so a detached window needs no
	// Rollup state to build Warm and Halves.
	split split
	// Instance counts (see proto.Window).
	instances, started, stopped int
	halfInstances               [2]int
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

// acc returns the accumulator of series id, growing the slice to size (the group's table
// length) if needed.
func (w *window) acc(id int32, size int) *acc { return growAcc(&w.accs, id, size) }

// halfAcc returns the accumulator of series id in half h, growing like acc.
func (w *window) halfAcc(h int, id int32, size int) *acc { return growAcc(&w.halves[h], id, size) }

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

// add merges a sample of kind k into a, reporting false when a histogram could not be merged.
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

// reset empties w for reuse.
func (w *window) reset() {
	for _, id := range w.touched {
		w.accs[id].clear()
		for h := range w.halves {
			if int(id) < len(w.halves[h]) && w.halves[h][id].n > 0 {
				w.halves[h][id].clear()
			}
		}
	}
	w.touched = w.touched[:0]
	clear(w.meta) // drop references to deleted series' strings
	w.meta = w.meta[:0]
	w.instances, w.started, w.stopped = 0, 0, 0
	w.halfInstances = [2]int{}
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

// result builds the published form of w (of group k), copying everything it keeps.
func (w *window) result(k groupKey, windowLen, closedNs int64) *proto.Window {
	out := &proto.Window{
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
		return out
	}
	out.WarmupMs, out.SplitSeries = w.split.warmupMs, w.split.names
	out.HalfInstances = w.halfInstances
	out.WarmInstances = w.halfInstances[0] + w.halfInstances[1]
	var nh [2]int
	for _, id := range w.touched {
		for h := range nh {
			if int(id) < len(w.halves[h]) && w.halves[h][id].n > 0 {
				nh[h]++
			}
		}
	}
	out.Halves[0] = make([]proto.WindowSeries, 0, nh[0])
	out.Halves[1] = make([]proto.WindowSeries, 0, nh[1])
	out.Warm = make([]proto.WindowSeries, 0, max(nh[0], nh[1]))
	var none acc
	for i, id := range w.touched {
		var a [2]*acc
		for h := range a {
			a[h] = &none
			if int(id) < len(w.halves[h]) && w.halves[h][id].n > 0 {
				a[h] = &w.halves[h][id]
				out.Halves[h] = append(out.Halves[h], seriesResult(&w.meta[i], a[h], nil))
			}
		}
		if a[0].n+a[1].n > 0 {
			out.Warm = append(out.Warm, seriesResult(&w.meta[i], a[0], a[1]))
		}
	}
	slices.SortFunc(out.Warm, compareSeries)
	slices.SortFunc(out.Halves[0], compareSeries)
	slices.SortFunc(out.Halves[1], compareSeries)
	return out
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
