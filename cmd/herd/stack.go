package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
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
}

// defaultStackConfig returns every default; flags registered on it keep them.
func defaultStackConfig() stackConfig {
	return stackConfig{NATSListen: "127.0.0.1:4222", DataDir: "herd-data", HTTPListen: "127.0.0.1:8080",
		Rollup: rollup.DefaultConfig(), Intake: ingest.DefaultIntakeConfig(), Detect: alert.DefaultConfig(),
		Deliver: deliver.Config{Timeout: 2 * time.Second, MaxRetry: time.Hour}, Web: web.DefaultConfig(),
		Retention: time.Hour}
}

func (c *stackConfig) registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats", c.NATSURL, "external NATS server `URL`s, comma-separated; empty starts an embedded nats-server")
	fs.StringVar(&c.NATSListen, "nats.listen", c.NATSListen, "client listener of the embedded nats-server (`host:port`, port 0 picks a free one)")
	fs.StringVar(&c.DataDir, "data", c.DataDir, "`directory` of the embedded nats-server's JetStream store")
	fs.StringVar(&c.HTTPListen, "http", c.HTTPListen, "HTTP listener for the API, dashboard and /metrics (`host:port`, port 0 picks a free one)")
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
	if err := c.Deliver.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.Web.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
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

// stack is herd's all-in-one server: embedded (or external) NATS → intake → rollup →
// windows on herd.rollup.* and to in-process consumers, plus the HTTP listener.
type stack struct {
	cfg    stackConfig
	logger *slog.Logger

	ns      *server.Server // nil with an external NATS
	nc      *nats.Conn     // intake subscription and window publishing
	intake  *ingest.Intake
	roll    *rollup.Rollup
	det     *alert.Detector
	dl      *deliver.Deliverer
	web     *web.Server
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

	subsMu        sync.Mutex               // guards the consumer lists below
	onWindowSubs  []func(*proto.Window)    // closed windows, on the rollup's goroutine
	onVerdictSubs []func(proto.Verdict)    // verdict changes, in order
	onDeploySubs  []func(proto.Deployment) // deployment announcements
}

// newStack starts the embedded NATS server (if any), connects, and opens the HTTP listener,
// so that the caller can print real addresses. Nothing flows until run.
func newStack(cfg stackConfig, logger *slog.Logger) (*stack, error) {
	s := &stack{cfg: cfg, logger: logger, mux: http.NewServeMux(), metrics: metrics.NewSet()}
	s.publishErrs = s.metrics.NewCounter(`herd_serve_window_publish_errors_total`)
	s.deployErrs = s.metrics.NewCounter(`herd_serve_deployments_refused_total`)
	s.windowsSent = s.metrics.NewCounter(`herd_serve_windows_published_total`)
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
	}
	nc, err := connectNATS(natsURL, "herd-serve", logger)
	if err != nil {
		s.closeNATS()
		return nil, err
	}
	s.nc = nc
	s.roll, err = rollup.New(cfg.Rollup, s.emit, logger.With("component", "rollup"))
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot create rollup: %w", err)
	}
	s.intake, err = ingest.NewIntake(cfg.Intake, nc, s.roll.Add, logger.With("component", "intake"))
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot create intake: %w", err)
	}
	s.det, err = alert.New(cfg.Detect, s.verdict, logger)
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot create detector: %w", err)
	}
	s.onWindow(s.det.AddWindow)
	store, err := s.openStore()
	if err != nil {
		s.closeNATS()
		return nil, err
	}
	s.dl, err = deliver.New(cfg.Deliver, store, logger)
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot create delivery: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot listen for HTTP on %s: %w", cfg.HTTPListen, err)
	}
	s.httpLn = ln
	s.web, err = web.New(cfg.Web, logger.With("component", "web"))
	if err != nil {
		s.closeNATS()
		return nil, fmt.Errorf("cannot create the dashboard: %w", err)
	}
	s.onWindow(s.web.AddWindow)
	s.onVerdict(s.web.SetVerdict)
	s.onDeploy(s.web.AddDeployment)
	s.web.SetDecisions(s.dl.Decisions)
	s.web.SetAnnounce(s.announce)
	s.mux.Handle("/", s.web.Handler())
	decisions := s.web.Protect(s.dl.HTTPHandler())
	s.mux.Handle("/api/v1/decisions", decisions)
	s.mux.Handle("/api/v1/decisions/", decisions)
	s.mux.Handle("/api/v1/flagger/", s.web.Protect(s.dl.FlaggerHandler(s.lookupVerdict)))
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
func (s *stack) openStore() (deliver.Store, error) {
	js, err := jetStreamOf(s.nc)
	if err == nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.history, err = ensureHistory(hctx, js, s.cfg.Retention, 1)
		hcancel()
		if err != nil {
			s.logger.Warn("no history stream: a restart starts without windows and verdicts", "err", err)
		}
	}
	if err == nil {
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
	if err := s.det.Announce(d); err != nil {
		s.deployErrs.Inc()
		s.logger.Warn("deployment refused", "subject", m.Subject, "err", err)
		return
	}
	s.logger.Info("deployment", "service", d.Service, "baseline", d.Baseline, "canary", d.Canary)
	s.subsMu.Lock()
	subs := s.onDeploySubs
	s.subsMu.Unlock()
	for _, f := range subs {
		f(d)
	}
}

