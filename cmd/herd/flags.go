package main

import (
	"flag"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/node"
)

// defaultNATSURL is where every client command looks for NATS unless told otherwise: the
// client listener of a local `herd serve`.
const defaultNATSURL = "nats://127.0.0.1:4222"

// natsFlags registers --nats, the NATS servers a command connects to, and the client's
// credentials and TLS settings. It is the one definition every command shares; serve's
// default URL is empty (start an embedded server).
func natsFlags(fs *flag.FlagSet, c *bus.Client, def string) {
	usage := "NATS server `URL`s, comma-separated (a cluster's nodes)"
	if def == "" {
		usage = "external NATS server `URL`s, comma-separated; empty starts an embedded nats-server"
	}
	fs.StringVar(&c.URLs, "nats", def, usage)
	fs.StringVar(&c.User, "nats.user", "", "NATS user `name` (with -nats.password)")
	fs.StringVar(&c.Password, "nats.password", "", "NATS `password` (prefer the environment variable to the command line)")
	fs.StringVar(&c.CredsFile, "nats.creds", "", "NATS JWT credentials `file` (.creds)")
	fs.StringVar(&c.NKeyFile, "nats.nkey", "", "`file` holding a NATS user nkey seed")
	fs.StringVar(&c.TLSCA, "nats.tls.ca", "", "PEM `file` of the CA certificates that verify the NATS server")
	fs.StringVar(&c.TLSCert, "nats.tls.cert", "", "PEM client certificate `file` for NATS mutual TLS (with -nats.tls.key)")
	fs.StringVar(&c.TLSKey, "nats.tls.key", "", "PEM client key `file` for NATS mutual TLS")
}

// httpFlag registers --http, the listener of a node's HTTP endpoints.
func httpFlag(fs *flag.FlagSet, dst *string, what string) {
	fs.StringVar(dst, "http", *dst, "HTTP listener (`host:port`, port 0 picks a free one): "+what)
}

// nodeFlags registers the flags of a node running roles r on fs, writing into cfg: each
// shared flag from one definition, each component's flags from its own RegisterFlags.
// getenv is the process environment (the libraries read none): delivery looks up the
// targets' token_env variables with it.
func nodeFlags(fs *flag.FlagSet, cfg *node.Config, r node.Roles, getenv func(string) string) {
	embedded := r.Ingest // serve (and demo) start an embedded NATS unless told otherwise
	if embedded {
		natsFlags(fs, &cfg.NATS, "")
		fs.StringVar(&cfg.NATSListen, "nats.listen", cfg.NATSListen, "client listener of the embedded nats-server (`host:port`, port 0 picks a free one)")
		e := &cfg.Embedded
		fs.StringVar(&e.AuthFile, "nats.auth", e.AuthFile, "JSON `file` of the embedded nats-server's identities: herd's internal one and each service's agents, which may publish only their service's batches (empty: no authentication; see docs/security.md)")
		fs.StringVar(&e.TLS.Cert, "nats.listen.tls.cert", e.TLS.Cert, "PEM certificate `file` of the embedded nats-server's client listener; clients must then use TLS (with -nats.listen.tls.key; empty: no TLS)")
		fs.StringVar(&e.TLS.Key, "nats.listen.tls.key", e.TLS.Key, "PEM key `file` of -nats.listen.tls.cert")
		fs.StringVar(&e.TLS.CA, "nats.listen.tls.ca", e.TLS.CA, "PEM `file` of the CA certificates that sign client certificates: every client must then present one (mutual TLS; empty: none asked)")
		fs.StringVar(&e.MonitorListen, "nats.monitor", e.MonitorListen, "monitoring listener of the embedded nats-server (`host:port` on a loopback address, port 0 picks a free one; empty: off)")
	} else {
		natsFlags(fs, &cfg.NATS, defaultNATSURL)
	}
	switch {
	case r.Rollup:
		cfg.HTTPListen = ""
		httpFlag(fs, &cfg.HTTPListen, "/metrics, /livez and /readyz (empty: none)")
	case r.Web:
		httpFlag(fs, &cfg.HTTPListen, "the dashboard, the API, /metrics, /livez and /readyz")
	default:
		httpFlag(fs, &cfg.HTTPListen, "the decisions API, /metrics, /livez and /readyz")
	}
	ops := "/metrics, /livez and /readyz"
	if r.Detect || r.Web || embedded {
		ops = "/metrics, /metrics/groups (herd's rollups and verdicts), /livez and /readyz"
	}
	fs.StringVar(&cfg.MetricsListen, "http.metrics-listen", cfg.MetricsListen, "a second listener (`host:port`) with "+ops+" only and no token, for a Prometheus scrape and probes while -http requires a token (empty: none)")
	if r.Detect || r.Web || embedded {
		fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "`directory` of the embedded nats-server's JetStream store, and of decisions when NATS has no JetStream")
		fs.DurationVar(&cfg.Retention, "retention", cfg.Retention, "how long closed windows, verdicts and deployments are kept in JetStream for restarts (`duration`)")
		fs.Int64Var(&cfg.RetentionBytes, "retention.bytes", cfg.RetentionBytes, "size bound of that history stream; the oldest messages go first (`bytes`)")
		fs.IntVar(&cfg.Replicas, "js.replicas", cfg.Replicas, "JetStream replicas of herd's history stream (`count`; 3 on a 3-node cluster)")
	}
	if r.Ingest || r.Rollup {
		cfg.Rollup.RegisterFlags(fs)
	}
	if r.Ingest {
		cfg.Intake.RegisterFlags(fs)
		cfg.OTLP.RegisterFlags(fs)
	}
	if r.Rollup {
		fs.DurationVar(&cfg.DrainTimeout, "intake.drain-timeout", cfg.DrainTimeout, "how long a partition's intake drains when the partition moves or the worker stops (`duration`)")
		cfg.Leases.RegisterFlags(fs)
	}
	if r.Detect {
		cfg.Detect.RegisterFlags(fs)
		cfg.Deliver.RegisterFlags(fs)
		cfg.Deliver.Getenv = getenv
	}
	if r.Detect || r.Web {
		cfg.Export.RegisterFlags(fs)
	}
	if r.Web {
		cfg.Web.RegisterFlags(fs)
		if !r.Detect {
			// The dashboard reads the signals the policy file defines, as the detector does.
			fs.StringVar(&cfg.Detect.PolicyFile, "detect.policy", cfg.Detect.PolicyFile,
				"the detector's policy `file` (JSON or YAML), for the signal definitions it pins (empty: every service's profile is detected from its series)")
		}
	} else {
		cfg.Web.HTTP.RegisterFlags(fs) // the tokens and limits of the HTTP listener
	}
}
