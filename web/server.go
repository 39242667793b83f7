package web

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Reasons an input is refused (label reason of herd_web_inputs_refused_total).
const (
	ReasonHubFull   = "hub_full"   // the hub's input queue was full
	ReasonBadInput  = "bad_input"  // a window, verdict or deployment that fails its schema (see checkVerdict)
	ReasonStale     = "stale"      // a window not newer than the group's last one
	ReasonMaxGroups = "max_groups" // the group would exceed Config.MaxGroups, and no group is idle
	// ReasonTooManyVersions: the group would exceed its service's
	// Config.MaxVersionsPerService, and no group of the service is idle.
	ReasonTooManyVersions = "too_many_versions"
	ReasonNotRunning      = "not_running" // Run has returned
	// ReasonBadDecision counts decisions left out of the decisions page because they fail
	// their schema, each time a listing leaves one out.
	ReasonBadDecision = "bad_decision"
)

// Reasons a websocket client is refused or dropped.
const (
	ReasonLimit        = "limit"        // refused: Config.MaxClients reached
	ReasonTokenLimit   = "token_limit"  // refused: Config.MaxClientsPerToken of the caller's token (or address) reached
	ReasonUnauthorized = "unauthorized" // refused: missing or wrong token
	ReasonBadRequest   = "bad_request"  // refused: bad query parameters or upgrade
	ReasonSlow         = "slow"         // dropped: a write exceeded Config.WriteTimeout
	ReasonPingTimeout  = "ping_timeout" // dropped: nothing read for 2×Config.PingInterval
	ReasonShutdown     = "shutdown"     // dropped: the server is stopping
)

var (
	inputReasons   = []string{ReasonHubFull, ReasonBadInput, ReasonStale, ReasonMaxGroups, ReasonTooManyVersions, ReasonNotRunning, ReasonBadDecision}
	refuseReasons  = []string{ReasonLimit, ReasonTokenLimit, ReasonUnauthorized, ReasonBadRequest}
	droppedReasons = []string{ReasonSlow, ReasonPingTimeout, ReasonShutdown}
)

// inputQueue bounds the hub's input channel: at 250 ms windows it holds a few seconds of
// 1000 groups.
const inputQueue = 8192

// input is one item for the hub; exactly one field is set.
type input struct {
	w  *proto.Window
	v  *proto.Verdict
	d  *proto.Deployment
	dl *deliveryUpdate
}

// Server is herd's web component: state for the API, the websocket hub and the dashboard.
//
// AddWindow, SetVerdict and AddDeployment are safe for concurrent use and never block. Run
// owns the hub goroutine; Handler may serve before Run starts (clients see an empty state).
type Server struct {
	// windowMs is the width of the latest window applied (see window).
	windowMs atomic.Int64
	cfg      Config
	logger   *slog.Logger
	in       chan input
	guard    *Guard

	decisions atomic.Pointer[func() []proto.Decision]
	lookup    atomic.Pointer[func(id string) (proto.Decision, bool)]
	announce  atomic.Pointer[func(proto.Deployment) error]

	// mu guards the fields below. The hub holds it for writing while it applies and fans out
	// one event, so that a snapshot taken under it is consistent with the sequence number.
	mu       sync.RWMutex
	services map[string]*service
	ngroups  int
	lru      list.List // every group (values *group), most recently active first (see admit.go)
	seq      uint64
	replay   replayRing
	clients  map[*client]struct{}
	stopped  bool
	vals     signals.Values // scratch of summarize

	nclients atomic.Int64
	connWG   sync.WaitGroup // the writer goroutines of websocket connections

	slotsMu sync.Mutex     // Guards slots.
	slots   map[string]int // websocket clients by caller (see callerOf)

	m serverMetrics

	graph *flowGraph // the live dependency graph (graph.go); its own lock
}

