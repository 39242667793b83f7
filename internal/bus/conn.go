package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/promhelp"
)

// Connect connects to the servers of c, with its credentials, and herd's client settings:
// endless reconnects, a bounded reconnect buffer, pings that notice a dead server in seconds,
// and handlers that log disconnects and count asynchronous errors (slow consumer drops,
// permission violations) in set as herd_nats_async_errors_total{client,reason}. extra options
// come last and override herd's.
func Connect(c Client, name string, set *metrics.Set, logger *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(busHelp)
	auth, err := c.options()
	if err != nil {
		return nil, err
	}
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(8 << 20),
		nats.Timeout(5 * time.Second),
		// Notice a silently dead server in seconds, not the client's default minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ErrorHandler(errorHandler(name, set, logger)),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("disconnected from NATS", "client", name, "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("reconnected to NATS", "client", name, "url", nc.ConnectedUrlRedacted())
		}),
	}, auth...)
	nc, err := nats.Connect(c.URLs, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", RedactURLs(c.URLs), err)
	}
	return nc, nil
}

// Reasons of herd_nats_async_errors_total.
const (
	reasonSlowConsumer = "slow_consumer"
	reasonPermission   = "permission"
	reasonOther        = "other"
)

// errorHandler counts asynchronous client errors by reason and logs them at most once a
// second per connection.
func errorHandler(name string, set *metrics.Set, logger *slog.Logger) nats.ErrHandler {
	counter := func(reason string) *metrics.Counter {
		return set.GetOrCreateCounter(`herd_nats_async_errors_total{client="` + name + `",reason="` + reason + `"}`)
	}
	for _, r := range []string{reasonSlowConsumer, reasonPermission, reasonOther} {
		counter(r)
	}
	dropped := set.GetOrCreateCounter(`herd_nats_dropped_messages_total{client="` + name + `"}`)
	var mu sync.Mutex // guards last
	var last time.Time
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		reason := reasonOther
		switch {
		case err == nats.ErrSlowConsumer:
			reason = reasonSlowConsumer
			if sub != nil {
				if n, e := sub.Dropped(); e == nil && uint64(n) > dropped.Get() {
					dropped.Set(uint64(n))
				}
			}
		case strings.Contains(strings.ToLower(err.Error()), "permissions violation"):
			reason = reasonPermission
		}
		counter(reason).Inc()
		mu.Lock()
		log := time.Since(last) > time.Second
		if log {
			last = time.Now()
		}
		mu.Unlock()
		if log {
			logger.Warn("NATS async error", "client", name, "reason", reason, "err", err)
		}
	}
}

// RedactURLs removes user information from NATS URLs before they are printed or logged.
func RedactURLs(urls string) string {
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

// Drain drains nc (pending messages are delivered to handlers and buffered publications
// sent) and waits, up to timeout, until it is closed; after the timeout it closes nc.
func Drain(nc *nats.Conn, timeout time.Duration) error {
	if nc.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		nc.Close()
		return fmt.Errorf("cannot drain NATS connection: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-closed:
		return nil
	case <-t.C:
		nc.Close()
		return fmt.Errorf("NATS connection did not drain within %s", timeout)
	}
}
