package export

import (
	"flag"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herd-dev/herd/signals"
)

// Config configures the export.
type Config struct {
	// Signals, if set, returns the signal definition a policy pins for a service, or nil to
	// detect it from the service's series (see package signals): the export reads a group's
	// requests, errors and latency as the detector and the dashboard do.
	Signals func(service string) *signals.Definition `json:"-"`
	// Buckets are the `le` bounds of the latency histogram, seconds, increasing.
	Buckets []float64
	// MaxGroups bounds the groups exported; MaxVerdicts the comparisons.
	MaxGroups, MaxVerdicts int
	// GroupTTL is how long a group without windows stays exported; VerdictTTL how long a
	// final verdict does.
	GroupTTL, VerdictTTL time.Duration
}

// DefaultBuckets returns the default latency bounds: 2^(k/2) seconds from 2^-10 s (≈ 1 ms)
// to 2^6 s (64 s), 33 bounds. Each is an edge of herd's sketch buckets (2^(16k/32)), so the
// export loses nothing but resolution.
func DefaultBuckets() []float64 {
	var bs []float64
	for k := -20; k <= 12; k++ {
		bs = append(bs, math.Exp2(float64(k)/2))
	}
	return bs
}

// DefaultConfig returns the defaults: signals detected per service, DefaultBuckets, 2000
// groups and 1000 verdicts, kept 15 minutes and 1 hour.
func DefaultConfig() Config {
	return Config{
		Buckets: DefaultBuckets(), MaxGroups: 2000, MaxVerdicts: 1000,
		GroupTTL: 15 * time.Minute, VerdictTTL: time.Hour,
	}
}

// RegisterFlags registers the export's flags on fs, defaulting to c's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var((*boundsFlag)(&c.Buckets), "export.buckets", "latency `bounds` of /metrics/groups' histogram, seconds, comma-separated and increasing (default 2^(k/2) s from 2^-10 to 2^6)")
	fs.IntVar(&c.MaxGroups, "export.max-groups", c.MaxGroups, "groups (service, version) /metrics/groups exports; more are refused and counted (`count`)")
	fs.IntVar(&c.MaxVerdicts, "export.max-verdicts", c.MaxVerdicts, "comparisons /metrics/groups exports a verdict of; more are refused and counted (`count`)")
	fs.DurationVar(&c.GroupTTL, "export.group-ttl", c.GroupTTL, "a group without windows for this long leaves /metrics/groups (`duration`)")
	fs.DurationVar(&c.VerdictTTL, "export.verdict-ttl", c.VerdictTTL, "a final verdict leaves /metrics/groups this long after it was reached (`duration`)")
}

// Validate checks c and names the offending flag.
func (c *Config) Validate() error {
	if err := checkBounds(c.Buckets); err != nil {
		return fmt.Errorf("-export.buckets: %w", err)
	}
	switch {
	case len(c.Buckets) > 200:
		return fmt.Errorf("-export.buckets: %d bounds; at most 200", len(c.Buckets))
	case c.MaxGroups < 1:
		return fmt.Errorf("-export.max-groups %d must be at least 1", c.MaxGroups)
	case c.MaxVerdicts < 1:
		return fmt.Errorf("-export.max-verdicts %d must be at least 1", c.MaxVerdicts)
	case c.GroupTTL < time.Second:
		return fmt.Errorf("-export.group-ttl %s must be at least 1s", c.GroupTTL)
	case c.VerdictTTL < time.Second:
		return fmt.Errorf("-export.verdict-ttl %s must be at least 1s", c.VerdictTTL)
	}
	return nil
}

// boundsFlag is a comma-separated list of bucket bounds.
type boundsFlag []float64

// String returns the bounds, or "" for the default ladder (which the help names).
func (b *boundsFlag) String() string {
	if b == nil || len(*b) == 0 || slices.Equal(*b, DefaultBuckets()) {
		return ""
	}
	s := make([]string, len(*b))
	for i, v := range *b {
		s[i] = formatBound(v)
	}
	return strings.Join(s, ",")
}

func (b *boundsFlag) Set(v string) error {
	var out []float64
	for _, f := range strings.Split(v, ",") {
		x, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return fmt.Errorf("cannot parse bound %q: %w", f, err)
		}
		out = append(out, x)
	}
	if err := checkBounds(out); err != nil {
		return err
	}
	*b = out
	return nil
}
