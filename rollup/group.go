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
	lastUsed int64 // unix nanos of the last merge
}

// addSeries enters s (whose key is key) into the table and returns its id.
func (g *group) addSeries(key string, s *proto.Series) int32 {
	info := seriesInfo{key: key, name: strings.Clone(s.Name), kind: s.Kind}
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
	// Instance counts (see proto.Window).
	instances, started, stopped int
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
func (w *window) acc(id int32, size int) *acc {
	if int(id) >= len(w.accs) {
		if size <= int(id) {
			size = int(id) + 1
		}
		if cap(w.accs) >= size {
			w.accs = w.accs[:size]
		} else {
			w.accs = append(w.accs[:cap(w.accs)], make([]acc, size-cap(w.accs))...)
		}
	}
	return &w.accs[id]
}

// reset empties w for reuse.
func (w *window) reset() {
	for _, id := range w.touched {
		a := &w.accs[id]
		a.n, a.sum, a.min, a.max = 0, 0, 0, 0
		a.hist.Reset()
	}
	w.touched = w.touched[:0]
	clear(w.meta) // drop references to deleted series' strings
	w.meta = w.meta[:0]
	w.instances, w.started, w.stopped = 0, 0, 0
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
		a := &w.accs[id]
		m := &w.meta[i]
		s := proto.WindowSeries{Name: m.name, Labels: m.labels, Kind: m.kind}
		switch m.kind {
		case proto.KindCounter:
			s.Value = a.sum
		case proto.KindGauge:
			s.Value = a.sum / float64(a.n)
			s.Sum, s.Min, s.Max, s.Count = a.sum, a.min, a.max, a.n
		case proto.KindHistogram:
			h := new(proto.Histogram)
			h.CopyFrom(&a.hist)
			s.Hist = h
			s.SetQuantiles()
		}
		out.Series = append(out.Series, s)
	}
	slices.SortFunc(out.Series, compareSeries)
	return out
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