// serverMetrics are the Server's self-metrics, all in one Set.
type serverMetrics struct {
	set            *metrics.Set
	inputs         map[string]*metrics.Counter // by type
	inputsRefused  map[string]*metrics.Counter
	refused        map[string]*metrics.Counter
	dropped        map[string]*metrics.Counter
	connects       *metrics.Counter
	disconnects    *metrics.Counter
	resyncs        *metrics.Counter
	coalesced      *metrics.Counter
	verdictUpdates *metrics.Counter
	resumes        *metrics.Counter
	resets         *metrics.Counter
	framesSent     *metrics.Counter
	bytesSent      *metrics.Counter
	badMessages    *metrics.Counter
	windowDelay    *metrics.PrometheusHistogram
	groupsEvicted  map[string]*metrics.Counter // by reason
}

// windowDelayBuckets are the upper bounds of herd_web_window_delay_seconds: windows close
// half a second or so after their end, and herd aims to show them within 1 s.
var windowDelayBuckets = []float64{0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30}

// serverHelp describes the Server's families.
var serverHelp = map[string]string{
	"herd_web_clients":                       "Websocket clients connected.",
	"herd_web_clients_connected_total":       "Websocket clients that connected.",
	"herd_web_clients_disconnected_total":    "Websocket clients that disconnected, for whatever reason.",
	"herd_web_clients_refused_total":         "Websocket connections refused, by reason: limit, token_limit, unauthorized or bad_request.",
	"herd_web_clients_dropped_total":         "Websocket clients dropped by the server, by reason: slow, ping_timeout or shutdown.",
	"herd_web_client_snapshots_total":        "Snapshots sent to websocket clients (on connect, subscribe or resync).",
	"herd_web_client_events_coalesced_total": "Events not sent one by one because a client's queue was full: the next snapshot carries them.",
	"herd_web_verdict_updates_total":         "Verdict updates (live evidence, watch ends) that replaced the verdict they update instead of adding to the history.",
	"herd_web_client_resumes_total":          "Websocket clients that resumed from a sequence number with the events they missed.",
	"herd_web_client_resets_total":           "Websocket clients that asked to resume but got a snapshot: the events were no longer kept.",
	"herd_web_client_messages_refused_total": "Messages from websocket clients ignored, by reason: bad_message.",
	"herd_web_frames_sent_total":             "Websocket frames sent to clients.",
	"herd_web_bytes_sent_total":              "Bytes of websocket frames sent to clients.",
	"herd_web_inputs_total":                  "Inputs the dashboard's hub applied, by type: window, verdict or deployment.",
	"herd_web_inputs_refused_total":          "Inputs the dashboard's hub refused, by reason: hub_full, bad_input, stale, max_groups (the table is full and no group is idle), too_many_versions (the service has its quota of groups and none is idle) or not_running; bad_decision counts decisions a listing left out.",
	"herd_web_input_queue_length":            "Inputs waiting in the hub's queue.",
	"herd_web_window_delay_seconds":          "Seconds from a window's end until the hub fanned it out to clients.",
	"herd_web_groups":                        "Service groups (service and version) the dashboard holds.",
	"herd_web_groups_evicted_total":          "Service groups the dashboard forgot, by reason: expired (no window for longer than its history) or idle (no window with instances for 2 s, to make room for a new group).",
}

