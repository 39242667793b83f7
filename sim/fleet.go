package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim/traffic"
)

// FleetConfig configures a Fleet. Zero fields take the defaults in brackets.
type FleetConfig struct {
	// Groups are the simulated groups; each (service, version) at most once.
	Groups []Group
	// An instance lives a uniformly drawn time in [LifetimeMin, LifetimeMax] and is then
	// replaced; the initial instances have random ages so they do not all end together.
	LifetimeMin, LifetimeMax time.Duration
	// Interval is every instance's batch interval [ingest.DefaultInterval].
	Interval time.Duration
	// Seed fixes the traffic: one seed gives the same requests whatever the scheduling.
	Seed uint64
	// Shards is the number of goroutines the instances are spread over [4].
	Shards int
	// Calls are the outbound edges of each service (every version of it), by caller service:
	// every request of the caller makes the calls (see Edge).
	Calls map[string][]Edge
	// Publish sends a batch; typically (*nats.Conn).Publish. Required unless Publishers is set.
	Publish ingest.PublishFunc
	// Publishers, if set, replaces Publish: shard i publishes with Publishers[i mod len], so a
	// load generator can spread the instances over several connections.
	Publishers []ingest.PublishFunc
	// OnInterval, if set, is called by each shard after it published an interval's batches:
	// the boundary they were stamped with, when the shard finished, and how many boundaries
	// it skipped before the next one because it was late. It runs on the shard's goroutine.
	OnInterval func(shard int, boundary, done time.Time, skipped int)
	// Logger receives the instances' logs [none].
	Logger *slog.Logger
}

// Fleet simulates groups of instances that start, serve traffic and stop, publishing through
// the real agent library: every instance is an ingest.Client fed with generated requests
// (Poisson arrivals, Bernoulli errors, log-normal latency), flushed at every interval boundary
// and with a final batch when it ends. Each shard goroutine owns its instances and its random
// source, so a seed gives the same traffic whatever the scheduling.
//
// Its methods are safe for concurrent use; Run is called once.
type Fleet struct {
	cfg     FleetConfig
	groups  []*GroupState
	metrics *metrics.Set // the clients' self-metrics, kept off the global set

	mu       sync.Mutex // guards totals and edgeSums
	totals   map[*GroupState]*Totals
	edgeSums EdgeSums

	inboxes map[string]*inbox // by callee service (edges.go); read-only after NewFleet
}

// instance is one simulated instance: a real ingest.Client fed with generated traffic. Its
// shard goroutine owns it.
type instance struct {
	g      *GroupState
	client *ingest.Client
	red    *ingest.RED
	edges  *ingest.Edges // nil when the group calls nothing
	// inbound are the instance's inbound requests and errors by caller slot of its
	// service's inbox, registered on first use (edges.go).
	inbound [][2]*ingest.Counter
	dies    time.Time
}

// NewFleet checks cfg and returns a Fleet; it starts nothing.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if cfg.Shards <= 0 {
		cfg.Shards = 4
	}
	if cfg.Interval <= 0 {
		cfg.Interval = ingest.DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval > time.Duration(proto.MaxInterval) {
		return nil, fmt.Errorf("cannot create fleet: interval %s is longer than %s", cfg.Interval, time.Duration(proto.MaxInterval))
	}
	if cfg.Publish == nil && len(cfg.Publishers) == 0 {
		return nil, errors.New("cannot create fleet: no publish function")
	}
	for _, p := range cfg.Publishers {
		if p == nil {
			return nil, errors.New("cannot create fleet: nil publish function in Publishers")
		}
	}
	if cfg.LifetimeMin <= 0 || cfg.LifetimeMax < cfg.LifetimeMin {
		return nil, fmt.Errorf("cannot create fleet: instance lifetime range [%s, %s] is empty", cfg.LifetimeMin, cfg.LifetimeMax)
	}
	f := &Fleet{cfg: cfg, metrics: metrics.NewSet(), totals: map[*GroupState]*Totals{}, edgeSums: EdgeSums{}}
	for _, s := range cfg.Groups {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("cannot create fleet: %w", err)
		}
		if f.Group(s.Service, s.Version) != nil {
			return nil, fmt.Errorf("cannot create fleet: group %s/%s is listed twice", s.Service, s.Version)
		}
		g := newGroupState(s)
		if err := g.edges.init(cfg.Calls[s.Service]); err != nil {
			return nil, fmt.Errorf("cannot create fleet: service %s: %w", s.Service, err)
		}
		f.groups = append(f.groups, g)
		f.totals[g] = &Totals{Service: s.Service, Version: s.Version}
	}
	f.linkInboxes()
	return f, nil
}

