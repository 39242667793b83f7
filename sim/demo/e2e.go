package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/herd-dev/herd/sim"
)

// Trial is one real-time trial of BenchE2E.
type Trial struct {
	Scenario string `json:"scenario"`
	Seed     uint64 `json:"seed"`
	Outcome  string `json:"outcome"`
	// DetectMs is the deciding window's end minus the onset; WebhookMs the webhook's receipt
	// minus the onset; OverheadMs the receipt minus the deciding window's end (the pipeline's
	// own delay: lateness, closing, detector, delivery).
	DetectMs   int64 `json:"detect_ms"`
	WebhookMs  int64 `json:"webhook_ms"`
	OverheadMs int64 `json:"overhead_ms"`
}

// E2EReport is what BenchE2E measured: every trial, and percentiles of the pipeline overhead
// over the trials that ended in a webhook.
type E2EReport struct {
	Trials        []Trial `json:"trials"`
	OverheadP50Ms int64   `json:"overhead_p50_ms"`
	OverheadP99Ms int64   `json:"overhead_p99_ms"`
	OverheadMaxMs int64   `json:"overhead_max_ms"`
}

// BenchE2E runs the story n times per regression scenario (crash, errors, latency), in real
// time with seeds seed, seed+1, …, and measures the pipeline overhead from the deciding
// window's end to the webhook's receipt. logger gets herd's components' logs.
func BenchE2E(ctx context.Context, n int, seed uint64, logger *slog.Logger) (*E2EReport, error) {
	rep := &E2EReport{}
	var overheads []time.Duration
	for _, sc := range []string{"crash", "errors", "latency"} {
		for i := range n {
			d := DefaultConfig()
			d.Scenario, d.Seed, d.Duration, d.JSON = sc, seed+uint64(i), 40*time.Second, true
			d.DeployAfter, d.OnsetAfter = 2*time.Second, 7*time.Second
			d.Node.HTTPListen = "127.0.0.1:0"
			d.Logger = logger
			res, err := Run(ctx, d)
			if err != nil {
				return nil, fmt.Errorf("end-to-end trial %s #%d: %w", sc, i, err)
			}
			t := Trial{Scenario: sc, Seed: d.Seed, Outcome: "none"}
			if res.Verdict != nil && !res.WebhookAt.IsZero() {
				end := time.UnixMilli(res.Verdict.UnixMs)
				t.Outcome = string(res.Verdict.State)
				t.DetectMs = end.Sub(res.Onset).Milliseconds()
				t.WebhookMs = res.WebhookAt.Sub(res.Onset).Milliseconds()
				t.OverheadMs = res.WebhookAt.Sub(end).Milliseconds()
				overheads = append(overheads, res.WebhookAt.Sub(end))
			}
			rep.Trials = append(rep.Trials, t)
		}
	}
	rep.OverheadP50Ms = sim.Percentile(overheads, 0.5).Milliseconds()
	rep.OverheadP99Ms = sim.Percentile(overheads, 0.99).Milliseconds()
	rep.OverheadMaxMs = sim.Percentile(overheads, 1).Milliseconds()
	return rep, nil
}

// WriteTable prints r as a table for people.
func (r *E2EReport) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintln(&b, "\nreal-time end-to-end trials (agent library → NATS → rollup → detector → webhook receiver)")
	fmt.Fprintf(&b, "%-9s %6s %-9s %12s %12s %14s\n", "scenario", "seed", "outcome", "detect_ms", "webhook_ms", "overhead_ms")
	for _, t := range r.Trials {
		fmt.Fprintf(&b, "%-9s %6d %-9s %12d %12d %14d\n", t.Scenario, t.Seed, t.Outcome, t.DetectMs, t.WebhookMs, t.OverheadMs)
	}
	fmt.Fprintf(&b, "pipeline overhead (webhook receipt − deciding window end): p50 %d ms, p99 %d ms, max %d ms\n",
		r.OverheadP50Ms, r.OverheadP99Ms, r.OverheadMaxMs)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("cannot write the end-to-end table: %w", err)
	}
	return nil
}
