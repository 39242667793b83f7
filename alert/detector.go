// Package alert is herd's detector: per service it compares canary groups (new versions)
// with their baseline group (the version they replace) on closed rollup windows, using
// anytime-valid sequential tests (mixture e-processes on conditional-binomial counts), and
// reports every verdict change (pending, pass, rollback, inconclusive) with its evidence.
//
// Rollback delivery lives in the subpackage alert/deliver. See docs/detector.md for the
// method, the settings and measured figures.
package alert

import (
	"container/list"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Retention of idle state.
const (
	// groupIdle is how long a group that sends no window is remembered.
	groupIdle = 10 * time.Minute
	// finalRetention is how long a final verdict stays in Verdicts.
	finalRetention = time.Hour
	// activeWithin: a version is a baseline candidate only if it reported this recently.
	activeWithin = 10 * time.Second
	// refSpan is the span of each half of a group's reference latency histogram.
	refSpanMs = 30_000
	// maxGuardWindows bounds the windows the error-ceiling guard sums (1 s of windows).
	maxGuardWindows = 16
	// tickInterval is how often Run applies the time-based rules (Tick). None of them needs
	// finer timing; the window-driven guards run on every window.
	tickInterval = 100 * time.Millisecond
	// liveDecay is the weight a group's live request count keeps per live window (a decay
	// over about 16 windows that carried traffic, whatever happened between them).
	liveDecay = 15.0 / 16
)

// Detector compares canaries with baselines. It is safe for concurrent use. OnVerdict is
// called without the Detector's lock held, in order, from the goroutine whose call
// (AddWindow, Announce, Tick) caused the change; it must not call AddWindow, Announce or Tick
// (Verdicts is fine).
type Detector struct {
	cfg       Config
	policy    *Policy
	onVerdict func(proto.Verdict)
	logger    *slog.Logger
	set       *metrics.Set // the caller's; the detector registers its families in it
	m         detectorMetrics

	// emitMu orders OnVerdict calls; it is taken before mu is released.
	emitMu sync.Mutex

	// mu guards the fields below.
	mu       sync.Mutex
	services map[string]*service
	groups   int
	// lru holds every group (values *group), most recently active first (see admit.go).
	lru list.List
	// Scratch for the window being added: x from Series (the guards), xw from Warm (the
	// tests, when the window carries it) and xh from Halves (the shadow A/A comparison).
	x, xw extract
	xh    [2]extract
	xb    extract // a bucket of the window (the dispersion between instances)
	out   []proto.Verdict
}

type detectorMetrics struct {
	windows, pairs, announcements         *metrics.Counter
	badWindow, outOfOrder, tooManyGroups  *metrics.Counter
	tooManyVersions                       *metrics.Counter
	groupsForgotten                       map[string]*metrics.Counter
	unpairedEvicted, unpairedOverflow     *metrics.Counter
	wrongKind                             *metrics.Counter
	warmWindows                           *metrics.Counter
	shadowNoBaseline, shadowNoHalves      *metrics.Counter
	badAnnouncement, notNewCanary         *metrics.Counter
	judgedAnnouncement                    *metrics.Counter
	pending, pass, rollback, inconclusive *metrics.Counter
	updates                               *metrics.Counter
	comparisonsActive, watching           atomic.Int64
}

// service is the detector state of one service.
type service struct {
	name   string
	set    settings
	choice signals.Choice         // the service's signals: pinned by the policy, or detected
	groups map[string]*group      // by version
	comps  map[string]*comparison // by canary version
	shadow *shadowMetrics         // created at the first shadow comparison
}

// group is one (service, version) group as the detector sees it.
type group struct {
	version                         string
	firstMs, lastStartMs, lastEndMs int64
	instances                       int
	// Reference latency histogram: cur collects since curStartMs, prev the span before.
	refCur, refPrev proto.Histogram
	refCurStartMs   int64
	// allCur and allPrev are the same reference over every instance: the fallback while the
	// warm reference is too thin (a young fleet whose instances are all warming up).
	allCur, allPrev proto.Histogram
	// The last windows' requests and errors, for the error-ceiling guard.
	recentN, recentE [maxGuardWindows]float64
	recentPos        int
	// lastLiveMs is the end of the group's newest live window (instances > 0 and requests >
	// 0), liveN its requests per live window with weight liveDecay per live window: what
	// names the service's established version, unmoved by stalls and stops.
	lastLiveMs int64
	liveN      float64
	// disp holds the group's instance-bucket statistics, from which a comparison with it as
	// baseline measures how much its instances differ (dispersion.go).
	disp dispersion
	// judged: a comparison with this group as canary reached a final verdict, so it is not
	// inferred to be a canary again (an announcement of a new deployment still restarts it).
	// The judged deployment is the one against judgedBaseline started up to judgedUntilMs.
	judged         bool
	judgedBaseline string
	judgedUntilMs  int64
	// shadow is the running A/A comparison of the group's two halves while it is the
	// baseline of a comparison (see shadow.go); nil otherwise.
	shadow *comparison
	// Admission (see admit.go): the group's service, the wall clock (unix ms) when it was
	// created or a window with instances last arrived, how many such windows arrived (up
	// to 2), and its element of Detector.lru.
	svc      *service
	activeAt int64
	live     int
	inAll    *list.Element
}

// extract holds the role values of one window.
type extract struct {
	requests, errors float64
	hasLatency       bool
	latency          proto.Histogram
}

// New returns a Detector. It reads the policy file named by cfg.PolicyFile; it starts nothing.
// Its self-metrics (herd_detector_*) go into set, which the caller owns and exposes (nil: a
// private Set); a Set holds one Detector's metrics. onVerdict receives every verdict change;
// logger may be nil.
func New(cfg Config, set *metrics.Set, onVerdict func(proto.Verdict), logger *slog.Logger) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create detector: %w", err)
	}
	var pol *Policy
	if cfg.PolicyFile != "" {
		p, err := LoadPolicy(cfg.PolicyFile, &cfg)
		if err != nil {
			return nil, fmt.Errorf("cannot create detector: %w", err)
		}
		pol = p
	}
	return newDetector(cfg, set, pol, onVerdict, logger), nil
}

