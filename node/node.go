package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/export"
	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/otlp"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/internal/embednats"
	"github.com/herd-dev/herd/internal/jsretry"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/rollup"
	"github.com/herd-dev/herd/signals"
	"github.com/herd-dev/herd/web"
)

// Node runs a set of herd's roles in one process. New builds it and opens its listeners; Run
// runs it until its context ends.
type Node struct {
	cfg    Config
	logger *slog.Logger
	// metrics holds every family the node exports on /metrics; each component registers
	// into it once.
	metrics *metrics.Set

	ns      *server.Server // nil with an external NATS
	nc      *nats.Conn     // every subscription and publication
	js      jetstream.JetStream
	pub     *bus.Publisher
	dec     *bus.Decoder
	live    gate         // live inputs, held while the history is replayed
	history *bus.History // nil without JetStream or without a role that replays

	intake *ingest.Intake // the ingest role, with roll and otlp
	otlp   *otlp.Receiver // nil without OTLP listeners
	roll   *rollup.Rollup
	worker *worker // the partitioned rollup role

	det *alert.Detector // the detect role, with dl
	dl  *deliver.Deliverer
	web *web.Server      // the web role
	exp *export.Exporter // /metrics/groups: the detect and web roles

	httpLn  net.Listener // nil without HTTP
	httpSrv *http.Server
	opsLn   net.Listener // the operations listener (Config.MetricsListen), or nil
	opsSrv  *http.Server
	ready   atomic.Bool
	readyc  chan struct{} // closed when ready is first set

	// intakeOpts, when set, are the options of the intake's own loopback connection to the
	// embedded server (see startEmbedded); intakeNC is that connection once open.
	intakeOpts []nats.Option
	intakeNC   *nats.Conn
	intakeM    *ingest.IntakeMetrics
	intakeRun  *intakeRun // the running intake, set by Run
	// replaying is set while the history is replayed: verdicts the detector re-derives are
	// then not published again.
	replaying atomic.Bool

	deployRefused *metrics.Counter
	replayErrs    map[string]*metrics.Counter

	subsMu        sync.Mutex // Guards the consumer lists below; consumers are added before Run.
	onWindowSubs  []func(*proto.Window)
	onVerdictSubs []func(proto.Verdict)
	onDeploySubs  []func(proto.Deployment)
}

// New starts the embedded NATS server (if any), connects, builds the roles and opens the
// HTTP listener, so that the caller can print real addresses. Nothing flows until Run. cfg
// must have passed Validate.
func New(cfg Config, logger *slog.Logger) (_ *Node, err error) {
	if cfg.Name == "" {
		cfg.Name = "herd"
	}
	n := &Node{cfg: cfg, logger: logger, metrics: metrics.NewSet(), readyc: make(chan struct{})}
	promhelp.Describe(nodeHelp)
	n.deployRefused = n.metrics.NewCounter(`herd_node_deployments_refused_total`)
	n.replayErrs = map[string]*metrics.Counter{
		"decide":   n.metrics.NewCounter(`herd_node_replay_errors_total{kind="decide"}`),
		"announce": n.metrics.NewCounter(`herd_node_replay_errors_total{kind="announce"}`),
	}
	defer func() {
		if err != nil {
			if n.otlp != nil {
				n.otlp.Close()
			}
			n.closeNATS()
		}
	}()
	if err := n.connect(); err != nil {
		return nil, err
	}
	r := cfg.Roles
	if r.Ingest {
		if err := n.newIngest(); err != nil {
			return nil, err
		}
	}
	if r.Rollup {
		if n.worker, err = newWorker(n); err != nil {
			return nil, err
		}
	}
	if r.Detect {
		if err := n.newDetect(); err != nil {
			return nil, err
		}
	}
	if r.Detect || r.Web {
		// The dashboard and the export read the signals the policy pins, as the detector does.
		sig, err := policySignals(&cfg)
		if err != nil {
			return nil, err
		}
		cfg.Web.Signals, cfg.Export.Signals = sig, sig
	}
	if r.Web {
		if n.web, err = web.New(cfg.Web, n.metrics, logger.With("component", "web")); err != nil {
			return nil, fmt.Errorf("cannot create the dashboard: %w", err)
		}
	}
	if r.Detect || r.Web {
		n.exp = export.New(cfg.Export, n.metrics)
	}
	n.live.dropped = n.metrics.NewCounter(`herd_node_live_inputs_dropped_total`)
	n.dec = bus.NewDecoder(bus.Handlers{
		Window:     n.liveWindow,
		Verdict:    n.liveVerdict,
		Deployment: n.liveDeployment,
	}, n.metrics)
	if err := n.newHTTP(); err != nil {
		return nil, err
	}
	return n, nil
}

