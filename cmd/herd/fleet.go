package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
)

// groupSpec describes one simulated (service, version) group.
type groupSpec struct {
	Service   string
	Version   string
	Instances int     // instances kept alive (replacements start as instances end)
	RPS       float64 // requests per second per instance
	ErrorRate float64 // probability that a request fails
	// Latency is log-normal with this median and 99th percentile.
	LatencyMedian, LatencyP99 time.Duration
}

// groupTotals is what a fleet published for one group, exactly: only batches whose publish
// succeeded are counted.
type groupTotals struct {
	Service          string `json:"service"`
	Version          string `json:"version"`
	Requests         uint64 `json:"requests"`
	Errors           uint64 `json:"errors"`
	LatencyCount     uint64 `json:"latency_count"`
	InstancesStarted uint64 `json:"instances_started"`
	InstancesStopped uint64 `json:"instances_stopped"`
	BatchesSent      uint64 `json:"batches_sent"`
	BatchesUnsent    uint64 `json:"batches_unsent"`
}

// simGroup is a group's live parameters; the demo changes them while the fleet runs.
type simGroup struct {
	spec   groupSpec
	target atomic.Int64  // instances to keep alive
	errPPM atomic.Int64  // error rate in parts per million
	slowK  atomic.Uint64 // latency factor, float64 bits
	// crash makes every instance of the group fail its requests and die at the next boundary;
	// replacements do the same (a crash loop).
	crash atomic.Bool
	live  atomic.Int64 // instances currently alive
}

func (g *simGroup) errorRate() float64     { return float64(g.errPPM.Load()) / 1e6 }
func (g *simGroup) setErrorRate(r float64) { g.errPPM.Store(int64(math.Round(r * 1e6))) }
func (g *simGroup) latencyFactor() float64 {
	return math.Float64frombits(g.slowK.Load())
}
func (g *simGroup) setLatencyFactor(f float64) { g.slowK.Store(math.Float64bits(f)) }

// simInstance is one simulated instance: a real ingest.Client fed with generated traffic.
type simInstance struct {
	g      *simGroup
	client *ingest.Client
	red    *ingest.RED
	dies   time.Time
}

// fleetConfig configures a fleet.
type fleetConfig struct {
	Groups                   []groupSpec
	LifetimeMin, LifetimeMax time.Duration
	Interval                 time.Duration
	Seed                     uint64
	Shards                   int // goroutines; instances are spread over them (default 4)
	Publish                  ingest.PublishFunc
	Logger                   *slog.Logger
}

// fleet simulates instances that start, serve traffic and stop, publishing through the real
// agent library. Each shard goroutine owns its instances and its random source, so a seed
// gives the same traffic whatever the scheduling.
type fleet struct {
	cfg     fleetConfig
	groups  []*simGroup
	metrics *metrics.Set

	mu     sync.Mutex // guards totals
	totals map[*simGroup]*groupTotals
}

func newFleet(cfg fleetConfig) (*fleet, error) {
	if cfg.Shards <= 0 {
		cfg.Shards = 4
	}
	if cfg.Interval <= 0 {
		cfg.Interval = ingest.DefaultInterval
	}
	if cfg.LifetimeMin <= 0 || cfg.LifetimeMax < cfg.LifetimeMin {
		return nil, fmt.Errorf("instance lifetime range [%s, %s] is empty", cfg.LifetimeMin, cfg.LifetimeMax)
	}
	f := &fleet{cfg: cfg, metrics: metrics.NewSet(), totals: map[*simGroup]*groupTotals{}}
	for _, s := range cfg.Groups {
		if err := proto.ValidService(s.Service); err != nil {
			return nil, err
		}
		if err := proto.ValidVersion(s.Version); err != nil {
			return nil, err
		}
		if s.LatencyMedian <= 0 || s.LatencyP99 < s.LatencyMedian {
			return nil, fmt.Errorf("group %s/%s: latency median %s and p99 %s must satisfy 0 < median ≤ p99", s.Service, s.Version, s.LatencyMedian, s.LatencyP99)
		}
		g := &simGroup{spec: s}
		g.target.Store(int64(s.Instances))
		g.setErrorRate(s.ErrorRate)
		g.setLatencyFactor(1)
		f.groups = append(f.groups, g)
		f.totals[g] = &groupTotals{Service: s.Service, Version: s.Version}
	}
	return f, nil
}

// group returns the live parameters of a group, or nil.
func (f *fleet) group(service, version string) *simGroup {
	for _, g := range f.groups {
		if g.spec.Service == service && g.spec.Version == version {
			return g
		}
	}
	return nil
}

// Totals returns the exact totals per group, sorted by service and version.
func (f *fleet) Totals() []groupTotals {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]groupTotals, 0, len(f.totals))
	for _, t := range f.totals {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Version < out[j].Version
	})
	return out
}

