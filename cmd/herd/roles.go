package main

import (
	"context"
	"flag"

	"github.com/herd-dev/herd/node"
)

// roleCommand builds `herd rollup`, `herd detect` or `herd web`: one role against an
// external NATS (a cluster's URLs), so that a deployment scales each role on its own.
// `herd serve` runs every role in one process.
func roleCommand(name, usage, short string, roles node.Roles) command {
	return command{
		name:  name,
		usage: usage,
		short: short,
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			cfg := node.DefaultConfig()
			cfg.Roles, cfg.Name = roles, "herd-"+name
			nodeFlags(fs, &cfg, roles, e.getenv)
			return func(ctx context.Context) error { return runNode(ctx, e, name, cfg) }
		},
	}
}

func rollupCommand() command {
	return roleCommand("rollup", "--nats URL[,URL...] [--worker.id ID] [--http host:port] [flags]",
		"run a partitioned rollup worker: own partitions by lease, merge them, publish windows", node.Roles{Rollup: true})
}

func detectCommand() command {
	return roleCommand("detect", "--nats URL[,URL...] [--http host:port] [flags]",
		"run the detector and rollback delivery on the windows of herd.rollup.*", node.Roles{Detect: true})
}

func webCommand() command {
	return roleCommand("web", "--nats URL[,URL...] [--http host:port] [flags]",
		"run the dashboard and the JSON API on the windows and verdicts in NATS", node.Roles{Web: true})
}
