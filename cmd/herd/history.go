package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/proto"
)

// historyStream keeps closed windows, verdicts and deployments, bounded by age, so that a
// restarted detector or web node rebuilds its state from them.
const historyStream = "HERD_HISTORY"

var historySubjects = []string{proto.SubjectRollupAll, proto.SubjectVerdictAll, proto.SubjectDeployAll}

// ensureHistory creates or updates the history stream. A cluster without a meta leader yet
// does not answer JetStream calls, so it retries with short timeouts until ctx ends.
func ensureHistory(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) (jetstream.Stream, error) {
	cfg := jetstream.StreamConfig{
		Name:        historyStream,
		Description: "herd: closed windows, verdicts and deployments for restarts",
		Subjects:    historySubjects,
		MaxAge:      maxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Discard:     jetstream.DiscardOld,
		MaxMsgSize:  proto.MaxBatchBytes,
	}
	var lastErr error
	for ctx.Err() == nil {
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := js.CreateOrUpdateStream(callCtx, cfg)
		cancel()
		if err == nil {
			return st, nil
		}
		lastErr = err
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			break
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return nil, fmt.Errorf("cannot create the %s stream: %w", historyStream, lastErr)
}

// historySink receives replayed history. Windows and deployments go to the detector, all
// three to the web node; either may be nil for a role that does not run it.
type historySink struct {
	window   func(*proto.Window)
	deploy   func(proto.Deployment)
	verdict  func(proto.Verdict)
	restored func(ctx context.Context, w *proto.Window, v *proto.Verdict, d *proto.Deployment) error
}

// replayHistory feeds every message the stream held when the call began to sink, in stream
// order, and returns how many it replayed and how many it could not decode.
func replayHistory(ctx context.Context, st jetstream.Stream, sink historySink) (n, bad int, err error) {
	info, err := st.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the %s stream: %w", historyStream, err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 || last == 0 {
		return 0, 0, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return 0, 0, fmt.Errorf("cannot replay the %s stream: %w", historyStream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return 0, 0, fmt.Errorf("cannot replay the %s stream: %w", historyStream, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			return n, bad, fmt.Errorf("cannot replay the %s stream after %d messages: %w", historyStream, n, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return n, bad, fmt.Errorf("cannot replay the %s stream: %w", historyStream, err)
		}
		n++
		if !sink.apply(ctx, m.Subject(), m.Data()) {
			bad++
		}
		if meta.Sequence.Stream >= last {
			return n, bad, nil
		}
		if ctx.Err() != nil {
			return n, bad, ctx.Err()
		}
	}
}

// apply hands one history message to the sink; it reports false if it does not decode.
func (s historySink) apply(ctx context.Context, subject string, data []byte) bool {
	switch {
	case strings.HasPrefix(subject, proto.PrefixRollup):
		w, err := proto.UnmarshalWindow(data)
		if err != nil {
			return false
		}
		if s.window != nil {
			s.window(w)
		}
		if s.restored != nil {
			_ = s.restored(ctx, w, nil, nil)
		}
	case strings.HasPrefix(subject, proto.PrefixVerdict):
		v, err := proto.UnmarshalVerdict(data)
		if err != nil {
			return false
		}
		if s.verdict != nil {
			s.verdict(*v)
		}
		if s.restored != nil {
			_ = s.restored(ctx, nil, v, nil)
		}
	case strings.HasPrefix(subject, proto.PrefixDeploy):
		d, err := decodeDeployment(data)
		if err != nil {
			return false
		}
		if s.deploy != nil {
			s.deploy(d)
		}
		if s.restored != nil {
			_ = s.restored(ctx, nil, nil, &d)
		}
	default:
		return false
	}
	return true
}

// jetStreamOf returns a JetStream handle on nc.
func jetStreamOf(nc *nats.Conn) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cannot use JetStream: %w", err)
	}
	return js, nil
}
