package deliver

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// Redeliver errors.
var (
	ErrUnknownDecision = errors.New("unknown decision")
	ErrUnknownTarget   = errors.New("unknown target")
	ErrInProgress      = errors.New("delivery in progress")
	// ErrNotResendable refuses a second send to a Spinnaker trigger.
	ErrNotResendable = errors.New("spinnaker triggers are not idempotent: a decision is sent at most once")
	ErrNothingToDo   = errors.New("nothing to redeliver")
)

// Deliverer delivers decisions to their targets. Its methods are safe for concurrent use.
type Deliverer struct {
	cfg     Config
	store   Store
	log     *slog.Logger
	targets map[string]target // by name; immutable after New
	order   []target          // in configuration order
	client  *http.Client
	flagger map[string]string // "namespace/name" → service

	schedule []time.Duration
	maxGap   time.Duration

	set         *metrics.Set // the caller's; the Deliverer registers its families in it
	escalations *metrics.Counter
	rowsDropped *metrics.Counter

	wake   chan struct{} // capacity 1: "todo changed"
	loaded chan struct{} // closed once Run has loaded the stored decisions

	// mu guards the fields below. Lock order: mu before entry.mu; never hold mu across I/O.
	mu      sync.Mutex
	entries map[string]*entry
	todo    map[workKey]struct{} // deliveries to (re)start
	active  map[workKey]struct{} // deliveries with a running goroutine
}

type workKey struct{ id, target string }

// entry is one decision in memory.
type entry struct {
	id string // the decision id; immutable

	// mu guards rec and rev, and serializes the entry's store writes (it is held across
	// them, so that the stored revisions follow the in-memory ones).
	mu  sync.Mutex
	rec record
	rev uint64 // stored revision; 0: not stored yet

	open      atomic.Bool  // some target is unfinished
	createdMs atomic.Int64 // copy of rec.CreatedMs for pruning without mu
}

// deliverHelp describes the Deliverer's families.
var deliverHelp = map[string]string{
	"herd_deliver_attempts_total": "Delivery attempts, by target_kind (webhook, argo, spinnaker) and outcome " +
		"(done, retry, failed, escalated, skipped, unknown).",
	"herd_deliver_attempt_duration_seconds": "Duration of delivery attempts in seconds, by target_kind.",
	"herd_deliver_escalations_total":        "Deliveries that spent the retry budget of 10 s and kept retrying.",
	"herd_deliver_decisions_total":          "Decisions taken for delivery, by verdict: pass or rollback.",
	"herd_deliver_decisions_refused_total": "Verdicts not taken as new decisions, by reason: bad_id, not_final, bad_service, encode, " +
		"duplicate (known already) or exists (another herd stored it first).",
	"herd_deliver_store_errors_total": "Decision store errors, by operation: create, update, conflict, get, list or decode " +
		"(a stored record that is corrupt or invalid, skipped).",
	"herd_deliver_flagger_requests_total":  "Flagger webhook requests answered, by hook (rollback, confirm-promotion) and answer.",
	"herd_deliver_flagger_revisions_total": "Flagger canary revisions (checksums) the hooks saw: new, restarted (a new comparison started), restart_refused, evicted (over MaxFlaggerRevisions).",
	"herd_deliver_flagger_refused_total":   "Flagger webhook requests refused, by reason.",
	"herd_deliver_api_refused_total":       "Decision API requests refused, by reason.",
	"herd_deliver_log_rows_dropped_total":  "Delivery log rows dropped: a decision keeps its last 1000 rows.",
	"herd_deliver_decisions_open":          "Decisions with a target still being delivered.",
	"herd_deliver_targets":                 "Delivery targets configured.",
}

