package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/herd-dev/herd/sim/loadbench"
)

// benchCommands are the benchmarks `herd bench <what>` runs.
func benchCommands() []command {
	return []command{benchIngestCommand(), benchLoadCommand(), benchDetectCommand()}
}

func benchCommand() command {
	return command{
		name:  "bench",
		usage: "ingest|load|detect [flags]   (see 'herd bench <what> --help')",
		short: "run reproducible end-to-end benchmarks",
		raw: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 && args[0] != "-h" && args[0] != "--help" {
				for _, c := range benchCommands() {
					if c.name == "bench "+args[0] {
						if code := runCommand(ctx, c, args[1:], e); code != 0 {
							return errExit(code)
						}
						return nil
					}
				}
				return fmt.Errorf("%w: unknown benchmark %q: herd bench ingest | load | detect", errUsage, args[0])
			}
			w := e.stdout // help asked for goes to stdout, a missing argument to stderr
			if len(args) == 0 {
				w = e.stderr
			}
			fmt.Fprintln(w, "usage: herd bench <what> [flags]\n\nbenchmarks:")
			for _, c := range benchCommands() {
				fmt.Fprintf(w, "  %-14s %s\n", c.name, c.short)
			}
			fmt.Fprintln(w, "\nRun 'herd bench <what> --help' for its flags.")
			if len(args) == 0 {
				return errUsage
			}
			return nil
		},
	}
}

func benchIngestCommand() command {
	return command{
		name:  "bench ingest",
		usage: "[--instances N] [--duration D] [--rps R]",
		short: "run herd serve and a simulated fleet in one process; report throughput, CPU and loss as JSON",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			instances := fs.Int("instances", 5000, "simulated instances (count)")
			duration := fs.Duration("duration", 30*time.Second, "how long the fleet publishes (duration)")
			rps := fs.Float64("rps", 20, "requests per second per instance (rate)")
			conns := fs.Int("conns", 8, "NATS connections the fleet publishes over (count)")
			return func(ctx context.Context) error {
				if *conns < 1 {
					return fmt.Errorf("%w: -conns %d must be ≥ 1", errUsage, *conns)
				}
				r, err := loadbench.Ingest(ctx, loadbench.IngestConfig{Instances: *instances, Duration: *duration, RPS: *rps, Conns: *conns, Logger: e.logger})
				return printReport(e, r, err)
			}
		},
	}
}

// printReport prints a load benchmark's report as one JSON line, or returns its error (a
// configuration error as a usage error).
func printReport(e *env, r any, err error) error {
	if errors.Is(err, loadbench.ErrConfig) {
		return fmt.Errorf("%w: %v", errUsage, err)
	} else if err != nil {
		return err
	}
	out, _ := json.Marshal(r)
	fmt.Fprintln(e.stdout, string(out))
	return nil
}