// New returns a Server for cfg. It starts nothing. Its self-metrics (herd_web_*) go into
// set, which the caller owns and exposes (nil: a private Set); a Set holds one Server's
// metrics.
func New(cfg Config, set *metrics.Set, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create web server: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		logger:   logger,
		in:       make(chan input, inputQueue),
		services: make(map[string]*service),
		clients:  make(map[*client]struct{}),
		slots:    make(map[string]int),
		replay:   replayRing{max: maxReplayEvents, age: cfg.Replay},
	}
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(serverHelp)
	s.m = serverMetrics{
		set:            set,
		inputs:         map[string]*metrics.Counter{},
		inputsRefused:  map[string]*metrics.Counter{},
		refused:        map[string]*metrics.Counter{},
		dropped:        map[string]*metrics.Counter{},
		connects:       set.NewCounter("herd_web_clients_connected_total"),
		disconnects:    set.NewCounter("herd_web_clients_disconnected_total"),
		resyncs:        set.NewCounter("herd_web_client_snapshots_total"),
		coalesced:      set.NewCounter("herd_web_client_events_coalesced_total"),
		verdictUpdates: set.NewCounter("herd_web_verdict_updates_total"),
		resumes:        set.NewCounter("herd_web_client_resumes_total"),
		resets:         set.NewCounter("herd_web_client_resets_total"),
		framesSent:     set.NewCounter("herd_web_frames_sent_total"),
		bytesSent:      set.NewCounter("herd_web_bytes_sent_total"),
		badMessages:    set.NewCounter(`herd_web_client_messages_refused_total{reason="bad_message"}`),
		windowDelay:    set.NewPrometheusHistogramExt("herd_web_window_delay_seconds", windowDelayBuckets),
		groupsEvicted:  map[string]*metrics.Counter{},
	}
	for _, t := range []string{"window", "verdict", "deployment"} {
		s.m.inputs[t] = set.NewCounter(`herd_web_inputs_total{type="` + t + `"}`)
	}
	for _, r := range inputReasons {
		s.m.inputsRefused[r] = set.NewCounter(`herd_web_inputs_refused_total{reason="` + r + `"}`)
	}
	for _, r := range []string{groupExpired, groupIdle} {
		s.m.groupsEvicted[r] = set.NewCounter(`herd_web_groups_evicted_total{reason="` + r + `"}`)
	}
	for _, r := range refuseReasons {
		s.m.refused[r] = set.NewCounter(`herd_web_clients_refused_total{reason="` + r + `"}`)
	}
	for _, r := range droppedReasons {
		s.m.dropped[r] = set.NewCounter(`herd_web_clients_dropped_total{reason="` + r + `"}`)
	}
	s.guard = NewGuard(cfg.HTTP, set)
	s.graph = newFlowGraph(set) // the dependency graph (graph.go)
	s.guard.onRefuse = func(r *http.Request, reason string) {
		if reason == ReasonUnauthorized && strings.HasSuffix(r.URL.Path, "/stream") {
			s.m.refused[ReasonUnauthorized].Inc()
		}
	}
	set.NewGauge("herd_web_clients", func() float64 { return float64(s.nclients.Load()) })
	set.NewGauge("herd_web_groups", func() float64 {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return float64(s.ngroups)
	})
	set.NewGauge("herd_web_input_queue_length", func() float64 { return float64(len(s.in)) })
	return s, nil
}

// SetDecisions sets the function listing decisions with their delivery logs, newest first,
// for the dashboard's decisions page. It must be safe for concurrent use.
func (s *Server) SetDecisions(f func() []proto.Decision) { s.decisions.Store(&f) }

// SetAnnounce enables POST /api/v1/deployments: f receives each valid announcement (and
// passes it to the detector). Without it the API is read-only and the route answers 403.
// The Server does not record the posted deployment itself; the caller calls AddDeployment
// for every deployment it sees, however announced.
func (s *Server) SetAnnounce(f func(proto.Deployment) error) { s.announce.Store(&f) }

// AddWindow hands a closed window to the hub. w is read-only and may be kept. It never
// blocks: when the hub's queue is full the window is refused and counted. A window that
// fails its schema (see checkWindow) is refused and counted as bad_input.
func (s *Server) AddWindow(w *proto.Window) {
	if w == nil {
		s.m.inputsRefused[ReasonBadInput].Inc()
		return
	}
	if s.refuseBad(checkWindow(w)) {
		return
	}
	s.enqueue(input{w: w})
}

// SetVerdict hands a verdict change to the hub. It never blocks. A verdict that fails its
// schema (known state, valid tokens, finite numbers, bounded text; see checkVerdict) is
// refused and counted as bad_input.
func (s *Server) SetVerdict(v proto.Verdict) {
	if s.refuseBad(checkVerdict(&v)) {
		return
	}
	s.enqueue(input{v: &v})
}

