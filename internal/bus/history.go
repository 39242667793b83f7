package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/jsretry"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// HistoryStream is the JetStream stream of closed windows, verdicts and deployments that a
// restarted detector or web node rebuilds its state from.
const HistoryStream = "HERD_HISTORY"

// HistoryConfig bounds the history stream.
type HistoryConfig struct {
	// MaxAge is how long a message is kept.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size; the oldest messages go first (0: no size bound).
	MaxBytes int64
	// Replicas is the stream's replica count (3 on a 3-node cluster).
	Replicas int
}

// History is the history stream.
type History struct {
	st          jetstream.Stream
	replayed    *metrics.Counter
	undecodable *metrics.Counter
}

// EnsureHistory creates or updates the history stream. A cluster without a meta leader yet
// does not answer JetStream calls: it retries until ctx ends, and gives up at once when the
// server has no JetStream (jetstream.ErrJetStreamNotEnabled).
func EnsureHistory(ctx context.Context, js jetstream.JetStream, cfg HistoryConfig, set *metrics.Set) (*History, error) {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(busHelp)
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	sc := jetstream.StreamConfig{
		Name:        HistoryStream,
		Description: "herd: closed windows, verdicts and deployments for restarts",
		Subjects:    []string{proto.SubjectRollupAll, proto.SubjectVerdictAll, proto.SubjectDeployAll},
		MaxAge:      cfg.MaxAge,
		MaxBytes:    maxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, cfg.Replicas),
		Discard:     jetstream.DiscardOld,
		MaxMsgSize:  proto.MaxBatchBytes,
	}
	var st jetstream.Stream
	err := jsretry.Do(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		var err error
		st, err = js.CreateOrUpdateStream(ctx, sc)
		return NoJetStream(ctx, js, err)
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot create the %s stream: %w", HistoryStream, err)
	}
	return &History{st: st,
		replayed:    set.GetOrCreateCounter(`herd_history_replayed_total`),
		undecodable: set.GetOrCreateCounter(`herd_history_undecodable_total`)}, nil
}

// Replay hands every message the stream held when the call began to d, in stream order, and
// returns how many it replayed and how many did not decode (counted in
// herd_history_undecodable_total and skipped).
func (h *History) Replay(ctx context.Context, d *Decoder) (n, bad int, err error) {
	info, err := h.st.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the %s stream: %w", HistoryStream, err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 || last == 0 {
		return 0, 0, nil
	}
	cons, err := h.st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return 0, 0, fmt.Errorf("cannot replay the %s stream: %w", HistoryStream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return 0, 0, fmt.Errorf("cannot replay the %s stream: %w", HistoryStream, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			return n, bad, fmt.Errorf("cannot replay the %s stream after %d messages: %w", HistoryStream, n, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return n, bad, fmt.Errorf("cannot replay the %s stream: %w", HistoryStream, err)
		}
		n++
		h.replayed.Inc()
		if d.Handle(m.Subject(), m.Data()) != nil {
			bad++
			h.undecodable.Inc()
		}
		if meta.Sequence.Stream >= last {
			return n, bad, nil
		}
		if ctx.Err() != nil {
			return n, bad, ctx.Err()
		}
	}
}

// NoJetStream returns err, or jetstream.ErrJetStreamNotEnabled when err is a server's "no
// responders" answer and the account has no JetStream: a server without JetStream answers API
// calls that way, which is final, whereas a cluster still electing its meta leader answers
// late or not at all, which is worth a retry.
func NoJetStream(ctx context.Context, js jetstream.JetStream, err error) error {
	if !errors.Is(err, nats.ErrNoResponders) {
		return err
	}
	if _, aerr := js.AccountInfo(ctx); errors.Is(aerr, jetstream.ErrJetStreamNotEnabled) || errors.Is(aerr, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: %w", aerr, err)
	}
	return err
}
