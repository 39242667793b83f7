package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/export"
	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/otlp"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/rollup/lease"
	"github.com/herd-dev/herd/signals"
	"github.com/herd-dev/herd/web"
)

// Roles selects what a node runs.
type Roles struct {
	// Ingest runs the intake and one rollup over every partition: agent batches in, closed
	// windows out (`herd serve`).
	Ingest bool
	// Rollup runs a partitioned rollup worker: leases decide which partitions it merges
	// (`herd rollup`). It excludes Ingest.
	Rollup bool
	// Detect runs the detector and rollback delivery.
	Detect bool
	// Web runs the dashboard, the JSON API and the websocket stream.
	Web bool
}

// Config configures a node. Start from DefaultConfig; tests build literals from it.
type Config struct {
	Roles Roles
	// Name is the NATS client name (default "herd").
	Name string
	// NATS is the external NATS the node connects to; without URLs the node starts an
	// embedded nats-server listening on NATSListen with its JetStream store under DataDir.
	NATS       bus.Client
	NATSListen string
	// Embedded secures the embedded nats-server: who may connect and what each may publish
	// (an auth file), TLS on its client listener, and its monitoring listener. The node's
	// own connection needs none of it (see New). Only without an external NATS.
	Embedded embednats.Security
	// DataDir holds the embedded server's JetStream store, and the decisions when the NATS
	// server has no JetStream.
	DataDir string
	// HTTPListen is host:port of the HTTP listener (port 0: a free one); empty serves no HTTP.
	HTTPListen string
	// MetricsListen, if set, is a second listener with /metrics, /livez and /readyz only and
	// no token, for a scrape and probes while HTTPListen requires one.
	MetricsListen string
	// Retention is the age bound of the history stream of windows, verdicts and deployments;
	// RetentionBytes its size bound (the oldest messages go first).
	Retention      time.Duration
	RetentionBytes int64
	// Replicas is the JetStream replica count of the history stream.
	Replicas int
	// DrainTimeout bounds how long a partition's intake drains when the partition moves or
	// the worker stops (Roles.Rollup).
	DrainTimeout time.Duration

	Rollup rollup.Config
	Intake ingest.IntakeConfig
	// OTLP configures the OTLP metrics receiver of the ingest role; without listeners
	// (the default here; `herd serve` listens on 4318 and 4317) there is none.
	OTLP    otlp.Config
	Leases  lease.Config
	Detect  alert.Config
	Deliver deliver.Config
	Web     web.Config
	// Export configures /metrics/groups (the detect and web roles).
	Export export.Config
}

// DefaultConfig returns every default, with all of serve's roles.
func DefaultConfig() Config {
	return Config{
		Roles:      Roles{Ingest: true, Detect: true, Web: true},
		Name:       "herd",
		NATSListen: "127.0.0.1:4222", DataDir: "herd-data", HTTPListen: "127.0.0.1:8080",
		Retention: time.Hour, RetentionBytes: 1 << 30, Replicas: 1, DrainTimeout: time.Second,
		Rollup: rollup.DefaultConfig(), Intake: ingest.DefaultIntakeConfig(), Leases: lease.DefaultConfig(),
		Detect: alert.DefaultConfig(), Deliver: deliver.Config{Timeout: 2 * time.Second, MaxRetry: time.Hour},
		Web: web.DefaultConfig(), Export: export.DefaultConfig(),
	}
}

// Validate checks c, naming the offending flag, and derives what one file configures for
// several components: the deploy-tool targets in the policy file's "targets" section (when no
// separate targets file is given) and the series the policy's selectors read, which the
// rollup must split into warm and young instances.
func (c *Config) Validate() error {
	r := c.Roles
	if r == (Roles{}) {
		return fmt.Errorf("no role to run")
	}
	if r.Ingest && r.Rollup {
		return fmt.Errorf("the ingest role and a partitioned rollup worker exclude each other")
	}
	if r.Rollup && c.NATS.URLs == "" {
		return fmt.Errorf("-nats is required")
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("-js.replicas %d must be between 1 and 5", c.Replicas)
	}
	if c.Retention < time.Minute {
		return fmt.Errorf("-retention %s must be at least 1m", c.Retention)
	}
	if c.RetentionBytes < 1<<20 {
		return fmt.Errorf("-retention.bytes %d must be at least 1 MiB", c.RetentionBytes)
	}
	if c.DrainTimeout < 0 {
		return fmt.Errorf("-intake.drain-timeout %s must be ≥ 0", c.DrainTimeout)
	}
	if c.NATS.URLs == "" {
		if err := checkHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("-nats.listen: %w", err)
		}
		if err := c.Embedded.Validate(); err != nil {
			return err
		}
	} else {
		if err := c.NATS.Validate(); err != nil {
			return err
		}
		if e := c.Embedded; e.AuthFile != "" || e.Auth != nil || e.TLS != (embednats.TLS{}) || e.MonitorListen != "" {
			return fmt.Errorf("-nats.auth, -nats.listen.tls.* and -nats.monitor configure the embedded nats-server: not with -nats")
		}
	}
	if c.HTTPListen != "" {
		if err := checkHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("-http: %w", err)
		}
	}
	if c.MetricsListen != "" {
		if c.HTTPListen == "" {
			return fmt.Errorf("-http.metrics-listen needs -http")
		}
		if err := checkHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("-http.metrics-listen: %w", err)
		}
	}
	return c.validateComponents()
}

