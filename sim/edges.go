package sim

import (
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// Edge is one outbound dependency of a simulated group: every request of the group calls
// Callee PerRequest times on average (the integer part always, the fraction by chance), each
// call failing with probability ErrorRate after a log-normal latency.
type Edge struct {
	Callee     string
	PerRequest float64
	ErrorRate  float64
	// Latency is log-normal with this median and 99th percentile (0 < median ≤ p99).
	LatencyMedian, LatencyP99 time.Duration
	// Retries is how many times a failed attempt is retried at once below the caller's
	// instruments, as a mesh proxy's retry policy does: the callee sees every attempt (its
	// inbound series), the caller's edge one call, failed only when every attempt failed.
	Retries int
}

// validate checks an edge's spec.
func (e *Edge) validate() error {
	if err := proto.ValidService(e.Callee); err != nil {
		return err
	}
	if !(e.PerRequest >= 0) || e.PerRequest > 1000 {
		return fmt.Errorf("edge to %s: %g calls per request is not in [0, 1000]", e.Callee, e.PerRequest)
	}
	if !(e.ErrorRate >= 0 && e.ErrorRate <= 1) {
		return fmt.Errorf("edge to %s: error rate %g is not in [0, 1]", e.Callee, e.ErrorRate)
	}
	if e.Retries < 0 || e.Retries > 10 {
		return fmt.Errorf("edge to %s: %d retries is not in [0, 10]", e.Callee, e.Retries)
	}
	if e.LatencyMedian <= 0 || e.LatencyP99 < e.LatencyMedian {
		return fmt.Errorf("edge to %s: latency median %s and p99 %s must satisfy 0 < median ≤ p99", e.Callee, e.LatencyMedian, e.LatencyP99)
	}
	return nil
}

// edgeKnobs are a group's edges (its service's calls) and their live knobs, in one order.
type edgeKnobs struct {
	spec   []Edge
	fanout []atomic.Uint64 // calls-per-request factor, float64 bits
	errPPM []atomic.Int64  // error rate, parts per million
	// inbox and slot are, per edge, the callee's inbox (nil when the fleet does not
	// simulate the callee) and the group's slot in it; set by Fleet.linkInboxes.
	inbox []*inbox
	slot  []int
}

func (k *edgeKnobs) init(edges []Edge) error {
	for i := range edges {
		if err := edges[i].validate(); err != nil {
			return err
		}
	}
	k.spec = edges
	k.fanout = make([]atomic.Uint64, len(edges))
	k.errPPM = make([]atomic.Int64, len(edges))
	for i, e := range edges {
		k.fanout[i].Store(math.Float64bits(1))
		k.errPPM[i].Store(int64(math.Round(e.ErrorRate * 1e6)))
	}
	return nil
}

// edgeIndex returns the index of the group's edge to callee, or -1.
func (g *GroupState) edgeIndex(callee string) int {
	for i := range g.edges.spec {
		if g.edges.spec[i].Callee == callee {
			return i
		}
	}
	return -1
}

// Calls returns the group's outbound edges as configured. The slice is shared: do not modify.
func (g *GroupState) Calls() []Edge { return g.edges.spec }

// SetFanout multiplies the calls per request of the group's edge to callee by f (1 is the
// configured rate); it reports false when the group has no such edge or f is not a finite
// number ≥ 0.
func (g *GroupState) SetFanout(callee string, f float64) bool {
	i := g.edgeIndex(callee)
	if i < 0 || !(f >= 0) || math.IsInf(f, 1) {
		return false
	}
	g.edges.fanout[i].Store(math.Float64bits(f))
	return true
}

// SetEdgeErrorRate sets the failure probability of the group's calls to callee, clamped to
// [0, 1]; it reports false when the group has no such edge.
func (g *GroupState) SetEdgeErrorRate(callee string, r float64) bool {
	i := g.edgeIndex(callee)
	if i < 0 {
		return false
	}
	if !(r > 0) {
		r = 0
	}
	g.edges.errPPM[i].Store(int64(math.Round(min(r, 1) * 1e6)))
	return true
}

// EdgeErrorRate returns the failure probability of the group's calls to callee (0 if none).
func (g *GroupState) EdgeErrorRate(callee string) float64 {
	if i := g.edgeIndex(callee); i >= 0 {
		return float64(g.edges.errPPM[i].Load()) / 1e6
	}
	return 0
}

// withCalls returns observe extended with the calls every request makes along the group's
// edges, recorded on in's edge instruments, and a function that hands the calls made so far to
// the callees' inboxes (call it after the interval's requests).
func withCalls(in *instance, rng *rand.Rand, observe func(time.Duration, bool)) (func(time.Duration, bool), func()) {
	g := in.g
	type live struct {
		callee           string
		k, err           float64
		retries          int
		m                traffic.LatencyModel
		attempts, failed uint64 // as the callee sees them
	}
	es := make([]live, len(g.edges.spec))
	for i, e := range g.edges.spec {
		es[i] = live{callee: e.Callee, k: e.PerRequest * math.Float64frombits(g.edges.fanout[i].Load()),
			err: float64(g.edges.errPPM[i].Load()) / 1e6, retries: e.Retries, m: traffic.LogNormal(e.LatencyMedian, e.LatencyP99, 1)}
	}
	return func(d time.Duration, failed bool) {
			observe(d, failed)
			for i := range es {
				e := &es[i]
				n := int(e.k)
				if rng.Float64() < e.k-float64(n) {
					n++
				}
				for range n {
					lat := time.Duration(e.m.Draw(rng) * float64(time.Second))
					bad := rng.Float64() < e.err
					e.attempts++
					for r := 0; bad && r < e.retries; r++ {
						e.failed++
						e.attempts++
						bad = rng.Float64() < e.err
					}
					if bad {
						e.failed++
					}
					in.edges.Observe(e.callee, "", lat, bad)
				}
			}
		}, func() {
			for i := range es {
				if box := g.edges.inbox[i]; box != nil {
					box.deliver(g.edges.slot[i], es[i].attempts, es[i].failed)
				}
				es[i].attempts, es[i].failed = 0, 0
			}
		}
}

// newEdges returns the edge recorder of an instance of g, or nil when g calls nothing.
func newEdges(g *GroupState, c *ingest.Client) *ingest.Edges {
	if len(g.edges.spec) == 0 {
		return nil
	}
	return c.Edges(ingest.EdgeConfig{})
}

// EdgeID names one edge of one group.
type EdgeID struct {
	Service, Version string
	Edge             proto.EdgeKey
}

// EdgeTotals is what was called on one edge, exactly.
type EdgeTotals struct {
	Calls        uint64 `json:"calls"`
	Errors       uint64 `json:"errors"`
	LatencyCount uint64 `json:"latency_count"`
}

// EdgeSums totals edges by group and edge: a Fleet's from the batches it published
// (Fleet.EdgeTotals), a reader's from closed windows (AddWindow). Over an exact pipeline the
// two are equal.
type EdgeSums map[EdgeID]EdgeTotals

// AddWindow adds the edge series of a closed window.
func (s EdgeSums) AddWindow(w *proto.Window) {
	for i := range w.Series {
		ws := &w.Series[i]
		s.add(w.Service, w.Version, ws.Name, ws.Labels, ws.Value, ws.Count)
	}
}

// addBatch adds the edge series of a published batch.
func (s EdgeSums) addBatch(b *proto.Batch) {
	for i := range b.Series {
		bs := &b.Series[i]
		s.add(b.Service, b.Version, bs.Name, bs.Labels, bs.Value, bs.Hist.Count)
	}
}

// add adds one series if it is an edge series.
func (s EdgeSums) add(service, version, name string, labels []proto.Label, value float64, observations uint64) {
	k, ok := proto.EdgeOf(name, labels)
	if !ok {
		return
	}
	id := EdgeID{service, version, k}
	et := s[id]
	switch name {
	case proto.SeriesEdgeCalls:
		et.Calls += uint64(value)
	case proto.SeriesEdgeErrors:
		et.Errors += uint64(value)
	case proto.SeriesEdgeLatency:
		et.LatencyCount += observations
	}
	s[id] = et
}

// EdgeTotals returns the exact totals of every edge the fleet's published batches carried.
// The map is the caller's.
func (f *Fleet) EdgeTotals() EdgeSums {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.edgeSums)
}