// NewWithPolicy is New with a policy already parsed (nil for none); cfg.PolicyFile is ignored.
func NewWithPolicy(cfg Config, set *metrics.Set, pol *Policy, onVerdict func(proto.Verdict), logger *slog.Logger) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create detector: %w", err)
	}
	return newDetector(cfg, set, pol, onVerdict, logger), nil
}

// detectorHelp describes the detector's families.
var detectorHelp = map[string]string{
	"herd_detector_windows_total":      "Closed rollup windows the detector received.",
	"herd_detector_window_pairs_total": "Canary and baseline windows of the same interval the detector compared.",
	"herd_detector_windows_dropped_total": "Windows the detector dropped, by reason: bad_window (invalid group or interval), " +
		"out_of_order (not after the group's last window), too_many_groups (the table is full and no group is idle and " +
		"uncompared) or too_many_versions (the service has its quota of groups and none is idle and uncompared).",
	"herd_detector_groups": "Groups (service and version) the detector holds.",
	"herd_detector_groups_forgotten_total": "Groups the detector forgot, by reason: expired (no window for 10 minutes) or " +
		"evicted (idle and not compared, to make room for a new group).",
	"herd_detector_windows_unpaired_total": "Windows whose partner window never came, by reason: partner_missing (evicted " +
		"after a later pair) or overflow (too many waiting).",
	"herd_detector_series_skipped_total": "Series a policy selector matched but could not read, by reason: wrong_kind.",
	"herd_detector_warm_windows_total":   "Windows whose tests read the warm instances only (the rollup split the selected series).",
	"herd_detector_announcements_total":  "Deployment announcements the detector received.",
	"herd_detector_announcements_rejected_total": "Deployment announcements the detector refused, by reason: invalid, or " +
		"not_new (the canary named is the service's established version or the baseline of a running comparison).",
	"herd_detector_announcements_repeated_total": "Announcements of a deployment the detector judged already; its decision stands.",
	"herd_detector_verdicts_total":               "Verdict changes the detector published, by state: pending, pass, rollback or inconclusive.",
	"herd_detector_comparisons_active":           "Canary comparisons running (not yet final).",
	"herd_detector_comparisons_watching":         "Passed canaries whose comparison keeps watching them (promoted, watching).",
	"herd_detector_verdict_updates_total":        "Verdicts republished without a state change: live evidence of pending and watching comparisons, and watch ends.",
	"herd_detector_shadow_comparisons_total":     "Shadow A/A comparisons (a baseline's two halves) that concluded, by service.",
	"herd_detector_shadow_rollbacks_total":       "Shadow A/A comparisons that rolled back, by service: each is a false alarm.",
	"herd_detector_shadow_rollback_ratio":        "Shadow A/A rollbacks per concluded shadow comparison, by service: the observed false-rollback rate.",
	"herd_detector_shadow_abandoned_total":       "Shadow A/A comparisons abandoned unconcluded, by reason: not_baseline or no_halves.",
}

