package web

import (
	"errors"
	"fmt"
	"math"
	"unicode"
	"unicode/utf8"

	"github.com/herd-dev/herd/proto"
)

// Bounds of what the Server stores and renders. Whatever arrives — from the rollup, the
// detector, NATS (where a publisher may be forged) or the history replay — is checked
// against them and refused (counted) when it does not fit; the dashboard escapes all text
// it renders besides.
const (
	// maxUnixMs is 9999-12-31T23:59:59.999Z: later (or negative) times are not real.
	maxUnixMs = 253402300799999
	// maxSentence bounds a verdict's sentence in bytes.
	maxSentence = 2048
	// maxName bounds a test, guard or decision id, status or outcome in bytes.
	maxName = 128
	// maxTests bounds a verdict's tests.
	maxTests = 64
	// maxDeliveryText bounds a delivery's target and error in bytes; longer ones are clipped.
	maxDeliveryText = 1024
	// maxDeliveries bounds the delivery rows shown per decision; the oldest are left out.
	maxDeliveries = 1000
	// maxWindowSeries bounds the series of one window (all lists together).
	maxWindowSeries = 1 << 16
)

// states are the verdict states the dashboard knows.
var states = map[proto.State]bool{proto.StatePending: true, proto.StatePass: true, proto.StateRollback: true, proto.StateInconclusive: true}

var errBad = errors.New("bad input")

// checkText checks that s is valid UTF-8 of at most maxLen bytes without control characters.
func checkText(what, s string, maxLen int) error {
	if len(s) > maxLen {
		return fmt.Errorf("%w: %s has %d bytes, more than %d", errBad, what, len(s), maxLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", errBad, what)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s holds a control character", errBad, what)
		}
	}
	return nil
}

func checkTime(what string, ms int64) error {
	if ms < 0 || ms > maxUnixMs {
		return fmt.Errorf("%w: %s %d is not a time", errBad, what, ms)
	}
	return nil
}

func checkFinite(what string, vs ...float64) error {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %s is not finite", errBad, what)
		}
	}
	return nil
}

// checkVerdict checks every field of v that the Server stores or renders.
func checkVerdict(v *proto.Verdict) error {
	if err := proto.ValidService(v.Service); err != nil {
		return err
	}
	if err := proto.ValidVersion(v.Baseline); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	if err := proto.ValidVersion(v.Canary); err != nil {
		return fmt.Errorf("canary: %w", err)
	}
	if !states[v.State] {
		return fmt.Errorf("%w: unknown verdict state %q", errBad, clipText(string(v.State), 40))
	}
	if err := checkTime("unix_ms", v.UnixMs); err != nil {
		return err
	}
	if err := checkTime("started_unix_ms", v.StartedMs); err != nil {
		return err
	}
	if err := checkText("decision_id", v.DecisionID, maxName); err != nil {
		return err
	}
	if err := checkText("sentence", v.Sentence, maxSentence); err != nil {
		return err
	}
	e := &v.Evidence
	if err := checkFinite("evidence", e.Alpha, e.EValue, e.Threshold, e.Margin); err != nil {
		return err
	}
	if err := checkText("decisive", e.Decisive, maxName); err != nil {
		return err
	}
	if len(e.Tests) > maxTests {
		return fmt.Errorf("%w: %d tests, more than %d", errBad, len(e.Tests), maxTests)
	}
	for i := range e.Tests {
		t := &e.Tests[i]
		if err := checkText("test name", t.Name, maxName); err != nil {
			return err
		}
		if err := checkFinite("test "+t.Name, t.EValue, t.Weight, t.ThresholdSeconds, t.Effect, t.CSLow, t.CSHigh); err != nil {
			return err
		}
	}
	if e.Windows < 0 || e.CanaryInstances < 0 || e.BaselineInstances < 0 {
		return fmt.Errorf("%w: negative evidence count", errBad)
	}
	if err := checkTime("first_unix_ms", e.FirstMs); err != nil {
		return err
	}
	if err := checkTime("last_unix_ms", e.LastMs); err != nil {
		return err
	}
	if err := checkEffects(e.Effects); err != nil {
		return err
	}
	if p := e.Progress; p != nil {
		if err := checkFinite("progress", p.Rollback, p.CSHigh, p.AcceptMargin); err != nil {
			return err
		}
		if p.PassInMs < 0 || p.PassInMs > maxUnixMs {
			return fmt.Errorf("%w: progress pass_in_ms %d", errBad, p.PassInMs)
		}
		if err := checkText("progress text", p.Text, maxSentence); err != nil {
			return err
		}
	}
	if err := checkTime("decided_after_ms", v.DecidedAfterMs); err != nil {
		return err
	}
	if w := v.Watch; w != nil {
		if err := checkFinite("watch alpha", w.Alpha); err != nil {
			return err
		}
		for _, t := range []struct {
			what string
			ms   int64
		}{{"watch pass_unix_ms", w.PassMs}, {"watch until_unix_ms", w.UntilMs}, {"watch ended_unix_ms", w.EndedMs}} {
			if err := checkTime(t.what, t.ms); err != nil {
				return err
			}
		}
		if err := checkText("watch reason", w.Reason, maxName); err != nil {
			return err
		}
	}
	return nil
}

