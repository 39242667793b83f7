package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/nats-io/nats.go"
)

// ErrClosed is returned by Flush after the final batch.
var ErrClosed = errors.New("client is closed: the final batch was already flushed")

// Unsent reasons (label values of herd_agent_batches_unsent_total).
const (
	UnsentEncode     = "encode"      // the batch could not be encoded (limits)
	UnsentBufferFull = "buffer_full" // the NATS reconnect buffer is full
	UnsentClosed     = "closed"      // the NATS connection is closed
	UnsentPublish    = "publish"     // any other publish error
)

var unsentReasons = []string{UnsentEncode, UnsentBufferFull, UnsentClosed, UnsentPublish}

var seriesRefusalReasons = []string{"bad_name", "bad_labels", "kind_conflict", "limit"}

// Stats are a client's own totals.
type Stats struct {
	Sent          uint64            // batches published
	Unsent        map[string]uint64 // batches not published, by reason
	Bytes         uint64            // encoded bytes published
	MissedTicks   uint64            // interval boundaries Run or Scraper.Run slept through
	RefusedSeries map[string]uint64 // refused registrations, by reason
	RefusedValues uint64            // NaN, ±Inf, negative counter adds, out-of-range values
}

// clientStats holds per-client atomics and, if configured, shared metrics counters.
type clientStats struct {
	sent, bytes, missed atomic.Uint64
	unsent              [4]atomic.Uint64 // indexed like unsentReasons
	refusedSeries       atomic.Uint64
	refusedByReason     [4]atomic.Uint64 // indexed like seriesRefusalReasons
	refusedValues       valueRefusals

	mSent, mBytes, mMissed *metrics.Counter
	mUnsent                [4]*metrics.Counter
	mRefused               [4]*metrics.Counter
	set                    *metrics.Set
}

// clientHelp describes the client's families.
var clientHelp = map[string]string{
	"herd_agent_batches_total":        "Batches the agent client published.",
	"herd_agent_sent_bytes_total":     "Bytes of the batches the agent client published.",
	"herd_agent_missed_ticks_total":   "Flush intervals the agent client missed; the next batch covers the gap.",
	"herd_agent_batches_unsent_total": "Batches the agent client could not send, by reason: encode, buffer_full, closed or publish.",
	"herd_agent_series_refused_total": "Series the agent client refused to register, by reason: bad_name, bad_labels, kind_conflict or limit.",
	"herd_agent_values_refused_total": "Values the agent client refused: NaN, ±Inf or a negative counter increment.",
}

func (s *clientStats) init(set *metrics.Set) {
	if set == nil {
		return
	}
	promhelp.Describe(clientHelp)
	s.set = set
	s.mSent = set.GetOrCreateCounter("herd_agent_batches_total")
	s.mBytes = set.GetOrCreateCounter("herd_agent_sent_bytes_total")
	s.mMissed = set.GetOrCreateCounter("herd_agent_missed_ticks_total")
	for i, r := range unsentReasons {
		s.mUnsent[i] = set.GetOrCreateCounter(`herd_agent_batches_unsent_total{reason="` + r + `"}`)
	}
	for i, r := range seriesRefusalReasons {
		s.mRefused[i] = set.GetOrCreateCounter(`herd_agent_series_refused_total{reason="` + r + `"}`)
	}
	s.refusedValues.m = set.GetOrCreateCounter(`herd_agent_values_refused_total`)
}

func (s *clientStats) refuseSeries(reason string) {
	s.refusedSeries.Add(1)
	for i, r := range seriesRefusalReasons {
		if r == reason {
			s.refusedByReason[i].Add(1)
			if s.mRefused[i] != nil {
				s.mRefused[i].Inc()
			}
		}
	}
}

func (s *clientStats) unsentInc(reason string) {
	for i, r := range unsentReasons {
		if r == reason {
			s.unsent[i].Add(1)
			if s.mUnsent[i] != nil {
				s.mUnsent[i].Inc()
			}
		}
	}
}

func (s *clientStats) missedAdd(n uint64) {
	s.missed.Add(n)
	if s.mMissed != nil {
		s.mMissed.Add(int(n))
	}
}

// valueRefusals counts refused values (NaN, ±Inf, negative counter adds).
type valueRefusals struct {
	n atomic.Uint64
	m *metrics.Counter // nil without a metrics Set
}

func (r *valueRefusals) inc() {
	r.n.Add(1)
	if r.m != nil {
		r.m.Inc()
	}
}

// Stats returns the client's totals.
func (c *Client) Stats() Stats {
	st := Stats{
		Sent:          c.stats.sent.Load(),
		Bytes:         c.stats.bytes.Load(),
		MissedTicks:   c.stats.missed.Load(),
		RefusedValues: c.stats.refusedValues.n.Load(),
		Unsent:        make(map[string]uint64),
		RefusedSeries: make(map[string]uint64),
	}
	for i, r := range unsentReasons {
		if n := c.stats.unsent[i].Load(); n > 0 {
			st.Unsent[r] = n
		}
	}
	for i, r := range seriesRefusalReasons {
		if n := c.stats.refusedByReason[i].Load(); n > 0 {
			st.RefusedSeries[r] = n
		}
	}
	return st
}

// unsentReason classifies a publish error.
func unsentReason(err error) string {
	switch {
	case errors.Is(err, nats.ErrReconnectBufExceeded):
		return UnsentBufferFull
	case errors.Is(err, nats.ErrConnectionClosed):
		return UnsentClosed
	}
	return UnsentPublish
}