func newDetector(cfg Config, set *metrics.Set, pol *Policy, onVerdict func(proto.Verdict), logger *slog.Logger) *Detector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if onVerdict == nil {
		onVerdict = func(proto.Verdict) {}
	}
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(detectorHelp)
	d := &Detector{
		cfg: cfg, policy: pol, onVerdict: onVerdict,
		logger:   logger.With("component", "detector"),
		set:      set,
		services: map[string]*service{},
	}
	s := d.set
	d.m = detectorMetrics{
		windows:            s.NewCounter("herd_detector_windows_total"),
		pairs:              s.NewCounter("herd_detector_window_pairs_total"),
		announcements:      s.NewCounter("herd_detector_announcements_total"),
		badWindow:          s.NewCounter(`herd_detector_windows_dropped_total{reason="bad_window"}`),
		outOfOrder:         s.NewCounter(`herd_detector_windows_dropped_total{reason="out_of_order"}`),
		tooManyGroups:      s.NewCounter(`herd_detector_windows_dropped_total{reason="too_many_groups"}`),
		tooManyVersions:    s.NewCounter(`herd_detector_windows_dropped_total{reason="too_many_versions"}`),
		groupsForgotten:    map[string]*metrics.Counter{},
		unpairedEvicted:    s.NewCounter(`herd_detector_windows_unpaired_total{reason="partner_missing"}`),
		unpairedOverflow:   s.NewCounter(`herd_detector_windows_unpaired_total{reason="overflow"}`),
		wrongKind:          s.NewCounter(`herd_detector_series_skipped_total{reason="wrong_kind"}`),
		warmWindows:        s.NewCounter("herd_detector_warm_windows_total"),
		shadowNoBaseline:   s.NewCounter(`herd_detector_shadow_abandoned_total{reason="not_baseline"}`),
		shadowNoHalves:     s.NewCounter(`herd_detector_shadow_abandoned_total{reason="no_halves"}`),
		badAnnouncement:    s.NewCounter(`herd_detector_announcements_rejected_total{reason="invalid"}`),
		notNewCanary:       s.NewCounter(`herd_detector_announcements_rejected_total{reason="not_new"}`),
		judgedAnnouncement: s.NewCounter("herd_detector_announcements_repeated_total"),
		pending:            s.NewCounter(`herd_detector_verdicts_total{state="pending"}`),
		pass:               s.NewCounter(`herd_detector_verdicts_total{state="pass"}`),
		rollback:           s.NewCounter(`herd_detector_verdicts_total{state="rollback"}`),
		inconclusive:       s.NewCounter(`herd_detector_verdicts_total{state="inconclusive"}`),
		updates:            s.NewCounter("herd_detector_verdict_updates_total"),
	}
	s.NewGauge("herd_detector_comparisons_watching", func() float64 { return float64(d.m.watching.Load()) })
	s.NewGauge("herd_detector_comparisons_active", func() float64 { return float64(d.m.comparisonsActive.Load()) })
	for _, r := range []string{groupExpired, groupEvicted} {
		d.m.groupsForgotten[r] = s.NewCounter(`herd_detector_groups_forgotten_total{reason="` + r + `"}`)
	}
	s.NewGauge("herd_detector_groups", func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		return float64(d.groups)
	})
	return d
}

// unlockAndEmit releases mu and calls OnVerdict for the verdicts collected under it, in order.
func (d *Detector) unlockAndEmit() {
	if len(d.out) == 0 {
		d.mu.Unlock()
		return
	}
	out := d.out
	d.out = nil
	d.emitMu.Lock()
	d.mu.Unlock()
	defer d.emitMu.Unlock()
	for _, v := range out {
		d.onVerdict(v)
	}
}

