package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"
	"github.com/herd-dev/herd/proto"
)

// PublishFunc sends one encoded batch on subject. It must not keep data after it returns
// (nats.Conn.Publish copies it). cmd/herd passes nats.Conn.Publish.
type PublishFunc func(subject string, data []byte) error

// Defaults of ClientConfig.
const (
	DefaultInterval  = 250 * time.Millisecond
	DefaultMaxSeries = 1000
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Service and Version identify the instance's group (see proto.ValidService and
	// proto.ValidVersion).
	Service string
	Version string
	// Interval is the batch interval Run aligns to (default 250 ms).
	Interval time.Duration
	// MaxSeries bounds the series one client registers (default 1000, at most
	// proto.MaxSeries). Registrations beyond it get a detached instrument that records
	// nothing and are counted with reason "limit".
	MaxSeries int
	// Publish sends encoded batches. Required.
	Publish PublishFunc
	// OnBatch, if set, is called synchronously after every publish attempt with the batch and
	// the publish error (nil when sent). b is valid only during the call.
	OnBatch func(b *proto.Batch, err error)
	// Instance is the instance id; zero means a random UUID.
	Instance uuid.UUID
	// Start is the instance start time and the start of the first batch; zero means now.
	Start time.Time
	// Logger receives state changes (nil: slog.Default()).
	Logger *slog.Logger
	// Metrics, if set, receives the herd_agent_* counters. Clients may share one Set: the
	// counters then total over all of them (the simulator does this).
	Metrics *metrics.Set
}

// Validate checks the config after defaults are applied.
func (c *ClientConfig) Validate() error {
	if err := proto.ValidService(c.Service); err != nil {
		return fmt.Errorf("invalid service: %w", err)
	}
	if err := proto.ValidVersion(c.Version); err != nil {
		return fmt.Errorf("invalid version: %w", err)
	}
	if c.Interval <= 0 || c.Interval > time.Duration(proto.MaxInterval) {
		return fmt.Errorf("invalid interval %v: must be in (0, 1h]", c.Interval)
	}
	if c.MaxSeries <= 0 || c.MaxSeries > proto.MaxSeries {
		return fmt.Errorf("invalid max series %d: must be in [1, %d]", c.MaxSeries, proto.MaxSeries)
	}
	if c.Publish == nil {
		return errors.New("invalid client config: Publish is nil")
	}
	return nil
}

func (c *ClientConfig) setDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.MaxSeries == 0 {
		c.MaxSeries = DefaultMaxSeries
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	if c.Instance == uuid.Nil {
		c.Instance = uuid.New()
	}
}

// Client holds the instruments of one instance and publishes their deltas, one batch per
// interval. Registering instruments and recording values are safe for concurrent use; Flush,
// Run and Close serialize among themselves.
type Client struct {
	cfg     ClientConfig
	subject string
	log     *slog.Logger
	stats   clientStats

	mu sync.Mutex // Guards the fields below.
	// byKey maps a series key to its index in list. list only grows; Flush reads a prefix.
	byKey map[string]int
	list  []*series

	flushMu sync.Mutex // Guards the fields below; held by Flush.
	enc     proto.Encoder
	batch   proto.Batch
	buf     []byte
	seq     uint64
	last    time.Time // end of the previous batch
	closed  bool      // the final batch was attempted
}

// series is one registered instrument. name, labels and kind never change.
type series struct {
	name   string
	labels []proto.Label
	kind   proto.Kind
	c      *Counter
	g      *Gauge
	h      *Histogram
}

// NewClient builds a client. It starts nothing; call Run, or Flush from your own loop.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	subject, err := proto.InSubject(cfg.Service, cfg.Version)
	if err != nil {
		return nil, fmt.Errorf("cannot build subject: %w", err)
	}
	c := &Client{
		cfg:     cfg,
		subject: subject,
		log:     cfg.Logger.With("component", "agent", "service", cfg.Service, "version", cfg.Version),
		byKey:   make(map[string]int),
		last:    cfg.Start,
	}
	c.stats.init(cfg.Metrics)
	return c, nil
}

// Subject returns the subject the client publishes on.
func (c *Client) Subject() string { return c.subject }

// Instance returns the instance id.
func (c *Client) Instance() uuid.UUID { return c.cfg.Instance }

// Interval returns the batch interval.
func (c *Client) Interval() time.Duration { return c.cfg.Interval }

