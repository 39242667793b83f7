package deliver

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("herd", flag.ContinueOnError)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{
		"-webhook", "https://a.example/hook", "-webhook", "https://b.example/hook",
		"-webhook-secret", "whsec_c2VjcmV0", "-deliver.timeout", "3s",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Webhooks) != 2 || c.Timeout != 3*time.Second || c.MaxRetry != time.Hour {
		t.Errorf("got %+v; want 2 webhooks, timeout 3s, max-retry 1h", c)
	}
	if len(c.secrets) != 1 || string(c.secrets[0]) != "secret" {
		t.Errorf("got secrets %q; want the decoded whsec_ secret", c.secrets)
	}
	var help bytes.Buffer
	fs.SetOutput(&help)
	fs.PrintDefaults()
	if strings.Contains(help.String(), "c2VjcmV0") {
		t.Errorf("flag help shows the secret: %s", help.String())
	}
}

func TestConfigRotatingSecrets(t *testing.T) {
	c := Config{Webhooks: []string{"https://a.example/"}, WebhookSecrets: []string{"new-secret, whsec_b2xk"}, Timeout: time.Second, MaxRetry: time.Hour}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.secrets) != 2 || string(c.secrets[0]) != "new-secret" || string(c.secrets[1]) != "old" {
		t.Errorf("got secrets %q; want [new-secret old]", c.secrets)
	}
}

// TestConfigReadsNoEnvironment: the package reads only what the caller passes: neither
// HERD_WEBHOOK_SECRET nor a target's token_env comes from the process environment.
func TestConfigReadsNoEnvironment(t *testing.T) {
	t.Setenv(EnvWebhookSecret, "from-the-environment")
	t.Setenv("HERD_TEST_ARGO_TOKEN", "from-the-environment")
	c := Config{Webhooks: []string{"https://a.example/"}, Timeout: time.Second, MaxRetry: time.Hour}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-webhook needs a signing secret") {
		t.Errorf("webhook without WebhookSecrets, $%s set: got %v; want '-webhook needs a signing secret'", EnvWebhookSecret, err)
	}
	argo := ArgoTarget{Service: "checkout", APIServer: "https://k8s.example", Namespace: "shop", Rollout: "checkout", TokenEnv: "HERD_TEST_ARGO_TOKEN"}
	c = Config{Timeout: time.Second, MaxRetry: time.Hour, Targets: Targets{Argo: []ArgoTarget{argo}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "no environment was given") {
		t.Errorf("token_env without Getenv: got %v; want 'no environment was given'", err)
	}
	if tok, err := readToken("", argo.TokenEnv, nil); err == nil || tok != "" {
		t.Errorf("readToken without getenv: got %q, %v; want no token and an error", tok, err)
	}
	env := map[string]string{"HERD_TEST_ARGO_TOKEN": " from-the-caller \n"}
	c.Getenv = func(k string) string { return env[k] }
	if err := c.Validate(); err != nil {
		t.Fatalf("token_env with Getenv: got %v; want nil", err)
	}
	if tok, err := readToken("", argo.TokenEnv, c.Getenv); err != nil || tok != "from-the-caller" {
		t.Errorf("readToken with getenv: got %q, %v; want the caller's token", tok, err)
	}
}

func TestConfigErrors(t *testing.T) {
	write := func(s string) string {
		p := filepath.Join(t.TempDir(), "targets.json")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := Config{Timeout: time.Second, MaxRetry: time.Hour}
	for _, c := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no secret", func(c *Config) { c.Webhooks = []string{"https://a.example/"} }, "-webhook needs a signing secret"},
		{"bad url", func(c *Config) { c.Webhooks = []string{"ftp://a.example/"}; c.WebhookSecrets = []string{"s"} }, "-webhook"},
		{"bad whsec", func(c *Config) { c.WebhookSecrets = []string{"whsec_%%%"} }, "-webhook-secret"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "-deliver.timeout"},
		{"missing file", func(c *Config) { c.TargetsFile = "/nonexistent/targets.json" }, "-deliver.targets"},
		{"unknown field", func(c *Config) { c.TargetsFile = write(`{"argo":[{"service":"a","apiserver":"x"}]}`) }, "unknown field"},
		{"argo without rollout", func(c *Config) {
			c.TargetsFile = write(`{"argo":[{"service":"checkout","api_server":"https://k8s","namespace":"shop"}]}`)
		}, "namespace and rollout are required"},
		{"spinnaker bad on", func(c *Config) {
			c.TargetsFile = write(`{"spinnaker":[{"gate":"https://gate","source":"herd","on":["pending"]}]}`)
		}, "not rollback or pass"},
		{"flagger bad service", func(c *Config) {
			c.TargetsFile = write(`{"flagger":[{"namespace":"shop","name":"c","service":"Bad"}]}`)
		}, "flagger[0]"},
	} {
		cfg := ok
		c.mod(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error containing %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "%%%") {
			t.Errorf("%s: error %q shows the secret", c.name, err)
		}
	}
}

func TestConfigTargetsFile(t *testing.T) {
	t.Parallel()
	// The example of docs/webhooks.md.
	const example = `{
  "argo": [{"service": "checkout", "api_server": "https://kubernetes.default.svc",
            "namespace": "shop", "rollout": "checkout",
            "token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "version_label": "app.kubernetes.io/version"}],
  "spinnaker": [{"name": "prod-rollback", "gate": "https://gate.example.com", "source": "herd-rollback",
                 "services": ["checkout", "payments"], "parameters": {"env": "prod"}, "on": ["rollback"]}],
  "flagger": [{"namespace": "shop", "name": "checkout", "service": "checkout"}]
}`
	p := filepath.Join(t.TempDir(), "targets.json")
	if err := os.WriteFile(p, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{Timeout: time.Second, MaxRetry: time.Hour, TargetsFile: p}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Targets.Argo) != 1 || len(c.Targets.Spinnaker) != 1 || len(c.Targets.Flagger) != 1 {
		t.Fatalf("got %+v; want one target of each kind", c.Targets)
	}
	d, err := New(c, nil, &FileStore{dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range d.order {
		names = append(names, tg.name())
	}
	if got, want := strings.Join(names, " "), "argo:shop/checkout spinnaker:prod-rollback"; got != want {
		t.Errorf("got targets %q; want %q", got, want)
	}
}
