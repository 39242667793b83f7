package rollup

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Config configures a Rollup. The zero value is not valid; start from DefaultConfig or
// RegisterFlags.
type Config struct {
	// Window is the length of the aligned tumbling windows. It must be a whole number of
	// milliseconds, because windows are published in unix milliseconds.
	Window time.Duration
	// Lateness is how long after its end a window stays open for late batches. A window closes
	// once now ≥ window end + Lateness.
	Lateness time.Duration
	// MaxFuture is how far ahead of the local clock a batch's interval end may lie before the
	// batch is refused as "future" (clock skew).
	MaxFuture time.Duration
	// InstanceTTL is how long the state of a silent instance is kept. It is also how long a
	// group keeps emitting empty windows after its last batch (see Rollup).
	InstanceTTL time.Duration
	// MaxGroups bounds the number of (service, version) groups, over every Rollup that
	// counts into the same Metrics (all the partitions of a Partitioned: a worker holds at
	// most MaxGroups groups whatever the partitions it owns). A new group finding the table
	// full takes the place of an idle group of its own Rollup (see admit.go); without one it
	// is refused as "too_many_groups".
	MaxGroups int
	// MaxVersionsPerService bounds the groups of one service. A new version finding its
	// service at the quota takes the place of an idle version of the service; without one
	// it is refused as "too_many_versions", before the table is full.
	MaxVersionsPerService int
	// MaxSeriesPerGroup bounds the number of distinct series of one group.
	MaxSeriesPerGroup int
	// MaxSeriesPerService bounds the distinct series of all of a service's groups together.
	MaxSeriesPerService int
	// MaxInstances bounds the number of instances whose state is kept; beyond it the least
	// recently seen instance is forgotten.
	MaxInstances int
	// MaxWindowBuckets bounds the histogram buckets one open window of a group holds: the
	// dense ranges of all its histograms, warm buckets included (8 bytes each). A histogram
	// sample that would take the window beyond it is refused as "too_many_buckets". Samples
	// of instances whose buckets lie far apart are what fill it: every window holds the union
	// of the ranges merged into it.
	MaxWindowBuckets int
	// Warmup is the per-instance warm-up: a batch whose End lies less than Warmup after its
	// InstanceStart is merged into Window.Series but not into Window.Warm, Window.Halves and Window.Buckets.
	// 0 disables Warm, Halves and Buckets.
	Warmup time.Duration
	// SplitSeries is the comma-separated list of series names (any labels) that Warm, Buckets and
	// Halves carry; "*" alone means every series. Each split series costs one more merge per
	// warm sample and appears three more times in a published window, plus once in each warm bucket it has data in.
	SplitSeries string
	// MaxSkew bounds the clock offset corrected per instance: the rollup estimates each
	// instance's offset from the arrival times of its batches and places its batches in the
	// windows of the interval they were measured in, in the local clock's time (see Rollup,
	// Clocks). An offset estimated beyond ±MaxSkew is not corrected (the batches are placed
	// by their own stamps). 0 disables the correction.
	MaxSkew time.Duration
	// CorrectionHorizon is how long after its end a window still takes late batches: a
	// batch for a window that closed less than CorrectionHorizon after the window's end
	// is merged into a correction of that window (proto.Window.Correction); an older one is
	// refused as "late". 0 refuses every late batch.
	CorrectionHorizon time.Duration
	// CloseComplete closes a window before its end + Lateness once it is complete: every
	// instance expected in it (see Rollup, Completeness) has sent its batch for it, and no
	// batch was merged into it for Settle. Late batches for a window closed early are merged
	// into corrections like any other (CorrectionHorizon).
	CloseComplete bool
	// Settle is how long a complete window stays open after its end and after the last
	// batch merged into it, for the batches of instances not expected in it yet (new ones).
	Settle time.Duration
}