// Run runs the fleet until ctx is done or until end (if not zero), then stops every instance
// with a final batch. It returns when every shard has exited.
func (f *fleet) Run(ctx context.Context, end time.Time) error {
	var wg sync.WaitGroup
	errs := make([]error, f.cfg.Shards)
	for i := range f.cfg.Shards {
		wg.Go(func() { errs[i] = f.runShard(ctx, i, end) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// shardTarget is how many instances of g shard i keeps: the group's target spread evenly.
func (f *fleet) shardTarget(g *simGroup, i int) int {
	t := int(g.target.Load())
	n := t / f.cfg.Shards
	if i < t%f.cfg.Shards {
		n++
	}
	return n
}

func (f *fleet) runShard(ctx context.Context, shard int, end time.Time) error {
	rng := rand.New(rand.NewPCG(f.cfg.Seed, uint64(shard)+1))
	iv := f.cfg.Interval
	now := time.Now()
	var live []*simInstance
	first := true
	next := now.Truncate(iv).Add(iv)
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		stopping := false
		if first {
			// Start the initial instances at once, with random ages so they do not all end
			// together.
			first = false
			for _, g := range f.groups {
				for range f.shardTarget(g, shard) {
					in, err := f.start(g, now, rng, true)
					if err != nil {
						return err
					}
					live = append(live, in)
				}
			}
			continue
		}
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
			for _, in := range live {
				f.traffic(in, rng, t)
				f.stop(in, t)
			}
			return nil
		}
		// Generate the interval's traffic and publish it, stopping instances whose time came.
		kept := live[:0]
		counts := map[*simGroup]int{}
		for _, in := range live {
			f.traffic(in, rng, t)
			over := counts[in.g] >= f.shardTarget(in.g, shard)
			if !t.Before(in.dies) || over || in.g.crash.Load() {
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
				in, err := f.start(g, t, rng, false)
				if err != nil {
					return err
				}
				live = append(live, in)
			}
		}
		next = next.Add(iv)
		if d := time.Until(next); d < 0 {
			// Missed boundaries: skip to the next one ahead (the interval is simply longer).
			next = time.Now().Truncate(iv).Add(iv)
		}
		timer.Reset(time.Until(next))
	}
}

func (f *fleet) start(g *simGroup, now time.Time, rng *rand.Rand, initial bool) (*simInstance, error) {
	// Identities are random like a real fleet's; only the traffic follows the seed (two
	// runs with one seed must not look like the same instances to the rollup).
	id := uuid.New()
	tot := f.totals[g]
	c, err := ingest.NewClient(ingest.ClientConfig{
		Service:  g.spec.Service,
		Version:  g.spec.Version,
		Interval: f.cfg.Interval,
		Publish:  f.cfg.Publish,
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
			tot.BatchesSent++
			for i := range b.Series {
				s := &b.Series[i]
				switch s.Name {
				case proto.SeriesRequests:
					tot.Requests += uint64(s.Value)
				case proto.SeriesErrors:
					tot.Errors += uint64(s.Value)
				case proto.SeriesLatency:
					tot.LatencyCount += s.Hist.Count
				}
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot start simulated instance of %s/%s: %w", g.spec.Service, g.spec.Version, err)
	}
	life := f.cfg.LifetimeMin + time.Duration(rng.Int64N(int64(f.cfg.LifetimeMax-f.cfg.LifetimeMin)+1))
	if initial {
		life = time.Duration(rng.Int64N(int64(f.cfg.LifetimeMax)) + 1)
	}
	if g.crash.Load() {
		life = time.Nanosecond // crash-looping: dies at its first boundary
	}
	f.mu.Lock()
	tot.InstancesStarted++
	f.mu.Unlock()
	g.live.Add(1)
	return &simInstance{g: g, client: c, red: c.RED(), dies: now.Add(life)}, nil
}

func (f *fleet) stop(in *simInstance, t time.Time) {
	if err := in.client.Flush(t, true); err != nil {
		f.cfg.Logger.Debug("sim final batch not sent", "err", err)
	}
	in.g.live.Add(-1)
	f.mu.Lock()
	f.totals[in.g].InstancesStopped++
	f.mu.Unlock()
}

// traffic records one interval of requests of an instance (Poisson arrivals, Bernoulli errors,
// log-normal latency).
func (f *fleet) traffic(in *simInstance, rng *rand.Rand, t time.Time) {
	g := in.g
	mean := g.spec.RPS * f.cfg.Interval.Seconds()
	n := poisson(rng, mean)
	errRate := g.errorRate()
	if g.crash.Load() {
		errRate = 1 // a crash-looping instance fails what reaches it, then dies
	}
	mu := math.Log(g.spec.LatencyMedian.Seconds() * g.latencyFactor())
	sigma := math.Log(float64(g.spec.LatencyP99)/float64(g.spec.LatencyMedian)) / 2.3263
	for range n {
		lat := math.Exp(mu + sigma*rng.NormFloat64())
		in.red.Observe(time.Duration(lat*1e9), rng.Float64() < errRate)
	}
}

// poisson draws from a Poisson distribution (Knuth for small means, normal approximation
// above 50).
func poisson(rng *rand.Rand, mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 50 {
		return max(0, int(math.Round(mean+math.Sqrt(mean)*rng.NormFloat64())))
	}
	l := math.Exp(-mean)
	k, p := 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}