// emitLocked records a verdict change.
func (d *Detector) emitLocked(v proto.Verdict) {
	if v.Update {
		d.m.updates.Inc()
		if v.Watch != nil && !v.Watch.Active {
			d.logger.Info("watch ended", "service", v.Service, "baseline", v.Baseline, "canary", v.Canary,
				"reason", v.Watch.Reason, "decision_id", v.DecisionID)
		}
		d.out = append(d.out, v)
		return
	}
	switch v.State {
	case proto.StatePending:
		d.m.pending.Inc()
	case proto.StatePass:
		d.m.pass.Inc()
	case proto.StateRollback:
		d.m.rollback.Inc()
	case proto.StateInconclusive:
		d.m.inconclusive.Inc()
	}
	if v.State != proto.StatePending {
		d.logger.Info("verdict", "service", v.Service, "baseline", v.Baseline, "canary", v.Canary,
			"state", v.State, "decision_id", v.DecisionID, "sentence", v.Sentence)
	}
	d.out = append(d.out, v)
}

// serviceLocked returns the state of a service, creating it.
func (d *Detector) serviceLocked(name string) *service {
	s := d.services[name]
	if s == nil {
		s = &service{name: name, set: settingsFor(&d.cfg, d.policy, name),
			groups: map[string]*group{}, comps: map[string]*comparison{}}
		s.choice = signals.NewChoice(s.set.signals)
		d.services[name] = s
	}
	return s
}

// Signals returns the signal definition the detector reads for service: the one its policy
// pins, else the profile detected from the service's windows so far (signals.Default before
// any, and for a service it does not know).
func (d *Detector) Signals(service string) *signals.Definition {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.services[service]; s != nil {
		return s.choice.Definition()
	}
	if d.policy != nil {
		if def := d.policy.Signals(&d.cfg, service); def != nil {
			return def
		}
	}
	return signals.Default()
}

// AddWindow feeds one closed window. It does not keep w or anything w points to.
// Windows of a group must arrive in order of StartMs; a window not after the group's last one
// is dropped and counted (reason out_of_order).
func (d *Detector) AddWindow(w *proto.Window) {
	d.m.windows.Inc()
	if w == nil || proto.ValidService(w.Service) != nil || proto.ValidVersion(w.Version) != nil || w.EndMs <= w.StartMs {
		d.m.badWindow.Inc()
		return
	}
	if w.Correction {
		return // late data of a window already taken (proto.Window.Correction): each window is decided on as it closes
	}
	now := time.Now().UnixMilli()
	d.mu.Lock()
	defer d.unlockAndEmit()
	s := d.services[w.Service]
	var g *group
	if s != nil {
		g = s.groups[w.Version]
	}
	if g == nil {
		if s, g = d.admitLocked(w, now); g == nil {
			return
		}
	} else if w.StartMs <= g.lastStartMs {
		d.m.outOfOrder.Inc()
		return
	}
	if w.Instances > 0 {
		d.touchLocked(g, now)
	}
	// The guards read every instance (x); the tests read the warm instances (tx) when the
	// rollup split the series the selectors read.
	x, tx := &d.x, &d.x
	if was := s.choice.Definition().Profile; s.choice.Observe(w.Series) && s.choice.Definition().Profile != was {
		d.logger.Info("signals", "service", s.name, "profile", s.choice.Definition().Profile,
			"definition", s.choice.Definition().String())
	}
	sig := s.choice.Definition()
	if bad := x.read(sig, w.Series); bad > 0 {
		d.m.wrongKind.Add(bad)
	}
	split := splitCovers(sig, w)
	if split {
		tx = &d.xw
		tx.read(sig, w.Warm)
		d.m.warmWindows.Inc()
	}
	g.observe(w, x, tx)
	d.inboundWindowLocked(w) // a callee's errors by caller group (edges.go)
	if c := s.comps[w.Version]; c == nil || c.final {
		// A canary being judged is no baseline: its buckets can wait.
		g.disp.observe(w, sig, &d.xb, x, tx)
	}
	if s.comps[w.Version] == nil {
		d.inferLocked(s, g, w.StartMs)
	}
	baseline := false
	for _, c := range s.comps {
		if c.final && !c.life.watching {
			continue
		}
		switch w.Version {
		case c.canary:
			d.canaryWindowLocked(s, c, w, x, tx)
		case c.baseline:
			baseline = true
			d.baselineWindowLocked(s, c, w, x, tx)
		}
	}
	switch {
	case baseline && split:
		d.shadowWindowLocked(s, g, w)
	case g.shadow != nil: // an unfinished shadow is abandoned, uncounted (see shadow.go)
		g.shadow = nil
		if baseline {
			d.m.shadowNoHalves.Inc()
		} else {
			d.m.shadowNoBaseline.Inc()
		}
	}
}

