package alert

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Policy is the detector's policy file: overrides of the flag defaults for all services
// (Defaults) and per service (Services, keyed by service name). It is JSON; unknown fields
// are errors. docs/detector.md documents every field with an example.
type Policy struct {
	Defaults ServicePolicy            `json:"defaults"`
	Services map[string]ServicePolicy `json:"services"`
	// Targets holds the deploy-tool targets (Argo Rollouts, Flagger, Spinnaker) that
	// rollback delivery reads from the same file; the detector does not look at them. See
	// docs/webhooks.md for their fields.
	Targets json.RawMessage `json:"targets,omitempty"`
}

// ServicePolicy overrides the detector's settings for a service. Every field is optional;
// an absent field keeps the value from Policy.Defaults, else from the flags.
type ServicePolicy struct {
	Alpha          *float64  `json:"alpha,omitempty"`
	Margin         *float64  `json:"margin,omitempty"`
	InstanceSpread *float64  `json:"instance_spread,omitempty"`
	AcceptMargin   *float64  `json:"accept_margin,omitempty"`
	Warmup         *Duration `json:"warmup,omitempty"`
	ColdStart      *Duration `json:"cold_start,omitempty"`
	MinExposure    *Duration `json:"min_exposure,omitempty"`
	MaxDuration    *Duration `json:"max_duration,omitempty"`
	ErrorCeiling   *float64  `json:"error_ceiling,omitempty"`
	DKWMargin      *float64  `json:"dkw_margin,omitempty"`
	// SLOLatency adds a latency test at the bucket edge at or just above this latency.
	SLOLatency *Duration `json:"slo_latency,omitempty"`
	// Quantiles of the baseline at which latency thresholds are frozen (default 0.5, 0.9, 0.99).
	Quantiles []float64 `json:"quantiles,omitempty"`
	// Requests, Errors and Latency are selectors mapping the service's own series onto the
	// roles (defaults requests_total, errors_total, latency_seconds). Requests and Errors sum
	// counters; Latency merges histograms.
	Requests string `json:"requests,omitempty"`
	Errors   string `json:"errors,omitempty"`
	Latency  string `json:"latency,omitempty"`
	// Weights of the tests in the average e-value.
	Weights *Weights `json:"weights,omitempty"`
}

// Weights are the relative weights of the tests in the average e-value; they are normalised
// to sum to 1 over the tests a comparison has. Latency is shared equally by the latency
// thresholds.
type Weights struct {
	Errors  float64 `json:"errors"`
	Latency float64 `json:"latency"`
	DKW     float64 `json:"dkw"`
}