// Flush builds the batch covering [end of the previous batch, now), publishes it and resets
// the counters' and histograms' deltas. The first batch starts at the instance start time.
// final marks the instance's last batch; later calls return ErrClosed.
//
// Every call takes one sequence number, whether the publish succeeds or not: a batch that
// cannot be encoded or published is counted as unsent by reason, its deltas are gone, and the
// rollup sees the gap. A batch is published even when nothing was recorded (it keeps the
// instance alive in the rollup). Counters and histograms with a zero delta are omitted; every
// registered gauge is sent with its current value.
//
// If now is not after the previous end (a clock step backwards), the batch ends 1 ns after
// the previous one so intervals stay contiguous and non-empty; an interval longer than
// proto.MaxInterval (1 h) is cut to its last hour.
func (c *Client) Flush(now time.Time, final bool) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if final {
		c.closed = true
	}
	start, end := c.last, now
	if !end.After(start) {
		end = start.Add(time.Nanosecond)
	}
	if end.Sub(start) > time.Duration(proto.MaxInterval) {
		start = end.Add(-time.Duration(proto.MaxInterval))
	}
	c.last = end
	seq := c.seq
	c.seq++

	b := &c.batch
	b.Service = c.cfg.Service
	b.Version = c.cfg.Version
	b.Instance = c.cfg.Instance
	b.InstanceStart = c.cfg.Start.UnixNano()
	b.Seq = seq
	b.Start = start.UnixNano()
	b.End = end.UnixNano()
	b.Final = final
	c.fillSeries(b)

	var err error
	c.buf, err = c.enc.Append(c.buf[:0], b)
	if err != nil {
		c.stats.unsentInc(UnsentEncode)
		err = fmt.Errorf("cannot encode batch %d of %s: %w", seq, c.subject, err)
	} else if perr := c.cfg.Publish(c.subject, c.buf); perr != nil {
		c.stats.unsentInc(unsentReason(perr))
		err = fmt.Errorf("cannot publish batch %d on %s: %w", seq, c.subject, perr)
	} else {
		c.stats.sent.Add(1)
		c.stats.bytes.Add(uint64(len(c.buf)))
		if c.stats.mSent != nil {
			c.stats.mSent.Inc()
			c.stats.mBytes.Add(len(c.buf))
		}
	}
	if c.cfg.OnBatch != nil {
		c.cfg.OnBatch(b, err)
	}
	return err
}

// fillSeries takes every instrument's delta into b.Series, reusing its memory.
func (c *Client) fillSeries(b *proto.Batch) {
	c.mu.Lock()
	list := c.list // append-only: the prefix never changes
	c.mu.Unlock()
	b.Series = b.Series[:0]
	next := func() *proto.Series {
		if len(b.Series) < cap(b.Series) {
			b.Series = b.Series[:len(b.Series)+1]
		} else {
			b.Series = append(b.Series, proto.Series{})
		}
		return &b.Series[len(b.Series)-1]
	}
	for _, s := range list {
		switch s.kind {
		case proto.KindCounter:
			v := s.c.take()
			if v == 0 {
				continue
			}
			out := next()
			out.Name, out.Labels, out.Kind, out.Value = s.name, s.labels, s.kind, v
		case proto.KindGauge:
			out := next()
			out.Name, out.Labels, out.Kind, out.Value = s.name, s.labels, s.kind, s.g.Value()
		case proto.KindHistogram:
			out := next()
			if !s.h.takeInto(&out.Hist) {
				b.Series = b.Series[:len(b.Series)-1]
				continue
			}
			out.Name, out.Labels, out.Kind, out.Value = s.name, s.labels, s.kind, 0
		}
	}
}

// Close flushes the final batch now, once. It returns the flush error, or nil if the final
// batch was already flushed (by Run or an earlier Close).
func (c *Client) Close() error {
	if err := c.Flush(time.Now(), true); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// Run flushes at every wall-clock multiple of the interval until ctx is cancelled, then
// flushes the final batch (Final=true, ending at the cancel time) and returns its error, or
// nil. Publish errors along the way are counted, not returned. Boundaries slept through (a
// stalled publish, a suspended process) are counted as missed ticks; the next batch then
// covers the whole gap. Run returns at once, flushing nothing more, if the client was closed.
func (c *Client) Run(ctx context.Context) error {
	return c.runAligned(ctx, nil)
}

// runAligned calls collect (if set) then Flush at every aligned boundary. On cancellation it
// calls collect once more with a context that is not cancelled (collect bounds it itself)
// and final true, and flushes the final batch.
func (c *Client) runAligned(ctx context.Context, collect func(ctx context.Context, final bool)) error {
	iv := c.cfg.Interval
	next := alignUp(time.Now(), iv)
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if collect != nil {
				collect(context.WithoutCancel(ctx), true)
			}
			return c.Close()
		case <-t.C:
		}
		now := time.Now()
		b := alignDown(now, iv)
		if b.Before(next) {
			// Woke early (the wall clock stepped back): wait for the boundary.
			t.Reset(next.Sub(now))
			continue
		}
		if n := b.Sub(next) / iv; n > 0 {
			c.stats.missedAdd(uint64(n))
		}
		if collect != nil {
			collect(ctx, false)
		}
		if err := c.Flush(b, false); errors.Is(err, ErrClosed) {
			return nil
		}
		next = b.Add(iv)
		t.Reset(time.Until(next))
	}
}

// alignDown returns the last multiple of iv (in unix nanoseconds) at or before t.
func alignDown(t time.Time, iv time.Duration) time.Time {
	ns := t.UnixNano()
	m := ns % int64(iv)
	if m < 0 {
		m += int64(iv)
	}
	return time.Unix(0, ns-m)
}

// alignUp returns the first multiple of iv strictly after t.
func alignUp(t time.Time, iv time.Duration) time.Time {
	return alignDown(t, iv).Add(iv)
}