// read sets x to the signals of a window's series ss under the service's definition sig
// (latency in seconds) and returns how many selected series had the wrong kind.
func (x *extract) read(sig *signals.Definition, ss []proto.WindowSeries) (wrongKind int) {
	var b int
	x.requests, wrongKind = sig.Requests.Sum(ss)
	x.errors, b = sig.Errors.Sum(ss)
	wrongKind += b
	x.hasLatency, b = sig.Latency.Merge(ss, &x.latency)
	if x.hasLatency && sig.LatencyUnit != 1 {
		signals.ToSeconds(&x.latency, sig.LatencyUnit)
	}
	return wrongKind + b
}

// splitCovers reports whether w's Warm and Halves carry every series sig reads.
func splitCovers(sig *signals.Definition, w *proto.Window) bool {
	return w.Splits(sig.Requests.Name) && w.Splits(sig.Errors.Name) && w.Splits(sig.Latency.Name)
}

// observe updates the group's bookkeeping with a window: the guard sums from x (every
// instance) and the latency reference, which freezes the tests' thresholds, from tx (what
// the tests read).
func (g *group) observe(w *proto.Window, x, tx *extract) {
	g.lastStartMs, g.lastEndMs = w.StartMs, w.EndMs
	g.instances = w.Instances
	if w.Instances > 0 && x.requests > 0 {
		g.lastLiveMs = w.EndMs
		g.liveN = g.liveN*liveDecay + x.requests
	}
	g.recentPos = (g.recentPos + 1) % maxGuardWindows
	g.recentN[g.recentPos], g.recentE[g.recentPos] = x.requests, x.errors
	if tx.hasLatency || x.hasLatency {
		if w.StartMs-g.refCurStartMs >= refSpanMs {
			g.refPrev, g.refCur = g.refCur, g.refPrev
			g.refCur.Reset()
			g.allPrev, g.allCur = g.allCur, g.allPrev
			g.allCur.Reset()
			g.refCurStartMs = w.StartMs
		}
		if tx.hasLatency {
			g.refCur.Merge(&tx.latency)
		}
		if x.hasLatency {
			g.allCur.Merge(&x.latency)
		}
	}
}

// reference returns the group's recent latency histogram (30–60 s of windows): of its warm
// instances, or of all its instances while the warm ones hold too few observations (every
// instance of a young group is still warming up).
func (g *group) reference() *proto.Histogram {
	var h proto.Histogram
	h.CopyFrom(&g.refPrev)
	h.Merge(&g.refCur)
	if h.Positive.Total() >= minRefCount {
		return &h
	}
	h.CopyFrom(&g.allPrev)
	h.Merge(&g.allCur)
	return &h
}

// recent sums requests and errors over the last k windows.
func (g *group) recent(k int) (n, e float64) {
	return sumRing(&g.recentN, &g.recentE, g.recentPos, k)
}