// connect starts the embedded server when no external one is configured, connects, and
// ensures the history stream for the roles that replay it.
func (n *Node) connect() error {
	cfg := n.cfg
	client, own := cfg.NATS, []nats.Option(nil)
	if client.URLs == "" {
		var err error
		if client.URLs, own, err = n.startEmbedded(); err != nil {
			return err
		}
	}
	nc, err := bus.Connect(client, cfg.Name, n.metrics, n.logger, own...)
	if err != nil {
		return err
	}
	n.nc = nc
	n.pub = bus.NewPublisher(nc, n.metrics, n.logger)
	if n.js, err = jetstream.New(nc); err != nil {
		return fmt.Errorf("cannot use JetStream: %w", err)
	}
	if cfg.Roles.Detect || cfg.Roles.Web {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.history, err = bus.EnsureHistory(ctx, n.js, bus.HistoryConfig{MaxAge: cfg.Retention, MaxBytes: cfg.RetentionBytes, Replicas: cfg.Replicas}, n.metrics)
		if err != nil {
			n.logger.Warn("no history stream: a restart starts without windows and verdicts", "err", err)
		} else if err := n.pub.AckHistory(); err != nil {
			return err
		}
	}
	return nil
}

// startEmbedded starts the embedded server and returns the URL and options of the node's own
// connection to it. The server starts without its client listener, and the node connects in
// process: Run opens the listener only once the intake has subscribed, so that an agent that
// reconnects the moment the port opens (after a restart, with a buffer of batches) never
// publishes into a server nobody has subscribed on yet. Without TLS, Run then moves the
// intake to a loopback TCP connection of its own (see handover): an in-process connection is
// a synchronous pipe, which carried about 30 % fewer messages a second into one subscriber
// than TCP on the 2-core machine, and the intake is that subscriber. With authentication
// on, the node authenticates with an nkey made here with every permission, whose seed never
// leaves this process; the identities of the auth file are for other processes.
func (n *Node) startEmbedded() (string, []nats.Option, error) {
	cfg := n.cfg
	host, port, _ := net.SplitHostPort(cfg.NATSListen)
	p := -1
	if port != "0" {
		fmt.Sscan(port, &p)
	}
	sec := cfg.Embedded
	if err := sec.Validate(); err != nil {
		return "", nil, err
	}
	var own []nats.Option
	if sec.Auth != nil {
		pub, opt, err := embednats.NewNKeyIdentity()
		if err != nil {
			return "", nil, err
		}
		a := *sec.Auth
		a.InternalNKeys = append(slices.Clip(a.InternalNKeys), pub)
		sec.Auth = &a
		own = append(own, opt)
	}
	ns, err := embednats.Start(embednats.Config{Host: host, Port: p, JetStream: true, StoreDir: cfg.DataDir, Security: sec,
		DeferListen: true, MaxPending: EmbeddedMaxPending})
	if err != nil {
		return "", nil, err
	}
	n.ns = ns
	n.metrics.NewGauge("herd_embedded_nats_slow_consumer_cuts", func() float64 { return float64(ns.NumSlowConsumers()) })
	// The embedded server routes agent batches to partition subjects like a cluster does, so
	// that `herd rollup` workers can share the work (`herd serve --roles detect,web`), and the
	// local intake takes every partition. With the ingest role and no authentication, the
	// intake takes herd.in.> itself instead: the mapping would cost the server about a sixth
	// of its CPU at 50,000 instances for nothing. (With authentication, the agents' account
	// maps and exports partition subjects: see embednats.Security.)
	if !n.cfg.Roles.Ingest || sec.Auth != nil {
		if err := embednats.ApplyMapping(ns); err != nil {
			return "", nil, err
		}
		if n.cfg.Intake.Subject == proto.SubjectInAll && n.cfg.Intake.Prefix == proto.PrefixIn {
			n.cfg.Intake.Subject, n.cfg.Intake.Prefix = proto.SubjectPartitionAll, proto.PrefixPartition+"*."
		}
	}
	if sec.TLS == (embednats.TLS{}) {
		// The intake's loopback connection, opened after the listener; with TLS the intake
		// stays in process (a TCP client would need the CA and a client certificate).
		n.intakeOpts = slices.Clip(own)
		n.cfg.Intake.Queue = "herd-intake." + ns.ID()
	}
	// No URL: in process (a tls:// one would make the client start the handshake that
	// in-process connections skip).
	return "", append(own, nats.InProcessServer(ns)), nil
}

