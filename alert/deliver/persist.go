package deliver

// The Deliverer's side of the store: loading the stored decisions at start, and writing each
// change of a decision's record with compare-and-set.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// storeTimeout bounds one store operation.
const storeTimeout = 5 * time.Second

// load reads every stored decision, retrying while the store is unavailable, and queues
// the unfinished deliveries.
func (d *Deliverer) load(ctx context.Context) {
	var keys []string
	for try := 0; ; try++ {
		lctx, cancel := context.WithTimeout(ctx, storeTimeout)
		var err error
		keys, err = d.store.Keys(lctx)
		cancel()
		if err == nil {
			break
		}
		d.storeError("list", err, "")
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(try+1)*time.Second, 10*time.Second)):
		}
	}
	resumed := 0
	for _, key := range keys {
		gctx, cancel := context.WithTimeout(ctx, storeTimeout)
		data, rev, err := d.store.Get(gctx, key)
		cancel()
		if errors.Is(err, ErrNotFound) {
			continue // expired between Keys and Get
		}
		if err != nil {
			d.storeError("get", err, key)
			continue
		}
		e := &entry{id: key, rev: rev}
		if e.rec, err = decodeRecord(key, data); err != nil {
			d.storeError("decode", err, key)
			continue
		}
		e.open.Store(e.rec.Status == "delivering" || e.rec.Status == "escalated")
		e.createdMs.Store(e.rec.CreatedMs)
		d.mu.Lock()
		if _, known := d.entries[key]; !known {
			d.entries[key] = e
			for _, t := range e.rec.Targets {
				if !t.finished() {
					d.todo[workKey{key, t.Target}] = struct{}{}
					resumed++
				}
			}
		}
		d.mu.Unlock()
	}
	d.log.Info("decisions loaded", "decisions", len(keys), "resumed_deliveries", resumed)
}

// errStale aborts an update whose precondition no longer holds.
var errStale = errors.New("target state changed")

// update applies mut to a copy of e's record and stores it with compare-and-set. On a
// revision conflict it reloads the stored record and applies mut to that. If the store is
// unavailable the change is kept in memory, to be stored with the next write, unless
// mustPersist: then the change is dropped and the error returned. An error from mut aborts
// the update.
func (d *Deliverer) update(e *entry, mustPersist bool, mut func(r *record) error) error {
	id := e.id
	e.mu.Lock()
	defer e.mu.Unlock()
	for try := 0; ; try++ {
		next := e.rec.clone()
		if err := mut(&next); err != nil {
			return err
		}
		next.Status = next.status()
		data, err := json.Marshal(&next)
		if err != nil {
			return fmt.Errorf("cannot encode decision %s: %w", id, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		var rev uint64
		if e.rev == 0 {
			rev, err = d.store.Create(ctx, id, data)
		} else {
			rev, err = d.store.Update(ctx, id, data, e.rev)
		}
		cancel()
		if err == nil {
			e.rec, e.rev = next, rev
			e.open.Store(next.Status == "delivering" || next.Status == "escalated")
			return nil
		}
		if (errors.Is(err, ErrConflict) || errors.Is(err, ErrExists)) && try < 3 {
			d.storeError("conflict", err, id)
			ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
			data, rev, gerr := d.store.Get(ctx, id)
			cancel()
			var cur record
			if gerr == nil {
				cur, gerr = decodeRecord(id, data)
			}
			if gerr == nil {
				e.rec, e.rev = cur, rev
				continue
			}
			err = gerr
		}
		d.storeError("update", err, id)
		if mustPersist {
			return fmt.Errorf("cannot store decision %s: %w", id, err)
		}
		e.rec = next
		e.open.Store(next.Status == "delivering" || next.Status == "escalated")
		return nil
	}
}
