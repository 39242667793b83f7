package deliver

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/herd-dev/herd/proto"
)

// EnvWebhookSecret is the environment variable herd's command line reads -webhook-secret
// from when the flag is not given, so the secret need not appear on a command line. The
// package itself reads no environment: the caller fills WebhookSecrets and Getenv.
const EnvWebhookSecret = "HERD_WEBHOOK_SECRET"

// Config configures delivery. The zero value plus Validate delivers nothing; tests build
// literals.
type Config struct {
	// Webhooks are the generic webhook URLs (-webhook, repeatable).
	Webhooks []string
	// WebhookSecrets sign webhooks (-webhook-secret, repeatable; herd's command line falls
	// back to HERD_WEBHOOK_SECRET). Each value may hold several secrets separated by spaces
	// or commas; all of them sign every request (rotation). A secret "whsec_<base64>" is
	// base64-decoded; any other is used as its bytes.
	WebhookSecrets []string
	// DeliverPass also delivers pass decisions to generic webhooks, with type
	// canary.promotion.confirmed (-deliver.pass).
	DeliverPass bool
	// Timeout bounds one delivery attempt (-deliver.timeout).
	Timeout time.Duration
	// MaxRetry is how long a failing delivery keeps being retried before it is given up as
	// failed (-deliver.max-retry).
	MaxRetry time.Duration
	// TargetsFile is a JSON file with Argo Rollouts, Spinnaker and Flagger targets
	// (-deliver.targets); Validate loads it into Targets.
	TargetsFile string
	// Targets are the deploy-tool targets; set by Validate from TargetsFile, or directly.
	Targets Targets
	// Getenv looks up the environment variables that targets name in token_env, at every
	// attempt. The caller passes its view of the environment (cmd/herd: os.Getenv); nil means
	// no environment, and Validate refuses a target with token_env.
	Getenv func(string) string

	// secrets are the decoded WebhookSecrets; set by Validate.
	secrets [][]byte
}

// Targets is the content of the -deliver.targets file.
type Targets struct {
	Argo      []ArgoTarget      `json:"argo,omitempty"`
	Spinnaker []SpinnakerTarget `json:"spinnaker,omitempty"`
	Flagger   []FlaggerCanary   `json:"flagger,omitempty"`
}

// ArgoTarget is one Argo Rollouts rollout that a rollback decision of Service aborts.
type ArgoTarget struct {
	// Service is the herd service whose rollback decisions abort this rollout.
	Service string `json:"service"`
	// APIServer is the Kubernetes API server URL, e.g. https://kubernetes.default.svc.
	APIServer string `json:"api_server"`
	Namespace string `json:"namespace"`
	Rollout   string `json:"rollout"`
	// TokenFile or TokenEnv give the bearer token; the file is re-read at every attempt
	// (projected service-account tokens rotate), the variable looked up through
	// Config.Getenv. The token is never logged or served.
	TokenFile string `json:"token_file,omitempty"`
	TokenEnv  string `json:"token_env,omitempty"`
	// CAFile is a PEM bundle to verify the API server with (default: system roots).
	CAFile string `json:"ca_file,omitempty"`
	// VersionLabel is the pod template label that carries the version herd judges
	// (default app.kubernetes.io/version).
	VersionLabel string `json:"version_label,omitempty"`
}

// SpinnakerTarget is one Spinnaker webhook trigger.
type SpinnakerTarget struct {
	// Name identifies the target in the delivery log (default: the source).
	Name string `json:"name,omitempty"`
	// Services limits the target to these herd services (empty: all).
	Services []string `json:"services,omitempty"`
	// Gate is the Spinnaker Gate base URL; herd POSTs to <gate>/webhooks/webhook/<source>.
	Gate   string `json:"gate"`
	Source string `json:"source"`
	// Parameters are added to the pipeline parameters herd sends.
	Parameters map[string]string `json:"parameters,omitempty"`
	// On lists the verdict states that trigger the pipeline: "rollback" (default) and/or "pass".
	On []proto.State `json:"on,omitempty"`
	// TokenFile or TokenEnv give an optional bearer token for Gate.
	TokenFile string `json:"token_file,omitempty"`
	TokenEnv  string `json:"token_env,omitempty"`
}

// FlaggerCanary maps a Flagger canary (namespace/name) to a herd service for the Flagger
// hook endpoints. A canary not listed here is mapped by the "service" key of the webhook's
// metadata, then by its name.
type FlaggerCanary struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Service   string `json:"service"`
}

type stringsFlag struct{ p *[]string }

func (f stringsFlag) String() string {
	if f.p == nil {
		return ""
	}
	return strings.Join(*f.p, ",")
}

func (f stringsFlag) Set(s string) error {
	*f.p = append(*f.p, s)
	return nil
}

// secretsFlag is a repeatable flag that never prints its values.
type secretsFlag struct{ p *[]string }

func (f secretsFlag) String() string { return "" }

func (f secretsFlag) Set(s string) error {
	*f.p = append(*f.p, s)
	return nil
}

// RegisterFlags registers the delivery flags on fs with their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var(stringsFlag{&c.Webhooks}, "webhook",
		"generic webhook URL that receives signed rollback decisions (repeatable; default none)")
	fs.Var(secretsFlag{&c.WebhookSecrets}, "webhook-secret",
		"webhook signing secret, plain or whsec_<base64>; several separated by spaces sign with each (rotation); "+
			"repeatable; default none")
	fs.BoolVar(&c.DeliverPass, "deliver.pass", false,
		"also deliver pass decisions to generic webhooks as canary.promotion.confirmed")
	fs.DurationVar(&c.Timeout, "deliver.timeout", 2*time.Second,
		"timeout of one delivery attempt")
	fs.DurationVar(&c.MaxRetry, "deliver.max-retry", time.Hour,
		"how long a failing delivery is retried before it is given up")
	fs.StringVar(&c.TargetsFile, "deliver.targets", "",
		"JSON file with Argo Rollouts, Spinnaker and Flagger targets, see docs/webhooks.md (default none)")
}

