package alert

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/signals"
)

// examplePolicy is the example of docs/detector.md.
const examplePolicy = `{
  "defaults": {
    "warmup": "10s",
    "instance_spread": 0.15
  },
  "services": {
    "checkout": {
      "alpha": 0.001,
      "margin": 1.2,
      "accept_margin": 1.3,
      "min_exposure": "10m",
      "max_duration": "1h",
      "error_ceiling": 0.3,
      "dkw_margin": 0.03,
      "slo_latency": "300ms",
      "quantiles": [0.5, 0.99],
      "requests": "http_requests_total{job=\"checkout\"}",
      "errors": "http_requests_total{job=\"checkout\",code=~'5..'}",
      "latency": "http_request_duration_seconds{route!~'/health.*'}",
      "weights": {"errors": 0.6, "latency": 0.3, "dkw": 0.1}
    }
  }
}`

func TestParsePolicyExample(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	p, err := ParsePolicy([]byte(examplePolicy), &cfg)
	if err != nil {
		t.Fatalf("ParsePolicy: got %v; want no error", err)
	}
	s := settingsFor(&cfg, p, "checkout")
	if s.alpha != 0.001 || s.margin != 1.2 || s.spread != 0.15 || s.warmup != 10*time.Second || s.sloSeconds != 0.3 {
		t.Fatalf("checkout settings: got α=%g margin=%g spread=%g warmup=%s slo=%g; want 0.001 1.2 0.15 10s 0.3",
			s.alpha, s.margin, s.spread, s.warmup, s.sloSeconds)
	}
	if got := s.signals.Errors.String(); !strings.Contains(got, "code=~'5..'") || s.signals.Profile != signals.ProfilePolicy {
		t.Fatalf("errors selector: got %q (profile %q); want the policy's", got, s.signals.Profile)
	}
	other := settingsFor(&cfg, p, "search")
	if other.alpha != cfg.Alpha || other.warmup != 10*time.Second || other.signals != nil || p.Signals(&cfg, "search") != nil {
		t.Fatalf("search settings: got α=%g warmup=%s signals=%v; want flag α, policy default warm-up, detected signals",
			other.alpha, other.warmup, other.signals)
	}
}

// examplePolicyYAML is examplePolicy in YAML, with a pinned profile for another service.
const examplePolicyYAML = `
defaults:
  warmup: 10s
  instance_spread: 0.15
services:
  checkout:
    alpha: 0.001
    margin: 1.2
    slo_latency: 300ms
    quantiles: [0.5, 0.99]
    requests: http_requests_total{job="checkout"}
    errors: http_requests_total{job="checkout",code=~'5..'}
    latency: http_request_duration_seconds{route!~'/health.*'}
    weights: {errors: 0.6, latency: 0.3, dkw: 0.1}
  mesh:
    profile: istio
  legacy:
    latency: request_latency_ms
    latency_unit: 1ms
`

func TestParsePolicyYAML(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	p, err := ParsePolicy([]byte(examplePolicyYAML), &cfg)
	if err != nil {
		t.Fatalf("ParsePolicy(YAML): got %v; want no error", err)
	}
	s := settingsFor(&cfg, p, "checkout")
	if s.alpha != 0.001 || s.spread != 0.15 || s.warmup != 10*time.Second || s.sloSeconds != 0.3 || s.weights.Errors != 0.6 {
		t.Fatalf("checkout settings from YAML: got α=%g spread=%g warmup=%s slo=%g weights=%+v", s.alpha, s.spread, s.warmup, s.sloSeconds, s.weights)
	}
	if got := s.signals.Errors.String(); got != `http_requests_total{job="checkout",code=~'5..'}` {
		t.Fatalf("errors selector from YAML: got %q", got)
	}
	if d := p.Signals(&cfg, "mesh"); d == nil || d.Profile != "istio" || !d.Pinned() {
		t.Fatalf("mesh: got %v; want the istio profile pinned", d)
	}
	if d := p.Signals(&cfg, "legacy"); d == nil || d.LatencyUnit != 0.001 || d.Requests.String() != "requests_total" {
		t.Fatalf("legacy: got %v; want herd's requests and a latency in ms", d)
	}
	for _, c := range []struct{ in, wantErr string }{
		{"services:\n  a:\n    alpah: 0.1\n", "unknown field"},
		{"services:\n  a:\n    alpha: 0.01\n    alpha: 0.02\n", "cannot decode policy as YAML"},
		{"services: [1, 2]\n", "cannot decode policy"},
		{"services:\n  a:\n    profile: nginx\n", `bad profile "nginx"`},
		{"services:\n  a:\n    latency_unit: 1ms\n", "latency_unit: it needs a latency selector"},
		{"services:\n  a:\n    latency: x\n    latency_unit: 0s\n", "bad latency_unit"},
		{"\tservices: {", "cannot decode policy as YAML"},
	} {
		_, err := ParsePolicy([]byte(c.in), &cfg)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("ParsePolicy(%q): got %v; want an error containing %q", c.in, err, c.wantErr)
		}
	}
}

