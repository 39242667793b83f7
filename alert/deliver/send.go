package deliver

// The delivery loop: the attempts of one decision at one target, their retry schedule and
// the delivery log rows they write.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/herd-dev/herd/proto"
)

// schedule is the retry schedule inside herd's 10 s budget: offsets of the attempts from
// the first one. Afterwards the gap doubles up to maxGap.
var schedule = []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}

const (
	maxGap = 60 * time.Second
	jitter = 0.1 // ±10 % of each gap
)

// deliver runs the attempts of one decision at one target until the target's state is
// final or ctx is cancelled.
func (d *Deliverer) deliver(ctx context.Context, e *entry, name string) {
	t := d.targets[name]
	storeFails := 0
	for {
		e.mu.Lock()
		ts := e.rec.target(name)
		if ts == nil || ts.finished() {
			e.mu.Unlock()
			return
		}
		state := ts.State
		dec := proto.Decision{ID: e.rec.ID, Verdict: e.rec.Verdict, CreatedMs: e.rec.CreatedMs}
		e.mu.Unlock()

		if t == nil {
			d.finish(e, name, "", result{class: classFailed, err: errors.New("target is no longer configured")}, time.Now())
			return
		}
		if state == stateSending {
			// A previous run stopped while sending to a non-idempotent target.
			d.finish(e, name, t.kind(), result{class: classUnknown,
				err: errors.New("outcome unknown: herd stopped while sending; not resent")}, time.Now())
			return
		}
		if t.kind() == KindSpinnaker {
			err := d.update(e, true, func(r *record) error {
				ts := r.target(name)
				if ts == nil || ts.State != statePending {
					return errStale
				}
				ts.State = stateSending
				return nil
			})
			if errors.Is(err, errStale) {
				return
			}
			if err != nil {
				// Never send what could not be marked as sent; try again later, backing
				// off like the attempts do.
				storeFails++
				if !d.sleep(ctx, d.gap(storeFails)) {
					return
				}
				continue
			}
			storeFails = 0
		}

		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		res := t.attempt(actx, d.client, &dec)
		cancel()
		if ctx.Err() != nil && res.class == classRetry {
			// Stopping: the attempt was cut short, not answered; the next Run makes it.
			if t.kind() == KindSpinnaker {
				d.update(e, false, func(r *record) error {
					if ts := r.target(name); ts != nil && ts.State == stateSending {
						ts.State = statePending
					}
					return nil
				})
			}
			return
		}
		gap, final := d.finish(e, name, t.kind(), res, start)
		if final || !d.sleep(ctx, gap) {
			return
		}
	}
}

// sleep waits for gap or ctx; it reports whether the gap elapsed.
func (d *Deliverer) sleep(ctx context.Context, gap time.Duration) bool {
	tm := time.NewTimer(gap)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// gap returns the jittered wait after the n-th attempt (n ≥ 1) of a round.
func (d *Deliverer) gap(n int) time.Duration {
	s := d.schedule
	var g time.Duration
	if n < len(s) {
		g = s[n] - s[n-1]
	} else {
		g = d.maxGap
		if shift := n - len(s) + 1; shift < 16 {
			g = min(d.maxGap, (s[len(s)-1]-s[len(s)-2])<<shift)
		}
	}
	return g + time.Duration((rand.Float64()*2-1)*jitter*float64(g))
}

// finish logs one attempt's row and moves the target's state; it returns the gap before
// the next attempt and whether the target is finished.
func (d *Deliverer) finish(e *entry, name, kind string, res result, start time.Time) (time.Duration, bool) {
	now := time.Now()
	var (
		outcome   string
		escalated bool
		final     bool
		n         int
		dropped   bool
	)
	d.update(e, false, func(r *record) error {
		ts := r.target(name)
		if ts == nil {
			return errStale
		}
		ts.Attempts++
		ts.RoundAttempts++
		if ts.RoundStartMs == 0 {
			ts.RoundStartMs = start.UnixMilli()
		}
		n = ts.RoundAttempts
		msg := ""
		if res.err != nil {
			msg = res.err.Error()
		}
		escalated, final = false, true
		switch res.class {
		case classDone:
			outcome, ts.State = outcomeDone, stateDone
		case classSkipped:
			outcome, ts.State = outcomeSkipped, stateSkipped
		case classFailed:
			outcome, ts.State = outcomeFailed, stateFailed
		case classUnknown:
			outcome, ts.State = outcomeUnknown, stateUnknown
		case classRetry:
			final = false
			outcome, ts.State = outcomeRetry, statePending
			switch {
			case now.Sub(time.UnixMilli(ts.RoundStartMs)) >= d.cfg.MaxRetry:
				outcome, ts.State, final = outcomeFailed, stateFailed, true
				msg = fmt.Sprintf("given up after %s: %s", d.cfg.MaxRetry, msg)
			case n >= len(d.schedule) && !ts.Escalated:
				outcome, ts.Escalated, escalated = outcomeEscalated, true, true
			}
		}
		dropped = r.addRow(proto.Delivery{
			DecisionID: r.ID,
			Target:     name,
			Attempt:    ts.Attempts,
			UnixMs:     start.UnixMilli(),
			Status:     res.status,
			Error:      msg,
			Outcome:    outcome,
			DurationMs: now.Sub(start).Milliseconds(),
		})
		return nil
	})
	if outcome == "" { // the target vanished from the record
		return 0, true
	}
	if kind == "" {
		kind = "unknown"
	}
	d.counter(`herd_deliver_attempts_total{target_kind=%q,outcome=%q}`, kind, outcome).Inc()
	d.set.GetOrCreatePrometheusHistogram(fmt.Sprintf(`herd_deliver_attempt_duration_seconds{target_kind=%q}`, kind)).Update(now.Sub(start).Seconds())
	if dropped {
		d.rowsDropped.Inc()
	}
	id := e.id
	switch {
	case escalated:
		d.escalations.Inc()
		d.log.Warn("delivery escalated: retry budget spent, still retrying", "decision_id", id, "target", name, "attempts", n, "err", res.err)
	case final && outcome == outcomeDone:
		d.log.Info("delivered", "decision_id", id, "target", name, "attempts", n, "status", res.status)
	case final:
		d.log.Warn("delivery finished without success", "decision_id", id, "target", name, "outcome", outcome, "attempts", n, "status", res.status, "err", res.err)
	}
	return d.gap(n), final
}
