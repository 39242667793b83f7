// Package demo tells herd's story with a simulated fleet against a real node: a steady
// baseline, a canary deployed beside it, a regression at onset, the detector's verdict, the
// signed rollback webhook received by a local deploy tool that scales the canary to zero.
// `herd demo` runs it; BenchE2E runs it again and again for `herd bench detect`'s real-time
// end-to-end trials.
package demo

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
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
	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/node"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
)

// Event is one line of `herd demo --json`.
type Event struct {
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
	Summary    *Summary        `json:"summary,omitempty"`
	// DashboardURL is the dashboard's address, on the start event.
	DashboardURL string `json:"dashboard_url,omitempty"`
}

// Summary ends the story.
type Summary struct {
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

// Scenarios maps each scenario to the regression applied at onset.
var Scenarios = map[string]string{
	"errors":  "canary error rate ×5",
	"latency": "canary latency ×3",
	"crash":   "canary instances crash-loop",
	"good":    "no regression (canary as good as baseline)",
	// Request-flow scenarios (flow.go): the canary's own RED stays normal.
	"fanout":     "canary calls payments 5× per request",
	"downstream": "canary's requests make payments fail 5× as often",
}

// Config configures a run. Start from DefaultConfig.
type Config struct {
	// Node is the herd node the story runs against; its webhooks gain the demo's receiver.
	Node node.Config
	// Scenario is a key of Scenarios.
	Scenario string
	// Seed fixes the simulated traffic.
	Seed uint64
	// Duration ends the run when the story has ended or this long after the start; 0 runs
	// until ctx is done.
	Duration time.Duration
	// JSON prints one JSON Event per line instead of a timeline.
	JSON bool
	// Graph runs the request flow around checkout and a generated service graph (flow.go);
	// the fanout and downstream scenarios always do.
	Graph bool
	// Baseline and Canary are the instance counts of the two versions.
	Baseline, Canary int
	// RPS is each instance's request rate; ErrorRate the failure probability before onset.
	RPS, ErrorRate float64
	// DeployAfter is when the canary is deployed after the start; OnsetAfter when it
	// regresses after the deploy.
	DeployAfter, OnsetAfter time.Duration
	// Out receives the timeline or the events; Logger herd's logs.
	Out    io.Writer
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of `herd demo`: a node with every role on free ports,
// a good canary promoted after 20 s of exposure.
func DefaultConfig() Config {
	nc := node.DefaultConfig()
	nc.Name, nc.NATSListen = "herd-demo", "127.0.0.1:0"
	nc.Detect.MinExposure = 20 * time.Second
	return Config{Node: nc, Scenario: "errors", Seed: 1, Baseline: 20, Canary: 8, RPS: 100, ErrorRate: 0.01,
		DeployAfter: 3 * time.Second, OnsetAfter: 8 * time.Second, Out: io.Discard, Logger: slog.New(slog.DiscardHandler)}
}

// Result is how a run went; times are zero for what did not happen.
type Result struct {
	// Verdict is the last final verdict of the demo's service.
	Verdict *proto.Verdict
	// Onset is when the regression began; WebhookAt when the deploy tool first received the
	// rollback; StoppedAt when the canary had no instances left after it.
	Onset, WebhookAt, StoppedAt time.Time
	// Hooks counts the webhooks received.
	Hooks int
}

// ErrStory is returned when the story did not end as the scenario expects.
var ErrStory = errors.New("the story did not end as the scenario expects")

// Run tells the story of cfg.Scenario and returns how it went. It returns ErrStory when the
// outcome is not the scenario's, and an error naming the scenario when it is unknown.
func Run(ctx context.Context, cfg Config) (Result, error) {
	d := &demo{cfg: cfg}
	err := d.run(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	return Result{Verdict: d.verdict, Onset: d.onset, WebhookAt: d.webhookAt, StoppedAt: d.stoppedAt, Hooks: d.hooks}, err
}

// demo is one run.
type demo struct {
	cfg Config

	mu        sync.Mutex // guards the fields below and output
	onset     time.Time
	verdict   *proto.Verdict
	webhookAt time.Time
	stoppedAt time.Time
	hooks     int
	// rollbackID is the decision id of the first rollback verdict, watched for delivery.
	rollbackID string
	done       chan struct{} // closed when the story has ended
	dl         *deliver.Deliverer
}

const (
	demoService  = "checkout"
	demoBaseline = "1.4.2"
	demoCanary   = "1.5.0"
	demoOther    = "search"
)

func (d *demo) run(ctx context.Context) error {
	if _, ok := Scenarios[d.cfg.Scenario]; !ok {
		return fmt.Errorf("unknown scenario %q: want errors, latency, crash, good, fanout or downstream", d.cfg.Scenario)
	}
	if d.cfg.Node.DataDir == node.DefaultConfig().DataDir {
		// Each demo starts from nothing: no decisions of an earlier run.
		dir, err := os.MkdirTemp("", "herd-demo-")
		if err != nil {
			return fmt.Errorf("cannot make the demo's data directory: %w", err)
		}
		d.cfg.Node.DataDir = dir
		defer os.RemoveAll(dir)
	}
	d.done = make(chan struct{})
	recvLn, secret, err := d.addReceiver()
	if err != nil {
		return err
	}
	defer recvLn.Close()
	if err := d.cfg.Node.Validate(); err != nil {
		return err
	}
	if d.cfg.Node.HTTPListen == node.DefaultConfig().HTTPListen {
		// The default dashboard port may be taken (a herd serve running, say): the demo then
		// takes a free one and prints it.
		if ln, err := net.Listen("tcp", d.cfg.Node.HTTPListen); err != nil {
			d.cfg.Node.HTTPListen = "127.0.0.1:0"
		} else {
			ln.Close()
		}
	}
	n, err := node.New(d.cfg.Node, d.cfg.Logger)
	if err != nil {
		return err
	}
	d.dl = n.Delivery()
	n.OnVerdict(d.onVerdict)
	return d.runStory(ctx, n, secret, recvLn)
}

// addReceiver opens the demo's deploy tool, a local receiver of herd's signed rollback
// webhook, and points delivery at it.
func (d *demo) addReceiver() (net.Listener, []byte, error) {
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("cannot listen for the demo's webhook receiver: %w", err)
	}
	d.cfg.Node.Deliver.Webhooks = append(d.cfg.Node.Deliver.Webhooks, "http://"+ln.Addr().String()+"/hooks/herd")
	d.cfg.Node.Deliver.WebhookSecrets = append(d.cfg.Node.Deliver.WebhookSecrets, "whsec_"+base64.StdEncoding.EncodeToString(secret))
	return ln, secret, nil
}

// fleet builds the simulated fleet: the baseline, the canary (no instances until deployed)
// and another service.
func (d *demo) fleet(publish ingest.PublishFunc) (*sim.Fleet, error) {
	var more []sim.Group
	var calls map[string][]sim.Edge
	if d.cfg.Graph || flowScenario(d.cfg.Scenario) {
		var err error
		if more, calls, err = d.flowGroups(); err != nil {
			return nil, err
		}
	}
	return sim.NewFleet(sim.FleetConfig{
		Calls: calls,
		Groups: append([]sim.Group{
			{Service: demoService, Version: demoBaseline, Instances: d.cfg.Baseline, RPS: d.cfg.RPS, ErrorRate: d.cfg.ErrorRate,
				LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
			{Service: demoService, Version: demoCanary, Instances: 0, RPS: d.cfg.RPS, ErrorRate: d.cfg.ErrorRate,
				LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
			{Service: demoOther, Version: "2.0.1", Instances: 6, RPS: d.cfg.RPS, ErrorRate: 0.002,
				LatencyMedian: 15 * time.Millisecond, LatencyP99: 90 * time.Millisecond},
		}, more...),
		LifetimeMin: 20 * time.Second, LifetimeMax: 60 * time.Second, Interval: d.cfg.Node.Rollup.Window,
		Seed: d.cfg.Seed, Publish: publish, Logger: d.cfg.Logger,
	})
}

// runStory runs the node and, once it is ready, the receiver, the fleet and the watcher,
// tells the story, and stops them all (each goroutine is waited for) when it has ended or
// ctx is done.
func (d *demo) runStory(ctx context.Context, n *node.Node, secret []byte, recvLn net.Listener) error {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Go(func() { errc <- n.Run(runCtx) })
	// abort stops what runs so far and returns err (or Run's failure).
	abort := func(err error) error {
		stop()
		wg.Wait()
		close(errc)
		if runErr := <-errc; runErr != nil && !errors.Is(runErr, context.Canceled) {
			return runErr
		}
		return err
	}
	select {
	case <-n.Ready():
	case <-ctx.Done():
		return abort(nil)
	case err := <-errc:
		errc <- err
		return abort(nil)
	}
	// The fleet publishes over NATS like agents do, to the port the node has opened.
	pc, err := bus.Connect(bus.Client{URLs: n.NATSURL()}, "herd-demo-fleet", nil, d.cfg.Logger)
	if err != nil {
		return abort(err)
	}
	defer pc.Close()
	fl, err := d.fleet(pc.Publish)
	if err != nil {
		return abort(err)
	}
	recv := &http.Server{Handler: d.receiver(secret, func() { fl.Group(demoService, demoCanary).SetTarget(0) }),
		ReadHeaderTimeout: 5 * time.Second}
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
	wg.Go(func() { d.watch(runCtx, fl.Group(demoService, demoCanary)) })

	start := time.Now()
	d.emit(Event{Type: "start", DashboardURL: n.HTTPURL(), Text: fmt.Sprintf("herd demo (%s): dashboard %s, NATS %s, %d × %s %s at %.0f rps each",
		d.cfg.Scenario, n.HTTPURL(), n.NATSURL(), d.cfg.Baseline, demoService, demoBaseline, d.cfg.RPS)})
	storyErr := d.story(runCtx, n, fl, start)
	if d.cfg.Duration > 0 {
		// With --duration the demo ends when the story has ended or the time is up.
		select {
		case <-d.done:
		case <-time.After(time.Until(start.Add(d.cfg.Duration))):
		case <-ctx.Done():
		}
	} else {
		<-ctx.Done()
	}
	ok := d.summary(n.HTTPURL())
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
		return ErrStory
	}
	return nil
}

// story deploys the canary, applies the scenario's regression, and waits for the verdict.
func (d *demo) story(ctx context.Context, n *node.Node, fl *sim.Fleet, start time.Time) error {
	if !sleepUntil(ctx, start.Add(d.cfg.DeployAfter)) {
		return nil
	}
	canary := fl.Group(demoService, demoCanary)
	canary.SetTarget(d.cfg.Canary)
	dep := proto.Deployment{Service: demoService, Baseline: demoBaseline, Canary: demoCanary, UnixMs: time.Now().UnixMilli()}
	d.emit(Event{Type: "deploy", Service: demoService, Version: demoCanary,
		Text: fmt.Sprintf("deploy: %s %s starts beside %s with %d instances", demoService, demoCanary, demoBaseline, d.cfg.Canary)})
	if err := n.Announce(dep); err != nil {
		return fmt.Errorf("cannot announce the canary: %w", err)
	}

	if !sleepUntil(ctx, start.Add(d.cfg.DeployAfter+d.cfg.OnsetAfter)) {
		return nil
	}
	switch d.cfg.Scenario {
	case "errors":
		canary.SetErrorRate(canary.Spec().ErrorRate * 5)
	case "latency":
		canary.SetLatencyFactor(3)
	case "crash":
		canary.SetCrash(true)
	case "fanout", "downstream":
		flowOnset(canary, d.cfg.Scenario)
	}
	d.mu.Lock()
	d.onset = time.Now()
	d.mu.Unlock()
	d.emit(Event{Type: "onset", Service: demoService, Version: demoCanary,
		Text: "onset: " + Scenarios[d.cfg.Scenario]})

	return nil
}

// watch reports, until ctx is done, the first delivery attempt of the rollback decision
// (webhook_sent) and the moment the canary has no instances left after the webhook reached
// the deploy tool (instances_stopped, which ends the story).
func (d *demo) watch(ctx context.Context, canary *sim.GroupState) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	sent := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		id, hooked := d.rollbackID, !d.webhookAt.IsZero() && d.stoppedAt.IsZero()
		d.mu.Unlock()
		if !sent && id != "" && d.dl != nil {
			if dec, ok := d.dl.Decision(id); ok && len(dec.Deliveries) > 0 {
				sent = true
				a := dec.Deliveries[0]
				d.emit(Event{Type: "webhook_sent", Service: demoService, Version: demoCanary, DecisionID: id,
					Text: fmt.Sprintf("herd: rollback delivered to %s (attempt %d, HTTP %d, %d ms)", a.Target, a.Attempt, a.Status, a.DurationMs)})
			}
		}
		if hooked && canary.Live() == 0 {
			d.mu.Lock()
			d.stoppedAt = time.Now()
			d.mu.Unlock()
			d.emit(Event{Type: "instances_stopped", Service: demoService, Version: demoCanary,
				Text: fmt.Sprintf("%s %s has no instances left: rolled back", demoService, demoCanary)})
			d.finish()
		}
	}
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
	if v.Service != demoService || v.Update {
		return // updates republish a state told already
	}
	d.mu.Lock()
	first := d.verdict == nil || d.verdict.State != v.State
	if v.State != proto.StatePending {
		vv := v
		d.verdict = &vv
	}
	d.mu.Unlock()
	if first {
		d.emit(Event{Type: "verdict", Service: v.Service, Version: v.Canary, State: string(v.State),
			DecisionID: v.DecisionID, Evidence: &v.Evidence, Text: fmt.Sprintf("verdict %s: %s", v.State, v.Sentence)})
	}
	if v.State == proto.StatePass || v.State == proto.StateInconclusive {
		d.finish()
	}
	if v.State == proto.StateRollback && first {
		d.mu.Lock()
		if d.rollbackID == "" {
			d.rollbackID = v.DecisionID
		}
		d.mu.Unlock()
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
			d.emit(Event{Type: "webhook_received", Service: demoService, Version: demoCanary, DecisionID: msg.DecisionID,
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
func (d *demo) emit(ev Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	ev.UnixMs = now.UnixMilli()
	if !d.onset.IsZero() {
		since := now.Sub(d.onset).Milliseconds()
		ev.SinceOnsetMs = &since
	}
	if d.cfg.JSON {
		b, _ := json.Marshal(ev)
		fmt.Fprintln(d.cfg.Out, string(b))
		return
	}
	at := now.Format("15:04:05.000")
	if ev.SinceOnsetMs != nil {
		at += fmt.Sprintf(" (+%5.2fs)", float64(*ev.SinceOnsetMs)/1000)
	} else {
		at += "          "
	}
	fmt.Fprintf(d.cfg.Out, "%s  %s\n", at, ev.Text)
}

// summary prints the story's end and reports whether it went as the scenario expects.
func (d *demo) summary(dashboard string) bool {
	d.mu.Lock()
	sum := Summary{Scenario: d.cfg.Scenario, Outcome: "none", Expected: string(proto.StateRollback),
		WebhooksReceived: d.hooks, DashboardURL: dashboard,
		CanaryRPS: float64(d.cfg.Canary) * d.cfg.RPS, BaselineRPS: float64(d.cfg.Baseline) * d.cfg.RPS}
	if d.cfg.Scenario == "good" {
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
	if d.cfg.Scenario == "good" {
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
	d.emit(Event{Type: "summary", Summary: &sum, Text: text})
	return sum.OK
}
