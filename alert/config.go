package alert

import (
	"flag"
	"fmt"
	"math"
	"time"
)

// Config is the detector's configuration: the defaults every service gets, which a policy
// file may override per service (see Policy). Build it with DefaultConfig or RegisterFlags.
type Config struct {
	// Alpha is the false-rollback bound α of every comparison: the tests roll back when the
	// weighted average e-value reaches 1/α.
	Alpha float64
	// Margin is the smallest margin ψ0 of the count tests: the canary/baseline event-rate
	// ratio tolerated without rollback (1 = "no worse").
	Margin float64
	// InstanceSpread is the assumed log-scale standard deviation s of the event rates of
	// instances of one version. The margin of a comparison is
	// max(Margin, exp(3·s·sqrt(1/k_canary + 1/k_baseline))) with the instance counts k at the
	// start of the comparison, so that a canary of few instances is not rolled back because
	// its instances differ from the baseline's by chance.
	InstanceSpread float64
	// AcceptMargin: a canary passes when, after MinExposure, the confidence sequence of ψ of
	// every count test lies below max(AcceptMargin, margin).
	AcceptMargin float64
	// Warmup is how long after a canary group first reports its windows are left out of the
	// statistical tests (the guards still apply). 0 (the default) compares from the first
	// window: each instance's start is handled per instance, from the windows' warm split
	// (its latency cold start, and its errors when the baseline's young instances err more;
	// see docs/detector.md). Raise it to 5s when the rollup runs without a warm-up.
	Warmup time.Duration
	// ColdStart is how long after a canary group first reports its latency is compared only
	// with the baseline's young instances (those the rollup leaves out of Warm), never with
	// its warm ones: a canary that is slow while its instances start (JIT, caches, pools) is
	// not rolled back for being cold; one that stays slow is, once ColdStart has passed. It is
	// the fallback: when the baseline's own young instances are known to be as fast as its
	// warm ones (docs/detector.md, "Learning the cold start") there is no cold start to wait
	// out and latency is compared whole from the start. 0 declares that the service has no
	// cold start: latency is compared whole (young and warm instances, on both sides) from the
	// first window.
	ColdStart time.Duration
	// MinExposure is the least comparison time before a pass.
	MinExposure time.Duration
	// MaxDuration ends an undecided comparison as inconclusive.
	MaxDuration time.Duration
	// ErrorCeiling is the canary error ratio (errors/requests, over the last second) that
	// rolls back at once, while the baseline's own ratio stays below half of it.
	ErrorCeiling float64
	// GuardMinRequests is the least number of canary requests over which the ceiling applies.
	GuardMinRequests int
	// GoneAfter: the canary is rolled back when the rollup reports its group without any
	// instance for this long in windows in which the baseline's instances served requests
	// (see docs/detector.md, guard_canary_gone). A fleet-wide stall, windows missing on both
	// sides or a whole service stopping never count.
	GoneAfter time.Duration
	// NoTrafficAfter: a canary that reports zero requests for this long while the baseline
	// serves (live windows without a gap) is inconclusive until its traffic resumes.
	NoTrafficAfter time.Duration
	// NoCanaryAfter: an announced canary with no window at all for this long is inconclusive.
	NoCanaryAfter time.Duration
	// EstablishAfter is how long a version must have reported before a new version appearing
	// beside it is inferred to be its canary.
	EstablishAfter time.Duration
	// DKWMargin is the CDF distance beyond the DKW bands at which the whole-distribution
	// latency test flags.
	DKWMargin float64
	// MaxUnpaired bounds the windows of one comparison waiting for their partner window.
	MaxUnpaired int
	// MaxGroups bounds the (service, version) groups tracked. A new group finding the table
	// full takes the place of an idle group no comparison names; without one its windows are
	// dropped as too_many_groups.
	MaxGroups int
	// MaxVersionsPerService bounds the groups of one service; a new version beyond it takes
	// the place of an idle one of the service no comparison names, or its windows are
	// dropped as too_many_versions. An announced canary is admitted beyond it.
	MaxVersionsPerService int
	// Watch is how long a comparison keeps watching a canary after it passed ("promoted,
	// watching"): a regression in that time rolls it back. The watch ends sooner when the
	// baseline stops serving (NoTrafficAfter without a live baseline window) or a newer
	// deployment takes over. 0 ends every comparison at its pass.
	Watch time.Duration
	// WatchAlpha is the watch's own false-rollback bound, spent over the watch's segments
	// (see docs/detector.md); 0 takes Alpha.
	WatchAlpha float64
	// EvidenceEvery is how often a pending or watching comparison republishes its live
	// evidence (a verdict with Update set), in window time; 0 publishes state changes only.
	EvidenceEvery time.Duration
	// PolicyFile is the path of the JSON policy file; empty means none.
	PolicyFile string
}

