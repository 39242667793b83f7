package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/web"
)

// stackConfig configures the all-in-one server that `herd serve` and `herd demo` run.
type stackConfig struct {
	// NATSURL selects an external NATS server; empty starts the embedded one.
	NATSURL string
	// NATSListen is host:port of the embedded server's client listener (port 0: random).
	NATSListen string
	// DataDir holds the embedded server's JetStream store.
	DataDir string
	// HTTPListen is host:port of the HTTP listener (/metrics, /livez, /readyz).
	HTTPListen string
	Rollup     rollup.Config
	Intake     ingest.IntakeConfig
	Detect     alert.Config
	Deliver    deliver.Config
	Web        web.Config
	// Retention bounds the age of decisions kept in JetStream KV, and of the windows and
	// verdicts kept in JetStream streams for restarts.
	Retention time.Duration
	// Replicas is the JetStream replica count of the history stream (3 on a 3-node cluster).
	Replicas int
}

// defaultStackConfig returns every default; flags registered on it keep them.
func defaultStackConfig() stackConfig {
	return stackConfig{NATSListen: "127.0.0.1:4222", DataDir: "herd-data", HTTPListen: "127.0.0.1:8080",
		Rollup: rollup.DefaultConfig(), Intake: ingest.DefaultIntakeConfig(), Detect: alert.DefaultConfig(),
		Deliver: deliver.Config{Timeout: 2 * time.Second, MaxRetry: time.Hour}, Web: web.DefaultConfig(),
		Retention: time.Hour, Replicas: 1}
}

func (c *stackConfig) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats", c.NATSURL, "external NATS server `URL`s, comma-separated; empty starts an embedded nats-server")
	fs.StringVar(&c.NATSListen, "nats.listen", c.NATSListen, "client listener of the embedded nats-server (`host:port`, port 0 picks a free one)")
	fs.StringVar(&c.DataDir, "data", c.DataDir, "`directory` of the embedded nats-server's JetStream store")
	fs.StringVar(&c.HTTPListen, "http", c.HTTPListen, "HTTP listener for the API, dashboard and /metrics (`host:port`, port 0 picks a free one)")
	fs.IntVar(&c.Replicas, "js.replicas", c.Replicas, "JetStream replicas of herd's history stream (`count`; 3 on a 3-node cluster)")
	fs.DurationVar(&c.Retention, "retention", c.Retention, "how long closed windows and verdicts are kept in JetStream for restarts (`duration`)")
	c.Rollup.RegisterFlags(fs)
	c.Intake.RegisterFlags(fs)
	c.Detect.RegisterFlags(fs)
	c.Deliver.RegisterFlags(fs)
	c.Web.RegisterFlags(fs)
}

func (c *stackConfig) validate() error {
	if err := c.Rollup.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.Intake.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.Detect.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.targetsFromPolicy(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.splitFromPolicy(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.Deliver.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.Web.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("%w: -js.replicas %d must be between 1 and 5", errUsage, c.Replicas)
	}
	if c.Retention < time.Minute {
		return fmt.Errorf("%w: -retention %s must be at least 1m", errUsage, c.Retention)
	}
	if c.NATSURL == "" {
		if _, _, err := splitHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("%w: -nats.listen: %v", errUsage, err)
		}
	}
	if _, _, err := splitHostPort(c.HTTPListen); err != nil {
		return fmt.Errorf("%w: -http: %v", errUsage, err)
	}
	return nil
}