// New builds a Deliverer from a validated cfg (Config.Validate decodes the secrets); it
// starts nothing. Its self-metrics (herd_deliver_*) go into set, which the caller owns and
// exposes (nil: a private Set); a Set holds one Deliverer's metrics. store keeps the
// decisions; logger gets component=deliver.
func New(cfg Config, set *metrics.Set, store Store, logger *slog.Logger) (*Deliverer, error) {
	if store == nil {
		return nil, errors.New("cannot create deliverer: no store")
	}
	if len(cfg.Webhooks) > 0 && len(cfg.secrets) == 0 {
		return nil, errors.New("cannot create deliverer: webhooks without signing secrets (was Config.Validate called?)")
	}
	if cfg.Timeout <= 0 || cfg.MaxRetry <= 0 {
		return nil, errors.New("cannot create deliverer: Timeout and MaxRetry must be positive (was Config.Validate called?)")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(deliverHelp)
	d := &Deliverer{
		cfg:   cfg,
		store: store,
		log:   logger.With("component", "deliver"),
		client: &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			// A redirected POST would become a GET; a redirect is a misconfigured target.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		targets:  map[string]target{},
		flagger:  map[string]string{},
		schedule: schedule,
		maxGap:   maxGap,
		set:      set,
		wake:     make(chan struct{}, 1),
		loaded:   make(chan struct{}),
		entries:  map[string]*entry{},
		todo:     map[workKey]struct{}{},
		active:   map[workKey]struct{}{},
	}
	add := func(t target) error {
		if _, dup := d.targets[t.name()]; dup {
			return fmt.Errorf("cannot create deliverer: target %s is configured twice", t.name())
		}
		d.targets[t.name()] = t
		d.order = append(d.order, t)
		return nil
	}
	for _, u := range cfg.Webhooks {
		if err := add(&webhook{url: u, label: "webhook:" + redactURL(u), secrets: cfg.secrets, pass: cfg.DeliverPass}); err != nil {
			return nil, err
		}
	}
	for _, a := range cfg.Targets.Argo {
		t, err := newArgo(a, d.client, cfg.Getenv)
		if err != nil {
			return nil, fmt.Errorf("cannot create deliverer: %w", err)
		}
		if err := add(t); err != nil {
			return nil, err
		}
	}
	for _, s := range cfg.Targets.Spinnaker {
		if err := add(newSpinnaker(s, cfg.Getenv)); err != nil {
			return nil, err
		}
	}
	for _, f := range cfg.Targets.Flagger {
		d.flagger[f.Namespace+"/"+f.Name] = f.Service
	}
	d.escalations = d.set.NewCounter("herd_deliver_escalations_total")
	d.rowsDropped = d.set.NewCounter("herd_deliver_log_rows_dropped_total")
	d.set.NewGauge("herd_deliver_decisions_open", func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		n := 0
		for _, e := range d.entries {
			if e.open.Load() {
				n++
			}
		}
		return float64(n)
	})
	d.set.NewGauge("herd_deliver_targets", func() float64 { return float64(len(d.order)) })
	return d, nil
}

func (d *Deliverer) counter(format string, args ...any) *metrics.Counter {
	return d.set.GetOrCreateCounter(fmt.Sprintf(format, args...))
}

func (d *Deliverer) storeError(reason string, err error, id string) {
	d.counter(`herd_deliver_store_errors_total{reason=%q}`, reason).Inc()
	d.log.Error("decision store error", "decision_id", id, "op", reason, "err", err)
}

func (d *Deliverer) refuse(reason string) {
	d.counter(`herd_deliver_decisions_refused_total{reason=%q}`, reason).Inc()
}