// Duration is a time.Duration written in JSON as a Go duration string such as "250ms".
type Duration time.Duration

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("cannot decode duration %s: want a string such as \"5s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("cannot decode duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// settings are one service's resolved settings.
type settings struct {
	alpha, margin, spread, accept, ceiling, dkwMargin float64
	warmup, coldStart, minExposure, maxDuration       time.Duration
	sloSeconds                                        float64 // 0: none
	quantiles                                         []float64
	weights                                           Weights
	requests, errors, latency                         *Selector
}

var (
	defaultRequests  = MustSelector(proto.SeriesRequests)
	defaultErrors    = MustSelector(proto.SeriesErrors)
	defaultLatency   = MustSelector(proto.SeriesLatency)
	defaultQuantiles = []float64{0.5, 0.9, 0.99}
	defaultWeights   = Weights{Errors: 0.5, Latency: 0.4, DKW: 0.1}
)

// baseSettings returns the settings the flags give.
func (c *Config) baseSettings() settings {
	return settings{
		alpha: c.Alpha, margin: c.Margin, spread: c.InstanceSpread, accept: c.AcceptMargin,
		ceiling: c.ErrorCeiling, dkwMargin: c.DKWMargin,
		warmup: c.Warmup, coldStart: c.ColdStart, minExposure: c.MinExposure, maxDuration: c.MaxDuration,
		quantiles: defaultQuantiles, weights: defaultWeights,
		requests: defaultRequests, errors: defaultErrors, latency: defaultLatency,
	}
}

// apply overlays sp on s.
func (s *settings) apply(sp *ServicePolicy) error {
	setF := func(dst *float64, v *float64) {
		if v != nil {
			*dst = *v
		}
	}
	setD := func(dst *time.Duration, v *Duration) {
		if v != nil {
			*dst = time.Duration(*v)
		}
	}
	setF(&s.alpha, sp.Alpha)
	setF(&s.margin, sp.Margin)
	setF(&s.spread, sp.InstanceSpread)
	setF(&s.accept, sp.AcceptMargin)
	setF(&s.ceiling, sp.ErrorCeiling)
	setF(&s.dkwMargin, sp.DKWMargin)
	setD(&s.warmup, sp.Warmup)
	setD(&s.coldStart, sp.ColdStart)
	setD(&s.minExposure, sp.MinExposure)
	setD(&s.maxDuration, sp.MaxDuration)
	if sp.SLOLatency != nil {
		if *sp.SLOLatency <= 0 {
			return fmt.Errorf("bad slo_latency %s: want > 0", time.Duration(*sp.SLOLatency))
		}
		s.sloSeconds = time.Duration(*sp.SLOLatency).Seconds()
	}
	if sp.Quantiles != nil {
		if len(sp.Quantiles) > 8 {
			return fmt.Errorf("bad quantiles: %d given, want at most 8", len(sp.Quantiles))
		}
		for _, q := range sp.Quantiles {
			if !(q > 0 && q < 1) {
				return fmt.Errorf("bad quantile %g: want 0 < q < 1", q)
			}
		}
		s.quantiles = slices.Clone(sp.Quantiles)
	}
	if w := sp.Weights; w != nil {
		ok := w.Errors >= 0 && w.Latency >= 0 && w.DKW >= 0 && w.Errors+w.Latency+w.DKW > 0 &&
			!math.IsInf(w.Errors+w.Latency+w.DKW, 0)
		if !ok {
			return fmt.Errorf("bad weights %+v: want finite weights ≥ 0 with a positive sum", *w)
		}
		s.weights = *w
	}
	for _, r := range []struct {
		text  string
		dst   **Selector
		field string
	}{{sp.Requests, &s.requests, "requests"}, {sp.Errors, &s.errors, "errors"}, {sp.Latency, &s.latency, "latency"}} {
		if r.text == "" {
			continue
		}
		sel, err := ParseSelector(r.text)
		if err != nil {
			return fmt.Errorf("bad %s: %w", r.field, err)
		}
		*r.dst = sel
	}
	return s.validate("")
}

// ParsePolicy decodes and checks a policy file's contents against the flag defaults in cfg.
func ParsePolicy(data []byte, cfg *Config) (*Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("cannot decode policy: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("cannot decode policy: trailing data after the JSON object")
	}
	base := cfg.baseSettings()
	if err := base.apply(&p.Defaults); err != nil {
		return nil, fmt.Errorf("bad policy defaults: %w", err)
	}
	for name, sp := range p.Services {
		if err := proto.ValidService(name); err != nil {
			return nil, fmt.Errorf("bad policy service: %w", err)
		}
		s := base
		if err := s.apply(&sp); err != nil {
			return nil, fmt.Errorf("bad policy for service %q: %w", name, err)
		}
	}
	return &p, nil
}

// LoadPolicy reads and checks a policy file.
func LoadPolicy(path string, cfg *Config) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read policy file: %w", err)
	}
	p, err := ParsePolicy(data, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot load policy file %s: %w", path, err)
	}
	return p, nil
}

// settingsFor returns the resolved settings of a service. The policy was checked by
// ParsePolicy, so apply cannot fail here.
func settingsFor(cfg *Config, p *Policy, service string) settings {
	s := cfg.baseSettings()
	if p == nil {
		return s
	}
	if err := s.apply(&p.Defaults); err != nil {
		panic("BUG: checked policy defaults fail: " + err.Error())
	}
	if sp, ok := p.Services[service]; ok {
		if err := s.apply(&sp); err != nil {
			panic("BUG: checked policy fails: " + err.Error())
		}
	}
	return s
}

// SeriesNames returns the names of the series that p's selectors read (without labels),
// sorted and unique. The rollup must carry them in its warm aggregate and halves
// (-rollup.split-series) for per-instance warm-up and the shadow check to apply.
func (p *Policy) SeriesNames() []string {
	var names []string
	add := func(sp ServicePolicy) {
		for _, text := range []string{sp.Requests, sp.Errors, sp.Latency} {
			if text == "" {
				continue
			}
			if sel, err := ParseSelector(text); err == nil && sel.Name != "" {
				names = append(names, sel.Name)
			}
		}
	}
	add(p.Defaults)
	for _, sp := range p.Services {
		add(sp)
	}
	slices.Sort(names)
	return slices.Compact(names)
}
