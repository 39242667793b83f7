package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/kube"
	"github.com/herd-dev/herd/ingest/mesh"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/promhelp"
)

func agentCommand() command {
	return command{
		name:  "agent",
		usage: "--nats URL (--service S --version V --scrape URL | --kubernetes --kubernetes.node N) [--interval D] [--mesh P]",
		short: "scrape a local Prometheus endpoint, or every annotated pod of a Kubernetes node, and publish the deltas",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var client bus.Client
			natsFlags(fs, &client, defaultNATSURL)
			var cfg ingest.AgentConfig
			cfg.RegisterFlags(fs, e.getenv)
			var useKube bool
			var kcfg kube.Config
			var listen string
			fs.BoolVar(&useKube, "kubernetes", false, "discover and scrape the annotated pods of -kubernetes.node (run as a DaemonSet) instead of one -scrape URL")
			kcfg.RegisterFlags(fs)
			fs.StringVar(&listen, "http", "", "with -kubernetes: listener (`host:port`) of the agent's /metrics (empty: none)")
			return func(ctx context.Context) error {
				if useKube {
					return runKubeAgent(ctx, e, client, cfg, kcfg, listen)
				}
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

// runKubeAgent is `herd agent --kubernetes`: the pods of one node, each its own instance.
func runKubeAgent(ctx context.Context, e *env, client bus.Client, cfg ingest.AgentConfig, kcfg kube.Config, listen string) error {
	p, err := mesh.Parse(cfg.Mesh)
	if err != nil {
		return fmt.Errorf("%w: -mesh: %v", errUsage, err)
	}
	kcfg.Interval, kcfg.Mesh = cfg.Interval, p
	if err := kcfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := client.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cs, err := kube.NewClientset(kcfg.Kubeconfig)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(client, "herd-agent", nil, e.logger)
	if err != nil {
		return err
	}
	set := metrics.NewSet()
	a, err := kube.New(kcfg, cs, set, nc.Publish, e.logger)
	if err != nil {
		nc.Close()
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var wg sync.WaitGroup
	var srv *http.Server
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			nc.Close()
			return fmt.Errorf("cannot listen on -http %s: %w", listen, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			promhelp.WritePrometheus(w, set)
		})
		mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.logger.Error("agent HTTP listener failed", "err", err)
			}
		})
	}
	err = a.Run(ctx)
	if srv != nil {
		_ = srv.Close()
	}
	wg.Wait()
	// The pods' final batches are in the connection's buffer: deliver them before leaving.
	if derr := bus.Drain(nc, 5*time.Second); derr != nil && err == nil {
		err = derr
	}
	return err
}
