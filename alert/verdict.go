package alert

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/herd-dev/herd/proto"
)

// decisionNamespace is the UUID namespace of herd's decision ids.
var decisionNamespace = uuid.MustParse("7d2f5c8e-4b1a-5e3f-9c6d-2a8b0e1f3c57")

// decisionID derives a decision's id from what identifies it: the deployment judged (service,
// baseline, canary and its start: the announcement's UnixMs, or the canary's first window for
// an inferred comparison or an announcement without UnixMs) and the verdict. A deployment gets one rollback id and one pass id
// however often it is announced or judged: detectors that see the same windows and
// announcements — a restarted one replaying them from JetStream, or two running side by
// side — derive the same id, and the delivery store's first-writer-wins create delivers each
// decision once.
func decisionID(service, baseline, canary string, deployedMs int64, state proto.State) string {
	key := service + "\x00" + baseline + "\x00" + canary + "\x00" + strconv.FormatInt(deployedMs, 10) + "\x00" + string(state)
	return uuid.NewSHA1(decisionNamespace, []byte(key)).String()
}

// quantileName names the latency test of a baseline quantile: 0.99 → "latency_p99".
func quantileName(q float64) string {
	return "latency_p" + strconv.FormatFloat(q*100, 'f', -1, 64)
}

// level formats 1−α as a percentage: 0.01 → "99 %".
func level(alpha float64) string {
	return strconv.FormatFloat((1-alpha)*100, 'f', -1, 64) + " %"
}

// ratio formats an event-rate ratio with two significant digits where it matters.
func ratio(x float64) string {
	switch {
	case x >= csX[csN-1]:
		return "≥" + strconv.FormatFloat(csX[csN-1], 'f', 0, 64)
	case x >= 10:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 0.1 || x == 0:
		return strconv.FormatFloat(x, 'f', 1, 64)
	}
	return strconv.FormatFloat(x, 'g', 1, 64)
}

// seconds formats a latency: 0.212 → "212 ms", 1.5 → "1.50 s".
func seconds(s float64) string {
	if s < 1 {
		return strconv.FormatFloat(s*1000, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(s, 'f', 2, 64) + " s"
}

// after formats a decision time: "7.8 s".
func after(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
}

// subject says what a count test counts, for sentences.
func (t *countTest) subject() string {
	switch {
	case !t.latency:
		return "errors"
	case t.quantile > 0:
		return fmt.Sprintf("requests slower than %s (baseline p%s)", seconds(t.threshold), strconv.FormatFloat(t.quantile*100, 'f', -1, 64))
	}
	return fmt.Sprintf("requests slower than %s (SLO)", seconds(t.threshold))
}

// effectSentence is e.g. "errors 3.1× baseline, 99 % CS [1.8, 5.4]".
func effectSentence(t *proto.TestEvidence, ct *countTest, alpha float64) string {
	return fmt.Sprintf("%s %s× baseline, %s CS [%s, %s]", ct.subject(), ratio(t.Effect), level(alpha), ratio(t.CSLow), ratio(t.CSHigh))
}

// rollbackSentence explains a rollback decided by the tests.
func (c *comparison) rollbackSentence(ev *proto.Evidence, decisive string, elapsed time.Duration) string {
	for i := range ev.Tests {
		t := &ev.Tests[i]
		if t.Name != decisive {
			continue
		}
		if decisive == "dkw" {
			return fmt.Sprintf("latency distribution shifted: canary CDF %.2f below baseline at %s (bands %.2f + margin %.2f), decided after %s",
				t.Effect, seconds(t.ThresholdSeconds), c.dkw.band, c.set.dkwMargin, after(elapsed))
		}
		if ct := c.test(decisive); ct != nil {
			test := effectSentence(t, ct, c.set.alpha)
			if e := c.leadingEffect(ev.Effects, decisive); e != nil && e.Test == decisive {
				if !ct.latency {
					test = "ratio" + strings.TrimPrefix(test, ct.subject())
				}
				test = e.Text + "; " + test
			}
			return test + ", decided after " + after(elapsed)
		}
	}
	return "canary worse than baseline, decided after " + after(elapsed)
}

// passSentence explains a pass.
func (c *comparison) passSentence(ev *proto.Evidence, elapsed time.Duration) string {
	var parts []string
	for i := range ev.Tests {
		t := &ev.Tests[i]
		ct := c.test(t.Name)
		if ct == nil || (t.BaselineE == 0 && t.CanaryE == 0) {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s× (CS ≤ %s)", ct.subject(), ratio(t.Effect), ratio(t.CSHigh)))
	}
	return fmt.Sprintf("no regression after %s: %s; all below the accept margin %s×",
		after(elapsed), strings.Join(parts, ", "), ratio(c.acceptMargin()))
}

// pendingSentence describes a comparison that is running.
func (c *comparison) pendingSentence() string {
	how := "inferred"
	if c.announced {
		how = "announced"
	}
	return fmt.Sprintf("comparing canary %s with baseline %s (%s; warm-up %s, α %g)",
		c.canary, c.baseline, how, c.set.warmup, c.set.alpha)
}

// undecidedSentence describes the state of an undecided comparison after it ran for d.
func (c *comparison) undecidedSentence(ev *proto.Evidence, d time.Duration) string {
	var parts []string
	for i := range ev.Tests {
		t := &ev.Tests[i]
		if ct := c.test(t.Name); ct != nil {
			parts = append(parts, fmt.Sprintf("%s CS [%s, %s]", t.Name, ratio(t.CSLow), ratio(t.CSHigh)))
		}
	}
	if len(parts) == 0 {
		return fmt.Sprintf("no decision after %s: no window pair was compared", after(d))
	}
	need := ""
	if t := c.test("errors"); t != nil && t.nA > 0 && t.nB > 0 && t.eA+t.eB > 0 && d > 0 {
		pi := t.nB / (t.nA + t.nB)
		rate := (t.eA + t.eB) / d.Seconds()
		if secs := eventsNeeded(2*c.psi0, c.psi0, pi, c.logTh-t.logW) / rate; secs < 1e7 {
			need = fmt.Sprintf("; at this traffic errors %s× baseline would take ≈ %s to detect", ratio(2*c.psi0), after(time.Duration(secs*float64(time.Second))))
		}
	}
	return fmt.Sprintf("no decision after %s: %s; rollback needs evidence above margin %s×, a pass every CS below %s×%s",
		after(d), strings.Join(parts, ", "), ratio(c.psi0), ratio(c.acceptMargin()), need)
}

// eventsNeeded estimates how many events (errors of both groups) the e-process needs to
// reach ln(1/α) − ln(w) when the true ratio is psi, the margin psi0 and the canary's share of
// requests pi: the threshold plus ln 8 (one grid point carries the evidence) over the
// Kullback–Leibler divergence per event between Bernoulli(q(ψ)) and Bernoulli(q(ψ0)).
func eventsNeeded(psi, psi0, pi, logTh float64) float64 {
	if !(psi > psi0) {
		return math.Inf(1) // the e-process does not grow at or below its margin
	}
	q := func(x float64) float64 { return pi * x / (pi*x + 1 - pi) }
	q1, q0 := q(psi), q(psi0)
	kl := q1*math.Log(q1/q0) + (1-q1)*math.Log((1-q1)/(1-q0))
	if !(kl > 0) {
		return math.Inf(1)
	}
	return (logTh + math.Log(float64(len(grid)))) / kl
}
