package web

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/herd-dev/herd/signals"
)

// Config configures a Server. Start from DefaultConfig or RegisterFlags.
type Config struct {
	// HTTP holds the tokens the API requires and the limits of the node's HTTP listener.
	HTTP HTTPConfig
	// MaxClients bounds the number of concurrent websocket clients.
	MaxClients int
	// MaxClientsPerToken bounds the concurrent websocket clients of one token, or of one
	// remote address when no token is configured, so that one caller cannot take every slot.
	MaxClientsPerToken int
	// History is how long each group's ring buffer of window summaries reaches back.
	History time.Duration
	// Replay is how long the hub keeps past events for clients resuming with ?since=.
	Replay time.Duration
	// MaxGroups bounds the number of (service, version) groups kept. A new group finding the
	// table full takes the place of an idle group (see admit.go), or its window is refused.
	MaxGroups int
	// MaxVersionsPerService bounds the groups of one service kept. A new version beyond it
	// takes the place of an idle version of the service, or its window is refused.
	MaxVersionsPerService int
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
	// Signals, if set, returns the signal definition a policy pins for a service, or nil to
	// detect the service's profile from the series it sends (see package signals). The node
	// passes the detector's policy, so the dashboard charts what the detector judges.
	Signals func(service string) *signals.Definition
}

// DefaultConfig returns the defaults that RegisterFlags registers.
func DefaultConfig() Config {
	return Config{
		HTTP:                  DefaultHTTPConfig(),
		MaxClients:            1000,
		MaxClientsPerToken:    256,
		History:               15 * time.Minute,
		Replay:                time.Minute,
		MaxGroups:             1000,
		MaxVersionsPerService: 32,
		ClientQueue:           1024,
		WriteTimeout:          2 * time.Second,
		PingInterval:          15 * time.Second,
		SendBuffer:            256 << 10,
	}
}

// RegisterFlags registers the -http-token, -http-read-token, -http.* (see
// HTTPConfig.RegisterFlags) and -web.* flags on fs, writing into c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	c.HTTP.RegisterFlags(fs)
	fs.IntVar(&c.MaxClients, "web.max-clients", d.MaxClients,
		"maximum concurrent websocket clients; further connections get 503 (count)")
	fs.IntVar(&c.MaxClientsPerToken, "web.max-clients-per-token", d.MaxClientsPerToken,
		"maximum concurrent websocket clients of one token, or of one remote address without tokens; further connections get 503 (count)")
	fs.DurationVar(&c.History, "web.history", d.History,
		"how far back each group's in-memory window history reaches (duration)")
	fs.DurationVar(&c.Replay, "web.replay", d.Replay,
		"how long past events are kept for reconnecting clients (duration)")
	fs.IntVar(&c.MaxGroups, "web.max-groups", d.MaxGroups,
		"maximum (service, version) groups kept; a new group takes the place of an idle one, or its windows are refused (count)")
	fs.IntVar(&c.MaxVersionsPerService, "web.max-versions-per-service", d.MaxVersionsPerService,
		"maximum groups kept of one service; a new version takes the place of an idle one of the service, or its windows are refused (count)")
	fs.IntVar(&c.ClientQueue, "web.client-queue", d.ClientQueue,
		"events queued per websocket client before its backlog is coalesced into a snapshot (count)")
	fs.DurationVar(&c.WriteTimeout, "web.write-timeout", d.WriteTimeout,
		"a websocket write taking longer drops the client as slow (duration)")
	fs.DurationVar(&c.PingInterval, "web.ping-interval", d.PingInterval,
		"websocket ping interval; a client silent for twice this is dropped (duration)")
	fs.IntVar(&c.SendBuffer, "web.send-buffer", d.SendBuffer,
		"kernel send buffer per websocket connection (bytes; 0 keeps the system's)")
}

// Validate checks c and names the offending flag.
func (c *Config) Validate() error {
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	switch {
	case c.MaxClients < 1:
		return fmt.Errorf("-web.max-clients %d must be at least 1", c.MaxClients)
	case c.MaxClientsPerToken < 1:
		return fmt.Errorf("-web.max-clients-per-token %d must be at least 1", c.MaxClientsPerToken)
	case c.History < time.Second || c.History > 24*time.Hour:
		return fmt.Errorf("-web.history %s must be between 1s and 24h", c.History)
	case c.Replay < 0 || c.Replay > time.Hour:
		return fmt.Errorf("-web.replay %s must be between 0 and 1h", c.Replay)
	case c.MaxGroups < 1:
		return fmt.Errorf("-web.max-groups %d must be at least 1", c.MaxGroups)
	case c.MaxVersionsPerService < 1:
		return fmt.Errorf("-web.max-versions-per-service %d must be at least 1", c.MaxVersionsPerService)
	case c.ClientQueue < 1:
		return fmt.Errorf("-web.client-queue %d must be at least 1", c.ClientQueue)
	case c.WriteTimeout < time.Millisecond:
		return fmt.Errorf("-web.write-timeout %s must be at least 1ms", c.WriteTimeout)
	case c.PingInterval < 10*time.Millisecond:
		return fmt.Errorf("-web.ping-interval %s must be at least 10ms", c.PingInterval)
	case c.SendBuffer < 0:
		return fmt.Errorf("-web.send-buffer %d must not be negative", c.SendBuffer)
	}
	return nil
}

