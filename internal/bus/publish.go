package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// Kinds of message on the bus (label kind of the herd_bus_* families).
const (
	KindWindow     = "window"
	KindVerdict    = "verdict"
	KindDeployment = "deployment"
)

var kinds = []string{KindWindow, KindVerdict, KindDeployment}

// Reasons of herd_bus_publish_errors_total.
const (
	ReasonSubject = "subject" // the service or version cannot be a subject token
	ReasonEncode  = "encode"  // the message cannot be encoded (e.g. a non-finite value)
	ReasonPublish = "publish" // the NATS client refused it (closed, reconnect buffer full, too large)
)

// Publisher publishes herd's outputs. Every failure is counted in
// herd_bus_publish_errors_total{kind,reason} and logged at most once a second; successes in
// herd_bus_published_total{kind}. It is safe for concurrent use.
type Publisher struct {
	nc     *nats.Conn
	logger *slog.Logger
	// js publishes with acknowledgements once AckHistory was called; nil publishes plainly.
	js          jetstream.JetStream
	historyErrs *metrics.Counter
	lastHistErr atomic.Pointer[historyError]

	published map[string]*metrics.Counter
	errs      map[[2]string]*metrics.Counter

	mu      sync.Mutex // guards lastLog
	lastLog time.Time
}

// NewPublisher returns a Publisher on nc whose counters are registered in set.
func NewPublisher(nc *nats.Conn, set *metrics.Set, logger *slog.Logger) *Publisher {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(busHelp)
	p := &Publisher{nc: nc, logger: logger, published: map[string]*metrics.Counter{}, errs: map[[2]string]*metrics.Counter{},
		historyErrs: set.GetOrCreateCounter(`herd_history_write_errors_total`)}
	for _, k := range kinds {
		p.published[k] = set.GetOrCreateCounter(`herd_bus_published_total{kind="` + k + `"}`)
		for _, r := range []string{ReasonSubject, ReasonEncode, ReasonPublish} {
			p.errs[[2]string{k, r}] = set.GetOrCreateCounter(`herd_bus_publish_errors_total{kind="` + k + `",reason="` + r + `"}`)
		}
	}
	return p
}

// historyError is the latest failure to store a message in the history stream.
type historyError struct {
	at  time.Time
	err error
}

// AckHistory makes p publish through JetStream and wait for acknowledgements
// asynchronously, so that a message the history stream could not store (a full disk, a
// stream limit) is counted in herd_history_write_errors_total, logged and reported by
// HistoryFailing. Subscribers receive the messages as before. Call it before publishing.
func (p *Publisher) AckHistory() error {
	js, err := jetstream.New(p.nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.historyFailed(m.Subject, err)
		}))
	if err != nil {
		return fmt.Errorf("cannot use JetStream: %w", err)
	}
	p.js = js
	return nil
}

func (p *Publisher) historyFailed(subject string, err error) {
	p.historyErrs.Inc()
	p.lastHistErr.Store(&historyError{at: time.Now(), err: err})
	if p.mayLog() {
		p.logger.Error("history stream write failed: a restart will not see this message", "subject", subject, "err", err)
	}
}

// HistoryFailing returns the latest failure to store a message in the history stream
// within the last d, or nil.
func (p *Publisher) HistoryFailing(d time.Duration) error {
	if h := p.lastHistErr.Load(); h != nil && time.Since(h.at) < d {
		return h.err
	}
	return nil
}

// send publishes data on subject: through JetStream with an asynchronous acknowledgement
// after AckHistory (falling back to a plain publish, counted as a history failure, when too
// many acknowledgements are pending), plainly otherwise.
func (p *Publisher) send(subject string, data []byte) error {
	if p.js != nil {
		_, err := p.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data}, jetstream.WithStallWait(50*time.Millisecond))
		if err == nil {
			return nil
		}
		p.historyFailed(subject, err)
	}
	return p.nc.Publish(subject, data)
}