// canaryWindowLocked handles a window of c's canary group: the guards read x (every
// instance), the tests tx (the warm instances when the window carries them).
func (d *Detector) canaryWindowLocked(s *service, c *comparison, w *proto.Window, x, tx *extract) {
	set := c.set
	if d.retiredLocked(c, w.EndMs) {
		return
	}
	if w.Instances == 0 && x.requests == 0 {
		// Nobody reported: evidence for the gone guard if the baseline served in the same
		// interval, judged here too since the baseline's window may have come first.
		if c.firstCanaryMs != 0 {
			c.gone.canaryEmpty(span{w.StartMs, w.EndMs})
			d.goneLocked(c, w.EndMs)
		}
		return
	}
	c.gone.reset()
	if c.firstCanaryMs == 0 {
		c.firstCanaryMs = w.StartMs
		c.startMs = w.StartMs + set.warmup.Milliseconds()
		c.lastTrafficMs = w.StartMs
	}
	c.lastCanaryEndMs = w.EndMs
	c.canaryInstances = w.Instances
	if x.requests > 0 {
		c.lastTrafficMs = w.EndMs
		if c.noTraffic || c.verdict.State == proto.StateInconclusive {
			c.noTraffic = false
			d.emitLocked(c.setState(proto.StatePending, w.EndMs, "", c.evidence(""), c.pendingSentence()))
		}
	}
	// Error ceiling, per second since the canary's first window, warm-up or not (ceiling.go).
	width := time.Duration(w.EndMs-w.StartMs) * time.Millisecond
	k := min(max(int(time.Second/width), 1), maxGuardWindows)
	g := &c.ceiling
	g.add(w.StartMs, c.firstCanaryMs, x.requests, x.errors)
	if g.fired(set.ceiling, set.alpha) && g.firedN >= float64(d.cfg.GuardMinRequests) {
		n, e := g.firedN, g.firedE
		var bn, be float64
		if b := s.groups[c.baseline]; b != nil && b.lastEndMs >= w.EndMs-time.Second.Milliseconds() {
			bn, be = b.recent(k)
		}
		if bn == 0 || be/bn < set.ceiling/2 {
			ev := c.evidence("guard_error_ceiling")
			ev.Tests = append(ev.Tests, proto.TestEvidence{Name: "guard_error_ceiling", EValue: math.Exp(min(logE(set.ceiling, n, e), maxLogE)),
				BaselineN: uint64(bn), BaselineE: uint64(be), CanaryN: uint64(n), CanaryE: uint64(e), Effect: e / n,
				CanaryRatio: e / n, BaselineRatio: be / max(bn, 1)})
			base := "no baseline traffic"
			if bn > 0 {
				base = fmt.Sprintf("baseline %.1f %%", 100*be/bn)
			}
			blockStart := c.firstCanaryMs + (g.block-1)*1000
			if n > g.n {
				blockStart -= 1000
			}
			sentence := fmt.Sprintf("canary error ratio %.0f %% over the last %s (ceiling %.0f %%, %s), decided after %s",
				100*e/n, after(time.Duration(w.EndMs-blockStart)*time.Millisecond), 100*set.ceiling, base, after(c.elapsed(w.EndMs)))
			d.finishLocked(c, proto.StateRollback, w.EndMs, "guard_error_ceiling", ev, sentence)
			return
		}
	}
	if w.StartMs < c.startMs {
		return // warm-up
	}
	d.pairLocked(c, w, x, tx, false)
}

// baselineWindowLocked handles a window of c's baseline group (x and tx as for the canary).
func (d *Detector) baselineWindowLocked(s *service, c *comparison, w *proto.Window, x, tx *extract) {
	c.baselineInstances = w.Instances
	live := w.Instances > 0 && x.requests > 0
	switch {
	case !live:
		c.baselineServingMs = 0
	case c.baselineServingMs == 0 || w.StartMs != c.lastBaselineEndMs: // after a gap
		c.baselineServingMs = w.StartMs
	}
	c.lastBaselineEndMs = w.EndMs
	if live {
		c.life.baselineLiveEndMs = w.EndMs
	} else if d.retiredLocked(c, w.EndMs) {
		return
	}
	c.gone.baseline(span{w.StartMs, w.EndMs}, live)
	if c.firstCanaryMs == 0 {
		return
	}
	if d.goneLocked(c, w.EndMs) {
		return
	}
	if live && !c.noTraffic && !c.life.watching {
		// Quiet while the baseline served: a stall of every group is not the canary's.
		quiet := time.Duration(w.EndMs-max(c.lastTrafficMs, c.baselineServingMs)) * time.Millisecond
		if quiet >= d.cfg.NoTrafficAfter {
			c.noTraffic = true
			ev := c.evidence("guard_no_traffic")
			sentence := fmt.Sprintf("no canary traffic for %s while the baseline serves: cannot judge", after(quiet))
			d.emitLocked(c.setState(proto.StateInconclusive, w.EndMs, "guard_no_traffic", ev, sentence))
		}
	}
	if w.StartMs < c.startMs {
		return
	}
	d.pairLocked(c, w, x, tx, true)
}