// validate checks a group's spec.
func (s *Group) validate() error {
	if err := proto.ValidService(s.Service); err != nil {
		return err
	}
	if err := proto.ValidVersion(s.Version); err != nil {
		return err
	}
	if s.Instances < 0 {
		return fmt.Errorf("group %s/%s: %d instances", s.Service, s.Version, s.Instances)
	}
	if !(s.RPS >= 0) || math.IsInf(s.RPS, 1) {
		return fmt.Errorf("group %s/%s: request rate %g is not a finite rate ≥ 0", s.Service, s.Version, s.RPS)
	}
	if !(s.ErrorRate >= 0 && s.ErrorRate <= 1) {
		return fmt.Errorf("group %s/%s: error rate %g is not in [0, 1]", s.Service, s.Version, s.ErrorRate)
	}
	if s.LatencyMedian <= 0 || s.LatencyP99 < s.LatencyMedian {
		return fmt.Errorf("group %s/%s: latency median %s and p99 %s must satisfy 0 < median ≤ p99", s.Service, s.Version, s.LatencyMedian, s.LatencyP99)
	}
	return nil
}

// Group returns the live state of a group, or nil if the fleet has no such group.
func (f *Fleet) Group(service, version string) *GroupState {
	for _, g := range f.groups {
		if g.spec.Service == service && g.spec.Version == version {
			return g
		}
	}
	return nil
}

// Groups returns the live state of every group, in the order of FleetConfig.Groups. The slice
// is the caller's.
func (f *Fleet) Groups() []*GroupState { return slices.Clone(f.groups) }

// Totals returns the exact totals per group, sorted by service and version. The slice is the
// caller's.
func (f *Fleet) Totals() []Totals {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Totals, 0, len(f.totals))
	for _, t := range f.totals {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Totals) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Version, b.Version))
	})
	return out
}