// The callee's side of the calls (blast radius). Every call (every attempt, with Edge.Retries)
// a group makes to a service the fleet also simulates is recorded by one of that service's
// instances too, as the server
// middleware would (ingest.Inbound): in the inbound series split by caller group
// (proto.SeriesInboundRequests, proto.SeriesInboundErrors), failed when the caller's call
// failed. The callee's own RED stays its configured traffic, whose rate the graph sizes to its
// callers' calls. Calls wait in the callee's inbox until its instances take them at their next
// traffic step (in rounds: each live instance takes an even share of what waits, the last of a
// round all that is left), so the split follows the calls by at most an interval; while the
// callee has no live instance they wait. Which
// instance records a call depends on the shards' scheduling, unlike the traffic itself.

// inbox holds the calls made to one callee service that none of its instances has recorded
// yet, by caller group. Safe for concurrent use.
type inbox struct {
	callee  string
	groups  []*GroupState // the callee service's groups
	callers []*GroupState // the groups that call it, in slot order

	mu      sync.Mutex  // Guards the fields below.
	pending [][2]uint64 // calls and failed calls waiting, by caller slot
	takers  int         // instances that took their share in this round
	// rng splits the waiting calls: the shards' own sources stay untouched, so a seed still
	// gives the same traffic whatever the scheduling.
	rng *rand.Rand
}

