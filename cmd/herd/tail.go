package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/tail"
)

func tailCommand() command {
	return command{
		name:  "tail",
		usage: "--nats URL [--service S] [--json]",
		short: "print closed windows as they arrive",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var client bus.Client
			natsFlags(fs, &client, defaultNATSURL)
			service := fs.String("service", "", "only windows of this `service` (default all)")
			asJSON := fs.Bool("json", false, "print one JSON object per window and line")
			policy := fs.String("detect.policy", "", "the detector's policy `file` (JSON or YAML), for the signal definitions it pins (empty: every service's profile is detected from its series)")
			return func(ctx context.Context) error {
				sr, err := tail.NewSignalReader(*policy)
				if err != nil {
					return fmt.Errorf("%w: -detect.policy: %v", errUsage, err)
				}
				subject, err := tail.Subject(*service)
				if err != nil {
					return fmt.Errorf("%w: -service: %v", errUsage, err)
				}
				if err := client.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				nc, err := bus.Connect(client, "herd-tail", nil, e.logger)
				if err != nil {
					return err
				}
				defer nc.Close()
				return tail.Run(ctx, nc, tail.Config{Subject: subject, JSON: *asJSON, Signals: sr, Out: e.stdout})
			}
		},
	}
}
