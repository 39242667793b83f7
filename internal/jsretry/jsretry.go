// Package jsretry retries a JetStream API call until JetStream answers.
//
// A JetStream cluster answers API requests only once it has elected a meta leader: until
// then a request gets no reply (it times out) or a "temporarily unavailable" error, and so
// does a request sent while a server restarts or a leader moves. Such a call is worth
// retrying with a short timeout per attempt. A server or account without JetStream is a
// configuration error instead: no retry fixes it, so Do gives up at once.
package jsretry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// AttemptTimeout bounds one attempt: the context Do passes to op ends this long after the
// attempt began (or earlier, with Do's context).
const AttemptTimeout = 2 * time.Second

// Do calls op until it returns nil, and returns nil then. Each attempt gets a context that
// ends after AttemptTimeout or with ctx; after a failed attempt Do waits every (a second
// if every ≤ 0) before the next one.
//
// It stops at once, returning op's error unchanged, when that error is
// jetstream.ErrJetStreamNotEnabled or jetstream.ErrJetStreamNotEnabledForAccount: the
// server or the account has no JetStream. When ctx ends first, it returns an error that
// wraps both ctx.Err() and the last attempt's error (errors.Is finds either), or ctx.Err()
// alone if there was no attempt.
//
// onRetry, if not nil, is called on Do's goroutine with the error of every failed attempt
// that is followed by another one, before the wait: callers count and log there.
func Do(ctx context.Context, every time.Duration, op func(ctx context.Context) error, onRetry func(err error)) error {
	if every <= 0 {
		every = time.Second
	}
	var last error
	attempts := 0
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		err := op(actx)
		cancel()
		attempts++
		if err == nil {
			return nil
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return err
		}
		last = err
		if ctx.Err() != nil {
			break
		}
		if onRetry != nil {
			onRetry(err)
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if last == nil {
		return ctx.Err()
	}
	return fmt.Errorf("gave up after %d attempts (%w): %w", attempts, ctx.Err(), last)
}
