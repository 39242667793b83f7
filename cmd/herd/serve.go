package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/herd-dev/herd/ingest/otlp"
	"github.com/herd-dev/herd/node"
)

func serveCommand() command {
	return command{
		name:  "serve",
		usage: "[--nats URL] [--http host:port] [--roles ingest,detect,web] [flags]",
		short: "run herd: embedded NATS (or --nats), intake, rollup, detector, delivery and the dashboard",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			cfg := node.DefaultConfig()
			cfg.Name = "herd-serve"
			cfg.OTLP.HTTPListen, cfg.OTLP.GRPCListen = otlp.DefaultHTTPListen, otlp.DefaultGRPCListen
			nodeFlags(fs, &cfg, node.Roles{Ingest: true, Detect: true, Web: true}, e.getenv)
			roles := fs.String("roles", "ingest,detect,web", "roles to run, comma-separated: ingest (intake and rollup; leave it out when `herd rollup` workers do it), detect, web")
			return func(ctx context.Context) error {
				var err error
				if cfg.Roles, err = parseRoles(*roles); err != nil {
					return err
				}
				return runNode(ctx, e, "serve", cfg)
			}
		},
	}
}

// runNode validates cfg, builds the node, prints where it listens and runs it until ctx ends.
func runNode(ctx context.Context, e *env, name string, cfg node.Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if cfg.Roles.Rollup {
		cfg.Name += "-" + cfg.Leases.WorkerID // Validate has given the worker its id
	}
	n, err := node.New(cfg, e.logger)
	if err != nil {
		return err
	}
	// The addresses are printed once the node is ready: the embedded NATS opens its port
	// only after the intake has subscribed.
	printCtx, stopPrint := context.WithCancel(ctx)
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		select {
		case <-n.Ready():
			fmt.Fprintf(e.stdout, "herd %s: %s\n", name, where(n, cfg))
			if name == "serve" {
				writeSummary(e.stdout, summaryOf(n, cfg))
			}
		case <-printCtx.Done():
		}
	}()
	err = n.Run(ctx)
	stopPrint()
	<-printed
	fmt.Fprintf(e.stdout, "herd %s: stopped\n", name)
	return err
}

// where says where a ready node listens.
func where(n *node.Node, cfg node.Config) string {
	where := "NATS " + n.NATSURL()
	if u := n.HTTPURL(); u != "" {
		where += ", HTTP " + u
		if cfg.Roles.Web {
			where += fmt.Sprintf(" (dashboard %s/, metrics %s/metrics)", u, u)
		}
	}
	if u := n.OTLPHTTPURL(); u != "" {
		where += ", OTLP/HTTP " + u + otlp.PathMetrics
	}
	if a := n.OTLPGRPCAddr(); a != "" {
		where += ", OTLP/gRPC " + a
	}
	if u := n.MonitorURL(); u != "" {
		where += ", NATS monitoring " + u
	}
	if cfg.Roles.Rollup {
		where = "worker " + cfg.Leases.WorkerID + " on " + where
	}
	return where
}

// parseRoles parses the -roles flag.
func parseRoles(v string) (node.Roles, error) {
	var rs node.Roles
	for _, r := range strings.Split(v, ",") {
		switch strings.TrimSpace(r) {
		case "ingest":
			rs.Ingest = true
		case "detect":
			rs.Detect = true
		case "web":
			rs.Web = true
		case "":
		default:
			return rs, fmt.Errorf("%w: -roles: unknown role %q (want ingest, detect, web)", errUsage, r)
		}
	}
	if rs == (node.Roles{}) {
		return rs, fmt.Errorf("%w: -roles names no role", errUsage)
	}
	return rs, nil
}
