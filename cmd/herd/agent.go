package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
)

func agentCommand() command {
	return command{
		name:  "agent",
		usage: "--nats URL --service S --version V --scrape URL [--interval D]",
		short: "scrape a local Prometheus endpoint and publish its deltas, one batch per interval",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var client bus.Client
			natsFlags(fs, &client, defaultNATSURL)
			var cfg ingest.AgentConfig
			cfg.RegisterFlags(fs, e.getenv)
			return func(ctx context.Context) error {
				if err := cfg.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				if err := client.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				// The agent starts before NATS may be reachable (a pod starting beside a
				// restarting cluster): it keeps retrying, and its batches wait in the client's
				// reconnect buffer (bounded; what does not fit is counted by RunAgent).
				nc, err := bus.Connect(client, "herd-agent", nil, e.logger, nats.RetryOnFailedConnect(true),
					nats.ConnectHandler(func(nc *nats.Conn) {
						e.logger.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
					}))
				if err != nil {
					return err
				}
				if !nc.IsConnected() {
					e.logger.Warn("NATS is not reachable yet; the agent runs and keeps retrying", "nats", bus.RedactURLs(client.URLs))
				}
				err = ingest.RunAgent(ctx, cfg, nc.Publish, e.logger)
				// The final batch is in the client's buffer: deliver it before leaving.
				if derr := bus.Drain(nc, 5*time.Second); derr != nil && err == nil {
					err = derr
				}
				return err
			}
		},
	}
}
