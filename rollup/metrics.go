package rollup

import (
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// Batch refusal reasons (label reason of herd_rollup_batches_refused_total).
const (
	ReasonLate          = "late"            // the batch's window is closed
	ReasonFuture        = "future"          // the batch ends too far ahead of the local clock
	ReasonDuplicate     = "duplicate"       // (instance, sequence) seen before, or too old to tell
	ReasonTooManyGroups = "too_many_groups" // the group would exceed Config.MaxGroups, and no group is idle
	// ReasonTooManyVersions: the group would exceed its service's Config.MaxVersionsPerService,
	// and no group of the service is idle.
	ReasonTooManyVersions  = "too_many_versions"
	ReasonInstanceConflict = "instance_conflict" // the instance id is already known in another group
	// ReasonTooManyCorrections: the batch's window is closed and within the correction
	// horizon, but as many corrections as the rollup keeps open are open already.
	ReasonTooManyCorrections = "too_many_corrections"
)

// Series refusal reasons (label reason of herd_rollup_series_refused_total). The rest of the
// batch is merged.
const (
	ReasonTooManySeries = "too_many_series" // the group would exceed Config.MaxSeriesPerGroup
	// ReasonTooManyServiceSeries: the service's groups would exceed Config.MaxSeriesPerService.
	ReasonTooManyServiceSeries = "too_many_service_series"
	ReasonKindMismatch         = "kind_mismatch" // the series exists in the group with another kind
	ReasonBadHistogram         = "bad_histogram" // merging would exceed the histogram bucket bounds
	// ReasonOverflow: a sum of the window (counter, gauge or histogram sum, or a histogram
	// count) would leave the finite range the rollup keeps (see MaxSum).
	ReasonOverflow = "overflow"
	// ReasonTooManyBuckets: the window's histograms would hold more than
	// Config.MaxWindowBuckets buckets.
	ReasonTooManyBuckets = "too_many_buckets"
)

// Reasons an instance's state is forgotten (label reason of herd_rollup_instances_forgotten_total).
const (
	forgotFinal     = "final"     // it sent a final batch
	forgotExpired   = "expired"   // silent for Config.InstanceTTL
	forgotEvicted   = "evicted"   // pushed out by Config.MaxInstances
	forgotRestarted = "restarted" // the same id came back with another InstanceStart
)

var (
	batchReasons     = []string{ReasonLate, ReasonFuture, ReasonDuplicate, ReasonTooManyGroups, ReasonTooManyVersions, ReasonInstanceConflict, ReasonTooManyCorrections}
	seriesReasons    = []string{ReasonTooManySeries, ReasonTooManyServiceSeries, ReasonKindMismatch, ReasonBadHistogram, ReasonOverflow, ReasonTooManyBuckets}
	forgottenReasons = []string{forgotFinal, forgotExpired, forgotEvicted, forgotRestarted}
	skipReasons      = []string{SkipBeforeSpan, SkipAfterSpan}
)

// emitDelayBuckets are the upper bounds (seconds) of herd_rollup_window_emit_delay_seconds:
// a window is emitted Config.Lateness (0.5 s by default) after its end plus timer and Emit
// delays, so the steps are fine from there to a second.
var emitDelayBuckets = []float64{.05, .1, .25, .5, .55, .6, .7, .8, 1, 1.5, 2, 3, 5, 10, 30}

// Metrics are the rollup's self-metrics, owned by the caller's metrics.Set. Every Rollup and
// Partitioned built with the same Metrics counts into the same counters, and each Rollup
// adds its changes of size to the groups, instances and series gauges, so that they read the
// sum over every partition without a summing pass. Safe for concurrent use.
type Metrics struct {
	batches         *metrics.Counter
	batchesMerged   *metrics.Counter
	batchesWarming  *metrics.Counter
	batchesRefused  map[string]*metrics.Counter
	samples         *metrics.Counter
	seriesRefused   map[string]*metrics.Counter
	lost            *metrics.Counter
	forgotten       map[string]*metrics.Counter
	groupsForgotten map[string]*metrics.Counter
	windows         *metrics.Counter
	emptyWindows    *metrics.Counter
	ticksMissed     *metrics.Counter
	closedEarly     *metrics.Counter
	emitDelay       *metrics.PrometheusHistogram
	skewCorrected   *metrics.Counter
	corrected       *metrics.Counter
	corrections     *metrics.Counter
	bucketsOmitted  *metrics.Counter

	// Sizes, summed over the Rollups (each adds its deltas under its own mutex).
	groups, instances, series atomic.Int64

	// Partitioned only.
	skipped   map[string]*metrics.Counter
	discarded *metrics.Counter
	gaps      *metrics.Counter
	srcErrors *metrics.Counter
}

// NewMetrics registers every herd_rollup_* family of a Rollup and a Partitioned in set, each
// reason label of the drop counters included, and returns them for New and NewPartitioned:
//
//	herd_rollup_batches_total, herd_rollup_batches_merged_total,
//	herd_rollup_batches_warming_total, herd_rollup_batches_refused_total{reason},
//	herd_rollup_samples_total, herd_rollup_series_refused_total{reason},
//	herd_rollup_batches_lost_total, herd_rollup_instances_forgotten_total{reason},
//	herd_rollup_groups_forgotten_total{reason},
//	herd_rollup_windows_emitted_total, herd_rollup_empty_windows_emitted_total,
//	herd_rollup_ticks_missed_total, herd_rollup_window_emit_delay_seconds (histogram),
//	herd_rollup_batches_skew_corrected_total, herd_rollup_batches_corrected_total,
//	herd_rollup_corrections_emitted_total,
//	herd_rollup_groups, herd_rollup_instances, herd_rollup_series,
//	herd_rollup_partition_batches_skipped_total{reason},
//	herd_rollup_partition_windows_discarded_total, herd_rollup_partition_gap_windows_total,
//	herd_rollup_partition_source_errors_total.
//
// A single Rollup and a Partitioned thus export the same families. Call it once per set:
// like metrics.Set.NewCounter, it panics if set holds one of the names already.
func NewMetrics(set *metrics.Set) *Metrics {
	promhelp.Describe(rollupHelp)
	m := &Metrics{
		batches:         set.NewCounter("herd_rollup_batches_total"),
		batchesMerged:   set.NewCounter("herd_rollup_batches_merged_total"),
		batchesWarming:  set.NewCounter("herd_rollup_batches_warming_total"),
		batchesRefused:  make(map[string]*metrics.Counter),
		samples:         set.NewCounter("herd_rollup_samples_total"),
		seriesRefused:   make(map[string]*metrics.Counter),
		lost:            set.NewCounter("herd_rollup_batches_lost_total"),
		forgotten:       make(map[string]*metrics.Counter),
		groupsForgotten: make(map[string]*metrics.Counter),
		windows:         set.NewCounter("herd_rollup_windows_emitted_total"),
		emptyWindows:    set.NewCounter("herd_rollup_empty_windows_emitted_total"),
		ticksMissed:     set.NewCounter("herd_rollup_ticks_missed_total"),
		closedEarly:     set.NewCounter("herd_rollup_windows_closed_complete_total"),
		emitDelay:       set.NewPrometheusHistogramExt("herd_rollup_window_emit_delay_seconds", emitDelayBuckets),
		skewCorrected:   set.NewCounter("herd_rollup_batches_skew_corrected_total"),
		corrected:       set.NewCounter("herd_rollup_batches_corrected_total"),
		corrections:     set.NewCounter("herd_rollup_corrections_emitted_total"),
		bucketsOmitted:  set.NewCounter("herd_rollup_window_buckets_omitted_total"),
		skipped:         make(map[string]*metrics.Counter),
		discarded:       set.NewCounter("herd_rollup_partition_windows_discarded_total"),
		gaps:            set.NewCounter("herd_rollup_partition_gap_windows_total"),
		srcErrors:       set.NewCounter("herd_rollup_partition_source_errors_total"),
	}
	for _, r := range batchReasons {
		m.batchesRefused[r] = set.NewCounter(`herd_rollup_batches_refused_total{reason="` + r + `"}`)
	}
	for _, r := range seriesReasons {
		m.seriesRefused[r] = set.NewCounter(`herd_rollup_series_refused_total{reason="` + r + `"}`)
	}
	for _, r := range forgottenReasons {
		m.forgotten[r] = set.NewCounter(`herd_rollup_instances_forgotten_total{reason="` + r + `"}`)
	}
	for _, r := range groupReasons {
		m.groupsForgotten[r] = set.NewCounter(`herd_rollup_groups_forgotten_total{reason="` + r + `"}`)
	}
	for _, r := range skipReasons {
		m.skipped[r] = set.NewCounter(`herd_rollup_partition_batches_skipped_total{reason="` + r + `"}`)
	}
	set.NewGauge("herd_rollup_groups", func() float64 { return float64(m.groups.Load()) })
	set.NewGauge("herd_rollup_instances", func() float64 { return float64(m.instances.Load()) })
	set.NewGauge("herd_rollup_series", func() float64 { return float64(m.series.Load()) })
	return m
}

// Stats is a snapshot of the counters and sizes of a Metrics: those of one Rollup, or the
// sums over every Rollup sharing the Metrics (the partitions of a Partitioned).
type Stats struct {
	Batches uint64 // batches passed to Add
	// BatchesMerged counts batches merged into a window or a correction.
	BatchesMerged uint64
	// BatchesCorrected counts the batches of BatchesMerged that went into a correction:
	// they arrived after their window closed, within Config.CorrectionHorizon.
	BatchesCorrected uint64
	// BatchesSkewCorrected counts merged batches placed with a clock correction.
	BatchesSkewCorrected uint64
	// BatchesWarming counts merged batches of instances younger than Config.Warmup: in
	// Window.Series, left out of Window.Warm and Window.Halves.
	BatchesWarming uint64
	RefusedBy      map[string]uint64 // refused batches by reason (Reason* batch constants)
	Samples        uint64            // series samples merged
	SeriesRefused  map[string]uint64 // refused series by reason (Reason* series constants)
	// Lost counts missing sequence numbers, once they can no longer arrive (see Rollup).
	Lost uint64
	// Forgotten counts instance states dropped, by reason: final, expired, evicted, restarted.
	Forgotten map[string]uint64
	// GroupsForgotten counts groups dropped, by reason: expired (no batch for
	// Config.InstanceTTL), evicted (idle, to make room for a new group).
	GroupsForgotten     map[string]uint64
	WindowsEmitted      uint64 // windows handed to Emit, empty ones included, corrections not
	CorrectionsEmitted  uint64 // corrections handed to Emit
	EmptyWindowsEmitted uint64
	TicksMissed         uint64
	// WindowsClosedComplete counts the windows (empty ones included) closed before their
	// lateness ran out because they were complete (Config.CloseComplete).
	WindowsClosedComplete uint64
	Groups                int // current groups
	Instances             int // current live (not stopped) instances
	Series                int // current series over all groups
}

func (m *Metrics) stats() Stats {
	st := Stats{
		Batches:               m.batches.Get(),
		BatchesMerged:         m.batchesMerged.Get(),
		BatchesCorrected:      m.corrected.Get(),
		BatchesSkewCorrected:  m.skewCorrected.Get(),
		CorrectionsEmitted:    m.corrections.Get(),
		BatchesWarming:        m.batchesWarming.Get(),
		RefusedBy:             make(map[string]uint64, len(batchReasons)),
		Samples:               m.samples.Get(),
		SeriesRefused:         make(map[string]uint64, len(seriesReasons)),
		Lost:                  m.lost.Get(),
		Forgotten:             make(map[string]uint64, len(forgottenReasons)),
		GroupsForgotten:       make(map[string]uint64, len(groupReasons)),
		WindowsEmitted:        m.windows.Get(),
		EmptyWindowsEmitted:   m.emptyWindows.Get(),
		TicksMissed:           m.ticksMissed.Get(),
		WindowsClosedComplete: m.closedEarly.Get(),
		Groups:                int(m.groups.Load()),
		Instances:             int(m.instances.Load()),
		Series:                int(m.series.Load()),
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
	for r, c := range m.groupsForgotten {
		st.GroupsForgotten[r] = c.Get()
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

// rollupHelp is the # HELP text of every rollup family.
var rollupHelp = map[string]string{
	"herd_rollup_batches_total":         "Agent batches handed to the rollup.",
	"herd_rollup_batches_merged_total":  "Batches merged into a window.",
	"herd_rollup_batches_warming_total": "Batches merged into Series but not Warm: their instance was still warming up.",
	"herd_rollup_batches_refused_total": "Batches refused whole, by reason: late (after the correction horizon: lost), future, duplicate, " +
		"instance_conflict, too_many_corrections, too_many_groups (the group table is full and no group is idle), " +
		"too_many_versions (the service has its quota of groups and none is idle).",
	"herd_rollup_samples_total":                     "Series samples merged.",
	"herd_rollup_series_refused_total":              "Series samples refused within merged batches, by reason (too_many_series, too_many_service_series, kind_mismatch, bad_histogram, overflow, too_many_buckets); the rest of the batch is merged.",
	"herd_rollup_batches_lost_total":                "Batches never received: gaps in instances' sequence numbers.",
	"herd_rollup_instances_forgotten_total":         "Instance states forgotten, by reason (final, expired, evicted, restarted).",
	"herd_rollup_groups_forgotten_total":            "Groups forgotten, by reason: expired (no batch for the instance TTL) or evicted (idle, to make room for a new group).",
	"herd_rollup_windows_emitted_total":             "Closed windows emitted (corrections not included).",
	"herd_rollup_empty_windows_emitted_total":       "Closed windows emitted with no instance (a group that stopped reporting).",
	"herd_rollup_ticks_missed_total":                "Window-close ticks that came too late and were skipped.",
	"herd_rollup_windows_closed_complete_total":     "Windows closed before their lateness ran out: every instance expected in them had sent its batch.",
	"herd_rollup_window_emit_delay_seconds":         "Delay from a window's end to its emission.",
	"herd_rollup_batches_skew_corrected_total":      "Batches merged with their times corrected for the clock offset estimated for their instance.",
	"herd_rollup_batches_corrected_total":           "Batches that arrived after their window closed, within the correction horizon, merged into a correction.",
	"herd_rollup_corrections_emitted_total":         "Corrections emitted: late data of a closed window, published as a window marked correction.",
	"herd_rollup_window_buckets_omitted_total":      "Windows (and corrections) published without their instance buckets because these would hold more than MaxBucketCells series entries and histogram buckets.",
	"herd_rollup_groups":                            "Groups (service, version) held.",
	"herd_rollup_instances":                         "Instances whose state is held.",
	"herd_rollup_series":                            "Series held over all groups.",
	"herd_rollup_partition_batches_skipped_total":   "Batches of a partition outside the span its lease may publish, by reason.",
	"herd_rollup_partition_windows_discarded_total": "Windows a partition discarded because they lie outside its lease's span.",
	"herd_rollup_partition_gap_windows_total":       "Windows between two owners' spans of a partition, lost in a hand-over.",
	"herd_rollup_partition_source_errors_total":     "Failures of a partition's intake.",
}