func TestParsePolicyBad(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	for _, c := range []struct{ in, wantErr string }{
		{`{`, "cannot decode policy"},
		{`{"services": {"a": {"alpah": 0.1}}}`, "unknown field"},
		{`{"services": {"a": {"alpha": 0.7}}}`, "bad alpha 0.7"},
		{`{"services": {"a": {"margin": 0.5}}}`, "bad margin 0.5"},
		{`{"services": {"a": {"warmup": "5"}}}`, "missing unit"},
		{`{"services": {"a": {"warmup": 5}}}`, "want a string"},
		{`{"services": {"a": {"errors": "x{code=~\"5(\"}"}}}`, "bad errors: cannot parse selector"},
		{`{"services": {"a": {"quantiles": [1.5]}}}`, "bad quantile 1.5"},
		{`{"services": {"a": {"weights": {"errors": -1}}}}`, "bad weights"},
		{`{"services": {"a": {"slo_latency": "-1s"}}}`, "bad slo_latency"},
		{`{"services": {"Bad Name": {}}}`, "bad policy service"},
		{`{"defaults": {"error_ceiling": 2}}`, "bad policy defaults: bad error_ceiling 2"},
		{`{} {}`, "trailing data"},
	} {
		_, err := ParsePolicy([]byte(c.in), &cfg)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("ParsePolicy(%s): got %v; want an error containing %q", c.in, err, c.wantErr)
		}
	}
}

func TestNewLoadsPolicyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.PolicyFile = filepath.Join(dir, "policy.json")
	if _, err := New(cfg, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "cannot read policy file") {
		t.Fatalf("New with a missing policy file: got %v; want 'cannot read policy file'", err)
	}
	if err := os.WriteFile(cfg.PolicyFile, []byte(examplePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, nil, nil, nil); err != nil {
		t.Fatalf("New with the example policy: got %v; want no error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		mod     func(*Config)
		wantErr string
	}{
		{func(c *Config) { c.Alpha = 0 }, "-detect.alpha"},
		{func(c *Config) { c.Margin = 0.9 }, "-detect.margin"},
		{func(c *Config) { c.AcceptMargin = 0 }, "-detect.accept-margin"},
		{func(c *Config) { c.GoneAfter = 0 }, "-detect.gone-after"},
		{func(c *Config) { c.ErrorCeiling = 1.5 }, "-detect.error-ceiling"},
		{func(c *Config) { c.MaxUnpaired = 0 }, "-detect.max-unpaired"},
	} {
		cfg := DefaultConfig()
		c.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("Validate: got %v; want an error naming %s", err, c.wantErr)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate(defaults): got %v; want nil", err)
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add(examplePolicy)
	f.Add(`{"services": {"a": {"errors": "x{code=~'5..'}"}}}`)
	f.Add(`{"defaults": {"weights": {"errors": 0}}}`)
	f.Add(examplePolicyYAML)
	f.Fuzz(func(t *testing.T, s string) {
		cfg := DefaultConfig()
		p, err := ParsePolicy([]byte(s), &cfg)
		if err != nil {
			return
		}
		for name := range p.Services {
			settingsFor(&cfg, p, name) // must not panic on a checked policy
		}
	})
}

func TestPolicySeriesNames(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	p, err := ParsePolicy([]byte(`{"defaults":{"errors":"http_requests_total{code=~\"5..\"}"},
		"services":{"a":{"requests":"http_requests_total","latency":"http_request_duration_seconds"},"b":{}}}`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(p.SeriesNames(), ",")
	if want := "http_request_duration_seconds,http_requests_total"; got != want {
		t.Errorf("SeriesNames = %s; want %s", got, want)
	}
}
