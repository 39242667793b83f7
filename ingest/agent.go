package ingest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/ingest/mesh"
)

// AgentConfig is the configuration of `herd agent`: the instance's identity, the endpoint it
// scrapes and the batch interval. The NATS connection is the caller's.
type AgentConfig struct {
	// Service and Version identify the group (flags -service, -version).
	Service string
	Version string
	// Scrape is the local Prometheus / OpenMetrics endpoint (flag -scrape).
	Scrape string
	// Interval is the scrape and batch interval (flag -interval, default 250 ms).
	Interval time.Duration
	// Mesh names the mesh profile (flag -mesh: none, istio or linkerd): the target is a
	// mesh proxy whose request metrics become herd's RED series (package ingest/mesh).
	Mesh string

	serviceFrom, versionFrom string // environment variable a default came from
}

// RegisterFlags registers -service, -version, -scrape and -interval on fs. The service and
// version default to OpenTelemetry's conventions, read through getenv (the caller's view of
// the environment; the package reads none itself): OTEL_SERVICE_NAME, then service.name in
// OTEL_RESOURCE_ATTRIBUTES, for the service; service.version there for the version. A flag
// (or the caller's HERD_* fallback for it) wins.
func (c *AgentConfig) RegisterFlags(fs *flag.FlagSet, getenv func(string) string) {
	res := otelResource(getenv("OTEL_RESOURCE_ATTRIBUTES"))
	svc, svcFrom := firstSet(
		envVal{"OTEL_SERVICE_NAME", getenv("OTEL_SERVICE_NAME")},
		envVal{"OTEL_RESOURCE_ATTRIBUTES service.name", res["service.name"]})
	ver, verFrom := firstSet(
		envVal{"OTEL_RESOURCE_ATTRIBUTES service.version", res["service.version"]})
	c.serviceFrom, c.versionFrom = svcFrom, verFrom
	fs.StringVar(&c.Service, "service", svc, "service `name` of this instance: lower-case a-z, 0-9, '_', '-' "+
		"(default OTEL_SERVICE_NAME, or service.name in OTEL_RESOURCE_ATTRIBUTES)")
	fs.StringVar(&c.Version, "version", ver, "`version` (deploy group) of this instance, e.g. 1.4.2 "+
		"(default service.version in OTEL_RESOURCE_ATTRIBUTES)")
	fs.StringVar(&c.Scrape, "scrape", "", "local Prometheus/OpenMetrics `URL` to scrape every interval, e.g. http://127.0.0.1:9100/metrics")
	fs.DurationVar(&c.Interval, "interval", DefaultInterval, "scrape and batch interval, aligned to wall-clock multiples (`duration`)")
	fs.StringVar(&c.Mesh, "mesh", "", "mesh `profile` of the target: none, istio (an Envoy sidecar's /stats/prometheus) or linkerd "+
		"(a linkerd-proxy's :4191/metrics): its request metrics become requests_total, errors_total and latency_seconds")
}

type envVal struct{ name, value string }

func firstSet(vs ...envVal) (value, from string) {
	for _, v := range vs {
		if v.value != "" {
			return v.value, v.name
		}
	}
	return "", ""
}

// otelResource parses OTEL_RESOURCE_ATTRIBUTES: comma-separated key=value pairs with
// percent-encoded values.
func otelResource(s string) map[string]string {
	m := make(map[string]string)
	for kv := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if u, err := url.PathUnescape(strings.TrimSpace(v)); err == nil {
			m[strings.TrimSpace(k)] = u
		}
	}
	return m
}

// Validate checks the config, naming the flag or environment variable at fault.
func (c *AgentConfig) Validate() error {
	cc := ClientConfig{Service: c.Service, Version: c.Version, Interval: c.Interval, MaxSeries: DefaultMaxSeries, Publish: func(string, []byte) error { return nil }}
	if c.Service == "" {
		return errors.New("-service is required (or OTEL_SERVICE_NAME)")
	}
	if c.Version == "" {
		return errors.New("-version is required (or service.version in OTEL_RESOURCE_ATTRIBUTES)")
	}
	if err := cc.Validate(); err != nil {
		switch {
		case strings.HasPrefix(err.Error(), "invalid service"):
			return fmt.Errorf("-service%s: %w", from(c.serviceFrom), err)
		case strings.HasPrefix(err.Error(), "invalid version"):
			return fmt.Errorf("-version%s: %w", from(c.versionFrom), err)
		}
		return fmt.Errorf("-interval: %w", err)
	}
	if _, err := mesh.Parse(c.Mesh); err != nil {
		return fmt.Errorf("-mesh: %w", err)
	}
	if c.Scrape == "" {
		return errors.New("-scrape is required: the local metrics URL, e.g. http://127.0.0.1:9100/metrics")
	}
	if u, err := url.Parse(c.Scrape); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-scrape %q: want http(s)://host[:port]/path", c.Scrape)
	}
	return nil
}

func from(env string) string {
	if env == "" {
		return ""
	}
	return " (from " + env + ")"
}

// Agent is `herd agent`: a Client fed by a Scraper, publishing one batch per interval.
type Agent struct {
	client  *Client
	scraper *Scraper
	log     *slog.Logger
	cfg     AgentConfig
}

// NewAgent builds an agent publishing through publish (cmd/herd passes nats.Conn.Publish),
// with its herd_agent_* metrics in set (nil: a private Set). It starts nothing.
func NewAgent(cfg AgentConfig, set *metrics.Set, publish PublishFunc, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	c, err := NewClient(ClientConfig{Service: cfg.Service, Version: cfg.Version, Interval: cfg.Interval,
		Publish: publish, Logger: logger, Metrics: set})
	if err != nil {
		return nil, err
	}
	sc := ScraperConfig{URL: cfg.Scrape}
	if p, _ := mesh.Parse(cfg.Mesh); p != mesh.None {
		sc.Rewriter = p.Rewriter().WithMetrics(set)
	}
	s, err := NewScraper(sc, c, logger.With("component", "agent", "url", cfg.Scrape), set)
	if err != nil {
		return nil, err
	}
	return &Agent{client: c, scraper: s, log: logger.With("component", "agent"), cfg: cfg}, nil
}

// Client returns the agent's client (its Stats, its instance id).
func (a *Agent) Client() *Client { return a.client }

// Run scrapes and publishes at every interval boundary until ctx is cancelled, then scrapes
// once more and publishes the final batch (Final=true). It returns the final batch's error.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("agent started", "service", a.cfg.Service, "version", a.cfg.Version, "scrape", a.cfg.Scrape,
		"interval", a.cfg.Interval, "instance", a.client.Instance(), "subject", a.client.Subject())
	err := a.scraper.Run(ctx)
	st := a.client.Stats()
	a.log.Info("agent stopped", "batches_sent", st.Sent, "batches_unsent", st.Unsent, "bytes", st.Bytes, "missed_ticks", st.MissedTicks)
	if err != nil {
		return fmt.Errorf("cannot send the final batch: %w", err)
	}
	return nil
}

// RunAgent builds an Agent, with its metrics in a private Set, and runs it until ctx is done.
func RunAgent(ctx context.Context, cfg AgentConfig, publish PublishFunc, logger *slog.Logger) error {
	a, err := NewAgent(cfg, nil, publish, logger)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