// mayLog reports whether a failure may be logged now: at most one line a second, the rest
// only counted.
func (p *Publisher) mayLog() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.lastLog) <= time.Second {
		return false
	}
	p.lastLog = time.Now()
	return true
}

// fail counts and (rate-limited) logs a failed publication and returns err.
func (p *Publisher) fail(kind, reason, what string, err error) error {
	p.errs[[2]string{kind, reason}].Inc()
	if p.mayLog() {
		p.logger.Warn("cannot publish", "kind", kind, "reason", reason, "what", what, "err", err)
	}
	return fmt.Errorf("cannot publish %s %s: %w", kind, what, err)
}

// Window publishes a closed window on herd.rollup.<service>.<version>.
func (p *Publisher) Window(w *proto.Window) error {
	what := w.Service + "/" + w.Version
	subj, err := proto.RollupSubject(w.Service, w.Version)
	if err != nil {
		return p.fail(KindWindow, ReasonSubject, what, err)
	}
	data, err := proto.MarshalWindow(w)
	if err != nil {
		return p.fail(KindWindow, ReasonEncode, what, err)
	}
	if err := p.send(subj, data); err != nil {
		return p.fail(KindWindow, ReasonPublish, what, err)
	}
	p.published[KindWindow].Inc()
	return nil
}

// Verdict publishes a verdict change on herd.verdict.<service>.
func (p *Publisher) Verdict(v *proto.Verdict) error {
	subj, err := proto.VerdictSubject(v.Service)
	if err != nil {
		return p.fail(KindVerdict, ReasonSubject, v.Service, err)
	}
	data, err := proto.MarshalVerdict(v)
	if err != nil {
		return p.fail(KindVerdict, ReasonEncode, v.Service, err)
	}
	if err := p.send(subj, data); err != nil {
		return p.fail(KindVerdict, ReasonPublish, v.Service, err)
	}
	p.published[KindVerdict].Inc()
	return nil
}

// Deployment validates d and publishes it on herd.deploy.<service>, stamped with the current
// time if it has none, and flushes so that it reached the server when Deployment returns.
// An invalid deployment is returned as an error and not counted: it is the caller's input.
func (p *Publisher) Deployment(d proto.Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if d.UnixMs == 0 {
		d.UnixMs = time.Now().UnixMilli()
	}
	subj, err := proto.DeploySubject(d.Service)
	if err != nil {
		return p.fail(KindDeployment, ReasonSubject, d.Service, err)
	}
	data, err := proto.MarshalDeployment(&d)
	if err != nil {
		return p.fail(KindDeployment, ReasonEncode, d.Service, err)
	}
	if err := p.send(subj, data); err != nil {
		return p.fail(KindDeployment, ReasonPublish, d.Service, err)
	}
	if err := p.nc.Flush(); err != nil && !errors.Is(err, nats.ErrConnectionReconnecting) {
		return p.fail(KindDeployment, ReasonPublish, d.Service, err)
	}
	p.published[KindDeployment].Inc()
	return nil
}

// busHelp is the # HELP text of the bus families.
var busHelp = map[string]string{
	"herd_bus_published_total":         "Messages published on herd's output subjects, by kind (window, verdict, deployment).",
	"herd_bus_publish_errors_total":    "Messages that could not be published, by kind and reason (subject, encode, publish).",
	"herd_bus_received_total":          "Messages received on herd's output subjects, by kind.",
	"herd_bus_bad_messages_total":      "Received messages that did not decode, by kind; they are dropped.",
	"herd_bus_windows_missing_total":   "Windows that never arrived: gaps in a group's window starts.",
	"herd_nats_async_errors_total":     "Asynchronous NATS client errors, by client and reason (slow_consumer, permission, other).",
	"herd_nats_dropped_messages_total": "Messages the NATS client dropped for a slow subscription, by client.",
	"herd_history_replayed_total":      "History stream messages replayed at start.",
	"herd_history_write_errors_total":  "Messages the history stream did not store (full disk, stream limits), or whose acknowledgement could not be awaited.",
	"herd_history_undecodable_total":   "History stream messages that did not decode during a replay.",
}
