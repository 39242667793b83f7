package main

import (
	"context"
	"flag"
	"fmt"
)

func serveCommand() command {
	return command{
		name:  "serve",
		usage: "[--nats URL] [--http host:port] [flags]",
		short: "run herd: embedded NATS (or --nats), intake, rollup and the HTTP listener",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			cfg := defaultStackConfig()
			cfg.registerFlags(fs)
			return func(ctx context.Context) error {
				if err := cfg.validate(); err != nil {
					return err
				}
				s, err := newStack(cfg, e.logger)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "herd serve: NATS %s, HTTP %s (metrics %s/metrics)\n", s.NATSURL(), s.HTTPURL(), s.HTTPURL())
				err = s.run(ctx)
				fmt.Fprintln(e.stdout, "herd serve: stopped")
				return err
			}
		},
	}
}