// DefaultConfig returns the defaults of every flag.
func DefaultConfig() Config {
	return Config{
		Alpha:                 0.01,
		Margin:                1,
		InstanceSpread:        0.1,
		AcceptMargin:          1.5,
		Warmup:                0,
		ColdStart:             30 * time.Second,
		MinExposure:           5 * time.Minute,
		MaxDuration:           30 * time.Minute,
		ErrorCeiling:          0.5,
		GuardMinRequests:      10,
		GoneAfter:             time.Second,
		NoTrafficAfter:        10 * time.Second,
		NoCanaryAfter:         time.Minute,
		EstablishAfter:        30 * time.Second,
		DKWMargin:             0.05,
		MaxUnpaired:           64,
		MaxGroups:             10000,
		MaxVersionsPerService: 32,
		Watch:                 30 * time.Minute,
		WatchAlpha:            0.01,
		EvidenceEvery:         time.Second,
	}
}

// RegisterFlags registers the detector's flags on fs with c's current values as defaults
// (call it on DefaultConfig()).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Float64Var(&c.Alpha, "detect.alpha", c.Alpha, "false-rollback bound α of each comparison (0 < α < 0.5)")
	fs.Float64Var(&c.Margin, "detect.margin", c.Margin, "least margin ψ0: canary/baseline event-rate ratio tolerated without rollback (≥ 1; 1 = no worse)")
	fs.Float64Var(&c.InstanceSpread, "detect.instance-spread", c.InstanceSpread, "assumed log-sd of event rates between instances of one version; widens the margin for small groups (≥ 0; 0 = off)")
	fs.Float64Var(&c.AcceptMargin, "detect.accept-margin", c.AcceptMargin, "pass when every ratio's confidence sequence lies below this (≥ 1)")
	fs.DurationVar(&c.Warmup, "detect.warmup", c.Warmup, "leave a new canary group's first windows out of the tests for this long (each instance's start is handled per instance from -rollup.warmup's split; use 5s if that is 0)")
	fs.DurationVar(&c.ColdStart, "detect.cold-start", c.ColdStart, "compare a new canary's latency only with the baseline's young instances for this long, so that a cold start is not a regression; not applied when the baseline's young instances are known to be as fast as its warm ones (0 = the service has no cold start: compare latency whole from the first window)")
	fs.DurationVar(&c.MinExposure, "detect.min-exposure", c.MinExposure, "least comparison time before a pass")
	fs.DurationVar(&c.MaxDuration, "detect.max-duration", c.MaxDuration, "undecided comparisons end as inconclusive after this long")
	fs.Float64Var(&c.ErrorCeiling, "detect.error-ceiling", c.ErrorCeiling, "canary error ratio (0–1, over 1 s) that rolls back at once")
	fs.IntVar(&c.GuardMinRequests, "detect.guard-min-requests", c.GuardMinRequests, "least canary requests (count) for the error ceiling to apply")
	fs.DurationVar(&c.GoneAfter, "detect.gone-after", c.GoneAfter, "roll back when the rollup reports the canary group without any instance for this long in windows in which the baseline served requests (missing windows and windows the baseline also left empty do not count)")
	fs.DurationVar(&c.NoTrafficAfter, "detect.no-traffic-after", c.NoTrafficAfter, "inconclusive while the canary serves no requests for this long while the baseline serves without a gap")
	fs.DurationVar(&c.NoCanaryAfter, "detect.no-canary-after", c.NoCanaryAfter, "inconclusive when an announced canary sends no window for this long")
	fs.DurationVar(&c.EstablishAfter, "detect.establish-after", c.EstablishAfter, "a version reporting this long is the baseline of a new version appearing beside it")
	fs.Float64Var(&c.DKWMargin, "detect.dkw-margin", c.DKWMargin, "CDF distance (0–1) beyond the DKW bands at which the distribution test flags")
	fs.IntVar(&c.MaxUnpaired, "detect.max-unpaired", c.MaxUnpaired, "windows (count) per comparison kept waiting for their partner window")
	fs.IntVar(&c.MaxGroups, "detect.max-groups", c.MaxGroups, "most (service, version) groups (count) tracked; a new group takes the place of an idle one no comparison names, or is dropped")
	fs.IntVar(&c.MaxVersionsPerService, "detect.max-versions-per-service", c.MaxVersionsPerService, "most groups (count) of one service tracked; a new version takes the place of an idle one of the service no comparison names, or is dropped (a canary with a comparison is admitted beyond it)")
	fs.DurationVar(&c.Watch, "detect.watch", c.Watch, "after a pass, keep comparing for this long (or until the baseline stops serving) and roll back a later regression (0 = stop at the pass)")
	fs.Float64Var(&c.WatchAlpha, "detect.watch-alpha", c.WatchAlpha, "false-rollback bound α of the watch after a pass (0 ≤ α < 0.5; 0 = -detect.alpha)")
	fs.DurationVar(&c.EvidenceEvery, "detect.evidence-every", c.EvidenceEvery, "republish a pending or watching comparison's live evidence this often, in window time (0 = state changes only)")
	fs.StringVar(&c.PolicyFile, "detect.policy", c.PolicyFile, "policy file (JSON or YAML) with per-service overrides, signal profiles and selectors (empty: none; signals detected per service)")
}