// Counter returns the counter with this name and labels, registering it on first use. The
// same name and labels always return the same counter. A refused registration (invalid name
// or labels, series limit, the name and labels already used by another kind) returns a
// detached counter that records nothing; it is counted and logged.
func (c *Client) Counter(name string, labels ...proto.Label) *Counter {
	if s := c.register(name, labels, proto.KindCounter); s != nil {
		return s.c
	}
	return discardCounter
}

// Gauge returns the gauge with this name and labels, registering it on first use (see
// Counter for refusals).
func (c *Client) Gauge(name string, labels ...proto.Label) *Gauge {
	if s := c.register(name, labels, proto.KindGauge); s != nil {
		return s.g
	}
	return discardGauge
}

// Histogram returns the histogram with this name and labels, registering it on first use
// (see Counter for refusals).
func (c *Client) Histogram(name string, labels ...proto.Label) *Histogram {
	if s := c.register(name, labels, proto.KindHistogram); s != nil {
		return s.h
	}
	return discardHistogram
}

// register returns the series, creating it if needed, or nil after counting a refusal.
func (c *Client) register(name string, labels []proto.Label, kind proto.Kind) *series {
	ls := slices.Clone(labels)
	slices.SortFunc(ls, func(a, b proto.Label) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	s := &series{name: name, labels: ls, kind: kind}
	if reason, err := checkSeriesName(name, ls); err != nil {
		c.refuseSeries(reason, err)
		return nil
	}
	key := string(seriesKey(nil, name, ls))

	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.byKey[key]; ok {
		old := c.list[i]
		if old.kind != kind {
			c.refuseSeries("kind_conflict", fmt.Errorf("series %s is a %s, not a %s",
				proto.SeriesString(name, ls), old.kind, kind))
			return nil
		}
		return old
	}
	if len(c.list) >= c.cfg.MaxSeries {
		c.refuseSeries("limit", fmt.Errorf("series %s exceeds the limit of %d series",
			proto.SeriesString(name, ls), c.cfg.MaxSeries))
		return nil
	}
	switch kind {
	case proto.KindCounter:
		s.c = &Counter{refused: &c.stats.refusedValues}
	case proto.KindGauge:
		s.g = &Gauge{refused: &c.stats.refusedValues}
	case proto.KindHistogram:
		s.h = &Histogram{refused: &c.stats.refusedValues}
	}
	c.byKey[key] = len(c.list)
	c.list = append(c.list, s)
	return s
}

func (c *Client) refuseSeries(reason string, err error) {
	c.stats.refuseSeries(reason)
	// Refusals repeat on every lookup of a refused series: log only the first few.
	if c.stats.refusedSeries.Load() <= 10 {
		c.log.Warn("series refused", "reason", reason, "err", err)
	}
}

// checkSeriesName applies the encoder's rules for names and labels, so a refused series is
// refused at registration and never breaks a batch.
func checkSeriesName(name string, sorted []proto.Label) (reason string, err error) {
	if name == "" || len(name) > proto.MaxStringBytes || !utf8.ValidString(name) {
		return "bad_name", fmt.Errorf("series name %q is empty, too long or not UTF-8", name)
	}
	if len(sorted) > proto.MaxLabels {
		return "bad_labels", fmt.Errorf("series %s has %d labels, limit %d", name, len(sorted), proto.MaxLabels)
	}
	for i, l := range sorted {
		if l.Name == "" || len(l.Name) > proto.MaxStringBytes || len(l.Value) > proto.MaxStringBytes ||
			!utf8.ValidString(l.Name) || !utf8.ValidString(l.Value) {
			return "bad_labels", fmt.Errorf("label %q of series %s is empty, too long or not UTF-8", l.Name, name)
		}
		if i > 0 && sorted[i-1].Name == l.Name {
			return "bad_labels", fmt.Errorf("series %s repeats label %q", name, l.Name)
		}
	}
	return "", nil
}

// seriesKey appends the identity of name and sorted labels to dst (the layout of
// proto.Series.Key).
func seriesKey(dst []byte, name string, sorted []proto.Label) []byte {
	dst = append(dst, name...)
	for _, l := range sorted {
		dst = append(dst, 0xff)
		dst = append(dst, l.Name...)
		dst = append(dst, 0xfe)
		dst = append(dst, l.Value...)
	}
	return dst
}

// Counter is a monotonic counter. Its delta since the previous batch is published and reset
// by each flush. Safe for concurrent use; Inc and integral Add are one atomic add.
type Counter struct {
	n       atomic.Uint64 // integral part of the delta
	f       atomic.Uint64 // float64 bits of the non-integral adds
	refused *valueRefusals
	discard bool
}

var (
	discardCounter   = &Counter{discard: true}
	discardGauge     = &Gauge{discard: true}
	discardHistogram = &Histogram{discard: true}
)

// Inc adds 1.
func (c *Counter) Inc() {
	if !c.discard {
		c.n.Add(1)
	}
}

// Add adds v, which must be finite and ≥ 0; other values are refused and counted.
func (c *Counter) Add(v float64) {
	if c.discard {
		return
	}
	if !(v >= 0) || math.IsInf(v, 0) {
		c.refused.inc()
		return
	}
	if v < 1<<53 && v == math.Trunc(v) {
		c.n.Add(uint64(v))
		return
	}
	addFloat(&c.f, v)
}

// take returns the delta and resets it.
func (c *Counter) take() float64 {
	return float64(c.n.Swap(0)) + math.Float64frombits(c.f.Swap(0))
}

func addFloat(a *atomic.Uint64, v float64) {
	for {
		old := a.Load()
		if a.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Gauge is a point-in-time value, published as it is at each flush. Safe for concurrent use.
type Gauge struct {
	bits    atomic.Uint64
	refused *valueRefusals
	discard bool
}

// Set sets the gauge to v, which must be finite; other values are refused and counted.
func (g *Gauge) Set(v float64) {
	if g.discard {
		return
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		g.refused.inc()
		return
	}
	g.bits.Store(math.Float64bits(v))
}

// Add adds v (which may be negative) to the gauge. A result that is not finite is refused.
func (g *Gauge) Add(v float64) {
	if g.discard {
		return
	}
	for {
		old := g.bits.Load()
		n := math.Float64frombits(old) + v
		if math.IsNaN(n) || math.IsInf(n, 0) {
			g.refused.inc()
			return
		}
		if g.bits.CompareAndSwap(old, math.Float64bits(n)) {
			return
		}
	}
}

// Value returns the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

// Histogram is a distribution with herd's fixed sketch buckets (proto.Gamma, ≈1.1 % relative
// error): each observation goes straight into its proto.Histogram bucket, so what is
// published is exactly what a DDSketch with proto.NewSketch would hold, plus the exact sum.
// Its delta since the previous batch is published and reset by each flush. Safe for
// concurrent use (a small mutex).
type Histogram struct {
	mu      sync.Mutex // Guards h.
	h       proto.Histogram
	refused *valueRefusals
	discard bool
}

// Observe records one value. NaN, ±Inf and values beyond herd's bucket range are refused
// and counted.
func (h *Histogram) Observe(v float64) {
	if h.discard {
		return
	}
	h.mu.Lock()
	ok := h.h.Observe(v, 1)
	h.mu.Unlock()
	if !ok {
		h.refused.inc()
	}
}

// merge adds a histogram delta (the scraper's path).
func (h *Histogram) merge(d *proto.Histogram) {
	if h.discard {
		return
	}
	h.mu.Lock()
	ok := h.h.Merge(d)
	h.mu.Unlock()
	if !ok {
		h.refused.inc()
	}
}

// takeInto copies the delta into dst and resets it; it reports false, leaving dst alone, if
// the delta is empty.
func (h *Histogram) takeInto(dst *proto.Histogram) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h.Count == 0 {
		h.h.Sum = 0
		return false
	}
	dst.CopyFrom(&h.h)
	h.h.Reset()
	return true
}

// RED is the request-rate / errors / duration triple the detector uses by default, under the
// fixed series names proto.SeriesRequests, proto.SeriesErrors and proto.SeriesLatency.
type RED struct {
	Requests *Counter
	Errors   *Counter
	// Latency is in seconds.
	Latency *Histogram
}

// RED returns the RED helper for the given labels (usually none: the detector compares
// whole groups).
func (c *Client) RED(labels ...proto.Label) *RED {
	return &RED{
		Requests: c.Counter(proto.SeriesRequests, labels...),
		Errors:   c.Counter(proto.SeriesErrors, labels...),
		Latency:  c.Histogram(proto.SeriesLatency, labels...),
	}
}

// Observe records one request that took d; failed counts it as an error too.
func (r *RED) Observe(d time.Duration, failed bool) {
	r.Requests.Inc()
	if failed {
		r.Errors.Inc()
	}
	r.Latency.Observe(d.Seconds())
}
