package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTargetsFromPolicyFile checks that one policy file configures both the detector and the
// deploy-tool targets, and that a bad targets section is refused naming the flag.
func TestTargetsFromPolicyFile(t *testing.T) {
	lightParallel(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(good, []byte(`{
  "defaults": {"alpha": 0.01},
  "services": {"checkout": {"errors": "http_requests_total{code=~\"5..\"}"}},
  "targets": {
    "spinnaker": [{"name": "prod-rollback", "gate": "https://gate.example.com", "source": "herd-rollback",
                   "services": ["checkout"], "on": ["rollback"]}],
    "flagger": [{"namespace": "shop", "name": "checkout", "service": "checkout"}]
  }
}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Detect.PolicyFile = good
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if len(cfg.Deliver.Targets.Spinnaker) != 1 || len(cfg.Deliver.Targets.Flagger) != 1 {
		t.Errorf("got targets %+v; want one Spinnaker and one Flagger target from the policy file", cfg.Deliver.Targets)
	}
	if !strings.Contains(cfg.Rollup.SplitSeries, "http_requests_total") {
		t.Errorf("-rollup.split-series = %q; want the policy's http_requests_total added", cfg.Rollup.SplitSeries)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"targets": {"spinaker": []}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = DefaultConfig()
	cfg.Detect.PolicyFile = bad
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "detect.policy") {
		t.Errorf("misspelt targets: got %v; want an error naming -detect.policy", err)
	}
}

// TestPolicyFileYAMLAndSignals: the policy file may be YAML, targets included; the rollup
// splits every built-in profile's series, and the web role reads the signals the policy pins.
func TestPolicyFileYAMLAndSignals(t *testing.T) {
	lightParallel(t)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(`
services:
  mesh:
    profile: istio
  checkout:
    errors: orders_total{outcome="failed"}
targets:
  flagger:
    - {namespace: shop, name: checkout, service: checkout}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Detect.PolicyFile = path
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if len(cfg.Deliver.Targets.Flagger) != 1 {
		t.Errorf("got targets %+v; want the Flagger target of the YAML policy", cfg.Deliver.Targets)
	}
	for _, want := range []string{"orders_total", "http_requests_total", "http.server.request.duration", "istio_requests_total"} {
		if !strings.Contains(cfg.Rollup.SplitSeries, want) {
			t.Errorf("-rollup.split-series = %q; want %s split", cfg.Rollup.SplitSeries, want)
		}
	}
	pinned, err := policySignals(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d := pinned("mesh"); d == nil || d.Profile != "istio" {
		t.Errorf("mesh: got %v; want the istio profile pinned", d)
	}
	if d := pinned("checkout"); d == nil || d.Profile != "policy" || d.Errors.String() != `orders_total{outcome="failed"}` {
		t.Errorf("checkout: got %v; want the policy's errors selector", d)
	}
	if d := pinned("search"); d != nil {
		t.Errorf("search: got %v; want nil (detected)", d)
	}
}