// targetsFromPolicy reads the deploy-tool targets from the "targets" section of the policy
// file when no separate -deliver.targets file is given, so one file configures a service's
// detection and its rollback targets.
func (c *stackConfig) targetsFromPolicy() error {
	if c.Detect.PolicyFile == "" || c.Deliver.TargetsFile != "" {
		return nil
	}
	data, err := os.ReadFile(c.Detect.PolicyFile)
	if err != nil {
		return fmt.Errorf("-detect.policy: cannot read: %w", err)
	}
	var p struct {
		Targets json.RawMessage `json:"targets"`
	}
	if err := json.Unmarshal(data, &p); err != nil || len(p.Targets) == 0 {
		return nil // the detector reports a malformed policy file with its own words
	}
	dec := json.NewDecoder(bytes.NewReader(p.Targets))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c.Deliver.Targets); err != nil {
		return fmt.Errorf("-detect.policy %s: bad targets: %w", c.Detect.PolicyFile, err)
	}
	return nil
}

// splitFromPolicy adds the series the policy's selectors read to -rollup.split-series, so
// per-instance warm-up and the shadow check apply to services with their own series names.
func (c *stackConfig) splitFromPolicy() error {
	if c.Detect.PolicyFile == "" || strings.TrimSpace(c.Rollup.SplitSeries) == "*" {
		return nil
	}
	pol, err := alert.LoadPolicy(c.Detect.PolicyFile, &c.Detect)
	if err != nil {
		return fmt.Errorf("-detect.policy: %w", err)
	}
	have := map[string]bool{}
	for _, n := range strings.Split(c.Rollup.SplitSeries, ",") {
		have[strings.TrimSpace(n)] = true
	}
	for _, n := range pol.SeriesNames() {
		if !have[n] {
			c.Rollup.SplitSeries += "," + n
			have[n] = true
		}
	}
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("cannot parse %q as host:port: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hp)
	}
	return h, port, nil
}

// roleSet selects what a stack runs: serve runs every role; `herd detect` and `herd web`
// run one each against an external NATS.
type roleSet struct {
	Ingest bool // intake and rollup: agent batches in, closed windows out
	Detect bool // detector and rollback delivery
	Web    bool // dashboard, JSON API and websocket stream
}

var allRoles = roleSet{Ingest: true, Detect: true, Web: true}

// stack runs herd's roles on one NATS connection: embedded (or external) NATS → intake →
// rollup → windows on herd.rollup.* and to in-process consumers (detector, web), plus the
// HTTP listener. A role that is not local gets its input from NATS instead.
type stack struct {
	cfg    stackConfig
	roles  roleSet
	logger *slog.Logger

	ns      *server.Server // nil with an external NATS
	nc      *nats.Conn     // every subscription and publication
	intake  *ingest.Intake // nil without the ingest role, like roll
	roll    *rollup.Rollup
	det     *alert.Detector // nil without the detect role, like dl
	dl      *deliver.Deliverer
	web     *web.Server // nil without the web role
	mux     *http.ServeMux
	httpLn  net.Listener
	httpSrv *http.Server
	ready   atomic.Bool
	// history is the JetStream stream of windows, verdicts and deployments; nil without
	// JetStream. While replaying, verdicts the detector re-derives are not published again.
	history   jetstream.Stream
	replaying atomic.Bool

	metrics     *metrics.Set
	publishErrs *metrics.Counter
	windowsSent *metrics.Counter
	deployErrs  *metrics.Counter
	badInputs   *metrics.Counter
	// windowsMissing counts windows that never arrived from NATS: a gap in a group's window
	// starts (windows are contiguous while a group reports). Guarded by gapsMu, like lastStart.
	windowsMissing *metrics.Counter
	gapsMu         sync.Mutex
	lastStart      map[[2]string]int64

	subsMu        sync.Mutex               // guards the consumer lists below
	onWindowSubs  []func(*proto.Window)    // closed windows, on the rollup's goroutine
	onVerdictSubs []func(proto.Verdict)    // verdict changes, in order
	onDeploySubs  []func(proto.Deployment) // deployment announcements
}

// newStack starts the embedded NATS server (if any), connects, builds the roles and opens
// the HTTP listener, so that the caller can print real addresses. Nothing flows until run.
func newStack(cfg stackConfig, logger *slog.Logger) (*stack, error) {
	return newRoles(cfg, allRoles, logger)
}