// AddDeployment hands a deploy announcement to the hub. It never blocks. An invalid one is
// refused and counted as bad_input.
func (s *Server) AddDeployment(d proto.Deployment) {
	if s.refuseBad(checkDeployment(&d)) {
		return
	}
	if d.UnixMs == 0 {
		d.UnixMs = time.Now().UnixMilli()
	}
	s.enqueue(input{d: &d})
}

// refuseBad counts err, if any, as a bad input and reports whether there was one. It does
// not log: a flood of bad input must not flood the log.
func (s *Server) refuseBad(err error) bool {
	if err == nil {
		return false
	}
	s.m.inputsRefused[ReasonBadInput].Inc()
	return true
}

func (s *Server) enqueue(in input) {
	select {
	case s.in <- in:
	default:
		s.m.inputsRefused[ReasonHubFull].Inc()
	}
}

// pruneInterval is how often the hub forgets groups without windows for Config.History.
const pruneInterval = 5 * time.Second

// Run runs the hub until ctx is done, then drops every websocket client and waits for
// their goroutines. It returns nil after a cancellation.
func (s *Server) Run(ctx context.Context) error {
	s.logger.Info("web hub started", "history", s.cfg.History, "max_clients", s.cfg.MaxClients)
	prune := time.NewTicker(pruneInterval)
	defer prune.Stop()
	stopPoller := s.runPoller(ctx)
	defer stopPoller()
	for {
		select {
		case <-ctx.Done():
			stopPoller()
			s.shutdown()
			s.logger.Info("web hub stopped")
			if errors.Is(ctx.Err(), context.Canceled) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil
			}
			return ctx.Err()
		case in := <-s.in:
			s.apply(in)
		case now := <-prune.C:
			s.prune(now)
		}
	}
}

// shutdown refuses new clients, closes the existing ones and waits for their writers.
func (s *Server) shutdown() {
	s.mu.Lock()
	s.stopped = true
	cs := make([]*client, 0, len(s.clients))
	for c := range s.clients {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.close(ReasonShutdown)
	}
	s.connWG.Wait()
	// Count what arrives after Run: nobody will apply it.
	for {
		select {
		case <-s.in:
			s.m.inputsRefused[ReasonNotRunning].Inc()
		default:
			return
		}
	}
}

// apply enters one input into the state and fans it out.
func (s *Server) apply(in input) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case in.w != nil:
		s.m.inputs["window"].Inc()
		s.applyWindowLocked(in.w, now)
	case in.v != nil:
		s.m.inputs["verdict"].Inc()
		s.applyVerdictLocked(*in.v, now)
	case in.d != nil:
		s.m.inputs["deployment"].Inc()
		d := *in.d
		sv := s.serviceLocked(d.Service)
		sv.deployments = appendBounded(sv.deployments, d, maxDeployments)
		s.publishLocked(d.Service, now, encodeDeploymentEvent(s.seq+1, &d))
	case in.dl != nil:
		s.applyDeliveryLocked(*in.dl, now)
	}
}

func appendBounded[T any](xs []T, x T, n int) []T {
	if len(xs) >= n {
		xs = append(xs[:0], xs[len(xs)-n+1:]...)
	}
	return append(xs, x)
}

// serviceLocked returns the named service, creating it.
func (s *Server) serviceLocked(name string) *service {
	sv := s.services[name]
	if sv == nil {
		sv = &service{name: name, groups: map[string]*group{}}
		if s.cfg.Signals != nil {
			sv.choice = signals.NewChoice(s.cfg.Signals(name))
		}
		s.services[name] = sv
	}
	return sv
}

// defaultWindow is the window length assumed until the first window arrives.
const defaultWindow = 250 * time.Millisecond

// window returns the length of the windows the server receives: the width of the latest
// one (the rollup's window length is configured there, once), or defaultWindow before any.
func (s *Server) window() time.Duration {
	if ms := s.windowMs.Load(); ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return defaultWindow
}

