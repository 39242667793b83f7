package web

import (
	"flag"
	"fmt"
	"os"
	"time"
)

// Config configures a Server. Start from DefaultConfig or RegisterFlags.
type Config struct {
	// Token, when set, is the bearer token every API and websocket request must carry
	// (Authorization: Bearer <token>, or ?token= for the websocket and the dashboard's fetches).
	Token string
	// MaxClients bounds the number of concurrent websocket clients.
	MaxClients int
	// History is how long each group's ring buffer of window summaries reaches back.
	History time.Duration
	// Window is the rollup window length; History/Window is the ring buffer's size.
	Window time.Duration
	// Replay is how long the hub keeps past events for clients resuming with ?since=.
	Replay time.Duration
	// MaxGroups bounds the number of (service, version) groups kept.
	MaxGroups int
	// ClientQueue bounds the number of events waiting for one client; beyond it the backlog
	// is coalesced into a fresh snapshot.
	ClientQueue int
	// WriteTimeout is how long one websocket write may take before the client is dropped as slow.
	WriteTimeout time.Duration
	// PingInterval is how often the server pings; a client silent for 2×PingInterval is dropped.
	PingInterval time.Duration
	// SendBuffer is the kernel send buffer of each websocket connection in bytes (0: system default).
	// A small buffer makes a stalled client hit WriteTimeout sooner.
	SendBuffer int
	// RequestsSeries, ErrorsSeries and LatencySeries name the series (without labels) the
	// dashboard charts: a counter of requests, a counter of errors, a latency histogram in seconds.
	RequestsSeries, ErrorsSeries, LatencySeries string
}

// DefaultConfig returns the defaults that RegisterFlags registers.
func DefaultConfig() Config {
	return Config{
		MaxClients:     1000,
		History:        15 * time.Minute,
		Window:         250 * time.Millisecond,
		Replay:         time.Minute,
		MaxGroups:      1000,
		ClientQueue:    1024,
		WriteTimeout:   2 * time.Second,
		PingInterval:   15 * time.Second,
		SendBuffer:     256 << 10,
		RequestsSeries: "requests_total",
		ErrorsSeries:   "errors_total",
		LatencySeries:  "latency_seconds",
	}
}

// RegisterFlags registers the -http-token and -web.* flags on fs, writing into c. The token
// defaults to $HERD_HTTP_TOKEN.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.StringVar(&c.Token, "http-token", os.Getenv("HERD_HTTP_TOKEN"),
		"bearer `token` required by the API, websocket and dashboard (default $HERD_HTTP_TOKEN; empty: no token)")
	fs.IntVar(&c.MaxClients, "web.max-clients", d.MaxClients,
		"maximum concurrent websocket clients; further connections get 503 (count, default 1000)")
	fs.DurationVar(&c.History, "web.history", d.History,
		"how far back each group's in-memory window history reaches (duration, default 15m)")
	fs.DurationVar(&c.Window, "web.window", d.Window,
		"rollup window length, sizing the history ring buffers (duration, default 250ms)")
	fs.DurationVar(&c.Replay, "web.replay", d.Replay,
		"how long past events are kept for reconnecting clients (duration, default 1m)")
	fs.IntVar(&c.MaxGroups, "web.max-groups", d.MaxGroups,
		"maximum (service, version) groups kept; windows of further groups are refused (count, default 1000)")
	fs.IntVar(&c.ClientQueue, "web.client-queue", d.ClientQueue,
		"events queued per websocket client before its backlog is coalesced into a snapshot (count, default 1024)")
	fs.DurationVar(&c.WriteTimeout, "web.write-timeout", d.WriteTimeout,
		"a websocket write taking longer drops the client as slow (duration, default 2s)")
	fs.DurationVar(&c.PingInterval, "web.ping-interval", d.PingInterval,
		"websocket ping interval; a client silent for twice this is dropped (duration, default 15s)")
	fs.IntVar(&c.SendBuffer, "web.send-buffer", d.SendBuffer,
		"kernel send buffer per websocket connection (bytes, default 262144; 0: system default)")
	fs.StringVar(&c.RequestsSeries, "web.requests-series", d.RequestsSeries,
		"counter series charted as requests (name, default requests_total)")
	fs.StringVar(&c.ErrorsSeries, "web.errors-series", d.ErrorsSeries,
		"counter series charted as errors (name, default errors_total)")
	fs.StringVar(&c.LatencySeries, "web.latency-series", d.LatencySeries,
		"histogram series charted as latency in seconds (name, default latency_seconds)")
}

// Validate checks c and names the offending flag.
func (c *Config) Validate() error {
	switch {
	case c.MaxClients < 1:
		return fmt.Errorf("-web.max-clients %d must be at least 1", c.MaxClients)
	case c.Window < time.Millisecond || c.Window > time.Hour:
		return fmt.Errorf("-web.window %s must be between 1ms and 1h", c.Window)
	case c.History < c.Window || c.History > 24*time.Hour:
		return fmt.Errorf("-web.history %s must be between -web.window and 24h", c.History)
	case c.History/c.Window > 1_000_000:
		return fmt.Errorf("-web.history %s holds more than 1000000 windows of %s", c.History, c.Window)
	case c.Replay < 0 || c.Replay > time.Hour:
		return fmt.Errorf("-web.replay %s must be between 0 and 1h", c.Replay)
	case c.MaxGroups < 1:
		return fmt.Errorf("-web.max-groups %d must be at least 1", c.MaxGroups)
	case c.ClientQueue < 1:
		return fmt.Errorf("-web.client-queue %d must be at least 1", c.ClientQueue)
	case c.WriteTimeout < time.Millisecond:
		return fmt.Errorf("-web.write-timeout %s must be at least 1ms", c.WriteTimeout)
	case c.PingInterval < 10*time.Millisecond:
		return fmt.Errorf("-web.ping-interval %s must be at least 10ms", c.PingInterval)
	case c.SendBuffer < 0:
		return fmt.Errorf("-web.send-buffer %d must not be negative", c.SendBuffer)
	case c.RequestsSeries == "" || c.ErrorsSeries == "" || c.LatencySeries == "":
		return fmt.Errorf("-web.requests-series, -web.errors-series and -web.latency-series must not be empty")
	}
	return nil
}
