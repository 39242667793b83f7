package loadbench

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

// Collector counts the windows a consumer of herd.rollup.> sees: the requests they hold per
// group, the windows and corrections, and each window's delay (arrival − window end). Its
// methods are safe for concurrent use.
type Collector struct {
	mu          sync.Mutex // Guards the fields below.
	windows     int
	corrections int
	delays      []time.Duration
	got         map[[2]string]uint64
}

// NewCollector returns an empty Collector.
func NewCollector() *Collector { return &Collector{got: map[[2]string]uint64{}} }

// Add counts w; it is the bus.Handlers Window function of the subscription.
func (c *Collector) Add(w *proto.Window) {
	at := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.Correction {
		c.corrections++
	} else {
		c.windows++
		c.delays = append(c.delays, at.Sub(time.UnixMilli(w.EndMs)))
	}
	if r := w.Find(proto.SeriesRequests); r != nil {
		c.got[[2]string{w.Service, w.Version}] += uint64(r.Value)
	}
}

// Requests returns the requests the windows counted so far hold, over all groups.
func (c *Collector) Requests() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for _, v := range c.got {
		n += v
	}
	return n
}

// Wait waits until the windows hold want requests or timeout passes (the last windows close
// within the rollup's lateness, corrections within another), and returns the requests
// missing: want − held, negative when the windows hold more.
func (c *Collector) Wait(want uint64, timeout time.Duration) int64 {
	for deadline := time.Now().Add(timeout); c.Requests() != want && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	return int64(want) - int64(c.Requests())
}

// Seen is what a Collector counted.
type Seen struct {
	// Windows and Corrections are the windows and the corrections received.
	Windows, Corrections int
	// DelayP50 and DelayP99 are percentiles of the windows' delays (arrival − window end).
	DelayP50, DelayP99 time.Duration
}

// Seen returns what c counted so far.
func (c *Collector) Seen() Seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Seen{Windows: c.windows, Corrections: c.corrections,
		DelayP50: sim.Percentile(c.delays, 0.50), DelayP99: sim.Percentile(c.delays, 0.99)}
}

// Subscribe connects to NATS and counts every window published on herd.rollup.> into c, until
// the returned connection is closed. The subscription is in place when it returns.
func (c *Collector) Subscribe(client bus.Client, logger *slog.Logger) (*nats.Conn, error) {
	nc, err := bus.Connect(client, "herd-bench-windows", nil, logger)
	if err != nil {
		return nil, err
	}
	if _, err := bus.Subscribe(nc, bus.NewDecoder(bus.Handlers{Window: c.Add}, nil)); err != nil {
		nc.Close()
		return nil, err
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot subscribe to windows: %w", err)
	}
	return nc, nil
}

// ms returns d in milliseconds, with fractions, as the reports print durations.
func ms(d time.Duration) float64 { return float64(d) / 1e6 }
