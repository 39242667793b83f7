package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/herd-dev/herd/node"
)

// summary is where a running `herd serve` listens, for the screen it prints at start.
type summary struct {
	roles   node.Roles
	nats    string // client URL, credentials redacted
	http    string // base URL of the HTTP listener, or ""
	ops     string // base URL of the token-free operations listener, or ""
	monitor string // NATS monitoring URL, or ""
	token   bool   // the HTTP listener requires a token
	auth    bool   // the embedded NATS requires credentials
	// otlpHTTP and otlpGRPC are the OTLP receiver's base URL and host:port, or "".
	otlpHTTP, otlpGRPC string
	otlpToken          bool // the OTLP receiver requires a token
}

func summaryOf(n *node.Node, cfg node.Config) summary {
	return summary{roles: cfg.Roles, nats: n.NATSURL(), http: n.HTTPURL(), ops: n.OpsURL(), monitor: n.MonitorURL(),
		token: cfg.Web.HTTP.Token != "", auth: cfg.Embedded.AuthFile != "" || cfg.Embedded.Auth != nil,
		otlpHTTP: n.OTLPHTTPURL(), otlpGRPC: n.OTLPGRPCAddr(), otlpToken: cfg.OTLP.Token != ""}
}

// writeSummary prints one screen: where everything listens, and how to point an agent, an
// OpenTelemetry SDK, Prometheus and a deploy tool at it.
func writeSummary(w io.Writer, s summary) {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	auth, hookToken := "", ""
	if s.token {
		auth, hookToken = " -H 'Authorization: Bearer <token>'", "?token=<token>"
	}
	line("")
	line("  NATS          %s", s.nats)
	if s.http != "" {
		if s.roles.Web {
			line("  dashboard     %s/", s.http)
			line("  API           %s/api/v1/  (services, verdicts, deployments, decisions)", s.http)
		}
		scrape := s.http
		if s.ops != "" {
			scrape = s.ops
		}
		line("  metrics       %s/metrics (herd itself), %s/metrics/groups (rollups and verdicts by version)", scrape, scrape)
	}
	if s.monitor != "" {
		line("  NATS monitor  %s", s.monitor)
	}
	if s.roles.Ingest {
		line("")
		line("agent (one per instance, beside the app's /metrics):")
		creds := ""
		if s.auth {
			creds = " --nats.user agent-<service> --nats.password …"
		}
		line("  herd agent --nats %s%s --service checkout --version 1.4.2 --scrape http://127.0.0.1:9100/metrics", s.nats, creds)
		switch {
		case s.otlpHTTP != "":
			hdr := ""
			if s.otlpToken {
				hdr = " OTEL_EXPORTER_OTLP_HEADERS='Authorization=Bearer <token>'"
			}
			line("OpenTelemetry SDK (docs/ingest.md):")
			line("  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=%s/v1/metrics%s OTEL_RESOURCE_ATTRIBUTES=service.version=1.4.2", s.otlpHTTP, hdr)
			if s.otlpGRPC != "" {
				line("  (OTLP/gRPC on %s)", s.otlpGRPC)
			}
		default:
			line("OpenTelemetry SDK: expose its Prometheus exporter and point herd agent --scrape at it (the OTLP receiver is off)")
		}
	}
	if s.http != "" {
		host := strings.TrimPrefix(s.http, "http://")
		if s.ops != "" {
			host = strings.TrimPrefix(s.ops, "http://")
		}
		line("Prometheus:    - {job_name: herd, metrics_path: /metrics/groups, static_configs: [{targets: [\"%s\"]}]}", host)
		line("Grafana:       import deploy/grafana/herd-dashboard.json (docs/export.md)")
	}
	if s.http != "" && (s.roles.Web || s.roles.Detect) {
		line("deploy tool (docs/deploy-tools.md):")
		if s.roles.Web {
			line("  announce     curl -X POST%s -H 'Content-Type: application/json' -d '{\"service\":\"checkout\",\"baseline\":\"1.4.1\",\"canary\":\"1.4.2\"}' %s/api/v1/deployments", auth, s.http)
			line("  gate (Argo)  curl%s '%s/api/v1/verdicts?service=checkout&canary=1.4.2&wait=60s'   (deploy/argo)", auth, s.http)
		}
		if s.roles.Detect {
			line("  Flagger      %s/api/v1/flagger/rollback%s, …/confirm-promotion   (deploy/flagger)", s.http, hookToken)
			line("  rollback     --webhook URL (signed), or Argo/Spinnaker targets: docs/webhooks.md")
		}
	}
	io.WriteString(w, b.String())
}
