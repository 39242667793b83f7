package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

// demoEvent is one line of `herd demo --json`.
type demoEvent struct {
	Type         string `json:"type"`
	UnixMs       int64  `json:"unix_ms"`
	SinceOnsetMs *int64 `json:"since_onset_ms,omitempty"`
	Service      string `json:"service,omitempty"`
	Version      string `json:"version,omitempty"`
	Text         string `json:"text"`
	// Type-specific fields.
	State      string          `json:"state,omitempty"`
	DecisionID string          `json:"decision_id,omitempty"`
	Evidence   *proto.Evidence `json:"evidence,omitempty"`
	Summary    *demoSummary    `json:"summary,omitempty"`
}

// demoSummary ends the story.
type demoSummary struct {
	Scenario         string  `json:"scenario"`
	Outcome          string  `json:"outcome"` // rollback, pass, none
	Expected         string  `json:"expected"`
	OK               bool    `json:"ok"`
	TimeToDetectMs   *int64  `json:"time_to_detect_ms,omitempty"`
	TimeToWebhookMs  *int64  `json:"time_to_webhook_ms,omitempty"`
	TimeToStoppedMs  *int64  `json:"time_to_instances_stopped_ms,omitempty"`
	Sentence         string  `json:"sentence,omitempty"`
	WebhooksReceived int     `json:"webhooks_received"`
	DashboardURL     string  `json:"dashboard_url"`
	CanaryRPS        float64 `json:"canary_rps"`
	BaselineRPS      float64 `json:"baseline_rps"`
}

// demoScenarios maps --scenario to the regression applied at onset.
var demoScenarios = map[string]string{
	"errors":  "canary error rate ×5",
	"latency": "canary latency ×3",
	"crash":   "canary instances crash-loop",
	"good":    "no regression (canary as good as baseline)",
}

func demoCommand() command {
	return command{
		name:  "demo",
		usage: "[--scenario errors|latency|crash|good] [--seed N] [--duration D] [--json]",
		short: "run herd with a simulated fleet and a canary: steady v1 → canary v2 → regression → rollback",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			d := demo{stack: defaultStackConfig()}
			d.stack.registerFlags(fs)
			fs.StringVar(&d.scenario, "scenario", "errors", "what goes wrong with the canary: errors, latency, crash or good")
			fs.Uint64Var(&d.seed, "seed", 1, "random seed of the simulated fleet")
			fs.DurationVar(&d.duration, "duration", 0, "stop after this long; 0 keeps running after the story until interrupted (duration)")
			fs.BoolVar(&d.json, "json", false, "print one JSON event per line instead of the timeline")
			fs.IntVar(&d.baseline, "baseline-instances", 20, "instances of the baseline version (count)")
			fs.IntVar(&d.canary, "canary-instances", 8, "instances of the canary version (count)")
			fs.Float64Var(&d.errorRate, "error-rate", 0.01, "probability that a request of the checkout service fails, before any regression (fraction)")
			fs.BoolVar(&d.verbose, "v", false, "log herd's components at info level on stderr (default: warnings only)")
			fs.Float64Var(&d.rps, "rps", 100, "requests per second per instance (rate)")
			fs.DurationVar(&d.deployAfter, "deploy-after", 3*time.Second, "when the canary is deployed, after start (duration)")
			fs.DurationVar(&d.onsetAfter, "onset-after", 8*time.Second, "when the canary regresses, after its deploy (duration)")
			// The demo serves NATS on a free port unless told otherwise, and promotes a good
			// canary after 20 s rather than serve's 5 minutes.
			setDefault(fs, "nats.listen", "127.0.0.1:0")
			setDefault(fs, "detect.min-exposure", "20s")
			return func(ctx context.Context) error {
				d.out = e
				if !d.verbose {
					d.out = &env{stdout: e.stdout, stderr: e.stderr, getenv: e.getenv,
						logger: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
				}
				return d.run(ctx)
			}
		},
	}
}