// lookupVerdict returns the detector's current verdict for a service's newest canary.
func (s *stack) lookupVerdict(service string) (proto.Verdict, bool) {
	var best proto.Verdict
	found := false
	for _, v := range s.det.Verdicts() {
		if v.Service == service && (!found || v.StartedMs >= best.StartedMs) {
			best, found = v, true
		}
	}
	return best, found
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
	n, bad, err := replayHistory(ctx, s.history, historySink{
		window:   s.det.AddWindow,
		deploy:   func(d proto.Deployment) { _ = s.det.Announce(d) },
		restored: s.web.Restore,
	})
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
	s.metrics.WritePrometheus(w)
	s.roll.Metrics().WritePrometheus(w)
	s.intake.Metrics().WritePrometheus(w)
	s.det.Metrics().WritePrometheus(w)
	s.dl.Metrics().WritePrometheus(w)
	s.web.Metrics().WritePrometheus(w)
	natsMetrics.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}

// run serves until ctx is done, then stops in data-flow order: not ready → stop intake
// (drain the subscription) → flush open windows → close outputs → stop NATS.
func (s *stack) run(ctx context.Context) error {
	intakeCtx, stopIntake := context.WithCancel(context.Background())
	rollCtx, stopRoll := context.WithCancel(context.Background())
	outCtx, stopOut := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	// Outputs first, then the history replay (before any live window), then intake.
	wg.Go(func() {
		if err := s.dl.Run(outCtx); err != nil {
			errc <- fmt.Errorf("delivery: %w", err)
		}
	})
	wg.Go(func() {
		if err := s.web.Run(outCtx); err != nil {
			errc <- fmt.Errorf("web: %w", err)
		}
	})
	s.replay(ctx)
	deploySub, err := s.nc.Subscribe(proto.SubjectDeployAll, s.onDeployMsg)
	if err != nil {
		stopIntake()
		stopRoll()
		stopOut()
		wg.Wait()
		return fmt.Errorf("cannot subscribe to %s: %w", proto.SubjectDeployAll, err)
	}
	wg.Go(func() {
		if err := s.det.Run(outCtx); err != nil {
			errc <- fmt.Errorf("detector: %w", err)
		}
	})
	intakeDone := make(chan struct{})
	wg.Go(func() {
		defer close(intakeDone)
		if err := s.intake.Run(intakeCtx); err != nil {
			errc <- fmt.Errorf("intake: %w", err)
		}
	})
	wg.Go(func() {
		if err := s.roll.Run(rollCtx); err != nil {
			errc <- fmt.Errorf("rollup: %w", err)
		}
	})
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
	s.roll.Flush()
	stopRoll()
	_ = deploySub.Unsubscribe()
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

func (s *stack) closeNATS() {
	if s.nc != nil && !s.nc.IsClosed() {
		s.nc.Close()
	}
	if s.ns != nil {
		embednats.Shutdown(s.ns)
	}
}
