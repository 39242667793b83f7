package node

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
)

// OnWindow adds an in-process consumer of closed windows (local or from NATS). It is called
// on the rollup's or the subscription's goroutine and must not block. Add before Run.
func (n *Node) OnWindow(f func(*proto.Window)) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	n.onWindowSubs = append(n.onWindowSubs, f)
}

// OnVerdict adds an in-process consumer of verdict changes, called in order. Add before Run.
func (n *Node) OnVerdict(f func(proto.Verdict)) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	n.onVerdictSubs = append(n.onVerdictSubs, f)
}

// OnDeployment adds an in-process consumer of accepted deployment announcements. Add before
// Run.
func (n *Node) OnDeployment(f func(proto.Deployment)) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	n.onDeploySubs = append(n.onDeploySubs, f)
}

func (n *Node) windowSubs() []func(*proto.Window) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	return n.onWindowSubs
}

func (n *Node) verdictSubs() []func(proto.Verdict) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	return n.onVerdictSubs
}

func (n *Node) deploySubs() []func(proto.Deployment) {
	n.subsMu.Lock()
	defer n.subsMu.Unlock()
	return n.onDeploySubs
}

// Announce publishes a deployment on herd.deploy.<service>; every detector (this node's
// included) receives it from there. A node with a detector first refuses what the detector
// would refuse (an established version named as the canary), so that the caller hears why.
func (n *Node) Announce(d proto.Deployment) error {
	if n.det != nil {
		if err := n.det.CheckDeployment(d); err != nil {
			return err
		}
	}
	return n.pub.Deployment(d)
}

// emit is the local rollup's output: publish the closed window and hand it to the local
// consumers. A window that cannot be published is counted and logged by the publisher and
// still reaches the local consumers.
func (n *Node) emit(w *proto.Window) {
	_ = n.pub.Window(w)
	n.liveWindow(w)
}

// liveWindow, liveVerdict and liveDeployment hand a live input to the local consumers, or to
// the gate while the history is replayed. Once the gate is open they call straight through:
// no lock and no closure per input.
func (n *Node) liveWindow(w *proto.Window) {
	if n.live.isOpen() {
		n.windowIn(w)
		return
	}
	n.live.do(func() { n.windowIn(w) })
}

func (n *Node) liveVerdict(v proto.Verdict) {
	if n.live.isOpen() {
		n.verdictIn(v)
		return
	}
	n.live.do(func() { n.verdictIn(v) })
}

func (n *Node) liveDeployment(d proto.Deployment) {
	if n.live.isOpen() {
		n.deploymentIn(d)
		return
	}
	n.live.do(func() { n.deploymentIn(d) })
}

// maxHeld bounds the live inputs held back while the history is replayed; past it the
// newest are dropped and counted in herd_node_live_inputs_dropped_total.
const maxHeld = 1 << 20

// gate holds live inputs (windows, verdicts, deployments) back while the history is
// replayed, then applies them in arrival order: the inputs are subscribed, and the local
// rollup runs, before the replay starts, so nothing that arrives during a restart is lost,
// and nothing live is applied before the history it follows.
type gate struct {
	// opened is set once release has applied the held inputs; it never clears.
	opened  atomic.Bool
	mu      sync.Mutex // Guards the fields below; held while the held inputs are applied.
	open    bool
	held    []func()
	dropped *metrics.Counter
}

// isOpen reports whether release has run: inputs may then be applied directly.
func (g *gate) isOpen() bool { return g.opened.Load() }

// do applies f now if the gate is open, or holds it.
func (g *gate) do(f func()) {
	g.mu.Lock()
	if g.open {
		g.mu.Unlock()
		f()
		return
	}
	defer g.mu.Unlock()
	if len(g.held) >= maxHeld {
		g.dropped.Inc()
		return
	}
	g.held = append(g.held, f)
}

// release applies the held inputs in order and opens the gate.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range g.held {
		f()
	}
	g.held, g.open = nil, true
	g.opened.Store(true)
}