// demo is one run of `herd demo`.
type demo struct {
	stack                   stackConfig
	scenario                string
	seed                    uint64
	duration                time.Duration
	json                    bool
	baseline, canary        int
	rps, errorRate          float64
	verbose                 bool
	deployAfter, onsetAfter time.Duration

	out *env

	mu        sync.Mutex // guards the fields below and output
	onset     time.Time
	verdict   *proto.Verdict
	webhookAt time.Time
	stoppedAt time.Time
	hooks     int
	done      chan struct{} // closed when the story has ended
	dl        *deliver.Deliverer
}

const (
	demoService  = "checkout"
	demoBaseline = "1.4.2"
	demoCanary   = "1.5.0"
	demoOther    = "search"
)

func (d *demo) run(ctx context.Context) error {
	if _, ok := demoScenarios[d.scenario]; !ok {
		return fmt.Errorf("%w: -scenario %q: want errors, latency, crash or good", errUsage, d.scenario)
	}
	if d.stack.DataDir == "herd-data" {
		// Each demo starts from nothing: no decisions of an earlier run.
		d.stack.DataDir = tempDir()
		defer os.RemoveAll(d.stack.DataDir)
	}
	d.done = make(chan struct{})
	logger := d.out.logger

	// The deploy tool: a local receiver of herd's signed rollback webhook.
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	recvLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("cannot listen for the demo's webhook receiver: %w", err)
	}
	d.stack.Deliver.Webhooks = append(d.stack.Deliver.Webhooks, "http://"+recvLn.Addr().String()+"/hooks/herd")
	d.stack.Deliver.WebhookSecrets = append(d.stack.Deliver.WebhookSecrets, "whsec_"+base64.StdEncoding.EncodeToString(secret))
	if err := d.stack.validate(); err != nil {
		return err
	}
	if d.stack.HTTPListen == defaultStackConfig().HTTPListen {
		// The default dashboard port may be taken (a herd serve running, say): the demo then
		// takes a free one and prints it.
		if ln, err := net.Listen("tcp", d.stack.HTTPListen); err != nil {
			d.stack.HTTPListen = "127.0.0.1:0"
		} else {
			ln.Close()
		}
	}
	var fl *sim.Fleet
	recv := &http.Server{Handler: d.receiver(secret, func() { fl.Group(demoService, demoCanary).SetTarget(0) }),
		ReadHeaderTimeout: 5 * time.Second}

	s, err := newStack(d.stack, logger)
	if err != nil {
		return err
	}
	d.dl = s.dl
	s.onVerdict(d.onVerdict)

	pc, err := connectNATS(s.NATSURL(), "herd-demo-fleet", logger)
	if err != nil {
		return err
	}
	defer pc.Close()
	fl, err = sim.NewFleet(sim.FleetConfig{
		Groups: []sim.Group{
			{Service: demoService, Version: demoBaseline, Instances: d.baseline, RPS: d.rps, ErrorRate: d.errorRate,
				LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
			{Service: demoService, Version: demoCanary, Instances: 0, RPS: d.rps, ErrorRate: d.errorRate,
				LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
			{Service: demoOther, Version: "2.0.1", Instances: 6, RPS: d.rps, ErrorRate: 0.002,
				LatencyMedian: 15 * time.Millisecond, LatencyP99: 90 * time.Millisecond},
		},
		LifetimeMin: 20 * time.Second, LifetimeMax: 60 * time.Second, Interval: d.stack.Rollup.Window,
		Seed: d.seed, Publish: pc.Publish, Logger: logger,
	})
	if err != nil {
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Go(func() { errc <- s.run(runCtx) })
	wg.Go(func() {
		if err := recv.Serve(recvLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	})
	wg.Go(func() {
		if err := fl.Run(runCtx, time.Time{}); err != nil {
			errc <- err
		}
	})

	start := time.Now()
	d.emit(demoEvent{Type: "start", Text: fmt.Sprintf("herd demo (%s): dashboard %s, NATS %s, %d × %s %s at %.0f rps each",
		d.scenario, s.HTTPURL(), s.NATSURL(), d.baseline, demoService, demoBaseline, d.rps)})
	storyErr := d.story(runCtx, s, fl, start)

	if d.duration > 0 {
		// With --duration the demo ends when the story has ended or the time is up.
		select {
		case <-d.done:
		case <-time.After(time.Until(start.Add(d.duration))):
		case <-ctx.Done():
		}
	} else {
		<-ctx.Done()
	}
	ok := d.summary(s.HTTPURL())
	stop()
	shut, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_ = recv.Shutdown(shut)
	cancel()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	if storyErr != nil {
		return storyErr
	}
	if !ok {
		return errors.New("the story did not end as the scenario expects")
	}
	return nil
}

// story deploys the canary, applies the scenario's regression, and waits for the verdict.
func (d *demo) story(ctx context.Context, s *stack, fl *sim.Fleet, start time.Time) error {
	if !sleepUntil(ctx, start.Add(d.deployAfter)) {
		return nil
	}
	canary := fl.Group(demoService, demoCanary)
	canary.SetTarget(d.canary)
	dep := proto.Deployment{Service: demoService, Baseline: demoBaseline, Canary: demoCanary, UnixMs: time.Now().UnixMilli()}
	d.emit(demoEvent{Type: "deploy", Service: demoService, Version: demoCanary,
		Text: fmt.Sprintf("deploy: %s %s starts beside %s with %d instances", demoService, demoCanary, demoBaseline, d.canary)})
	if err := s.announce(dep); err != nil {
		return fmt.Errorf("cannot announce the canary: %w", err)
	}

	if !sleepUntil(ctx, start.Add(d.deployAfter+d.onsetAfter)) {
		return nil
	}
	switch d.scenario {
	case "errors":
		canary.SetErrorRate(canary.Spec().ErrorRate * 5)
	case "latency":
		canary.SetLatencyFactor(3)
	case "crash":
		canary.SetCrash(true)
	}
	d.mu.Lock()
	d.onset = time.Now()
	d.mu.Unlock()
	d.emit(demoEvent{Type: "onset", Service: demoService, Version: demoCanary,
		Text: "onset: " + demoScenarios[d.scenario]})

	// Watch the canary's instances after the rollback.
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			d.mu.Lock()
			hooked := !d.webhookAt.IsZero() && d.stoppedAt.IsZero()
			d.mu.Unlock()
			if hooked && canary.Live() == 0 {
				d.mu.Lock()
				d.stoppedAt = time.Now()
				d.mu.Unlock()
				d.emit(demoEvent{Type: "instances_stopped", Service: demoService, Version: demoCanary,
					Text: fmt.Sprintf("%s %s has no instances left: rolled back", demoService, demoCanary)})
				d.finish()
				return
			}
		}
	}()
	return nil
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// onVerdict tells the story of the demo service's verdicts.
func (d *demo) onVerdict(v proto.Verdict) {
	if v.Service != demoService {
		return
	}
	d.mu.Lock()
	first := d.verdict == nil || d.verdict.State != v.State
	if v.State != proto.StatePending {
		vv := v
		d.verdict = &vv
	}
	d.mu.Unlock()
	if first {
		d.emit(demoEvent{Type: "verdict", Service: v.Service, Version: v.Canary, State: string(v.State),
			DecisionID: v.DecisionID, Evidence: &v.Evidence, Text: fmt.Sprintf("verdict %s: %s", v.State, v.Sentence)})
	}
	if v.State == proto.StatePass || v.State == proto.StateInconclusive {
		d.finish()
	}
	if v.State == proto.StateRollback && first && d.dl != nil {
		go d.watchDelivery(v.DecisionID)
	}
}

// watchDelivery reports the first delivery attempt of a decision as a webhook_sent event.
func (d *demo) watchDelivery(id string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if dec, ok := d.dl.Decision(id); ok && len(dec.Deliveries) > 0 {
			a := dec.Deliveries[0]
			d.emit(demoEvent{Type: "webhook_sent", Service: demoService, Version: demoCanary, DecisionID: id,
				Text: fmt.Sprintf("herd: rollback delivered to %s (attempt %d, HTTP %d, %d ms)", a.Target, a.Attempt, a.Status, a.DurationMs)})
			return
		}
		select {
		case <-d.done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (d *demo) finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.done:
	default:
		close(d.done)
	}
}

// receiver is the demo's deploy tool: it verifies herd's webhook signature (Standard
// Webhooks, independently of herd's own signing code) and, on a rollback request, scales the
// canary to zero.
func (d *demo) receiver(secret []byte, rollback func()) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hooks/herd", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		id, ts := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp")
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(id + "." + ts + "."))
		mac.Write(body)
		want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
		valid := false
		for _, sig := range strings.Fields(r.Header.Get("webhook-signature")) {
			if hmac.Equal([]byte(sig), []byte(want)) {
				valid = true
			}
		}
		if !valid {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var msg struct {
			Type       string `json:"type"`
			DecisionID string `json:"decision_id"`
		}
		if err := json.Unmarshal(body, &msg); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		d.hooks++
		first := d.webhookAt.IsZero()
		if first {
			d.webhookAt = time.Now()
		}
		d.mu.Unlock()
		if first {
			d.emit(demoEvent{Type: "webhook_received", Service: demoService, Version: demoCanary, DecisionID: msg.DecisionID,
				Text: fmt.Sprintf("deploy tool: %s received (signature valid, id %s), scaling %s %s to zero", msg.Type, shortID(msg.DecisionID), demoService, demoCanary)})
			if msg.Type == "canary.rollback.requested" {
				rollback()
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// emit prints one event, as JSON or as a timeline line.
func (d *demo) emit(ev demoEvent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	ev.UnixMs = now.UnixMilli()
	if !d.onset.IsZero() {
		since := now.Sub(d.onset).Milliseconds()
		ev.SinceOnsetMs = &since
	}
	if d.json {
		b, _ := json.Marshal(ev)
		fmt.Fprintln(d.out.stdout, string(b))
		return
	}
	at := now.Format("15:04:05.000")
	if ev.SinceOnsetMs != nil {
		at += fmt.Sprintf(" (+%5.2fs)", float64(*ev.SinceOnsetMs)/1000)
	} else {
		at += "          "
	}
	fmt.Fprintf(d.out.stdout, "%s  %s\n", at, ev.Text)
}

// summary prints the story's end and reports whether it went as the scenario expects.
func (d *demo) summary(dashboard string) bool {
	d.mu.Lock()
	sum := demoSummary{Scenario: d.scenario, Outcome: "none", Expected: string(proto.StateRollback),
		WebhooksReceived: d.hooks, DashboardURL: dashboard,
		CanaryRPS: float64(d.canary) * d.rps, BaselineRPS: float64(d.baseline) * d.rps}
	if d.scenario == "good" {
		sum.Expected = string(proto.StatePass)
	}
	ms := func(t time.Time) *int64 {
		if t.IsZero() || d.onset.IsZero() {
			return nil
		}
		v := t.Sub(d.onset).Milliseconds()
		return &v
	}
	if d.verdict != nil {
		sum.Outcome = string(d.verdict.State)
		sum.Sentence = d.verdict.Sentence
		sum.TimeToDetectMs = ms(time.UnixMilli(d.verdict.UnixMs))
	}
	sum.TimeToWebhookMs = ms(d.webhookAt)
	sum.TimeToStoppedMs = ms(d.stoppedAt)
	if d.scenario == "good" {
		sum.OK = sum.Outcome == string(proto.StatePass) && d.hooks == 0
	} else {
		sum.OK = sum.Outcome == string(proto.StateRollback) && d.hooks > 0 && !d.stoppedAt.IsZero()
	}
	d.mu.Unlock()
	text := fmt.Sprintf("summary: %s scenario ended in %s (expected %s)", sum.Scenario, sum.Outcome, sum.Expected)
	if sum.TimeToDetectMs != nil {
		text += fmt.Sprintf("; detected %.2fs after onset", float64(*sum.TimeToDetectMs)/1000)
	}
	if sum.TimeToWebhookMs != nil {
		text += fmt.Sprintf(", webhook received after %.2fs", float64(*sum.TimeToWebhookMs)/1000)
	}
	if sum.TimeToStoppedMs != nil {
		text += fmt.Sprintf(", canary gone after %.2fs", float64(*sum.TimeToStoppedMs)/1000)
	}
	if sum.Sentence != "" {
		text += "\n  evidence: " + sum.Sentence
	}
	d.emit(demoEvent{Type: "summary", Summary: &sum, Text: text})
	return sum.OK
}