// Validate checks c, naming the flag of a bad value.
func (c *Config) Validate() error {
	s := settings{
		alpha: c.Alpha, margin: c.Margin, spread: c.InstanceSpread, accept: c.AcceptMargin,
		warmup: c.Warmup, coldStart: c.ColdStart, minExposure: c.MinExposure, maxDuration: c.MaxDuration,
		ceiling: c.ErrorCeiling, dkwMargin: c.DKWMargin, watch: c.Watch, watchAlpha: c.WatchAlpha,
	}
	if err := s.validate("detect."); err != nil {
		return err
	}
	switch {
	case c.GuardMinRequests < 1:
		return fmt.Errorf("bad -detect.guard-min-requests %d: want ≥ 1", c.GuardMinRequests)
	case c.GoneAfter <= 0:
		return fmt.Errorf("bad -detect.gone-after %s: want > 0", c.GoneAfter)
	case c.NoTrafficAfter <= 0:
		return fmt.Errorf("bad -detect.no-traffic-after %s: want > 0", c.NoTrafficAfter)
	case c.NoCanaryAfter <= 0:
		return fmt.Errorf("bad -detect.no-canary-after %s: want > 0", c.NoCanaryAfter)
	case c.EstablishAfter < 0:
		return fmt.Errorf("bad -detect.establish-after %s: want ≥ 0", c.EstablishAfter)
	case c.MaxUnpaired < 1:
		return fmt.Errorf("bad -detect.max-unpaired %d: want ≥ 1", c.MaxUnpaired)
	case c.MaxGroups < 1:
		return fmt.Errorf("bad -detect.max-groups %d: want ≥ 1", c.MaxGroups)
	case c.MaxVersionsPerService < 1:
		return fmt.Errorf("bad -detect.max-versions-per-service %d: want ≥ 1", c.MaxVersionsPerService)
	case c.EvidenceEvery < 0:
		return fmt.Errorf("bad -detect.evidence-every %s: want ≥ 0", c.EvidenceEvery)
	}
	return nil
}

// validate checks the settings a policy may override; prefix is "detect." for flags and
// "" for policy fields.
func (s *settings) validate(prefix string) error {
	name := func(flagName, field string) string {
		if prefix == "" {
			return field
		}
		return "-" + prefix + flagName
	}
	switch {
	case !(s.alpha > 0 && s.alpha < 0.5):
		return fmt.Errorf("bad %s %g: want 0 < α < 0.5", name("alpha", "alpha"), s.alpha)
	case !(s.margin >= 1) || math.IsInf(s.margin, 0):
		return fmt.Errorf("bad %s %g: want a finite ratio ≥ 1", name("margin", "margin"), s.margin)
	case !(s.spread >= 0 && s.spread <= 2):
		return fmt.Errorf("bad %s %g: want 0 ≤ s ≤ 2", name("instance-spread", "instance_spread"), s.spread)
	case !(s.accept >= 1) || math.IsInf(s.accept, 0):
		return fmt.Errorf("bad %s %g: want a finite ratio ≥ 1", name("accept-margin", "accept_margin"), s.accept)
	case s.warmup < 0:
		return fmt.Errorf("bad %s %s: want ≥ 0", name("warmup", "warmup"), s.warmup)
	case s.coldStart < 0:
		return fmt.Errorf("bad %s %s: want ≥ 0", name("cold-start", "cold_start"), s.coldStart)
	case s.minExposure < 0:
		return fmt.Errorf("bad %s %s: want ≥ 0", name("min-exposure", "min_exposure"), s.minExposure)
	case s.maxDuration <= 0:
		return fmt.Errorf("bad %s %s: want > 0", name("max-duration", "max_duration"), s.maxDuration)
	case !(s.ceiling > 0 && s.ceiling <= 1):
		return fmt.Errorf("bad %s %g: want 0 < ratio ≤ 1", name("error-ceiling", "error_ceiling"), s.ceiling)
	case !(s.dkwMargin >= 0 && s.dkwMargin <= 1):
		return fmt.Errorf("bad %s %g: want 0 ≤ distance ≤ 1", name("dkw-margin", "dkw_margin"), s.dkwMargin)
	case s.watch < 0:
		return fmt.Errorf("bad %s %s: want ≥ 0", name("watch", "watch"), s.watch)
	case !(s.watchAlpha >= 0 && s.watchAlpha < 0.5):
		return fmt.Errorf("bad %s %g: want 0 ≤ α < 0.5 (0: the comparison's α)", name("watch-alpha", "watch_alpha"), s.watchAlpha)
	}
	return nil
}