// windowIn hands a closed window to the local detector, dashboard and consumers. A
// correction (late data of a window already closed, see proto.Window.Correction) is not for
// the dashboard, which shows each window once as it closes; the detector skips it itself.
func (n *Node) windowIn(w *proto.Window) {
	if n.det != nil {
		n.det.AddWindow(w)
	}
	if n.web != nil && !w.Correction {
		n.web.AddWindow(w)
	}
	if n.exp != nil {
		n.exp.AddWindow(w)
	}
	for _, f := range n.windowSubs() {
		f(w)
	}
}

// decided is the local detector's output, called in order: publish the verdict, hand final
// ones to delivery, tell the local consumers.
func (n *Node) decided(v proto.Verdict) {
	final := v.Decides() // an update (live evidence, a watch's end) takes no new decision
	if n.replaying.Load() {
		// Re-derived from replayed windows: the decision id is the one already taken, so
		// delivery does not send it again; the stream already holds the verdict itself.
		if final {
			if err := n.dl.Decide(v); err != nil {
				n.replayErrs["decide"].Inc()
				n.logger.Warn("cannot hand a replayed decision to delivery", "decision_id", v.DecisionID, "err", err)
			}
		}
		return
	}
	_ = n.pub.Verdict(&v)
	if final {
		if err := n.dl.Decide(v); err != nil {
			n.logger.Warn("cannot hand the decision to delivery", "decision_id", v.DecisionID, "err", err)
		}
	}
	n.verdictIn(v)
}

// verdictIn hands a verdict change to the local dashboard and consumers.
func (n *Node) verdictIn(v proto.Verdict) {
	if n.web != nil {
		n.web.SetVerdict(v)
	}
	if n.exp != nil {
		n.exp.SetVerdict(v)
	}
	for _, f := range n.verdictSubs() {
		f(v)
	}
}

// deploymentIn takes an announcement from herd.deploy.>: the local detector starts the
// comparison (or refuses it, counted), then the dashboard and consumers hear of it.
func (n *Node) deploymentIn(d proto.Deployment) {
	if n.det != nil {
		if err := n.det.Announce(d); err != nil {
			n.deployRefused.Inc()
			n.logger.Warn("deployment refused", "service", d.Service, "err", err)
			return
		}
	}
	n.logger.Info("deployment", "service", d.Service, "baseline", d.Baseline, "canary", d.Canary)
	if n.web != nil {
		n.web.AddDeployment(d)
	}
	for _, f := range n.deploySubs() {
		f(d)
	}
}

// replay rebuilds the detector's and the dashboard's state from the history stream: windows
// and deployments go to the detector, all three to the dashboard.
func (n *Node) replay(ctx context.Context) {
	if n.history == nil || (n.det == nil && n.web == nil) {
		return
	}
	start := time.Now()
	n.replaying.Store(true)
	defer n.replaying.Store(false)
	h := bus.Handlers{
		Window: func(w *proto.Window) {
			if n.det != nil {
				n.det.AddWindow(w)
			}
			if n.web != nil && !w.Correction {
				_ = n.web.Restore(ctx, w, nil, nil)
			}
		},
		Verdict: func(v proto.Verdict) {
			if n.exp != nil {
				n.exp.SetVerdict(v) // the current states; the counters start afresh
			}
			if n.web != nil {
				_ = n.web.Restore(ctx, nil, &v, nil)
			}
		},
		Deployment: func(d proto.Deployment) {
			if n.det != nil {
				if err := n.det.Announce(d); err != nil {
					n.replayErrs["announce"].Inc()
					n.logger.Warn("cannot replay a deployment", "service", d.Service, "canary", d.Canary, "err", err)
				}
			}
			if n.web != nil {
				_ = n.web.Restore(ctx, nil, nil, &d)
			}
		},
	}
	// The replay's own decoder: its messages are counted by the history, not as received.
	num, bad, err := n.history.Replay(ctx, bus.NewDecoder(h, nil))
	if err != nil {
		n.logger.Warn("history replay incomplete", "replayed", num, "err", err)
	}
	if num > 0 {
		n.logger.Info("history replayed", "messages", num, "undecodable", bad, "took", time.Since(start).Round(time.Millisecond))
	}
}