func (n *Node) newIngest() (err error) {
	if n.roll, err = rollup.New(n.cfg.Rollup, rollup.NewMetrics(n.metrics), n.emit, n.logger.With("component", "rollup")); err != nil {
		return fmt.Errorf("cannot create rollup: %w", err)
	}
	n.intakeM = ingest.NewIntakeMetrics(n.metrics)
	if n.intake, err = ingest.NewIntake(n.cfg.Intake, n.intakeM, n.nc, n.roll.Add, n.logger.With("component", "intake")); err != nil {
		return fmt.Errorf("cannot create intake: %w", err)
	}
	return n.newOTLP()
}

// policySignals returns the signal definitions the policy file pins, for the dashboard to
// read what the detector reads (nil without a policy file: every profile is detected).
func policySignals(cfg *Config) (func(string) *signals.Definition, error) {
	if cfg.Detect.PolicyFile == "" {
		return nil, nil
	}
	pol, err := alert.LoadPolicy(cfg.Detect.PolicyFile, &cfg.Detect)
	if err != nil {
		return nil, fmt.Errorf("-detect.policy: %w", err)
	}
	dc := cfg.Detect
	return func(service string) *signals.Definition { return pol.Signals(&dc, service) }, nil
}

func (n *Node) newDetect() (err error) {
	if n.det, err = alert.New(n.cfg.Detect, n.metrics, n.decided, n.logger.With("component", "detect")); err != nil {
		return fmt.Errorf("cannot create detector: %w", err)
	}
	store, err := n.openStore()
	if err != nil {
		return err
	}
	if n.dl, err = deliver.New(n.cfg.Deliver, n.metrics, store, n.logger.With("component", "deliver")); err != nil {
		return fmt.Errorf("cannot create delivery: %w", err)
	}
	return nil
}

// openStore opens the decision store: JetStream KV in the NATS herd uses, or, when that
// NATS has no JetStream at all, a file store under the data directory. When JetStream is
// there but the bucket cannot be opened (a full disk, a cluster without a leader for too
// long), it fails rather than start on an empty file store that would hide the stored
// decisions.
func (n *Node) openStore() (deliver.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var kv *deliver.KVStore
	err := jsretry.Do(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		var err error
		kv, err = deliver.OpenKVStore(ctx, n.js, 7*24*time.Hour)
		return bus.NoJetStream(ctx, n.js, err)
	}, nil)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return nil, fmt.Errorf("cannot open the decision store in JetStream (not falling back to a file, which would hide the stored decisions): %w", err)
	}
	n.logger.Warn("no JetStream for decisions; keeping them in a file", "dir", n.cfg.DataDir, "err", err)
	st, err := deliver.NewFileStore(filepath.Join(n.cfg.DataDir, "decisions"))
	if err != nil {
		return nil, fmt.Errorf("cannot open the decision store: %w", err)
	}
	return st, nil
}