// linkInboxes gives every callee service the fleet simulates an inbox and every caller's
// edge to it the inbox and its slot.
func (f *Fleet) linkInboxes() {
	f.inboxes = map[string]*inbox{}
	for _, g := range f.groups {
		k := &g.edges
		k.inbox = make([]*inbox, len(k.spec))
		k.slot = make([]int, len(k.spec))
		for i, e := range k.spec {
			box := f.inboxes[e.Callee]
			if box == nil {
				for _, cg := range f.groups {
					if cg.spec.Service == e.Callee {
						if box == nil {
							h := fnv.New64a()
							h.Write([]byte(e.Callee))
							box = &inbox{callee: e.Callee, rng: rand.New(rand.NewPCG(f.cfg.Seed, h.Sum64()))}
							f.inboxes[e.Callee] = box
						}
						box.groups = append(box.groups, cg)
					}
				}
			}
			if box == nil {
				continue // a callee the fleet does not simulate
			}
			k.inbox[i], k.slot[i] = box, len(box.callers)
			box.callers = append(box.callers, g)
			box.pending = append(box.pending, [2]uint64{})
		}
	}
}

// deliver adds an interval's attempts of one caller slot to the inbox.
func (b *inbox) deliver(slot int, calls, failed uint64) {
	if calls == 0 {
		return
	}
	b.mu.Lock()
	b.pending[slot][0] += calls
	b.pending[slot][1] += failed
	b.mu.Unlock()
}

// take records this instance's share of the waiting calls on its inbound series.
func (b *inbox) take(in *instance) {
	live := 0
	for _, g := range b.groups {
		live += g.Live()
	}
	if in.inbound == nil {
		in.inbound = make([][2]*ingest.Counter, len(b.callers))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// Rounds: each of the live instances takes once per round, the last one what is left.
	rest := live - b.takers
	if rest < 1 {
		b.takers, rest = 0, max(live, 1)
	}
	b.takers++
	for slot := range b.pending {
		p := &b.pending[slot]
		if p[0] == 0 {
			continue
		}
		n := share(b.rng, float64(p[0])/float64(rest))
		// Failed calls among them: their expected share, within what the rest allows.
		e := share(b.rng, float64(n)*float64(p[1])/float64(p[0]))
		e = min(max(e, n-min(n, p[0]-p[1])), p[1], n)
		p[0] -= n
		p[1] -= e
		if n == 0 {
			continue
		}
		c := &in.inbound[slot]
		if c[0] == nil {
			caller := b.callers[slot].spec
			ls := []proto.Label{{Name: proto.LabelCaller, Value: caller.Service}, {Name: proto.LabelCallerVersion, Value: caller.Version}}
			c[0] = in.client.Counter(proto.SeriesInboundRequests, ls...)
			c[1] = in.client.Counter(proto.SeriesInboundErrors, ls...)
		}
		c[0].Add(float64(n))
		if e > 0 {
			c[1].Add(float64(e))
		}
	}
}

// share rounds x ≥ 0 to an integer at random, up with the probability of its fraction.
func share(rng *rand.Rand, x float64) uint64 {
	n := math.Floor(x)
	if rng.Float64() < x-n {
		n++
	}
	return uint64(n)
}

// pendingCalls returns the calls waiting in every inbox, by callee and caller group.
func (f *Fleet) pendingCalls() map[[3]string][2]uint64 {
	out := map[[3]string][2]uint64{}
	for _, b := range f.inboxes {
		b.mu.Lock()
		for slot, p := range b.pending {
			c := b.callers[slot].spec
			out[[3]string{b.callee, c.Service, c.Version}] = p
		}
		b.mu.Unlock()
	}
	return out
}
