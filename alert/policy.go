package alert

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Policy is the detector's policy file: overrides of the flag defaults for all services
// (Defaults) and per service (Services, keyed by service name). It is JSON or YAML (the same
// fields; see ParsePolicy); unknown fields are errors. docs/detector.md documents every field
// with an example.
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
	// Watch and WatchAlpha set the watch after a pass (see Config.Watch, Config.WatchAlpha).
	Watch      *Duration `json:"watch,omitempty"`
	WatchAlpha *float64  `json:"watch_alpha,omitempty"`
	// SLOLatency adds a latency test at the bucket edge at or just above this latency.
	SLOLatency *Duration `json:"slo_latency,omitempty"`
	// Quantiles of the baseline at which latency thresholds are frozen (default 0.5, 0.9, 0.99).
	Quantiles []float64 `json:"quantiles,omitempty"`
	// Profile pins one of the built-in signal profiles (signals.ProfileNames) instead of
	// detecting it from the series the service sends.
	Profile string `json:"profile,omitempty"`
	// Requests, Errors and Latency are selectors mapping the service's own series onto the
	// signals, in place of the profile's (see package signals). Requests and Errors sum
	// counters and histograms' counts; Latency merges histograms. Any of them (or Profile)
	// pins the service's signals: without, its profile is detected from its series.
	Requests string `json:"requests,omitempty"`
	Errors   string `json:"errors,omitempty"`
	Latency  string `json:"latency,omitempty"`
	// LatencyUnit is the unit of the Latency selector's histogram values, e.g. "1ms"
	// (default one second).
	LatencyUnit *Duration `json:"latency_unit,omitempty"`
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
	watch                                             time.Duration // 0: no watch after a pass
	watchAlpha                                        float64
	sloSeconds                                        float64 // 0: none
	quantiles                                         []float64
	weights                                           Weights
	// signals is the definition the policy pins, or nil: the profile is detected.
	signals *signals.Definition
}

var (
	defaultQuantiles = []float64{0.5, 0.9, 0.99}
	defaultWeights   = Weights{Errors: 0.5, Latency: 0.4, DKW: 0.1}
)

// baseSettings returns the settings the flags give.
func (c *Config) baseSettings() settings {
	return settings{
		alpha: c.Alpha, margin: c.Margin, spread: c.InstanceSpread, accept: c.AcceptMargin,
		ceiling: c.ErrorCeiling, dkwMargin: c.DKWMargin,
		warmup: c.Warmup, coldStart: c.ColdStart, minExposure: c.MinExposure, maxDuration: c.MaxDuration,
		watch: c.Watch, watchAlpha: c.WatchAlpha,
		quantiles: defaultQuantiles, weights: defaultWeights,
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
	setD(&s.watch, sp.Watch)
	setF(&s.watchAlpha, sp.WatchAlpha)
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
	if err := s.pin(sp); err != nil {
		return err
	}
	return s.validate("")
}

// pin overlays the signal definition of sp (a profile, selectors) on s's.
func (s *settings) pin(sp *ServicePolicy) error {
	if sp.Profile == "" && sp.Requests == "" && sp.Errors == "" && sp.Latency == "" {
		if sp.LatencyUnit != nil {
			return fmt.Errorf("bad latency_unit: it needs a latency selector")
		}
		return nil
	}
	base := s.signals
	if sp.Profile != "" {
		if base = signals.Profile(sp.Profile); base == nil {
			return fmt.Errorf("bad profile %q: want one of %s", sp.Profile, strings.Join(signals.ProfileNames(), ", "))
		}
	}
	var unit float64
	if sp.LatencyUnit != nil {
		if sp.Latency == "" {
			return fmt.Errorf("bad latency_unit: it needs a latency selector")
		}
		if unit = time.Duration(*sp.LatencyUnit).Seconds(); !(unit > 0) {
			return fmt.Errorf("bad latency_unit %s: want > 0", time.Duration(*sp.LatencyUnit))
		}
	}
	d, err := signals.Pin(base, sp.Requests, sp.Errors, sp.Latency, unit)
	if err != nil {
		return err
	}
	s.signals = d
	return nil
}

// ParsePolicy decodes and checks a policy file's contents against the flag defaults in cfg.
// The file is JSON, or YAML with the same field names (converted to JSON by sigs.k8s.io/yaml);
// either way unknown fields and duplicate keys are errors.
func ParsePolicy(data []byte, cfg *Config) (*Policy, error) {
	var p Policy
	data, err := PolicyJSON(data)
	if err != nil {
		return nil, err
	}
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

// PolicyJSON returns a policy file's contents as JSON: data itself when it is a JSON object,
// else data read as YAML (sigs.k8s.io/yaml, strict: duplicate keys are errors). Other readers
// of the file (the deploy-tool targets) decode through it too.
func PolicyJSON(data []byte) ([]byte, error) {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return data, nil
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("cannot decode policy as YAML: %w", err)
	}
	return j, nil
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
			if sel, err := signals.ParseSelector(text); err == nil && sel.Name != "" {
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

// Signals returns the signal definition p pins for service, or nil when the service's
// profile is to be detected from its series. cfg gives the flag defaults p was checked
// against. The dashboard and `herd tail` read the same definition as the detector with it.
func (p *Policy) Signals(cfg *Config, service string) *signals.Definition {
	if p == nil {
		return nil
	}
	return settingsFor(cfg, p, service).signals
}
