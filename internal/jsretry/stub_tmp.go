package jsretry

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Do is a temporary stand-in.
func Do(ctx context.Context, every time.Duration, op func(ctx context.Context) error) error {
	var last error
	for ctx.Err() == nil {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = op(c)
		cancel()
		if last == nil {
			return nil
		}
		if errors.Is(last, jetstream.ErrJetStreamNotEnabled) || errors.Is(last, jetstream.ErrJetStreamNotEnabledForAccount) {
			return last
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return last
}