// HTTPConfig configures a node's HTTP listener: the tokens its endpoints require (see
// Guard) and the limits that keep idle or slow connections from exhausting the process's
// file descriptors, which it shares with the embedded NATS server.
type HTTPConfig struct {
	// Token, when set, is the read+write bearer token: every /api/ route and /metrics
	// require it or ReadToken, and every state-changing request (any method but GET, HEAD
	// and OPTIONS) requires it. Without tokens, reads are open and writes are allowed only
	// from loopback, as JSON, from a same-origin page or a non-browser client (see Guard).
	Token string
	// ReadToken, when set (with Token), is a bearer token that may only read: the dashboard,
	// the API's GET routes, the websocket and /metrics.
	ReadToken string
	// MaxConns bounds the open connections of the listener; one beyond it is answered 503 and
	// closed at once.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers, also of a connection's first
	// request: a connection that sends nothing is closed after it.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response. The websocket stream has its own deadlines
	// (Config.WriteTimeout, Config.PingInterval) once upgraded.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle for this long between requests.
	IdleTimeout time.Duration
}

// DefaultHTTPConfig returns the defaults that HTTPConfig.RegisterFlags registers.
func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{
		MaxConns:          1024,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
}

// RegisterFlags registers -http-token, -http-read-token and the -http.* limits on fs,
// writing into c. cmd/herd maps each flag to its environment variable (HERD_HTTP_TOKEN,
// HERD_HTTP_READ_TOKEN, …); the package reads no environment itself.
func (c *HTTPConfig) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultHTTPConfig()
	fs.StringVar(&c.Token, "http-token", "",
		"read+write bearer `token` for the API, the websocket, /metrics and every state-changing request (prefer the environment variable; empty: reads open, writes only from loopback as same-origin JSON)")
	fs.StringVar(&c.ReadToken, "http-read-token", "",
		"read-only bearer `token` for the dashboard, the API's GET routes, the websocket and /metrics (needs -http-token; empty: none)")
	fs.IntVar(&c.MaxConns, "http.max-conns", d.MaxConns,
		"maximum open HTTP connections; further ones are answered 503 and closed (count)")
	fs.DurationVar(&c.ReadHeaderTimeout, "http.read-header-timeout", d.ReadHeaderTimeout,
		"time to read a request's headers; a connection sending nothing is closed after it (duration)")
	fs.DurationVar(&c.ReadTimeout, "http.read-timeout", d.ReadTimeout,
		"time to read a whole request, body included (duration)")
	fs.DurationVar(&c.WriteTimeout, "http.write-timeout", d.WriteTimeout,
		"time to write a response; not the websocket stream, which has -web.write-timeout (duration)")
	fs.DurationVar(&c.IdleTimeout, "http.idle-timeout", d.IdleTimeout,
		"a keep-alive connection idle this long between requests is closed (duration)")
}

// Validate checks c and names the offending flag.
func (c *HTTPConfig) Validate() error {
	for _, t := range []struct{ flag, tok string }{{"-http-token", c.Token}, {"-http-read-token", c.ReadToken}} {
		if strings.IndexFunc(t.tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return fmt.Errorf("%s must be printable ASCII without spaces", t.flag)
		}
	}
	switch {
	case c.ReadToken != "" && c.Token == "":
		return fmt.Errorf("-http-read-token needs -http-token (the token that may write)")
	case c.ReadToken != "" && c.ReadToken == c.Token:
		return fmt.Errorf("-http-read-token must differ from -http-token")
	case c.MaxConns < 1:
		return fmt.Errorf("-http.max-conns %d must be at least 1", c.MaxConns)
	case c.ReadHeaderTimeout <= 0:
		return fmt.Errorf("-http.read-header-timeout %s must be positive", c.ReadHeaderTimeout)
	case c.ReadTimeout < c.ReadHeaderTimeout:
		return fmt.Errorf("-http.read-timeout %s must be at least -http.read-header-timeout %s", c.ReadTimeout, c.ReadHeaderTimeout)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("-http.write-timeout %s must be positive", c.WriteTimeout)
	case c.IdleTimeout <= 0:
		return fmt.Errorf("-http.idle-timeout %s must be positive", c.IdleTimeout)
	}
	return nil
}
