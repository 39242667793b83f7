package deliver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/proto"
)

// ListDecisions reads every decision in store with its delivery log, newest first (then by
// id), checking each record as a Deliverer's Run does when it loads them. A record that
// cannot be read, or is corrupt, is left out and named in the returned error, which then
// comes with the good decisions. If the keys cannot be listed, it returns nil and the error.
func ListDecisions(ctx context.Context, store Store) ([]proto.Decision, error) {
	keys, err := store.Keys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]proto.Decision, 0, len(keys))
	var errs []error
	for _, key := range keys {
		data, _, err := store.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // expired between Keys and Get
		}
		if err == nil {
			var r record
			if r, err = decodeRecord(key, data); err == nil {
				out = append(out, r.Decision)
				continue
			}
		}
		errs = append(errs, err)
	}
	slices.SortFunc(out, func(a, b proto.Decision) int {
		return cmp.Or(cmp.Compare(b.CreatedMs, a.CreatedMs), cmp.Compare(a.ID, b.ID))
	})
	if len(errs) > 0 {
		return out, fmt.Errorf("cannot read %d of %d stored decisions: %w", len(errs), len(keys), errors.Join(errs...))
	}
	return out, nil
}

// KVReader reads the decisions that a herd with a Deliverer keeps in the herd_decisions
// bucket (OpenKVStore), for a process without one, such as a dashboard-only node. It never
// creates the bucket: until some Deliverer has, there are no decisions. It is safe for
// concurrent use.
type KVReader struct {
	js jetstream.JetStream

	mu    sync.Mutex // Guards store.
	store *KVStore   // nil until the bucket is found
}

// NewKVReader returns a KVReader on js. It does not contact the server.
func NewKVReader(js jetstream.JetStream) *KVReader { return &KVReader{js: js} }

// Decisions lists the stored decisions, newest first, as ListDecisions does. Before the
// bucket exists it returns none and no error.
func (r *KVReader) Decisions(ctx context.Context) ([]proto.Decision, error) {
	r.mu.Lock()
	st := r.store
	r.mu.Unlock()
	if st == nil {
		kv, err := r.js.KeyValue(ctx, KVBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return []proto.Decision{}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("cannot open key-value bucket %s: %w", KVBucket, err)
		}
		st = &KVStore{kv: kv}
		r.mu.Lock()
		r.store = st
		r.mu.Unlock()
	}
	return ListDecisions(ctx, st)
}

// listTimeout bounds one listing of StoredDecisions.
const listTimeout = 2 * time.Second

// StoredDecisions returns a function for web.Server.SetDecisions in a process without a
// Deliverer: it lists the decisions with list (such as KVReader.Decisions) at most once per
// ttl, each listing bounded by 2 s, and returns the cached list in between. When list
// fails, the error is logged (so at most once per ttl); decisions that came with the error
// replace the cache, and without any the previous list stays. The function is safe for
// concurrent use: concurrent callers wait for one listing. The returned slice is shared: a
// caller must not modify it.
func StoredDecisions(list func(context.Context) ([]proto.Decision, error), ttl time.Duration, logger *slog.Logger) func() []proto.Decision {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var (
		mu     sync.Mutex // Guards the fields below; held while listing.
		cached []proto.Decision
		at     time.Time // of the last listing; zero: never
	)
	return func() []proto.Decision {
		mu.Lock()
		defer mu.Unlock()
		if !at.IsZero() && time.Since(at) < ttl {
			return cached
		}
		ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
		defer cancel()
		out, err := list(ctx)
		at = time.Now()
		if err != nil {
			logger.Warn("cannot list stored decisions", "err", err)
		}
		if err == nil || out != nil {
			cached = out
		}
		return cached
	}
}