// pairLocked buffers a window's record and runs the tests when its partner is there: x of
// every instance, tx of the warm ones (x when the window has no warm split).
func (d *Detector) pairLocked(c *comparison, w *proto.Window, x, tx *extract, isBaseline bool) {
	if !c.testsReady {
		groups := d.services[c.service].groups
		if b := groups[c.baseline]; b != nil {
			c.baselineInstances = b.instances
			if !c.frozen {
				c.freeze(b.reference())
			}
		}
		if g := groups[c.canary]; g != nil {
			c.canaryInstances = g.instances
		}
		var disp *dispersion
		if b := groups[c.baseline]; b != nil {
			disp = &b.disp
		}
		c.initTests(disp)
	}
	c.life.live.add(isBaseline, w, x, !c.frozen || len(c.thresholds) > 0)
	c.edgeWindow(w, isBaseline, d.services[c.service].choice.Definition()) // outbound edges (edges.go)
	// A canary in its cold start compares its latency with the baseline's young instances only.
	cold := !isBaseline && c.latencyCold && w.StartMs < c.firstCanaryMs+c.set.coldStart.Milliseconds()
	mine, other := &c.pendB, &c.pendA
	if isBaseline {
		mine, other = &c.pendA, &c.pendB
	}
	var partner *record
	for i, r := range *other {
		if r.startMs == w.StartMs {
			partner = r
			*other = slices.Delete(*other, i, i+1)
			break
		}
	}
	if partner == nil {
		if len(*mine) >= d.cfg.MaxUnpaired {
			c.release((*mine)[0])
			*mine = slices.Delete(*mine, 0, 1)
			d.m.unpairedOverflow.Inc()
		}
		r := c.newRecord()
		c.fill(r, w, x, tx, cold)
		*mine = append(*mine, r)
		return
	}
	r := c.newRecord()
	c.fill(r, w, x, tx, cold)
	a, b := partner, r
	if isBaseline {
		a, b = r, partner
	}
	logAvg := c.update(a, b)
	c.release(a)
	c.release(b)
	d.m.pairs.Inc()
	// Windows older than this pair by more than the lateness slack (8 windows as wide as this
	// one) will find no partner.
	cut := w.StartMs - 8*(w.EndMs-w.StartMs)
	for _, p := range []*[]*record{&c.pendA, &c.pendB} {
		for len(*p) > 0 && (*p)[0].startMs < cut {
			c.release((*p)[0])
			*p = slices.Delete(*p, 0, 1)
			d.m.unpairedEvicted.Inc()
		}
	}
	d.judgeLocked(c, logAvg, w.EndMs)
}

// judgeLocked decides after a compared window pair.
func (d *Detector) judgeLocked(c *comparison, redLogAvg float64, nowMs int64) {
	set := c.set
	logAvg, _ := c.withEdges(redLogAvg) // the RED tests' average joined by the edges' (edges.go)
	if logAvg >= c.logTh {
		if ev, sentence, ok := c.edgeRollback(logAvg, redLogAvg, c.elapsed(nowMs)); ok {
			d.finishLocked(c, proto.StateRollback, nowMs, ev.Decisive, ev, sentence)
			return
		}
		dec := c.decisive()
		ev := c.edgeEvidence(c.evidence(dec), logAvg)
		ev.Effects = c.effects(&ev)
		d.finishLocked(c, proto.StateRollback, nowMs, dec, ev, c.rollbackSentence(&ev, dec, c.elapsed(nowMs)))
		return
	}
	if c.life.watching {
		d.watchLocked(c, nowMs)
		return
	}
	exposure := time.Duration(nowMs-c.startMs) * time.Millisecond
	if exposure >= set.minExposure && c.windows%passCheckEvery == 0 && c.passes() && c.edgesPass() {
		ev := c.edgeEvidence(c.evidence(""), logAvg)
		ev.Effects = c.effects(&ev)
		d.finishLocked(c, proto.StatePass, nowMs, "", ev, c.passSentence(&ev, c.elapsed(nowMs))+c.edgesPassSentence())
		return
	}
	if time.Duration(nowMs-c.createdMs)*time.Millisecond >= set.maxDuration {
		d.expireLocked(c, nowMs)
		return
	}
	d.liveUpdateLocked(c, nowMs)
}

// expireLocked ends a comparison that ran out of time as inconclusive.
func (d *Detector) expireLocked(c *comparison, nowMs int64) {
	ev := c.evidence("")
	d.finishLocked(c, proto.StateInconclusive, nowMs, "max_duration", ev,
		c.undecidedSentence(&ev, time.Duration(nowMs-c.createdMs)*time.Millisecond))
}
