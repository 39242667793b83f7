package deliver

import (
	"encoding/json"
	"fmt"

	"github.com/herd-dev/herd/proto"
)

// Target states kept in TargetState.State.
const (
	statePending = "pending" // to be attempted (now or after a backoff)
	stateSending = "sending" // a non-idempotent send is in flight: never attempted again
	stateDone    = "done"
	stateSkipped = "skipped" // the target did not need it (Argo precondition)
	stateFailed  = "failed"  // permanent failure, or given up after -deliver.max-retry
	stateUnknown = "unknown" // a non-idempotent send may or may not have been received
)

// Delivery row outcomes (proto.Delivery.Outcome). "skipped" and "unknown" extend the
// outcomes proto documents.
const (
	outcomeDone      = "done"
	outcomeRetry     = "retry"
	outcomeFailed    = "failed"
	outcomeEscalated = "escalated"
	outcomeSkipped   = "skipped"
	outcomeUnknown   = "unknown"
)

// maxRows bounds a decision's delivery log; the oldest rows are dropped beyond it.
const maxRows = 1000

// TargetState is the delivery state of one decision at one target, stored with the
// decision and served by the API.
type TargetState struct {
	Target string `json:"target"`
	Kind   string `json:"kind"`
	// State is pending, sending, done, skipped, failed or unknown.
	State string `json:"state"`
	// Attempts counts all attempts; RoundAttempts those since the last (re)delivery started
	// at RoundStartMs, which place the next attempt on the retry schedule.
	Attempts      int   `json:"attempts"`
	RoundAttempts int   `json:"round_attempts"`
	RoundStartMs  int64 `json:"round_start_unix_ms,omitempty"`
	// Escalated is set once the attempts inside the 10 s budget are spent.
	Escalated bool `json:"escalated,omitempty"`
}

func (t *TargetState) finished() bool {
	return t.State != statePending && t.State != stateSending
}

// record is a decision with its per-target state: the JSON value kept in the Store and
// served by the API. Its decision fields are those of proto.Decision (embedded), so a
// reader that knows only proto.Decision decodes it.
type record struct {
	proto.Decision
	Targets []TargetState `json:"targets"`
}

// clone copies the parts of r that change; the verdict is never modified.
func (r *record) clone() record {
	c := *r
	c.Deliveries = append([]proto.Delivery(nil), r.Deliveries...)
	c.Targets = append([]TargetState(nil), r.Targets...)
	return c
}

func (r *record) target(name string) *TargetState {
	for i := range r.Targets {
		if r.Targets[i].Target == name {
			return &r.Targets[i]
		}
	}
	return nil
}

// status derives the decision status from its targets.
func (r *record) status() string {
	if len(r.Targets) == 0 {
		return "none"
	}
	var open, escalated, failed, unknown bool
	for i := range r.Targets {
		t := &r.Targets[i]
		switch t.State {
		case statePending, stateSending:
			open = true
			escalated = escalated || t.Escalated
		case stateFailed:
			failed = true
		case stateUnknown:
			unknown = true
		}
	}
	switch {
	case open && escalated:
		return "escalated"
	case open:
		return "delivering"
	case failed:
		return "failed"
	case unknown:
		return "unknown"
	}
	return "delivered"
}

// addRow appends a delivery row, dropping the oldest beyond maxRows; it reports whether
// it dropped one.
func (r *record) addRow(row proto.Delivery) (dropped bool) {
	if len(r.Deliveries) >= maxRows {
		r.Deliveries = append(r.Deliveries[:0], r.Deliveries[1:]...)
		dropped = true
	}
	r.Deliveries = append(r.Deliveries, row)
	return dropped
}

// decodeRecord decodes the stored value of key and checks it: a corrupt or foreign value is
// an error, never a record.
func decodeRecord(key string, data []byte) (record, error) {
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return record{}, fmt.Errorf("cannot decode stored decision %s: %w", key, err)
	}
	if err := r.validate(key); err != nil {
		return record{}, err
	}
	return r, nil
}

func (r *record) validate(key string) error {
	if r.ID != key {
		return fmt.Errorf("stored decision %q has id %q", key, r.ID)
	}
	for _, t := range r.Targets {
		switch t.State {
		case statePending, stateSending, stateDone, stateSkipped, stateFailed, stateUnknown:
		default:
			return fmt.Errorf("stored decision %s: target %q has unknown state %q", key, t.Target, t.State)
		}
	}
	return nil
}