// ringSize is the number of points a group's ring holds: History over the width of its
// first window (at least 1 ms), at most maxRing.
func ringSize(history time.Duration, w *proto.Window) int {
	width := max(time.Duration(w.EndMs-w.StartMs)*time.Millisecond, time.Millisecond)
	return int(min(max(history/width, 1), maxRing))
}

// maxRing bounds one group's ring (points of 72 bytes).
const maxRing = 1 << 20

func (s *Server) applyWindowLocked(w *proto.Window, now time.Time) {
	s.windowMs.Store(w.EndMs - w.StartMs)
	sv := s.services[w.Service]
	var g *group
	if sv != nil {
		g = sv.groups[w.Version]
	}
	if g == nil {
		if g = s.admitLocked(w, now); g == nil {
			return
		}
	}
	if last := g.ring.last(); last != nil && w.EndMs <= last.EndMs {
		s.m.inputsRefused[ReasonStale].Inc()
		return
	}
	if w.Instances > 0 {
		s.touchLocked(g, now)
	}
	sv = g.sv
	if was := sv.choice.Definition().Profile; sv.choice.Observe(w.Series) && sv.choice.Definition().Profile != was {
		// Pages learn the new profile before the first window read with it. (Herd's own
		// names, read until a profile is detected, need no event or log line when detected.)
		s.logger.Info("signals", "service", sv.name, "profile", sv.choice.Definition().Profile,
			"definition", sv.choice.Definition().String())
		s.publishLocked(w.Service, now, encodeSignalsEvent(s.seq+1, sv))
	}
	p := s.summarize(sv, w)
	s.graph.addWindow(w, p.Requests, p.Errors)
	g.ring.add(p)
	g.latest = w
	s.m.windowDelay.Update(float64(now.UnixMilli()-w.EndMs) / 1000)
	s.publishLocked(w.Service, now, encodeWindowEvent(s.seq+1, w.Service, w.Version, &p))
}

// publishLocked assigns the next sequence number to an encoded event (which already
// carries it), keeps it for replay and queues it for every client watching service.
func (s *Server) publishLocked(service string, now time.Time, data []byte) {
	s.seq++
	s.replay.add(event{seq: s.seq, service: service, at: now, data: data}, now)
	for c := range s.clients {
		if c.service == "" || c.service == service {
			c.push(data)
		}
	}
}

// prune forgets groups whose newest window ended more than Config.History ago, and
// services left with no groups, verdicts or deployments in that time.
func (s *Server) prune(now time.Time) {
	cutoff := now.Add(-s.cfg.History).UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, sv := range s.services {
		for _, g := range sv.groups {
			if last := g.ring.last(); last == nil || last.EndMs < cutoff {
				s.dropGroupLocked(g, groupExpired)
			}
		}
		recent := false
		if n := len(sv.verdicts); n > 0 && sv.verdicts[n-1].UnixMs >= cutoff {
			recent = true
		}
		if n := len(sv.deployments); n > 0 && sv.deployments[n-1].UnixMs >= cutoff {
			recent = true
		}
		if len(sv.groups) == 0 && !recent {
			delete(s.services, name)
		}
	}
	s.replay.expire(now)
}

// Restore hands history replayed at start-up (a window, a verdict or a deployment; the
// others nil) to the hub. Unlike AddWindow it waits for room in the hub's queue, so a
// restarted node gets its whole history back; it returns ctx's error if ctx ends first.
// What fails its schema is refused and counted, as by AddWindow, SetVerdict and
// AddDeployment: the history stream is no more trusted than the live subjects.
func (s *Server) Restore(ctx context.Context, w *proto.Window, v *proto.Verdict, d *proto.Deployment) error {
	var in input
	switch {
	case w != nil:
		if s.refuseBad(checkWindow(w)) {
			return nil
		}
		in.w = w
	case v != nil:
		if s.refuseBad(checkVerdict(v)) {
			return nil
		}
		vv := *v
		in.v = &vv
	case d != nil:
		if s.refuseBad(checkDeployment(d)) {
			return nil
		}
		dd := *d
		in.d = &dd
	default:
		return nil
	}
	select {
	case s.in <- in:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
