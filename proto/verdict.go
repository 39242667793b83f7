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
	// Effects says the evidence in the metrics' own units, one entry per test that has
	// data: what an on-call engineer reads ("errors 2.19 % vs 1.06 % …"). The raw e-values
	// stay in Tests.
	Effects []Effect `json:"effects,omitempty"`
	// Progress says how far an undecided comparison is from a decision; nil before the
	// tests start.
	Progress *Progress `json:"progress,omitempty"`
}

// Effect units.
const (
	UnitRatio   = "ratio"   // a share of requests (errors/requests): 0.0219 is 2.19 %
	UnitSeconds = "seconds" // a latency
)

// Effect is one test's evidence in the unit of its metric: the canary's value against the
// baseline's over the recent span and since the tests started, and a confidence interval
// for the canary's value in the same unit.
type Effect struct {
	// Test names the test (e.g. "errors", "latency_p99"); Metric what is compared ("errors",
	// "p99") in Unit (UnitRatio or UnitSeconds).
	Test   string `json:"test"`
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	// Canary and Baseline are the values over the last RecentMs of compared windows;
	// CanarySinceStart and BaselineSinceStart over the last SinceMs. A ratio is 0 when its
	// group served no request.
	Canary             float64 `json:"canary"`
	Baseline           float64 `json:"baseline"`
	CanarySinceStart   float64 `json:"canary_since_start"`
	BaselineSinceStart float64 `json:"baseline_since_start"`
	RecentMs           int64   `json:"recent_ms"`
	// SinceMs is the span of the since-start values: since the tests started, or, in a
	// watch, since its current segment started (see docs/detector.md).
	SinceMs int64 `json:"since_ms"`
	// Ratio and RatioSinceStart are canary/baseline over the two spans (0 when the baseline's
	// value is 0).
	Ratio           float64 `json:"ratio"`
	RatioSinceStart float64 `json:"ratio_since_start"`
	// Low and High bound the canary's value at level Level (1−α), in Unit: for errors the
	// test's confidence sequence for the ratio times the baseline's error ratio; for a latency
	// quantile an order-statistics interval of the canary's observations since the start.
	Low   float64 `json:"low"`
	High  float64 `json:"high"`
	Level float64 `json:"level"`
	// Text says it in words: "errors 2.19 % vs 1.06 % (×2.1, last 30 s; ×1.5 since start),
	// canary 1.40–2.91 % (99 %)".
	Text string `json:"text"`
}

// Progress says how far an undecided comparison is from a decision.
type Progress struct {
	// Rollback is ln(e-value)/ln(threshold), clipped to [0, 1]: the share of the way the
	// evidence has gone toward a rollback.
	Rollback float64 `json:"rollback"`
	// CSHigh is the largest upper confidence bound of the count tests' ratios, which a pass
	// needs below AcceptMargin; 0 when no test has events yet.
	CSHigh       float64 `json:"cs_high"`
	AcceptMargin float64 `json:"accept_margin"`
	// PassInMs is the exposure still needed before a pass may be decided (0: none).
	PassInMs int64 `json:"pass_in_ms"`
	// Text says it in words.
	Text string `json:"text"`
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
	// DecidedAfterMs is how long the canary had run when a final verdict was reached: from
	// its first window (the comparison's start when it sent none) to UnixMs. It is the one
	// "decided after" figure: the sentence, the dashboard and the webhooks show it. 0 while
	// pending.
	DecidedAfterMs int64 `json:"decided_after_ms,omitempty"`
	// Update marks a republication of an unchanged state with newer evidence (a pending or
	// watched comparison's live evidence, the end of a watch): it takes no new decision.
	Update bool `json:"update,omitempty"`
	// Watch is set once a canary passed while its comparison keeps watching it (state pass,
	// "promoted, watching"), and stays set when the watch ends or a regression rolls it back.
	Watch *Watch `json:"watch,omitempty"`
	// Delivery says whether and where the verdict's decision was delivered. The detector
	// never sets it; the dashboard's server fills it from rollback delivery and ignores it on
	// input. Nil when not known.
	Delivery *DeliveryState `json:"delivery,omitempty"`
	// AgeMs is the verdict's age (now − UnixMs) when it was served by the dashboard's API;
	// 0 elsewhere.
	AgeMs int64 `json:"age_ms,omitempty"`
}

// Decides reports whether v takes a decision to deliver: a pass or rollback that is not an
// update of one published already.
func (v *Verdict) Decides() bool {
	return (v.State == StatePass || v.State == StateRollback) && !v.Update
}

// Watch reasons.
const (
	WatchTime            = "watch_time"       // the policy's watch time ended
	WatchBaselineRetired = "baseline_retired" // the baseline stopped serving
	WatchRegression      = "regression"       // a later regression rolled the canary back
	WatchSuperseded      = "superseded"       // a newer deployment took over the canary
)

// Watch is the watch of a passed canary: its comparison goes on, with its own α, until the
// baseline retires or the watch time ends, and a later regression rolls back.
type Watch struct {
	// Active is true while watching.
	Active bool `json:"active"`
	// PassMs is when the canary passed; UntilMs when the watch ends at the latest.
	PassMs  int64 `json:"pass_unix_ms"`
	UntilMs int64 `json:"until_unix_ms"`
	// Alpha is the watch's own false-rollback bound.
	Alpha float64 `json:"alpha"`
	// EndedMs and Reason say when and why the watch ended (WatchTime, WatchBaselineRetired,
	// WatchRegression, WatchSuperseded); zero while active.
	EndedMs int64  `json:"ended_unix_ms,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// DeliveryState is the delivery state of a verdict's decision.
type DeliveryState struct {
	// Status is the decision's (see Decision.Status): "delivering", "delivered", "failed",
	// "escalated", "unknown", or "none" when no target wanted it.
	Status string `json:"status"`
	// Targets are the targets' latest answers, in the order they were first attempted.
	Targets []TargetAnswer `json:"targets,omitempty"`
}

// TargetAnswer is a target's latest answer to a decision.
type TargetAnswer struct {
	Target string `json:"target"`
	// Outcome, HTTPStatus and Error are those of the latest attempt (see Delivery).
	Outcome    string `json:"outcome"`
	HTTPStatus int    `json:"http_status,omitempty"`
	Error      string `json:"error,omitempty"`
	Attempts   int    `json:"attempts"`
	UnixMs     int64  `json:"unix_ms"`
}

// DeliveryOf derives the delivery state of decision d from its status and delivery log.
func DeliveryOf(d *Decision) *DeliveryState {
	ds := &DeliveryState{Status: d.Status}
	at := map[string]int{}
	for _, x := range d.Deliveries {
		i, ok := at[x.Target]
		if !ok {
			i = len(ds.Targets)
			at[x.Target] = i
			ds.Targets = append(ds.Targets, TargetAnswer{Target: x.Target})
		}
		t := &ds.Targets[i]
		t.Outcome, t.HTTPStatus, t.Error, t.UnixMs = x.Outcome, x.Status, x.Error, x.UnixMs
		t.Attempts = max(t.Attempts+1, x.Attempt)
	}
	return ds
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