// Decide takes a final verdict (pass or rollback) with its DecisionID and queues its
// deliveries. It is idempotent on DecisionID: a decision already known, or created in the
// store by another herd (first writer wins), is not delivered again and returns nil. If the
// store fails, the decision is still delivered from memory and Decide returns the error.
//
// Every error is counted by reason before it is returned (a refused verdict in
// herd_deliver_decisions_refused_total, a store failure in
// herd_deliver_store_errors_total{reason="create"}), and so are the nil returns for a known
// decision (reasons duplicate and exists): a caller replaying verdicts after a restart may
// drop the error.
func (d *Deliverer) Decide(v proto.Verdict) error {
	if _, err := uuid.Parse(v.DecisionID); err != nil {
		d.refuse("bad_id")
		return fmt.Errorf("cannot take decision for %s: decision_id %q is not a UUID", v.Service, v.DecisionID)
	}
	if v.State != proto.StateRollback && v.State != proto.StatePass {
		d.refuse("not_final")
		return fmt.Errorf("cannot take decision %s: verdict %q is not final (pass or rollback)", v.DecisionID, v.State)
	}
	if err := proto.ValidService(v.Service); err != nil {
		d.refuse("bad_service")
		return fmt.Errorf("cannot take decision %s: %w", v.DecisionID, err)
	}
	d.mu.Lock()
	_, known := d.entries[v.DecisionID]
	d.mu.Unlock()
	if known {
		d.refuse("duplicate")
		return nil
	}
	now := time.Now()
	e := &entry{id: v.DecisionID, rec: record{Decision: proto.Decision{
		ID:         v.DecisionID,
		Verdict:    v,
		CreatedMs:  now.UnixMilli(),
		Deliveries: []proto.Delivery{},
	}, Targets: []TargetState{}}}
	for _, t := range d.order {
		if t.wants(&v) {
			e.rec.Targets = append(e.rec.Targets, TargetState{Target: t.name(), Kind: t.kind(), State: statePending})
		}
	}
	e.rec.Status = e.rec.status()
	e.open.Store(e.rec.Status == "delivering")
	e.createdMs.Store(e.rec.CreatedMs)
	data, err := json.Marshal(&e.rec)
	if err != nil {
		d.refuse("encode")
		return fmt.Errorf("cannot encode decision %s: %w", v.DecisionID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	rev, serr := d.store.Create(ctx, v.DecisionID, data)
	cancel()
	if errors.Is(serr, ErrExists) {
		d.refuse("exists")
		return nil
	}
	if serr != nil {
		d.storeError("create", serr, v.DecisionID)
		serr = fmt.Errorf("decision %s is delivered from memory only: %w", v.DecisionID, serr)
	}
	e.rev = rev
	ntargets := len(e.rec.Targets) // e is shared once in entries
	d.mu.Lock()
	if _, known := d.entries[v.DecisionID]; known { // a concurrent Decide won
		d.mu.Unlock()
		d.refuse("duplicate")
		return nil
	}
	d.entries[v.DecisionID] = e
	d.pruneLocked()
	for _, t := range e.rec.Targets {
		d.todo[workKey{v.DecisionID, t.Target}] = struct{}{}
	}
	d.mu.Unlock()
	d.signal()
	d.counter(`herd_deliver_decisions_total{verdict=%q}`, v.State).Inc()
	d.log.Info("decision", "decision_id", v.DecisionID, "service", v.Service, "verdict", v.State,
		"baseline", v.Baseline, "canary", v.Canary, "targets", ntargets)
	return serr
}

// maxEntries bounds the decisions held in memory; the oldest finished ones are forgotten
// beyond it (they stay in the store).
const maxEntries = 10000

// pruneLocked forgets the oldest finished decisions beyond maxEntries.
func (d *Deliverer) pruneLocked() {
	if len(d.entries) <= maxEntries {
		return
	}
	type aged struct {
		id string
		ms int64
	}
	var done []aged
	for id, e := range d.entries {
		if !e.open.Load() {
			done = append(done, aged{id, e.createdMs.Load()})
		}
	}
	slices.SortFunc(done, func(a, b aged) int { return cmp.Compare(a.ms, b.ms) })
	for _, a := range done[:min(len(done), len(d.entries)-maxEntries)] {
		delete(d.entries, a.id)
	}
}

func (d *Deliverer) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run loads the stored decisions, resumes their unfinished deliveries, and delivers new
// decisions until ctx is cancelled; then it waits for every delivery goroutine to stop
// and returns nil. An attempt cut short by cancellation is not logged and is made again
// by the next Run (a Spinnaker trigger only if it was surely not sent). Run is called once.
func (d *Deliverer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	d.load(ctx)
	close(d.loaded)
	for {
		d.mu.Lock()
		for k := range d.todo {
			if _, busy := d.active[k]; busy {
				continue // started again when the running one exits
			}
			delete(d.todo, k)
			e := d.entries[k.id]
			if e == nil {
				continue
			}
			d.active[k] = struct{}{}
			wg.Go(func() {
				defer func() {
					d.mu.Lock()
					delete(d.active, k)
					d.mu.Unlock()
					d.signal()
				}()
				d.deliver(ctx, e, k.target)
			})
		}
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		}
	}
}

// Redeliver delivers decision id again to target, or to every target when target is "".
// A finished webhook or Argo target starts a new round of attempts (receivers dedupe on
// the decision id). A Spinnaker target that was ever attempted is refused with
// ErrNotResendable: its trigger is not idempotent. A target still being delivered gives
// ErrInProgress. With target "", refused targets are left out and ErrNothingToDo is
// returned when none is left.
func (d *Deliverer) Redeliver(id, target string) error {
	d.mu.Lock()
	e := d.entries[id]
	d.mu.Unlock()
	if e == nil {
		return fmt.Errorf("cannot redeliver %q: %w", id, ErrUnknownDecision)
	}
	var names []string
	err := d.update(e, false, func(r *record) error {
		names = names[:0]
		for i := range r.Targets {
			ts := &r.Targets[i]
			if target != "" && ts.Target != target {
				continue
			}
			var refuse error
			switch {
			case d.targets[ts.Target] == nil:
				refuse = fmt.Errorf("target %s is no longer configured: %w", ts.Target, ErrUnknownTarget)
			case !ts.finished():
				refuse = fmt.Errorf("target %s: %w", ts.Target, ErrInProgress)
			case ts.Kind == KindSpinnaker:
				refuse = fmt.Errorf("target %s: %w", ts.Target, ErrNotResendable)
			}
			if refuse != nil {
				if target != "" {
					return refuse
				}
				continue
			}
			ts.State, ts.RoundAttempts, ts.RoundStartMs, ts.Escalated = statePending, 0, 0, false
			names = append(names, ts.Target)
		}
		if len(names) == 0 {
			if target != "" {
				return fmt.Errorf("decision has no target %q: %w", target, ErrUnknownTarget)
			}
			return ErrNothingToDo
		}
		return nil
	})
	if err != nil {
		d.counter(`herd_deliver_api_refused_total{reason=%q}`, refuseReason(err)).Inc()
		return fmt.Errorf("cannot redeliver %s: %w", id, err)
	}
	d.mu.Lock()
	for _, n := range names {
		d.todo[workKey{id, n}] = struct{}{}
	}
	d.mu.Unlock()
	d.signal()
	d.log.Info("redeliver", "decision_id", id, "targets", names)
	return nil
}

func refuseReason(err error) string {
	switch {
	case errors.Is(err, ErrUnknownTarget):
		return "unknown_target"
	case errors.Is(err, ErrInProgress):
		return "in_progress"
	case errors.Is(err, ErrNotResendable):
		return "not_resendable"
	case errors.Is(err, ErrNothingToDo):
		return "nothing_to_do"
	}
	return "other"
}

// records returns copies of the decisions, newest first.
func (d *Deliverer) records() []record {
	d.mu.Lock()
	es := make([]*entry, 0, len(d.entries))
	for _, e := range d.entries {
		es = append(es, e)
	}
	d.mu.Unlock()
	out := make([]record, 0, len(es))
	for _, e := range es {
		e.mu.Lock()
		out = append(out, e.rec.clone())
		e.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b record) int {
		if c := cmp.Compare(b.CreatedMs, a.CreatedMs); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

func (d *Deliverer) record(id string) (record, bool) {
	d.mu.Lock()
	e := d.entries[id]
	d.mu.Unlock()
	if e == nil {
		return record{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rec.clone(), true
}

// Decisions returns copies of the known decisions with their delivery logs, newest first.
func (d *Deliverer) Decisions() []proto.Decision {
	rs := d.records()
	out := make([]proto.Decision, len(rs))
	for i := range rs {
		out[i] = rs[i].Decision
	}
	return out
}

// Decision returns a copy of decision id with its delivery log.
func (d *Deliverer) Decision(id string) (proto.Decision, bool) {
	r, ok := d.record(id)
	return r.Decision, ok
}
