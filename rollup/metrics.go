package rollup

import (
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// Batch refusal reasons (label reason of herd_rollup_batches_refused_total).
const (
	ReasonLate             = "late"              // the batch's window is closed
	ReasonFuture           = "future"            // the batch ends too far ahead of the local clock
	ReasonDuplicate        = "duplicate"         // (instance, sequence) seen before, or too old to tell
	ReasonTooManyGroups    = "too_many_groups"   // the group would exceed Config.MaxGroups
	ReasonInstanceConflict = "instance_conflict" // the instance id is already known in another group
)

// Series refusal reasons (label reason of herd_rollup_series_refused_total). The rest of the
// batch is merged.
const (
	ReasonTooManySeries = "too_many_series" // the group would exceed Config.MaxSeriesPerGroup
	ReasonKindMismatch  = "kind_mismatch"   // the series exists in the group with another kind
	ReasonBadHistogram  = "bad_histogram"   // merging would exceed the histogram bucket bounds
)

// Reasons an instance's state is forgotten (label reason of herd_rollup_instances_forgotten_total).
const (
	forgotFinal     = "final"     // it sent a final batch
	forgotExpired   = "expired"   // silent for Config.InstanceTTL
	forgotEvicted   = "evicted"   // pushed out by Config.MaxInstances
	forgotRestarted = "restarted" // the same id came back with another InstanceStart
)

var (
	batchReasons     = []string{ReasonLate, ReasonFuture, ReasonDuplicate, ReasonTooManyGroups, ReasonInstanceConflict}
	seriesReasons    = []string{ReasonTooManySeries, ReasonKindMismatch, ReasonBadHistogram}
	forgottenReasons = []string{forgotFinal, forgotExpired, forgotEvicted, forgotRestarted}
)

// rollupMetrics are the Rollup's self-metrics, all in one Set.
type rollupMetrics struct {
	set *metrics.Set

	batches        *metrics.Counter
	batchesMerged  *metrics.Counter
	batchesWarming *metrics.Counter
	batchesRefused map[string]*metrics.Counter
	samples        *metrics.Counter
	seriesRefused  map[string]*metrics.Counter
	lost           *metrics.Counter
	forgotten      map[string]*metrics.Counter
	windows        *metrics.Counter
	emptyWindows   *metrics.Counter
	ticksMissed    *metrics.Counter
	emitDelay      *metrics.Histogram

	// Gauge values, written under Rollup.mu, read by scrapes.
	groups, instances, series atomic.Int64
}

func newRollupMetrics() *rollupMetrics {
	s := metrics.NewSet()
	m := &rollupMetrics{
		set:            s,
		batches:        s.NewCounter("herd_rollup_batches_total"),
		batchesMerged:  s.NewCounter("herd_rollup_batches_merged_total"),
		batchesWarming: s.NewCounter("herd_rollup_batches_warming_total"),
		batchesRefused: make(map[string]*metrics.Counter),
		samples:        s.NewCounter("herd_rollup_samples_total"),
		seriesRefused:  make(map[string]*metrics.Counter),
		lost:           s.NewCounter("herd_rollup_batches_lost_total"),
		forgotten:      make(map[string]*metrics.Counter),
		windows:        s.NewCounter("herd_rollup_windows_emitted_total"),
		emptyWindows:   s.NewCounter("herd_rollup_empty_windows_emitted_total"),
		ticksMissed:    s.NewCounter("herd_rollup_ticks_missed_total"),
		emitDelay:      s.NewHistogram("herd_rollup_window_emit_delay_seconds"),
	}
	for _, r := range batchReasons {
		m.batchesRefused[r] = s.NewCounter(`herd_rollup_batches_refused_total{reason="` + r + `"}`)
	}
	for _, r := range seriesReasons {
		m.seriesRefused[r] = s.NewCounter(`herd_rollup_series_refused_total{reason="` + r + `"}`)
	}
	for _, r := range forgottenReasons {
		m.forgotten[r] = s.NewCounter(`herd_rollup_instances_forgotten_total{reason="` + r + `"}`)
	}
	s.NewGauge("herd_rollup_groups", func() float64 { return float64(m.groups.Load()) })
	s.NewGauge("herd_rollup_instances", func() float64 { return float64(m.instances.Load()) })
	s.NewGauge("herd_rollup_series", func() float64 { return float64(m.series.Load()) })
	return m
}

// Stats is a snapshot of a Rollup's counters and sizes.
type Stats struct {
	Batches       uint64 // batches passed to Add
	BatchesMerged uint64 // batches merged into a window
	// BatchesWarming counts merged batches of instances younger than Config.Warmup: in
	// Window.Series, left out of Window.Warm and Window.Halves.
	BatchesWarming uint64
	RefusedBy      map[string]uint64 // refused batches by reason (Reason* batch constants)
	Samples        uint64            // series samples merged
	SeriesRefused  map[string]uint64 // refused series by reason (Reason* series constants)
	// Lost counts missing sequence numbers, once they can no longer arrive (see Rollup).
	Lost uint64
	// Forgotten counts instance states dropped, by reason: final, expired, evicted, restarted.
	Forgotten           map[string]uint64
	WindowsEmitted      uint64 // windows handed to Emit, empty ones included
	EmptyWindowsEmitted uint64
	TicksMissed         uint64
	Groups              int // current groups
	Instances           int // current live (not stopped) instances
	Series              int // current series over all groups
}

func (m *rollupMetrics) stats() Stats {
	st := Stats{
		Batches:             m.batches.Get(),
		BatchesMerged:       m.batchesMerged.Get(),
		BatchesWarming:      m.batchesWarming.Get(),
		RefusedBy:           make(map[string]uint64, len(batchReasons)),
		Samples:             m.samples.Get(),
		SeriesRefused:       make(map[string]uint64, len(seriesReasons)),
		Lost:                m.lost.Get(),
		Forgotten:           make(map[string]uint64, len(forgottenReasons)),
		WindowsEmitted:      m.windows.Get(),
		EmptyWindowsEmitted: m.emptyWindows.Get(),
		TicksMissed:         m.ticksMissed.Get(),
		Groups:              int(m.groups.Load()),
		Instances:           int(m.instances.Load()),
		Series:              int(m.series.Load()),
	}
	for r, c := range m.batchesRefused {
		st.RefusedBy[r] = c.Get()
	}
	for r, c := range m.seriesRefused {
		st.SeriesRefused[r] = c.Get()
	}
	for r, c := range m.forgotten {
		st.Forgotten[r] = c.Get()
	}
	return st
}

// Refused returns the number of refused batches over all reasons.
func (s Stats) Refused() uint64 {
	var n uint64
	for _, c := range s.RefusedBy {
		n += c
	}
	return n
}