func newRoles(cfg stackConfig, roles roleSet, logger *slog.Logger) (_ *stack, err error) {
	s := &stack{cfg: cfg, roles: roles, logger: logger, mux: http.NewServeMux(), metrics: metrics.NewSet()}
	s.publishErrs = s.metrics.NewCounter(`herd_serve_publish_errors_total`)
	s.deployErrs = s.metrics.NewCounter(`herd_serve_deployments_refused_total`)
	s.windowsSent = s.metrics.NewCounter(`herd_serve_windows_published_total`)
	s.badInputs = s.metrics.NewCounter(`herd_serve_bad_messages_total`)
	s.windowsMissing = s.metrics.NewCounter(`herd_serve_windows_missing_total`)
	s.lastStart = map[[2]string]int64{}
	defer func() {
		if err != nil {
			s.closeNATS()
		}
	}()
	natsURL := cfg.NATSURL
	if natsURL == "" {
		host, port, _ := splitHostPort(cfg.NATSListen)
		if port == 0 {
			port = -1
		}
		ns, err := embednats.Start(embednats.Config{Host: host, Port: port, JetStream: true, StoreDir: cfg.DataDir})
		if err != nil {
			return nil, err
		}
		s.ns = ns
		natsURL = ns.ClientURL()
		// The embedded server routes agent batches to partition subjects like a cluster
		// does, so `herd rollup` workers can share the work; the local intake takes every
		// partition.
		if err := embednats.ApplyMapping(ns); err != nil {
			return nil, err
		}
		if cfg.Intake.Subject == proto.SubjectInAll && cfg.Intake.Prefix == proto.PrefixIn {
			s.cfg.Intake.Subject, s.cfg.Intake.Prefix = embednats.PartitionPrefix+">", embednats.PartitionPrefix+"*."
		}
	}
	if s.nc, err = connectNATS(natsURL, "herd-serve", logger); err != nil {
		return nil, err
	}
	js, jsErr := jetStreamOf(s.nc)
	if jsErr == nil && (roles.Detect || roles.Web) {
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.history, jsErr = ensureHistory(hctx, js, cfg.Retention, cfg.Replicas)
		hcancel()
	}
	if jsErr != nil {
		logger.Warn("no history stream: a restart starts without windows and verdicts", "err", jsErr)
	}
	if roles.Ingest {
		if s.roll, err = rollup.New(cfg.Rollup, s.emit, logger.With("component", "rollup")); err != nil {
			return nil, fmt.Errorf("cannot create rollup: %w", err)
		}
		if s.intake, err = ingest.NewIntake(s.cfg.Intake, ingest.NewIntakeMetrics(s.metrics), s.nc, s.roll.Add, logger.With("component", "intake")); err != nil {
			return nil, fmt.Errorf("cannot create intake: %w", err)
		}
	}
	if roles.Detect {
		if s.det, err = alert.New(cfg.Detect, s.metrics, s.verdict, logger); err != nil {
			return nil, fmt.Errorf("cannot create detector: %w", err)
		}
		s.onWindow(s.det.AddWindow)
		store, err := s.openStore(js)
		if err != nil {
			return nil, err
		}
		if s.dl, err = deliver.New(cfg.Deliver, s.metrics, store, logger); err != nil {
			return nil, fmt.Errorf("cannot create delivery: %w", err)
		}
	}
	if s.httpLn, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
		return nil, fmt.Errorf("cannot listen for HTTP on %s: %w", cfg.HTTPListen, err)
	}
	protect := func(h http.Handler) http.Handler { return h }
	if roles.Web {
		if s.web, err = web.New(cfg.Web, s.metrics, logger.With("component", "web")); err != nil {
			s.httpLn.Close()
			return nil, fmt.Errorf("cannot create the dashboard: %w", err)
		}
		protect = s.web.Protect
		s.onWindow(s.web.AddWindow)
		s.onVerdict(s.web.SetVerdict)
		s.onDeploy(s.web.AddDeployment)
		s.web.SetAnnounce(s.announce)
		if s.dl != nil {
			s.web.SetDecisions(s.dl.Decisions)
		} else if jsErr == nil {
			s.web.SetDecisions(deliver.StoredDecisions(deliver.NewKVReader(js).Decisions, time.Second, logger))
		}
		s.mux.Handle("/", s.web.Handler())
	}
	if s.dl != nil {
		decisions := protect(s.dl.HTTPHandler())
		s.mux.Handle("/api/v1/decisions", decisions)
		s.mux.Handle("/api/v1/decisions/", decisions)
		s.mux.Handle("/api/v1/flagger/", protect(s.dl.FlaggerHandler(s.det.Latest)))
	}
	s.mux.HandleFunc("GET /metrics", s.serveMetrics)
	s.mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s.httpSrv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// NATSURL is the client URL of the NATS server the stack uses.
