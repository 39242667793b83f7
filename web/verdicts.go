package web

// Verdicts on the dashboard: updates of an unchanged state (live evidence, a watch's end)
// replace the verdict they update instead of filling the history, and every verdict with a
// decision carries its delivery state, joined from rollback delivery by decision id and
// refreshed while it may change.

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/herd-dev/herd/proto"
)

// deliveryPoll is how often the delivery states of recent decisions are refreshed.
const deliveryPoll = time.Second

// deliveryWatchFor is how long after a verdict its delivery state is refreshed: a
// redelivery from the API may still change it.
const deliveryWatchFor = time.Hour

// deliveryUpdate is a decision's new delivery state, for the hub.
type deliveryUpdate struct {
	id string
	st *proto.DeliveryState
}

// SetDecisionLookup sets the function returning one decision with its delivery log by id:
// the dashboard joins each verdict's delivery state with it, at once when the verdict
// arrives and then every second while the decision is recent. Without it the state comes
// from the SetDecisions list, refreshed every second only. It must be safe for concurrent
// use and fast (it is called on the hub's goroutine).
func (s *Server) SetDecisionLookup(f func(id string) (proto.Decision, bool)) { s.lookup.Store(&f) }

// deliveryOf returns the delivery state of decision id from the lookup, or nil.
func (s *Server) deliveryOf(id string) *proto.DeliveryState {
	f := s.lookup.Load()
	if id == "" || f == nil || *f == nil {
		return nil
	}
	d, ok := (*f)(id)
	if !ok {
		return nil
	}
	return cleanDelivery(proto.DeliveryOf(&d))
}

// applyVerdictLocked enters a verdict: an update replaces the verdict of the same
// comparison and state it updates (keeping its delivery state), anything else is appended
// to the history. The caller holds s.mu.
func (s *Server) applyVerdictLocked(v proto.Verdict, now time.Time) {
	sv := s.serviceLocked(v.Service)
	// Both are the Server's to fill, whatever arrived.
	v.Delivery, v.AgeMs = s.deliveryOf(v.DecisionID), 0
	if v.Update {
		for i := len(sv.verdicts) - 1; i >= 0; i-- {
			o := &sv.verdicts[i]
			if o.Baseline != v.Baseline || o.Canary != v.Canary {
				continue
			}
			if o.State == v.State && o.DecisionID == v.DecisionID && o.StartedMs == v.StartedMs {
				if v.Delivery == nil {
					v.Delivery = o.Delivery
				}
				*o = v
				s.m.verdictUpdates.Inc()
				s.publishLocked(v.Service, now, encodeVerdictEvent(s.seq+1, &v))
				return
			}
			break // the newest verdict of the comparison is another state: keep both
		}
	}
	sv.verdicts = appendBounded(sv.verdicts, v, maxVerdicts)
	s.publishLocked(v.Service, now, encodeVerdictEvent(s.seq+1, &v))
}

// applyDeliveryLocked sets the delivery state of the verdicts of decision u.id and publishes
// the newest as an update when it changed. The caller holds s.mu.
func (s *Server) applyDeliveryLocked(u deliveryUpdate, now time.Time) {
	for _, sv := range s.services {
		for i := len(sv.verdicts) - 1; i >= 0; i-- {
			v := &sv.verdicts[i]
			if v.DecisionID != u.id || sameDelivery(v.Delivery, u.st) {
				continue
			}
			v.Delivery = u.st
			ev := *v
			ev.Update = true
			s.publishLocked(ev.Service, now, encodeVerdictEvent(s.seq+1, &ev))
		}
	}
}

// sameDelivery reports whether a and b say the same.
func sameDelivery(a, b *proto.DeliveryState) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Status == b.Status && slices.Equal(a.Targets, b.Targets)
}

// pollDeliveries refreshes the delivery states of recent decisions every deliveryPoll until
// ctx ends. It reads the decisions outside the hub (a listing may take a while) and hands
// changes to the hub through its queue.
func (s *Server) pollDeliveries(ctx context.Context) {
	t := time.NewTicker(deliveryPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, u := range s.deliveryChanges(now) {
				s.enqueue(input{dl: &u})
			}
		}
	}
}

// deliveryChanges returns the delivery states that differ from those the recent verdicts
// with a decision carry.
func (s *Server) deliveryChanges(now time.Time) []deliveryUpdate {
	cutoff := now.Add(-deliveryWatchFor).UnixMilli()
	have := map[string]*proto.DeliveryState{}
	s.mu.RLock()
	for _, sv := range s.services {
		for i := range sv.verdicts {
			if v := &sv.verdicts[i]; v.DecisionID != "" && v.UnixMs >= cutoff {
				have[v.DecisionID] = v.Delivery
			}
		}
	}
	s.mu.RUnlock()
	if len(have) == 0 {
		return nil
	}
	var found func(id string) *proto.DeliveryState
	if f := s.lookup.Load(); f != nil && *f != nil {
		found = s.deliveryOf
	} else if f := s.decisions.Load(); f != nil && *f != nil {
		byID := map[string]*proto.Decision{}
		ds := (*f)()
		for i := range ds {
			if _, ok := have[ds[i].ID]; ok {
				byID[ds[i].ID] = &ds[i]
			}
		}
		found = func(id string) *proto.DeliveryState {
			if d := byID[id]; d != nil {
				return cleanDelivery(proto.DeliveryOf(d))
			}
			return nil
		}
	} else {
		return nil
	}
	var out []deliveryUpdate
	for id, cur := range have {
		if st := found(id); st != nil && !sameDelivery(cur, st) {
			out = append(out, deliveryUpdate{id, st})
		}
	}
	return out
}

// stampAges sets the AgeMs of served verdicts; vs is the caller's.
func stampAges(vs []proto.Verdict, now time.Time) []proto.Verdict {
	ms := now.UnixMilli()
	for i := range vs {
		vs[i].AgeMs = max(ms-vs[i].UnixMs, 0)
	}
	return vs
}

// runPoller starts pollDeliveries for Run and returns the function that stops it and waits.
func (s *Server) runPoller(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.pollDeliveries(ctx) })
	return func() { cancel(); wg.Wait() }
}
