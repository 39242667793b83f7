package node

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/proto"
)

// lookupVerdict returns the detector's current verdict for a service's newest canary.
func (n *Node) lookupVerdict(service string) (proto.Verdict, bool) {
	var best proto.Verdict
	found := false
	for _, v := range n.det.Verdicts() {
		if v.Service == service && (!found || v.StartedMs >= best.StartedMs) {
			best, found = v, true
		}
	}
	return best, found
}

// storedDecisions lists the decisions in the JetStream KV bucket.
func storedDecisions(js jetstream.JetStream, logger *slog.Logger) func() []proto.Decision {
	var mu sync.Mutex
	var cached []proto.Decision
	var at time.Time
	return func() []proto.Decision {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < time.Second {
			return cached
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, deliver.KVBucket)
		if err != nil {
			return cached
		}
		keys, err := kv.Keys(ctx)
		if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
			logger.Warn("cannot list decisions", "err", err)
			return cached
		}
		out := make([]proto.Decision, 0, len(keys))
		for _, k := range keys {
			e, err := kv.Get(ctx, k)
			if err != nil {
				continue
			}
			var d proto.Decision
			if json.Unmarshal(e.Value(), &d) == nil {
				out = append(out, d)
			}
		}
		slices.SortFunc(out, func(a, b proto.Decision) int { return cmp.Compare(b.CreatedMs, a.CreatedMs) })
		cached, at = out, time.Now()
		return cached
	}
}