func (s *stack) NATSURL() string {
	if s.ns != nil {
		return s.ns.ClientURL()
	}
	return redactURLs(s.cfg.NATSURL)
}

// HTTPURL is the base URL of the HTTP listener.
func (s *stack) HTTPURL() string { return "http://" + s.httpLn.Addr().String() }

// openStore opens the decision store: JetStream KV in the NATS herd uses, or, when that
// NATS has no JetStream, a file store under the data directory.
func (s *stack) openStore(js jetstream.JetStream) (deliver.Store, error) {
	var err error
	if js != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var kv *deliver.KVStore
		// A cluster without a meta leader yet does not answer: retry with short timeouts.
		for ctx.Err() == nil {
			callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
			kv, err = deliver.OpenKVStore(callCtx, js, 7*24*time.Hour)
			callCancel()
			if err == nil {
				return kv, nil
			}
			if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
				break
			}
		}
		s.logger.Warn("no JetStream for decisions; keeping them in a file", "dir", s.cfg.DataDir, "err", err)
	}
	st, err := deliver.NewFileStore(filepath.Join(s.cfg.DataDir, "decisions"))
	if err != nil {
		return nil, fmt.Errorf("cannot open the decision store: %w", err)
	}
	return st, nil
}

// verdict publishes a verdict change on herd.verdict.<service>, hands final verdicts to
// delivery and tells the in-process consumers. The detector calls it in order.
func (s *stack) verdict(v proto.Verdict) {
	if s.replaying.Load() {
		// Re-derived from replayed windows: the decision id is the one already taken, so
		// delivery does not send it again; the stream already holds the verdict itself.
		if v.State == proto.StateRollback || v.State == proto.StatePass {
			_ = s.dl.Decide(v)
		}
		return
	}
	if subj, err := proto.VerdictSubject(v.Service); err == nil {
		if data, err := proto.MarshalVerdict(&v); err == nil {
			if err := s.nc.Publish(subj, data); err != nil {
				s.publishErrs.Inc()
			}
		}
	}
	if v.State == proto.StateRollback || v.State == proto.StatePass {
		if err := s.dl.Decide(v); err != nil {
			s.logger.Warn("cannot hand the decision to delivery", "decision_id", v.DecisionID, "err", err)
		}
	}
	s.subsMu.Lock()
	subs := s.onVerdictSubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(v)
	}
}

// announce publishes a deployment on herd.deploy.<service>; every detector (this one
// included) receives it from there.
func (s *stack) announce(d proto.Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if d.UnixMs == 0 {
		d.UnixMs = time.Now().UnixMilli()
	}
	subj, err := proto.DeploySubject(d.Service)
	if err != nil {
		return err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("cannot encode deployment: %w", err)
	}
	if err := s.nc.Publish(subj, data); err != nil {
		return fmt.Errorf("cannot publish deployment on %s: %w", subj, err)
	}
	return s.nc.Flush()
}