// Validate checks c, decodes the secrets and loads TargetsFile. Errors name the flag.
func (c *Config) Validate() error {
	if c.Timeout <= 0 {
		return fmt.Errorf("-deliver.timeout must be positive; got %s", c.Timeout)
	}
	if c.MaxRetry <= 0 {
		return fmt.Errorf("-deliver.max-retry must be positive; got %s", c.MaxRetry)
	}
	for _, w := range c.Webhooks {
		if err := validURL(w); err != nil {
			return fmt.Errorf("-webhook: %w", err)
		}
	}
	c.secrets = c.secrets[:0]
	for _, v := range c.WebhookSecrets {
		for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' || r == '\n' }) {
			key, err := decodeSecret(s)
			if err != nil {
				return fmt.Errorf("-webhook-secret: %w", err)
			}
			c.secrets = append(c.secrets, key)
		}
	}
	if len(c.Webhooks) > 0 && len(c.secrets) == 0 {
		return fmt.Errorf("-webhook needs a signing secret: set -webhook-secret or $%s", EnvWebhookSecret)
	}
	if c.TargetsFile != "" {
		data, err := os.ReadFile(c.TargetsFile)
		if err != nil {
			return fmt.Errorf("-deliver.targets: cannot read: %w", err)
		}
		var t Targets
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&t); err != nil {
			return fmt.Errorf("-deliver.targets: cannot parse %s: %w", c.TargetsFile, err)
		}
		c.Targets = t
	}
	if err := c.Targets.validate(c.Getenv != nil); err != nil {
		if c.TargetsFile != "" {
			return fmt.Errorf("-deliver.targets %s: %w", c.TargetsFile, err)
		}
		return err
	}
	return nil
}

// decodeSecret turns a configured secret into HMAC key bytes.
func decodeSecret(s string) ([]byte, error) {
	if b64, ok := strings.CutPrefix(s, "whsec_"); ok {
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			// Never echo the secret itself.
			return nil, errors.New("a whsec_ secret is not valid base64")
		}
		if len(key) == 0 {
			return nil, errors.New("a whsec_ secret is empty")
		}
		return key, nil
	}
	return []byte(s), nil
}

func validURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("cannot parse URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("URL %q must be http(s)://host[:port][/path]", redactURL(s))
	}
	return nil
}

// validate checks the targets; withEnv says whether token_env can be looked up.
func (t *Targets) validate(withEnv bool) error {
	for i, a := range t.Argo {
		if err := proto.ValidService(a.Service); err != nil {
			return fmt.Errorf("argo[%d]: %w", i, err)
		}
		if err := validURL(a.APIServer); err != nil {
			return fmt.Errorf("argo[%d].api_server: %w", i, err)
		}
		if a.Namespace == "" || a.Rollout == "" {
			return fmt.Errorf("argo[%d]: namespace and rollout are required", i)
		}
		if strings.ContainsAny(a.Namespace+a.Rollout, "/?#% ") {
			return fmt.Errorf("argo[%d]: namespace %q or rollout %q is not a Kubernetes name", i, a.Namespace, a.Rollout)
		}
		if a.TokenFile != "" && a.TokenEnv != "" {
			return fmt.Errorf("argo[%d]: set token_file or token_env, not both", i)
		}
		if a.TokenEnv != "" && !withEnv {
			return fmt.Errorf("argo[%d]: token_env %s, but no environment was given (Config.Getenv is nil)", i, a.TokenEnv)
		}
	}
	names := map[string]bool{}
	for i, s := range t.Spinnaker {
		if err := validURL(s.Gate); err != nil {
			return fmt.Errorf("spinnaker[%d].gate: %w", i, err)
		}
		if s.Source == "" || strings.ContainsAny(s.Source, "/?#% ") {
			return fmt.Errorf("spinnaker[%d]: source %q must be a non-empty path segment", i, s.Source)
		}
		for _, svc := range s.Services {
			if err := proto.ValidService(svc); err != nil {
				return fmt.Errorf("spinnaker[%d].services: %w", i, err)
			}
		}
		for _, st := range s.On {
			if st != proto.StateRollback && st != proto.StatePass {
				return fmt.Errorf("spinnaker[%d].on: %q is not rollback or pass", i, st)
			}
		}
		if s.TokenFile != "" && s.TokenEnv != "" {
			return fmt.Errorf("spinnaker[%d]: set token_file or token_env, not both", i)
		}
		if s.TokenEnv != "" && !withEnv {
			return fmt.Errorf("spinnaker[%d]: token_env %s, but no environment was given (Config.Getenv is nil)", i, s.TokenEnv)
		}
		n := spinnakerName(s)
		if names[n] {
			return fmt.Errorf("spinnaker[%d]: name %q is used twice", i, n)
		}
		names[n] = true
	}
	for i, f := range t.Flagger {
		if f.Name == "" || f.Namespace == "" {
			return fmt.Errorf("flagger[%d]: namespace and name are required", i)
		}
		if err := proto.ValidService(f.Service); err != nil {
			return fmt.Errorf("flagger[%d]: %w", i, err)
		}
	}
	return nil
}

func spinnakerName(s SpinnakerTarget) string {
	if s.Name != "" {
		return s.Name
	}
	return s.Source
}

func spinnakerOn(s SpinnakerTarget, st proto.State) bool {
	if len(s.On) == 0 {
		return st == proto.StateRollback
	}
	return slices.Contains(s.On, st)
}

// redactURL drops user info, query and fragment, which may carry credentials.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}
