package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
)

func serveCommand() command {
	return command{
		name:  "serve",
		usage: "[--nats URL] [--http host:port] [--roles ingest,detect,web] [flags]",
		short: "run herd: embedded NATS (or --nats), intake, rollup, detector, delivery and the dashboard",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			cfg := defaultStackConfig()
			cfg.registerFlags(fs)
			roles := fs.String("roles", "ingest,detect,web", "roles to run, comma-separated: ingest (intake and rollup; leave it out when `herd rollup` workers do it), detect, web")
			return func(ctx context.Context) error {
				rs, err := parseRoles(*roles)
				if err != nil {
					return err
				}
				if err := cfg.validate(); err != nil {
					return err
				}
				s, err := newRoles(cfg, rs, e.logger)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "herd serve: NATS %s, HTTP %s (dashboard %s/, metrics %s/metrics)\n", s.NATSURL(), s.HTTPURL(), s.HTTPURL(), s.HTTPURL())
				err = s.run(ctx)
				fmt.Fprintln(e.stdout, "herd serve: stopped")
				return err
			}
		},
	}
}

// parseRoles parses the -roles flag.
func parseRoles(v string) (roleSet, error) {
	var rs roleSet
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
	if rs == (roleSet{}) {
		return rs, fmt.Errorf("%w: -roles names no role", errUsage)
	}
	return rs, nil
}