// validateComponents checks the configuration of each component the roles run and derives
// what the policy file configures for several of them.
func (c *Config) validateComponents() error {
	r := c.Roles
	if r.Ingest || r.Rollup {
		if err := c.Rollup.Validate(); err != nil {
			return err
		}
	}
	if r.Ingest {
		if err := c.Intake.Validate(); err != nil {
			return err
		}
		if err := c.OTLP.Validate(); err != nil {
			return err
		}
	}
	if r.Rollup {
		if c.Leases.WorkerID == "" {
			c.Leases.WorkerID = lease.DefaultWorkerID()
		}
		if err := c.Leases.Validate(); err != nil {
			return err
		}
	}
	if r.Detect {
		if err := c.Detect.Validate(); err != nil {
			return err
		}
		if err := c.targetsFromPolicy(); err != nil {
			return err
		}
		if err := c.Deliver.Validate(); err != nil {
			return err
		}
	}
	if r.Ingest || r.Rollup {
		if err := c.splitSignals(); err != nil {
			return err
		}
	}
	if r.Web {
		if err := c.Web.Validate(); err != nil {
			return err
		}
	}
	if r.Detect || r.Web {
		if err := c.Export.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// targetsFromPolicy reads the deploy-tool targets from the "targets" section of the policy
// file when no separate -deliver.targets file is given, so one file configures a service's
// detection and its rollback targets.
func (c *Config) targetsFromPolicy() error {
	if c.Detect.PolicyFile == "" || c.Deliver.TargetsFile != "" {
		return nil
	}
	data, err := os.ReadFile(c.Detect.PolicyFile)
	if err != nil {
		return fmt.Errorf("-detect.policy: cannot read: %w", err)
	}
	var p struct {
		Targets json.RawMessage `json:"targets"`
	}
	if data, err = alert.PolicyJSON(data); err != nil {
		return nil // the detector reports a malformed policy file with its own words
	}
	if err := json.Unmarshal(data, &p); err != nil || len(p.Targets) == 0 {
		return nil // the detector reports a malformed policy file with its own words
	}
	dec := json.NewDecoder(bytes.NewReader(p.Targets))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c.Deliver.Targets); err != nil {
		return fmt.Errorf("-detect.policy %s: bad targets: %w", c.Detect.PolicyFile, err)
	}
	return nil
}

// splitSignals adds the series the built-in signal profiles and the policy's selectors read
// to -rollup.split-series, so per-instance warm-up and the shadow check apply to services
// with their own series names (a name no service sends costs nothing).
func (c *Config) splitSignals() error {
	if strings.TrimSpace(c.Rollup.SplitSeries) == "*" {
		return nil
	}
	names := signals.SeriesNames()
	if c.Detect.PolicyFile != "" {
		pol, err := alert.LoadPolicy(c.Detect.PolicyFile, &c.Detect)
		if err != nil {
			return fmt.Errorf("-detect.policy: %w", err)
		}
		names = append(names, pol.SeriesNames()...)
	}
	have := map[string]bool{}
	for _, n := range strings.Split(c.Rollup.SplitSeries, ",") {
		have[strings.TrimSpace(n)] = true
	}
	for _, n := range names {
		if !have[n] {
			c.Rollup.SplitSeries += "," + n
			have[n] = true
		}
	}
	return nil
}

// checkHostPort checks a host:port listen address (port 0 picks a free port).
func checkHostPort(hp string) error {
	_, p, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("cannot parse %q as host:port: %w", hp, err)
	}
	if port, err := strconv.Atoi(p); err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("bad port in %q", hp)
	}
	return nil
}
