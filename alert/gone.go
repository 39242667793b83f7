package alert

import (
	"fmt"
	"time"

	"github.com/herd-dev/herd/proto"
)

// The "canary gone" guard (guard_canary_gone) rolls a canary back when its instances went
// silent while the baseline's kept serving: it counts only intervals in which the rollup
// reported the canary group without any instance (an empty window) and the baseline's window
// of the same interval carried live traffic (instances > 0 and requests > 0). When those
// intervals add up to GoneAfter since the canary last reported, the canary is gone.
//
// What it never counts, so that none of these is a rollback:
//   - a fleet-wide stall: every group's windows empty (or missing) for a while, the
//     baseline's as well as the canary's;
//   - a whole service stopping: the baseline's windows go empty with the canary's;
//   - windows that do not arrive (a NATS hiccup, a rollup worker failing over), on either
//     side: a missing window pairs with nothing.
//
// A canary that crash-loops while the baseline serves is still caught at once: either its
// instances live long enough to fail requests (the error ceiling, in its first window) or they
// report nothing, and GoneAfter of live baseline windows decides.

// goneSlack bounds the windows the guard keeps to pair the two groups' windows by interval:
// the canary's empty windows waiting for the baseline's window of the same start, and the
// baseline's latest windows.
const goneSlack = 32

// span is one window's interval.
type span struct{ startMs, endMs int64 }

// baseSpan is one of the baseline's windows as the guard keeps it.
type baseSpan struct {
	span
	live bool // instances > 0 and requests > 0
}

// goneGuard is one comparison's pairing of empty canary windows with the baseline's windows.
// The Detector's mutex guards it, as the rest of the comparison.
type goneGuard struct {
	// waiting are empty canary windows whose baseline window has not arrived, oldest first.
	waiting []span
	// base is a ring of the baseline's latest windows; basePos is the newest.
	base    [goneSlack]baseSpan
	basePos int
	// servedMs is the length of the empty canary windows, since the canary last reported,
	// whose baseline window carried live traffic; silentEndMs is the end of the newest empty
	// canary window.
	servedMs, silentEndMs int64
}

// reset starts over: the canary reported.
func (g *goneGuard) reset() {
	g.waiting = g.waiting[:0]
	g.servedMs, g.silentEndMs = 0, 0
}

// canaryEmpty takes an empty canary window: it counts at once when the baseline's window of
// the same interval is there, or waits for it.
func (g *goneGuard) canaryEmpty(s span) {
	g.silentEndMs = max(g.silentEndMs, s.endMs)
	for i := range g.base {
		if b := &g.base[i]; b.startMs == s.startMs && b.endMs > b.startMs {
			if b.live {
				g.servedMs += s.endMs - s.startMs
			}
			return
		}
	}
	if len(g.waiting) == goneSlack {
		g.waiting = append(g.waiting[:0], g.waiting[1:]...) // the oldest will find no partner
	}
	g.waiting = append(g.waiting, s)
}

// baseline takes a baseline window and counts the empty canary window of its interval, if one
// waits for it.
func (g *goneGuard) baseline(s span, live bool) {
	g.basePos = (g.basePos + 1) % goneSlack
	g.base[g.basePos] = baseSpan{span: s, live: live}
	for i, c := range g.waiting {
		if c.startMs == s.startMs {
			if live {
				g.servedMs += c.endMs - c.startMs
			}
			g.waiting = append(g.waiting[:i], g.waiting[i+1:]...)
			return
		}
	}
}

// goneLocked rolls c back if its canary has been gone for GoneAfter (see goneGuard), and says
// whether it did. nowMs is the end of the window that called it.
func (d *Detector) goneLocked(c *comparison, nowMs int64) bool {
	if c.lastCanaryEndMs == 0 || time.Duration(c.gone.servedMs)*time.Millisecond < d.cfg.GoneAfter {
		return false
	}
	silent := time.Duration(c.gone.silentEndMs-c.lastCanaryEndMs) * time.Millisecond
	served := time.Duration(c.gone.servedMs) * time.Millisecond
	ev := c.evidence("guard_canary_gone")
	// Effect: how long the canary has been silent, in seconds.
	ev.Tests = append(ev.Tests, proto.TestEvidence{Name: "guard_canary_gone", EValue: 1, Effect: silent.Seconds()})
	sentence := fmt.Sprintf("canary crash-looping: no canary instance reporting for %s while the baseline served traffic", after(silent))
	if served < silent {
		sentence = fmt.Sprintf("canary crash-looping: no canary instance reporting for %s, %s of it while the baseline served traffic",
			after(silent), after(served))
	}
	d.finishLocked(c, proto.StateRollback, nowMs, "guard_canary_gone", ev, sentence)
	return true
}