// Run starts the initial instances and runs the fleet until ctx is done or until end (if not
// zero), then stops every instance with a final batch. Intervals are aligned to multiples of
// the interval; a boundary missed because the machine is busy is skipped (that interval is
// simply longer). Run returns when every shard goroutine has exited, with an error when an
// instance could not be created (the shard that failed stops its instances first).
func (f *Fleet) Run(ctx context.Context, end time.Time) error {
	var wg sync.WaitGroup
	errs := make([]error, f.cfg.Shards)
	for i := range f.cfg.Shards {
		wg.Go(func() { errs[i] = f.runShard(ctx, i, end) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// shardTarget is how many instances of g shard i keeps: the group's target spread evenly.
func (f *Fleet) shardTarget(g *GroupState, i int) int {
	t := g.Target()
	n := t / f.cfg.Shards
	if i < t%f.cfg.Shards {
		n++
	}
	return n
}

func (f *Fleet) runShard(ctx context.Context, shard int, end time.Time) error {
	rng := rand.New(rand.NewPCG(f.cfg.Seed, uint64(shard)+1))
	iv := f.cfg.Interval
	now := time.Now()
	var live []*instance
	// Start the initial instances at once, with random ages so they do not all end together.
	for _, g := range f.groups {
		for range f.shardTarget(g, shard) {
			in, err := f.start(g, shard, now, rng, true)
			if err != nil {
				f.stopAll(live, rng, now)
				return err
			}
			live = append(live, in)
		}
	}
	next := now.Truncate(iv).Add(iv)
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		stopping := false
		select {
		case <-ctx.Done():
			stopping = true
		case <-timer.C:
		}
		t := time.Now()
		if !stopping {
			// Align to the boundary we waited for; a late wake-up still stamps the boundary
			// it was meant for, so intervals stay aligned.
			t = next
			if !end.IsZero() && !t.Before(end) {
				stopping = true
			}
		}
		if stopping {
			f.stopAll(live, rng, t)
			return nil
		}
		// Generate the interval's traffic and publish it, stopping instances whose time came.
		kept := live[:0]
		counts := map[*GroupState]int{}
		for _, in := range live {
			f.traffic(in, rng)
			over := counts[in.g] >= f.shardTarget(in.g, shard)
			if !t.Before(in.dies) || over || in.g.Crashing() {
				f.stop(in, t)
				continue
			}
			if err := in.client.Flush(t, false); err != nil {
				f.cfg.Logger.Debug("sim batch not sent", "err", err)
			}
			counts[in.g]++
			kept = append(kept, in)
		}
		live = kept
		// Replace ended instances; they start at the boundary.
		for _, g := range f.groups {
			for n := f.shardTarget(g, shard) - counts[g]; n > 0; n-- {
				in, err := f.start(g, shard, t, rng, false)
				if err != nil {
					f.stopAll(live, rng, t)
					return err
				}
				live = append(live, in)
			}
		}
		boundary, done := next, time.Now()
		next = next.Add(iv)
		skipped := 0
		if d := time.Until(next); d < 0 {
			// Missed boundaries: skip to the next one ahead (the interval is simply longer).
			ahead := time.Now().Truncate(iv).Add(iv)
			skipped = int(ahead.Sub(next) / iv)
			next = ahead
		}
		if f.cfg.OnInterval != nil {
			f.cfg.OnInterval(shard, boundary, done, skipped)
		}
		timer.Reset(time.Until(next))
	}
}

// publisher returns the publish function of shard.
func (f *Fleet) publisher(shard int) ingest.PublishFunc {
	if n := len(f.cfg.Publishers); n > 0 {
		return f.cfg.Publishers[shard%n]
	}
	return f.cfg.Publish
}

// stopAll ends every instance at t with its last interval's traffic and a final batch.
func (f *Fleet) stopAll(live []*instance, rng *rand.Rand, t time.Time) {
	for _, in := range live {
		f.traffic(in, rng)
		f.stop(in, t)
	}
}

func (f *Fleet) start(g *GroupState, shard int, now time.Time, rng *rand.Rand, initial bool) (*instance, error) {
	// Identities are random like a real fleet's; only the traffic follows the seed (two
	// runs with one seed must not look like the same instances to the rollup).
	id := uuid.New()
	tot := f.totals[g]
	c, err := ingest.NewClient(ingest.ClientConfig{
		Service:  g.spec.Service,
		Version:  g.spec.Version,
		Interval: f.cfg.Interval,
		Publish:  f.publisher(shard),
		Instance: id,
		Start:    now,
		Logger:   f.cfg.Logger,
		Metrics:  f.metrics,
		OnBatch: func(b *proto.Batch, err error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if err != nil {
				tot.BatchesUnsent++
				return
			}
			tot.addBatch(b)
			f.edgeSums.addBatch(b)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot start simulated instance of %s/%s: %w", g.spec.Service, g.spec.Version, err)
	}
	life := f.cfg.LifetimeMin + time.Duration(rng.Int64N(int64(f.cfg.LifetimeMax-f.cfg.LifetimeMin)+1))
	if initial {
		life = time.Duration(rng.Int64N(int64(f.cfg.LifetimeMax)) + 1)
	}
	if g.Crashing() {
		life = time.Nanosecond // crash-looping: dies at its first boundary
	}
	f.mu.Lock()
	tot.InstancesStarted++
	f.mu.Unlock()
	g.live.Add(1)
	return &instance{g: g, client: c, red: c.RED(), edges: newEdges(g, c), dies: now.Add(life)}, nil
}

func (f *Fleet) stop(in *instance, t time.Time) {
	if err := in.client.Flush(t, true); err != nil {
		f.cfg.Logger.Debug("sim final batch not sent", "err", err)
	}
	in.g.live.Add(-1)
	f.mu.Lock()
	f.totals[in.g].InstancesStopped++
	f.mu.Unlock()
}

// traffic records one interval of an instance's requests with the group's current knobs.
func (f *Fleet) traffic(in *instance, rng *rand.Rand) {
	g := in.g
	errRate := g.ErrorRate()
	if g.Crashing() {
		errRate = 1 // a crash-looping instance fails what reaches it, then dies
	}
	m := traffic.LogNormal(g.spec.LatencyMedian, g.spec.LatencyP99, g.LatencyFactor())
	observe, deliver := in.red.Observe, func() {}
	if in.edges != nil {
		observe, deliver = withCalls(in, rng, observe)
	}
	traffic.Requests(rng, g.spec.RPS*f.cfg.Interval.Seconds(), errRate, m, observe)
	deliver()
	if box := f.inboxes[g.spec.Service]; box != nil {
		box.take(in)
	}
}
