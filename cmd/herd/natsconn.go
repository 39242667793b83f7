package main

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
)

// natsMetrics counts what the NATS client reports only asynchronously.
var natsMetrics = metrics.NewSet()

// connectNATS connects to a comma-separated list of NATS URLs with herd's client settings:
// endless reconnects, a bounded reconnect buffer, and an async error handler that counts
// slow-consumer drops and permission violations instead of losing them silently.
func connectNATS(urls, name string, logger *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(8 << 20),
		nats.Timeout(5 * time.Second),
		// Notice a silently dead server in seconds, not the client's default minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ErrorHandler(natsErrorHandler(name, logger)),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("disconnected from NATS", "client", name, "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("reconnected to NATS", "client", name, "url", nc.ConnectedUrlRedacted())
		}),
	}, extra...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", redactURLs(urls), err)
	}
	return nc, nil
}

// natsErrorHandler counts asynchronous client errors by reason and logs them at most once a
// second per client.
func natsErrorHandler(name string, logger *slog.Logger) nats.ErrHandler {
	var last time.Time
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		reason := "other"
		switch {
		case err == nats.ErrSlowConsumer:
			reason = "slow_consumer"
			if sub != nil {
				if n, e := sub.Dropped(); e == nil && n > 0 {
					natsMetrics.GetOrCreateCounter(`herd_nats_dropped_messages{client="` + name + `"}`).Set(uint64(n))
				}
			}
		case strings.Contains(strings.ToLower(err.Error()), "permissions violation"):
			reason = "permission"
		}
		natsMetrics.GetOrCreateCounter(`herd_nats_async_errors_total{client="` + name + `",reason="` + reason + `"}`).Inc()
		if time.Since(last) > time.Second {
			last = time.Now()
			logger.Warn("NATS async error", "client", name, "reason", reason, "err", err)
		}
	}
}

// redactURLs removes user information from NATS URLs before they are printed.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				parts[i] = u[:s+3] + "***" + u[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// drain drains nc (pending messages are delivered and published) and waits, up to timeout,
// until it is closed.
func drain(nc *nats.Conn, timeout time.Duration) error {
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		return fmt.Errorf("cannot drain NATS connection: %w", err)
	}
	for deadline := time.Now().Add(timeout); !nc.IsClosed(); {
		if time.Now().After(deadline) {
			nc.Close()
			return fmt.Errorf("NATS connection did not drain within %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