// DefaultConfig returns the defaults that RegisterFlags registers.
func DefaultConfig() Config {
	return Config{
		Window:                250 * time.Millisecond,
		Lateness:              500 * time.Millisecond,
		MaxFuture:             2 * time.Second,
		InstanceTTL:           10 * time.Second,
		MaxGroups:             10_000,
		MaxVersionsPerService: 32,
		MaxSeriesPerGroup:     1_000,
		MaxSeriesPerService:   10_000,
		MaxInstances:          100_000,
		MaxWindowBuckets:      1 << 18,
		Warmup:                5 * time.Second,
		SplitSeries:           proto.SeriesRequests + "," + proto.SeriesErrors + "," + proto.SeriesLatency,
		MaxSkew:               5 * time.Second,
		CorrectionHorizon:     time.Minute,
		CloseComplete:         true,
		Settle:                20 * time.Millisecond,
	}
}

// RegisterFlags registers the -rollup.* flags on fs, writing into c. Defaults are those of
// DefaultConfig.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.DurationVar(&c.Window, "rollup.window", d.Window,
		"length of the aligned rollup windows, a whole number of milliseconds (duration)")
	fs.DurationVar(&c.Lateness, "rollup.lateness", d.Lateness,
		"how long after its end a window waits for late batches before it closes (duration)")
	fs.DurationVar(&c.MaxFuture, "rollup.max-future", d.MaxFuture,
		"batches whose interval ends further than this ahead of the local clock are refused as future (duration)")
	fs.DurationVar(&c.InstanceTTL, "rollup.instance-ttl", d.InstanceTTL,
		"forget a silent instance after this long; groups emit empty windows this long after their last batch (duration)")
	fs.IntVar(&c.MaxGroups, "rollup.max-groups", d.MaxGroups,
		"maximum number of (service, version) groups; a new group takes the place of an idle one, or is refused (count)")
	fs.IntVar(&c.MaxVersionsPerService, "rollup.max-versions-per-service", d.MaxVersionsPerService,
		"maximum groups (versions) of one service; a new version takes the place of an idle one of the service, or is refused (count)")
	fs.IntVar(&c.MaxSeriesPerGroup, "rollup.max-series-per-group", d.MaxSeriesPerGroup,
		"maximum number of distinct series per group; further series are refused (count)")
	fs.IntVar(&c.MaxSeriesPerService, "rollup.max-series-per-service", d.MaxSeriesPerService,
		"maximum number of distinct series of all of a service's groups together; further series are refused (count)")
	fs.IntVar(&c.MaxInstances, "rollup.max-instances", d.MaxInstances,
		"maximum number of instances whose dedup state is kept; the least recently seen is forgotten beyond it (count)")
	fs.IntVar(&c.MaxWindowBuckets, "rollup.max-window-buckets", d.MaxWindowBuckets,
		"maximum histogram buckets (8 bytes each) one open window of a group holds, warm halves included; histogram samples beyond it are refused (count)")
	fs.DurationVar(&c.Warmup, "rollup.warmup", d.Warmup,
		"per-instance warm-up: batches of an instance younger than this are left out of the windows' warm aggregate and halves; 0 produces neither (duration)")
	fs.StringVar(&c.SplitSeries, "rollup.split-series", d.SplitSeries,
		"comma-separated names of the series the windows' warm aggregate and halves carry, * for every series (names)")
	fs.DurationVar(&c.MaxSkew, "rollup.max-skew", d.MaxSkew,
		"largest agent clock offset corrected, estimated per instance from arrival times; 0 corrects none (duration)")
	fs.BoolVar(&c.CloseComplete, "rollup.close-complete", d.CloseComplete,
		"close a window before its lateness ran out once every instance expected in it sent its batch and -rollup.settle passed without a batch (bool)")
	fs.DurationVar(&c.Settle, "rollup.settle", d.Settle,
		"how long a complete window stays open after its end and its last batch, for new instances' first batches (duration)")
	fs.DurationVar(&c.CorrectionHorizon, "rollup.correction-horizon", d.CorrectionHorizon,
		"a batch arriving up to this long after its window's end is still published, as a correction of the closed window; an older one is refused as late; 0 refuses every late batch (duration)")
}