// units are the effect units the dashboard knows.
var units = map[string]bool{proto.UnitRatio: true, proto.UnitSeconds: true}

// checkEffects checks a verdict's plain-word effects.
func checkEffects(es []proto.Effect) error {
	if len(es) > maxTests {
		return fmt.Errorf("%w: %d effects, more than %d", errBad, len(es), maxTests)
	}
	for i := range es {
		e := &es[i]
		if err := checkText("effect test", e.Test, maxName); err != nil {
			return err
		}
		if err := checkText("effect metric", e.Metric, maxName); err != nil {
			return err
		}
		if !units[e.Unit] {
			return fmt.Errorf("%w: effect %s has unknown unit %q", errBad, clipText(e.Test, 40), clipText(e.Unit, 40))
		}
		if err := checkFinite("effect "+e.Test, e.Canary, e.Baseline, e.CanarySinceStart, e.BaselineSinceStart,
			e.Ratio, e.RatioSinceStart, e.Low, e.High, e.Level); err != nil {
			return err
		}
		if e.RecentMs < 0 || e.SinceMs < 0 || e.RecentMs > maxUnixMs || e.SinceMs > maxUnixMs {
			return fmt.Errorf("%w: effect %s has a bad span", errBad, clipText(e.Test, 40))
		}
		if err := checkText("effect text", e.Text, maxSentence); err != nil {
			return err
		}
	}
	return nil
}

// maxTargets bounds the target answers of a delivery state; the last ones are left out.
const maxTargets = 64

// cleanDelivery bounds a delivery state for the dashboard: free text from the far end
// (targets, errors) is clipped, never refused, so that a long error never hides a decision.
func cleanDelivery(d *proto.DeliveryState) *proto.DeliveryState {
	if d == nil {
		return nil
	}
	out := &proto.DeliveryState{Status: clipText(d.Status, maxName)}
	for i, t := range d.Targets {
		if i == maxTargets {
			break
		}
		t.Target = clipText(t.Target, maxDeliveryText)
		t.Outcome = clipText(t.Outcome, maxName)
		t.Error = clipText(t.Error, maxDeliveryText)
		if checkTime("unix_ms", t.UnixMs) != nil {
			t.UnixMs = 0
		}
		out.Targets = append(out.Targets, t)
	}
	return out
}

// checkDeployment checks a deploy announcement's tokens and time.
func checkDeployment(d *proto.Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	return checkTime("unix_ms", d.UnixMs)
}