// onDeployMsg handles a deployment announcement from herd.deploy.>.
func (s *stack) onDeployMsg(m *nats.Msg) {
	d, err := decodeDeployment(m.Data)
	if err != nil {
		s.deployErrs.Inc()
		s.logger.Warn("bad deployment announcement", "subject", m.Subject, "err", err)
		return
	}
	if s.det != nil {
		if err := s.det.Announce(d); err != nil {
			s.deployErrs.Inc()
			s.logger.Warn("deployment refused", "subject", m.Subject, "err", err)
			return
		}
	}
	s.logger.Info("deployment", "service", d.Service, "baseline", d.Baseline, "canary", d.Canary)
	s.subsMu.Lock()
	subs := s.onDeploySubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(d)
	}
}

// decodeDeployment decodes and checks a deployment announcement.
func decodeDeployment(data []byte) (proto.Deployment, error) {
	var d proto.Deployment
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("cannot decode deployment: %w", err)
	}
	return d, d.Validate()
}

// replay rebuilds the detector's and the dashboard's state from the history stream.
func (s *stack) replay(ctx context.Context) {
	if s.history == nil {
		return
	}
	start := time.Now()
	s.replaying.Store(true)
	defer s.replaying.Store(false)
	var sink historySink
	if s.det != nil {
		sink.window = s.det.AddWindow
		sink.deploy = func(d proto.Deployment) { _ = s.det.Announce(d) }
	}
	if s.web != nil {
		sink.restored = s.web.Restore
	}
	n, bad, err := replayHistory(ctx, s.history, sink)
	if err != nil {
		s.logger.Warn("history replay incomplete", "replayed", n, "err", err)
	}
	if n > 0 {
		s.logger.Info("history replayed", "messages", n, "undecodable", bad, "took", time.Since(start).Round(time.Millisecond))
	}
}

// onVerdict adds an in-process consumer of verdict changes (add before run).
func (s *stack) onVerdict(f func(proto.Verdict)) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	s.onVerdictSubs = append(s.onVerdictSubs, f)
}

// onDeploy adds an in-process consumer of accepted deployments (add before run).
func (s *stack) onDeploy(f func(proto.Deployment)) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	s.onDeploySubs = append(s.onDeploySubs, f)
}

// onWindow adds an in-process consumer of closed windows. It is called on the rollup's
// goroutine and must not block. Add consumers before run.
func (s *stack) onWindow(f func(*proto.Window)) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	s.onWindowSubs = append(s.onWindowSubs, f)
}

// emit publishes a closed window and hands it to the in-process consumers.
func (s *stack) emit(w *proto.Window) {
	if subj, err := proto.RollupSubject(w.Service, w.Version); err != nil {
		s.publishErrs.Inc()
	} else if data, err := proto.MarshalWindow(w); err != nil {
		s.publishErrs.Inc()
	} else if err := s.nc.Publish(subj, data); err != nil {
		s.publishErrs.Inc()
	} else {
		s.windowsSent.Inc()
	}
	s.subsMu.Lock()
	subs := s.onWindowSubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(w)
	}
}

func (s *stack) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	sets := []*metrics.Set{s.metrics}
	if s.roll != nil {
		sets = append(sets, s.roll.Metrics())
	}
	promhelp.WritePrometheus(w, append(sets, natsMetrics)...)
	metrics.WriteProcessMetrics(w)
}

