package main

import (
	"context"
	"flag"
	"fmt"
)

// roleCommand builds `herd detect` or `herd web`: one role against an external NATS (a
// cluster's URLs), so that a deployment scales each role on its own. `herd serve` runs
// every role in one process.
func roleCommand(name, short string, roles roleSet) command {
	return command{
		name:  name,
		usage: "--nats URL[,URL...] [--http host:port] [flags]",
		short: short,
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			cfg := defaultStackConfig()
			fs.StringVar(&cfg.NATSURL, "nats", "nats://127.0.0.1:4222", "NATS server `URL`s, comma-separated (a cluster's nodes)")
			fs.StringVar(&cfg.HTTPListen, "http", cfg.HTTPListen, "HTTP listener (`host:port`): /metrics, /livez, /readyz"+map[bool]string{true: ", the dashboard and the API", false: ", the decisions API"}[roles.Web])
			fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "`directory` for decisions when the NATS server has no JetStream")
			fs.DurationVar(&cfg.Retention, "retention", cfg.Retention, "age bound of the history stream of windows, verdicts and deployments (`duration`)")
			fs.IntVar(&cfg.Replicas, "js.replicas", cfg.Replicas, "JetStream replicas of the history stream (`count`; 3 on a 3-node cluster)")
			if roles.Detect {
				cfg.Detect.RegisterFlags(fs)
				cfg.Deliver.RegisterFlags(fs)
			}
			if roles.Web {
				cfg.Web.RegisterFlags(fs)
			}
			return func(ctx context.Context) error {
				if cfg.NATSURL == "" {
					return fmt.Errorf("%w: -nats is required", errUsage)
				}
				if err := cfg.validate(); err != nil {
					return err
				}
				s, err := newRoles(cfg, roles, e.logger)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "herd %s: NATS %s, HTTP %s\n", name, s.NATSURL(), s.HTTPURL())
				err = s.run(ctx)
				fmt.Fprintf(e.stdout, "herd %s: stopped\n", name)
				return err
			}
		},
	}
}

func detectCommand() command {
	return roleCommand("detect", "run the detector and rollback delivery on the windows of herd.rollup.*", roleSet{Detect: true})
}

func webCommand() command {
	return roleCommand("web", "run the dashboard and the JSON API on the windows and verdicts in NATS", roleSet{Web: true})
}