// NATSURL is the client URL of the NATS server the node uses (credentials redacted). The
// embedded server's listener opens during Run, before the node is ready (see Ready): until
// then NATSURL is "".
func (n *Node) NATSURL() string {
	if n.ns != nil {
		if !embednats.Listening(n.ns) {
			return ""
		}
		return n.ns.ClientURL()
	}
	return bus.RedactURLs(n.cfg.NATS.URLs)
}

// MonitorURL is the base URL of the embedded nats-server's monitoring listener, or "" without
// one.
func (n *Node) MonitorURL() string {
	if n.ns == nil {
		return ""
	}
	if a := n.ns.MonitorAddr(); a != nil {
		return "http://" + a.String()
	}
	return ""
}

// HTTPURL is the base URL of the HTTP listener, or "" without one.
func (n *Node) HTTPURL() string {
	if n.httpLn == nil {
		return ""
	}
	return "http://" + n.httpLn.Addr().String()
}

// OpsURL is the base URL of the operations listener (Config.MetricsListen), or "" without
// one.
func (n *Node) OpsURL() string {
	if n.opsLn == nil {
		return ""
	}
	return "http://" + n.opsLn.Addr().String()
}

// Metrics returns the set every family of the node is registered in.
func (n *Node) Metrics() *metrics.Set { return n.metrics }

// Delivery returns the rollback delivery, or nil without the detect role.
func (n *Node) Delivery() *deliver.Deliverer { return n.dl }

// Detector returns the detector, or nil without the detect role.
func (n *Node) Detector() *alert.Detector { return n.det }

// Rollup returns the rollup of the ingest role, or nil.
func (n *Node) Rollup() *rollup.Rollup { return n.roll }

// Export returns the exporter of /metrics/groups, or nil without the detect and web roles.
func (n *Node) Export() *export.Exporter { return n.exp }

// Intake returns the intake of the ingest role, or nil.
func (n *Node) Intake() *ingest.Intake { return n.intake }

// Ready is closed once the node is ready (what /readyz reports): its listeners are open, the
// history is replayed and inputs flow. It is never closed if Run fails before.
func (n *Node) Ready() <-chan struct{} { return n.readyc }

func (n *Node) closeNATS() {
	if n.intakeNC != nil && !n.intakeNC.IsClosed() {
		n.intakeNC.Close()
	}
	if n.nc != nil && !n.nc.IsClosed() {
		n.nc.Close()
	}
	if n.ns != nil {
		embednats.Shutdown(n.ns)
	}
}

// nodeHelp is the # HELP text of the node's own families.
// EmbeddedMaxPending bounds what the embedded nats-server buffers for one client before it
// cuts the client as a slow consumer: 256 MiB, where the server's default is 64 MiB. serve's
// own intake connection takes every agent's batches (about 30 MB/s from 50,000 instances), so
// 64 MiB is two seconds of a starved intake; a cut loses what was in flight and is counted in
// herd_embedded_nats_slow_consumer_cuts.
const EmbeddedMaxPending = 256 << 20

var nodeHelp = map[string]string{
	"herd_embedded_nats_slow_consumer_cuts": "Connections the embedded nats-server cut because they read slower than it had to send (over EmbeddedMaxPending behind); their messages in flight are lost.",
	"herd_node_deployments_refused_total":   "Deployment announcements the local detector refused.",
	"herd_node_replay_errors_total":         "Replayed decisions (decide) and deployments (announce) the detector or delivery refused at start.",
	"herd_node_live_inputs_dropped_total":   "Live windows, verdicts and deployments dropped while the history was replayed (over the bound of inputs held).",
}
