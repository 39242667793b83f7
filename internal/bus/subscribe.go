package bus

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// Handlers receive decoded messages. A nil handler's kind is not subscribed to (and its
// messages are skipped in a replay). Window is called on the subscription's goroutine and
// must not block; the window belongs to the handler.
type Handlers struct {
	Window     func(*proto.Window)
	Verdict    func(proto.Verdict)
	Deployment func(proto.Deployment)
}

// maxGroupsTracked bounds the groups whose last window start Decoder remembers for gap
// counting; past it the memory is cleared (gaps of the next window per group go uncounted).
const maxGroupsTracked = 100_000

// Decoder decodes bus messages by subject and hands them to Handlers. It counts every message
// in herd_bus_received_total{kind}, the undecodable ones in herd_bus_bad_messages_total{kind}
// (and drops them), and the windows missing between a group's consecutive windows in
// herd_bus_windows_missing_total. It is safe for concurrent use.
type Decoder struct {
	h        Handlers
	received map[string]*metrics.Counter
	bad      map[string]*metrics.Counter
	missing  *metrics.Counter

	gapsMu    sync.Mutex // Guards lastStart.
	lastStart map[[2]string]int64
}

// NewDecoder returns a Decoder feeding h, counting in set.
func NewDecoder(h Handlers, set *metrics.Set) *Decoder {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(busHelp)
	d := &Decoder{h: h, received: map[string]*metrics.Counter{}, bad: map[string]*metrics.Counter{},
		missing: set.GetOrCreateCounter(`herd_bus_windows_missing_total`), lastStart: map[[2]string]int64{}}
	for _, k := range kinds {
		d.received[k] = set.GetOrCreateCounter(`herd_bus_received_total{kind="` + k + `"}`)
		d.bad[k] = set.GetOrCreateCounter(`herd_bus_bad_messages_total{kind="` + k + `"}`)
	}
	return d
}

// kindOf returns the kind of message a subject carries, or "".
func kindOf(subject string) string {
	switch {
	case strings.HasPrefix(subject, proto.PrefixRollup):
		return KindWindow
	case strings.HasPrefix(subject, proto.PrefixVerdict):
		return KindVerdict
	case strings.HasPrefix(subject, proto.PrefixDeploy):
		return KindDeployment
	}
	return ""
}

// Handle decodes one message and calls its handler. It returns an error (already counted)
// if the subject is not herd's or the data does not decode.
func (d *Decoder) Handle(subject string, data []byte) error {
	kind := kindOf(subject)
	if kind == "" {
		return fmt.Errorf("cannot decode message on %s: not a herd output subject", subject)
	}
	d.received[kind].Inc()
	var err error
	switch kind {
	case KindWindow:
		var w *proto.Window
		if w, err = proto.UnmarshalWindow(data); err == nil {
			d.countGap(w)
			if d.h.Window != nil {
				d.h.Window(w)
			}
		}
	case KindVerdict:
		var v *proto.Verdict
		if v, err = proto.UnmarshalVerdict(data); err == nil && d.h.Verdict != nil {
			d.h.Verdict(*v)
		}
	case KindDeployment:
		var dep *proto.Deployment
		if dep, err = proto.UnmarshalDeployment(data); err == nil && d.h.Deployment != nil {
			d.h.Deployment(*dep)
		}
	}
	if err != nil {
		d.bad[kind].Inc()
		return fmt.Errorf("cannot decode message on %s: %w", subject, err)
	}
	return nil
}

// countGap counts the windows missing between a group's previous window and w. Core NATS is
// at most once: a window lost between a rollup worker and this node (a NATS node failing, a
// worker's connection dropping) shows only here. Groups that stop reporting simply end; a
// group seen again after a long silence (more than a minute) is not counted as a gap.
// Corrections (late data of windows already published) are not in that sequence.
func (d *Decoder) countGap(w *proto.Window) {
	width := w.EndMs - w.StartMs
	if width <= 0 || w.Correction {
		return
	}
	k := [2]string{w.Service, w.Version}
	d.gapsMu.Lock()
	defer d.gapsMu.Unlock()
	last, ok := d.lastStart[k]
	if ok && w.StartMs > last+width && w.StartMs-last <= 60_000 {
		d.missing.Add(int((w.StartMs-last)/width - 1))
	}
	if !ok || w.StartMs > last {
		if len(d.lastStart) >= maxGroupsTracked {
			clear(d.lastStart)
		}
		d.lastStart[k] = w.StartMs
	}
}

// Subscription is a set of NATS subscriptions feeding one Decoder.
type Subscription struct {
	subs []*nats.Subscription
}

// Pending limits of every subscription: a consumer further behind than this loses messages,
// counted as slow-consumer drops by Connect's error handler.
const (
	pendingMsgs  = 1 << 20
	pendingBytes = 256 << 20
)

// Subscribe subscribes nc to the subjects of every kind d has a handler for (windows on
// herd.rollup.>, verdicts on herd.verdict.>, deployments on herd.deploy.>), leaving out the
// kinds in skip, and flushes so that the subscriptions are in place when it returns.
func Subscribe(nc *nats.Conn, d *Decoder, skip ...string) (*Subscription, error) {
	s := &Subscription{}
	handler := func(m *nats.Msg) { _ = d.Handle(m.Subject, m.Data) }
	for _, k := range []struct {
		kind, subject string
		on            bool
	}{
		{KindWindow, proto.SubjectRollupAll, d.h.Window != nil},
		{KindVerdict, proto.SubjectVerdictAll, d.h.Verdict != nil},
		{KindDeployment, proto.SubjectDeployAll, d.h.Deployment != nil},
	} {
		if !k.on || slices.Contains(skip, k.kind) {
			continue
		}
		sub, err := nc.Subscribe(k.subject, handler)
		if err == nil {
			err = sub.SetPendingLimits(pendingMsgs, pendingBytes)
		}
		if err != nil {
			s.Unsubscribe()
			return nil, fmt.Errorf("cannot subscribe to %s: %w", k.subject, err)
		}
		s.subs = append(s.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		s.Unsubscribe()
		return nil, fmt.Errorf("cannot subscribe: %w", err)
	}
	return s, nil
}

// Unsubscribe ends every subscription; messages already delivered to the client are dropped.
func (s *Subscription) Unsubscribe() {
	if s == nil {
		return
	}
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

// WindowsMissing returns the number of windows counted as missing so far.
func (d *Decoder) WindowsMissing() uint64 { return d.missing.Get() }