// Validate checks c and names the offending flag.
func (c *Config) Validate() error {
	switch {
	case c.Window < time.Millisecond || c.Window%time.Millisecond != 0 || c.Window > time.Hour:
		return fmt.Errorf("-rollup.window %s must be a whole number of milliseconds between 1ms and 1h", c.Window)
	case c.Lateness < 0 || c.Lateness > time.Hour:
		return fmt.Errorf("-rollup.lateness %s must be between 0 and 1h", c.Lateness)
	case c.MaxFuture < 0 || c.MaxFuture > time.Hour:
		return fmt.Errorf("-rollup.max-future %s must be between 0 and 1h", c.MaxFuture)
	case c.InstanceTTL <= c.Window+c.Lateness+c.MaxFuture:
		return fmt.Errorf("-rollup.instance-ttl %s must be longer than -rollup.window + -rollup.lateness + -rollup.max-future (%s)",
			c.InstanceTTL, c.Window+c.Lateness+c.MaxFuture)
	case c.MaxGroups < 1:
		return fmt.Errorf("-rollup.max-groups %d must be at least 1", c.MaxGroups)
	case c.MaxVersionsPerService < 1:
		return fmt.Errorf("-rollup.max-versions-per-service %d must be at least 1", c.MaxVersionsPerService)
	case c.MaxSeriesPerGroup < 1:
		return fmt.Errorf("-rollup.max-series-per-group %d must be at least 1", c.MaxSeriesPerGroup)
	case c.MaxSeriesPerService < 1:
		return fmt.Errorf("-rollup.max-series-per-service %d must be at least 1", c.MaxSeriesPerService)
	case c.MaxInstances < 1:
		return fmt.Errorf("-rollup.max-instances %d must be at least 1", c.MaxInstances)
	case c.MaxWindowBuckets < 2*proto.MaxBuckets:
		return fmt.Errorf("-rollup.max-window-buckets %d must be at least %d (one histogram of the widest range)", c.MaxWindowBuckets, 2*proto.MaxBuckets)
	case c.Warmup < 0 || c.Warmup > time.Hour || c.Warmup%time.Millisecond != 0:
		return fmt.Errorf("-rollup.warmup %s must be a whole number of milliseconds between 0 and 1h", c.Warmup)
	case c.MaxSkew < 0 || c.MaxSkew > time.Hour:
		return fmt.Errorf("-rollup.max-skew %s must be between 0 and 1h", c.MaxSkew)
	case c.CorrectionHorizon < 0 || c.CorrectionHorizon > time.Hour:
		return fmt.Errorf("-rollup.correction-horizon %s must be between 0 and 1h", c.CorrectionHorizon)
	case c.Settle < 0 || c.Settle > time.Hour:
		return fmt.Errorf("-rollup.settle %s must be between 0 and 1h", c.Settle)
	}
	if c.Warmup > 0 {
		if _, err := c.splitNames(); err != nil {
			return err
		}
	}
	return nil
}

// splitNames parses SplitSeries.
func (c *Config) splitNames() ([]string, error) {
	var names []string
	for n := range strings.SplitSeq(c.SplitSeries, ",") {
		n = strings.TrimSpace(n)
		if n == "" || strings.ContainsAny(n, " {}\"=") {
			return nil, fmt.Errorf("-rollup.split-series %q: bad series name %q", c.SplitSeries, n)
		}
		names = append(names, n)
	}
	if len(names) > 1 && slices.Contains(names, "*") {
		return nil, fmt.Errorf("-rollup.split-series %q: * must stand alone", c.SplitSeries)
	}
	return names, nil
}