// checkWindow checks every field of w that the Server stores, summarizes or serves.
func checkWindow(w *proto.Window) error {
	if err := proto.ValidService(w.Service); err != nil {
		return err
	}
	if err := proto.ValidVersion(w.Version); err != nil {
		return err
	}
	if err := checkTime("start_unix_ms", w.StartMs); err != nil {
		return err
	}
	if err := checkTime("end_unix_ms", w.EndMs); err != nil {
		return err
	}
	if err := checkTime("closed_unix_ms", w.ClosedMs); err != nil {
		return err
	}
	if w.StartMs > w.EndMs {
		return fmt.Errorf("%w: window starts after it ends", errBad)
	}
	if w.Instances < 0 || w.InstancesStarted < 0 || w.InstancesStopped < 0 || w.WarmInstances < 0 ||
		w.HalfInstances[0] < 0 || w.HalfInstances[1] < 0 || w.WarmupMs < 0 {
		return fmt.Errorf("%w: negative window count", errBad)
	}
	if n := len(w.Series) + len(w.Warm) + len(w.Halves[0]) + len(w.Halves[1]) + len(w.SplitSeries); n > maxWindowSeries {
		return fmt.Errorf("%w: %d series, more than %d", errBad, n, maxWindowSeries)
	}
	for _, s := range w.SplitSeries {
		if err := checkText("split series", s, proto.MaxStringBytes); err != nil {
			return err
		}
	}
	for _, list := range [...][]proto.WindowSeries{w.Series, w.Warm, w.Halves[0], w.Halves[1]} {
		for i := range list {
			if err := checkSeries(&list[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkSeries(s *proto.WindowSeries) error {
	if s.Name == "" {
		return fmt.Errorf("%w: series without a name", errBad)
	}
	if err := checkText("series name", s.Name, proto.MaxStringBytes); err != nil {
		return err
	}
	if len(s.Labels) > proto.MaxLabels {
		return fmt.Errorf("%w: series %s has %d labels, more than %d", errBad, clipText(s.Name, 80), len(s.Labels), proto.MaxLabels)
	}
	for _, l := range s.Labels {
		if err := checkText("label name", l.Name, proto.MaxStringBytes); err != nil {
			return err
		}
		if err := checkText("label value", l.Value, proto.MaxStringBytes); err != nil {
			return err
		}
	}
	if err := checkFinite("series "+clipText(s.Name, 80), s.Value, s.Sum, s.Min, s.Max, s.P50, s.P90, s.P99); err != nil {
		return err
	}
	if s.Hist != nil {
		return checkFinite("histogram of "+clipText(s.Name, 80), s.Hist.Sum)
	}
	return nil
}

// cleanDecision checks a decision for the decisions page: its id, status and verdict must
// be valid (else it is left out); free text of its deliveries (targets and errors from the
// far end) is clipped, not refused, so that a long error never hides a rollback.
func cleanDecision(d proto.Decision) (proto.Decision, error) {
	if d.ID == "" {
		return d, fmt.Errorf("%w: decision without an id", errBad)
	}
	if err := checkText("decision id", d.ID, maxName); err != nil {
		return d, err
	}
	if err := checkText("decision status", d.Status, maxName); err != nil {
		return d, err
	}
	if err := checkTime("created_unix_ms", d.CreatedMs); err != nil {
		return d, err
	}
	if err := checkVerdict(&d.Verdict); err != nil {
		return d, err
	}
	rows := d.Deliveries
	if len(rows) > maxDeliveries {
		rows = rows[len(rows)-maxDeliveries:]
	}
	d.Deliveries = make([]proto.Delivery, 0, len(rows))
	for _, x := range rows {
		x.DecisionID = clipText(x.DecisionID, maxName)
		x.Target = clipText(x.Target, maxDeliveryText)
		x.Error = clipText(x.Error, maxDeliveryText)
		x.Outcome = clipText(x.Outcome, maxName)
		if checkTime("unix_ms", x.UnixMs) != nil {
			x.UnixMs = 0
		}
		d.Deliveries = append(d.Deliveries, x)
	}
	return d, nil
}

// clipText returns s as valid UTF-8 of at most maxLen bytes (plus an ellipsis when clipped)
// with control characters replaced by spaces.
func clipText(s string, maxLen int) string {
	if checkText("", s, maxLen) == nil {
		return s
	}
	b := make([]rune, 0, min(len(s), maxLen))
	n := 0
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			r = ' '
		}
		if n+utf8.RuneLen(r) > maxLen {
			return string(b) + "…"
		}
		n += utf8.RuneLen(r)
		b = append(b, r)
	}
	return string(b)
}
