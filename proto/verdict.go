package proto

import (
	"encoding/json"
	"fmt"
)

// State is the detector's judgement of one canary.
type State string

// Verdict states. pending → pass | rollback | inconclusive.
const (
	StatePending      State = "pending"
	StatePass         State = "pass"
	StateRollback     State = "rollback"
	StateInconclusive State = "inconclusive"
)

// TestEvidence is the state of one sequential test (or guard) of a comparison.
type TestEvidence struct {
	// Name is e.g. "errors", "latency_p99", "latency_slo", "dkw", "guard_error_ceiling".
	Name string `json:"name"`
	// EValue is the test's current e-value (1 = no evidence); Weight its weight in the average.
	EValue float64 `json:"e_value"`
	Weight float64 `json:"weight"`
	// ThresholdSeconds is the frozen latency threshold τ of a latency test.
	ThresholdSeconds float64 `json:"threshold_seconds,omitempty"`
	// Counts over the windows used: requests (n) and events (errors or slow requests, e).
	BaselineN uint64 `json:"baseline_n"`
	BaselineE uint64 `json:"baseline_e"`
	CanaryN   uint64 `json:"canary_n"`
	CanaryE   uint64 `json:"canary_e"`
	// Effect is the estimated canary/baseline event-rate ratio ψ and [CSLow, CSHigh] its
	// confidence sequence at level 1-α.
	Effect float64 `json:"effect"`
	CSLow  float64 `json:"cs_low"`
	CSHigh float64 `json:"cs_high"`
	// The same in the metric's own units, for a count test: BaselineRatio and CanaryRatio are
	// the event ratios e/n (the error ratio, or the share of requests slower than the
	// threshold), and [CanaryRatioLow, CanaryRatioHigh] the canary's ratio the confidence
	// sequence allows (BaselineRatio × CSLow … × CSHigh, at most 1).
	BaselineRatio   float64 `json:"baseline_ratio,omitempty"`
	CanaryRatio     float64 `json:"canary_ratio,omitempty"`
	CanaryRatioLow  float64 `json:"canary_ratio_low,omitempty"`
	CanaryRatioHigh float64 `json:"canary_ratio_high,omitempty"`
	// Margin is the test's own margin ψ0 (a count test): the ratio its e-process tolerates,
	// set from Dispersion; Dispersion is the log-sd of the event rate between instances of the
	// baseline that set it (measured from the instance buckets, or the assumed
	// instance_spread), and DispersionMeasured says which.
	Margin             float64 `json:"margin,omitempty"`
	Dispersion         float64 `json:"dispersion,omitempty"`
	DispersionMeasured bool    `json:"dispersion_measured,omitempty"`
}

// Evidence is what a verdict rests on, in numbers.
type Evidence struct {
	Alpha float64 `json:"alpha"`
	// EValue is the weighted average of the tests' e-values, compared once with Threshold = 1/α.
	EValue    float64 `json:"e_value"`
	Threshold float64 `json:"threshold"`
	// Decisive names the test or guard that decided, if any.
	Decisive string         `json:"decisive,omitempty"`
	Tests    []TestEvidence `json:"tests"`
	// Windows is the number of window pairs compared; FirstMs and LastMs bound them.
	Windows int   `json:"windows"`
	FirstMs int64 `json:"first_unix_ms,omitempty"`
	LastMs  int64 `json:"last_unix_ms,omitempty"`
	// CanaryInstances and BaselineInstances are the instance counts of the last window.
	CanaryInstances   int `json:"canary_instances"`
	BaselineInstances int `json:"baseline_instances"`
	// Margin is ψ0, the canary/baseline event-rate ratio the count tests take as their null
	// (what they tolerate): the configured margin, raised for groups with few instances and
	// frozen when the tests start at the first compared window pair; 0 before.
	Margin float64 `json:"margin,omitempty"`
}

// Verdict is a detector state change for one canary, published as JSON on
// herd.verdict.<service>.
type Verdict struct {
	Service  string `json:"service"`
	Baseline string `json:"baseline"`
	Canary   string `json:"canary"`
	State    State  `json:"state"`
	// UnixMs is when the verdict was reached; StartedMs when the comparison began.
	UnixMs    int64 `json:"unix_ms"`
	StartedMs int64 `json:"started_unix_ms"`
	// DecisionID is the UUID of the decision a final verdict (pass, rollback) created; it is
	// the idempotency key of every delivery.
	DecisionID string `json:"decision_id,omitempty"`
	// Sentence says the evidence in one plain sentence, e.g. "errors 3.1× baseline, 99 % CS
	// [1.8, 5.4], decided after 7.8 s".
	Sentence string   `json:"sentence"`
	Evidence Evidence `json:"evidence"`
}

// Delivery is one attempt to deliver a decision to one target.
type Delivery struct {
	DecisionID string `json:"decision_id"`
	Target     string `json:"target"` // e.g. "webhook:https://…" (no secrets), "argo:ns/name"
	Attempt    int    `json:"attempt"`
	UnixMs     int64  `json:"unix_ms"`
	Status     int    `json:"status,omitempty"` // HTTP status, 0 for a network error
	Error      string `json:"error,omitempty"`
	// Outcome is "done", "retry", "failed" (permanent) or "escalated".
	Outcome string `json:"outcome"`
	// DurationMs is how long the attempt took.
	DurationMs int64 `json:"duration_ms"`
}

// Decision is a final verdict that herd acts on, with its delivery log.
type Decision struct {
	ID         string     `json:"id"`
	Verdict    Verdict    `json:"verdict"`
	CreatedMs  int64      `json:"created_unix_ms"`
	Deliveries []Delivery `json:"deliveries"`
	// Status is "delivering", "delivered", "failed" or "escalated"; "none" when no target.
	Status string `json:"status"`
}

// MarshalVerdict encodes v as the JSON published on herd.verdict subjects.
func MarshalVerdict(v *Verdict) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot encode verdict for %s: %w", v.Service, err)
	}
	return b, nil
}

// UnmarshalVerdict decodes a verdict and checks its tokens.
func UnmarshalVerdict(data []byte) (*Verdict, error) {
	var v Verdict
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("cannot decode verdict: %w", err)
	}
	if err := ValidService(v.Service); err != nil {
		return nil, fmt.Errorf("cannot decode verdict: %w", err)
	}
	return &v, nil
}
