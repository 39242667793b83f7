package jsretry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/natstest"
)

var errTransient = errors.New("nats: timeout")

func TestDoRetriesUntilSuccess(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var at []time.Duration
		var retried []error
		err := Do(context.Background(), 300*time.Millisecond, func(context.Context) error {
			at = append(at, time.Since(start))
			if len(at) < 3 {
				return errTransient
			}
			return nil
		}, func(err error) { retried = append(retried, err) })
		if err != nil {
			t.Fatalf("got %v; want nil", err)
		}
		if want := []time.Duration{0, 300 * time.Millisecond, 600 * time.Millisecond}; fmt.Sprint(at) != fmt.Sprint(want) {
			t.Errorf("got attempts at %v; want %v", at, want)
		}
		if len(retried) != 2 || !errors.Is(retried[0], errTransient) {
			t.Errorf("got onRetry with %v; want the 2 failed attempts' errors", retried)
		}
	})
}

// TestDoAttemptTimeout checks that an attempt that gets no answer ends after
// AttemptTimeout, and that Do returns the last error wrapped with ctx's once ctx ends.
func TestDoAttemptTimeout(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		// ctx ends inside the second attempt, not at the instant its own timeout would end it
		// (two timers due at one instant fire in either order).
		ctx, cancel := context.WithTimeout(context.Background(), 4500*time.Millisecond)
		defer cancel()
		start := time.Now()
		var ended []time.Duration
		retries := 0
		err := Do(ctx, time.Second, func(actx context.Context) error {
			<-actx.Done() // no reply
			ended = append(ended, time.Since(start))
			return actx.Err()
		}, func(error) { retries++ })
		// Attempts [0, 2s) and [3s, 4.5s): the second is cut short by ctx.
		if want := []time.Duration{AttemptTimeout, 4500 * time.Millisecond}; fmt.Sprint(ended) != fmt.Sprint(want) {
			t.Errorf("got attempts ending at %v; want %v", ended, want)
		}
		if retries != 1 {
			t.Errorf("got %d onRetry calls; want 1 (none for the attempt ctx ended)", retries)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v; want it to wrap context.DeadlineExceeded", err)
		}
		if got := time.Since(start); got != 4500*time.Millisecond {
			t.Errorf("Do returned after %s; want 4.5s, when ctx ended", got)
		}
	})
}

func TestDoReturnsLastErrorWhenCanceled(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		err := Do(ctx, time.Second, func(context.Context) error {
			if n++; n == 3 {
				cancel()
			}
			return fmt.Errorf("attempt %d: %w", n, errTransient)
		}, nil)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
			t.Errorf("got %v; want it to wrap context.Canceled and the last error", err)
		}
		if want := "gave up after 3 attempts (context canceled): attempt 3: nats: timeout"; err == nil || err.Error() != want {
			t.Errorf("got %v; want %q", err, want)
		}
	})
}

func TestDoStopsWithoutJetStream(t *testing.T) {
	t.Parallel()
	for _, perm := range []error{jetstream.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabledForAccount} {
		synctest.Test(t, func(t *testing.T) {
			n := 0
			want := fmt.Errorf("cannot create bucket: %w", perm)
			err := Do(context.Background(), time.Second, func(context.Context) error {
				n++
				return want
			}, func(err error) { t.Errorf("onRetry(%v) called; want no retry", err) })
			if err != want || n != 1 {
				t.Errorf("got %v after %d attempts; want %v after 1", err, n, want)
			}
		})
	}
}

func TestDoCanceledBeforeAttempt(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Do(ctx, time.Second, func(context.Context) error {
		t.Error("op called; want no attempt after ctx ended")
		return nil
	}, nil)
	if err != context.Canceled {
		t.Errorf("got %v; want context.Canceled", err)
	}
}

// createBucket is the op of the tests against a real server: create a KV bucket.
func createBucket(js jetstream.JetStream) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "jsretry_test", Storage: jetstream.MemoryStorage})
		return err
	}
}

func connectJS(t *testing.T, s *server.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestDoRealServer(t *testing.T) {
	t.Parallel()
	for _, withJS := range []bool{true, false} {
		t.Run(fmt.Sprint("jetstream=", withJS), func(t *testing.T) {
			t.Parallel()
			js := connectJS(t, natstest.RunServer(t, natstest.Options{JetStream: withJS}))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n := 0
			op := createBucket(js)
			err := Do(ctx, 100*time.Millisecond, func(ctx context.Context) error { n++; return op(ctx) },
				func(err error) { t.Errorf("onRetry(%v) called; want no retry", err) })
			switch {
			case withJS && err != nil:
				t.Errorf("got %v; want nil", err)
			case !withJS && !errors.Is(err, jetstream.ErrJetStreamNotEnabled):
				t.Errorf("got %v; want jetstream.ErrJetStreamNotEnabled", err)
			}
			if n != 1 {
				t.Errorf("got %d attempts; want 1", n)
			}
		})
	}
}

// TestDoWaitsForMetaLeader starts one node of a three-node JetStream cluster: it has no
// meta leader, so the call cannot succeed and Do retries. Once the other two nodes join, a
// leader is elected and Do returns nil.
func TestDoWaitsForMetaLeader(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-node cluster and waits for attempts to time out")
	}
	opts, err := embednats.ClusterOptions(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	js := connectJS(t, natstest.RunServerOptions(t, opts[0]))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	retried := make(chan error, 100)
	done := make(chan error, 1)
	go func() {
		done <- Do(ctx, 100*time.Millisecond, createBucket(js), func(err error) {
			select {
			case retried <- err:
			default:
			}
		})
	}()
	// A failed attempt shows Do retrying while there is no leader.
	select {
	case err := <-retried:
		t.Logf("attempt without a meta leader: %v", err)
	case err := <-done:
		t.Fatalf("Do returned %v without a meta leader; want it to retry", err)
	}
	natstest.RunServerOptions(t, opts[1])
	natstest.RunServerOptions(t, opts[2])
	formed := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("got %v after the cluster formed; want nil", err)
	}
	t.Logf("succeeded %s after the other nodes started, %d more failed attempts", time.Since(formed).Round(time.Millisecond), len(retried))
}