// run serves until ctx is done, then stops in data-flow order: not ready → stop intake
// (drain the subscription) → flush open windows → stop subscriptions → close outputs →
// stop NATS.
func (s *stack) run(ctx context.Context) error {
	outCtx, stopOut := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, ctx context.Context, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	// Outputs first, then the history replay (before any live input), then the inputs.
	if s.dl != nil {
		goRun("delivery", outCtx, s.dl.Run)
	}
	if s.web != nil {
		goRun("web", outCtx, s.web.Run)
	}
	if s.det != nil || s.web != nil {
		s.replay(ctx)
	}
	var subs []*nats.Subscription
	subscribe := func(subject string, h nats.MsgHandler) error {
		sub, err := s.nc.Subscribe(subject, h)
		if err == nil {
			err = sub.SetPendingLimits(1<<20, 256<<20)
		}
		if err != nil {
			return fmt.Errorf("cannot subscribe to %s: %w", subject, err)
		}
		subs = append(subs, sub)
		return nil
	}
	var err error
	if s.det != nil || s.web != nil {
		err = subscribe(proto.SubjectDeployAll, s.onDeployMsg)
		if err == nil && s.roll == nil {
			err = subscribe(proto.SubjectRollupAll, s.onWindowMsg)
		}
		if err == nil && s.det == nil {
			err = subscribe(proto.SubjectVerdictAll, s.onVerdictMsg)
		}
	}
	if err == nil {
		err = s.nc.Flush()
	}
	if err != nil {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		stopOut()
		wg.Wait()
		return err
	}
	if s.det != nil {
		goRun("detector", outCtx, s.det.Run)
	}
	intakeCtx, stopIntake := context.WithCancel(context.Background())
	rollCtx, stopRoll := context.WithCancel(context.Background())
	intakeDone := make(chan struct{})
	if s.intake != nil {
		wg.Go(func() {
			defer close(intakeDone)
			if err := s.intake.Run(intakeCtx); err != nil {
				errc <- fmt.Errorf("intake: %w", err)
			}
		})
		goRun("rollup", rollCtx, s.roll.Run)
	} else {
		close(intakeDone)
	}
	wg.Go(func() {
		if err := s.httpSrv.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	})
	s.ready.Store(true)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.ready.Store(false)
	stopIntake()
	<-intakeDone // every buffered batch is merged
	if s.roll != nil {
		s.roll.Flush()
	}
	stopRoll()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
	stopOut()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = s.httpSrv.Shutdown(shutCtx)
	cancel()
	wg.Wait()
	if err := drain(s.nc, 5*time.Second); err != nil {
		s.logger.Warn("cannot stop cleanly", "err", err)
	}
	s.closeNATS()
	return runErr
}

// onWindowMsg takes a closed window from herd.rollup.> (a role without local rollup).
func (s *stack) onWindowMsg(m *nats.Msg) {
	w, err := proto.UnmarshalWindow(m.Data)
	if err != nil {
		s.badInputs.Inc()
		return
	}
	s.countGap(w)
	s.subsMu.Lock()
	subs := s.onWindowSubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(w)
	}
}

// countGap counts the windows missing between a group's previous window and w. Core NATS is
// at most once: a window lost between a rollup worker and this node (a NATS node failing, a
// worker's connection dropping) shows only here. Groups that stop reporting simply end; a
// group seen again after a long silence (more than a minute) is not counted as a gap.
func (s *stack) countGap(w *proto.Window) {
	width := w.EndMs - w.StartMs
	if width <= 0 {
		return
	}
	k := [2]string{w.Service, w.Version}
	s.gapsMu.Lock()
	defer s.gapsMu.Unlock()
	last, ok := s.lastStart[k]
	if ok && w.StartMs > last+width && w.StartMs-last <= 60_000 {
		s.windowsMissing.Add(int((w.StartMs-last)/width - 1))
	}
	if !ok || w.StartMs > last {
		if len(s.lastStart) >= 100_000 {
			clear(s.lastStart)
		}
		s.lastStart[k] = w.StartMs
	}
}

// onVerdictMsg takes a verdict from herd.verdict.> (a web node without a local detector).
func (s *stack) onVerdictMsg(m *nats.Msg) {
	v, err := proto.UnmarshalVerdict(m.Data)
	if err != nil {
		s.badInputs.Inc()
		return
	}
	s.subsMu.Lock()
	subs := s.onVerdictSubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(*v)
	}
}

func (s *stack) closeNATS() {
	if s.nc != nil && !s.nc.IsClosed() {
		s.nc.Close()
	}
	if s.ns != nil {
		embednats.Shutdown(s.ns)
	}
}
