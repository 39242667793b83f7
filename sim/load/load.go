// Package load generates herd's wire traffic cheaply enough that a capacity run measures
// herd, not the generator: a churning fleet of instances whose batches are built from
// bodies encoded once per group.
//
// A batch is a header (flags, instance, instance start, sequence number, interval) followed
// by a body (string table and series) that does not depend on the instance or the time. For
// each group, New draws Config.Templates intervals of traffic from the group's model (Poisson
// requests, Bernoulli errors, log-normal latency; the same model as sim.Fleet) through a real
// ingest.Client and keeps their encoded bodies with what they count. A shard then builds
// each batch by writing a header and copying a body picked at random: about a hundred
// nanoseconds instead of drawing, histogramming and encoding every request again. The
// batches decode exactly like a client's (New checks this), the instances churn like
// sim.Fleet's (random lifetimes, replaced at the boundary, a final batch when they end), and
// the totals of what was published are exact.
package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/traffic"
)

// Config configures a Generator.
type Config struct {
	// Groups are the fleet's groups; Instances of each are kept alive over all shards.
	Groups []sim.Group
	// Interval is the batch interval (ingest.DefaultInterval).
	Interval time.Duration
	// LifetimeMin and LifetimeMax bound an instance's lifetime (uniform); initial instances
	// get a random age so they do not all end together.
	LifetimeMin, LifetimeMax time.Duration
	// Seed seeds the traffic and the lifetimes; shard i uses (Seed, i+1).
	Seed uint64
	// Publishers publish the batches, one shard (goroutine) per function; typically the
	// Publish methods of separate NATS connections.
	Publishers []ingest.PublishFunc
	// Templates is the number of bodies encoded per group (default 64).
	Templates int
	// OnInterval, if set, is called by each shard after it published an interval: the
	// boundary, when it finished, and how many boundaries it skipped because it was late.
	OnInterval func(shard int, boundary, done time.Time, skipped int)
	// OnPublishWait, if set, is called by each shard just before OnInterval with the time it
	// spent inside the publish function for that interval: a NATS connection whose server
	// does not read fast enough makes Publish block, and that lag is the server's, not the
	// generator's.
	OnPublishWait func(shard int, wait time.Duration)
}

// template is one pre-encoded body and what it counts.
type template struct {
	body                     []byte
	requests, errs, observed uint64
}

// group is a group's templates and subject.
type group struct {
	spec      sim.Group
	subject   string
	templates []template
	prefix    [2][4]byte // magic, format version, flags; [1] for a final batch
}

// Generator publishes a churning fleet's batches. Build it with New, then call Run once.
type Generator struct {
	cfg    Config
	groups []*group

	mu     sync.Mutex // Guards totals.
	totals []sim.Totals
}

// New checks cfg and encodes every group's templates. It publishes nothing.
func New(cfg Config) (*Generator, error) {
	if cfg.Templates == 0 {
		cfg.Templates = 64
	}
	switch {
	case len(cfg.Groups) == 0 || len(cfg.Publishers) == 0:
		return nil, errors.New("cannot create load generator: no groups or no publishers")
	case cfg.Interval <= 0 || cfg.LifetimeMin <= 0 || cfg.LifetimeMax < cfg.LifetimeMin:
		return nil, fmt.Errorf("cannot create load generator: interval %s, lifetimes [%s, %s]", cfg.Interval, cfg.LifetimeMin, cfg.LifetimeMax)
	case cfg.Templates < 1:
		return nil, fmt.Errorf("cannot create load generator: %d templates", cfg.Templates)
	}
	g := &Generator{cfg: cfg, totals: make([]sim.Totals, len(cfg.Groups))}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0))
	for i, spec := range cfg.Groups {
		gr, err := newGroup(spec, cfg.Interval, cfg.Templates, rng)
		if err != nil {
			return nil, err
		}
		g.groups = append(g.groups, gr)
		g.totals[i].Service, g.totals[i].Version = spec.Service, spec.Version
	}
	return g, nil
}

// newGroup draws n intervals of spec's traffic through a real client and keeps their bodies.
func newGroup(spec sim.Group, iv time.Duration, n int, rng *rand.Rand) (*group, error) {
	subject, err := proto.InSubject(spec.Service, spec.Version)
	if err != nil {
		return nil, fmt.Errorf("cannot create load generator: %w", err)
	}
	gr := &group{spec: spec, subject: subject}
	var enc proto.Encoder
	var last proto.Batch
	var data []byte
	c, err := ingest.NewClient(ingest.ClientConfig{
		Service: spec.Service, Version: spec.Version, Interval: iv, Instance: uuid.New(), Start: time.Unix(0, 0),
		Publish: func(_ string, b []byte) error { data = append(data[:0], b...); return nil },
		OnBatch: func(b *proto.Batch, _ error) {
			last = proto.Batch{Service: b.Service, Version: b.Version, Instance: b.Instance, InstanceStart: b.InstanceStart,
				Seq: b.Seq, Start: b.Start, End: b.End, Final: b.Final, Series: append([]proto.Series(nil), b.Series...)}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot create load generator: %w", err)
	}
	red := c.RED()
	m := traffic.LogNormal(spec.LatencyMedian, spec.LatencyP99, 1)
	for i := range n {
		traffic.Requests(rng, spec.RPS*iv.Seconds(), spec.ErrorRate, m, red.Observe)
		if err := c.Flush(time.Unix(0, 0).Add(time.Duration(i+1)*iv), false); err != nil {
			return nil, fmt.Errorf("cannot create load generator: template of %s/%s: %w", spec.Service, spec.Version, err)
		}
		h := headerLen(&last)
		t := template{body: append([]byte(nil), data[h:]...)}
		for _, s := range last.Series {
			if len(s.Labels) != 0 {
				continue
			}
			switch s.Name {
			case proto.SeriesRequests:
				t.requests = uint64(s.Value)
			case proto.SeriesErrors:
				t.errs = uint64(s.Value)
			case proto.SeriesLatency:
				t.observed = s.Hist.Count
			}
		}
		gr.templates = append(gr.templates, t)
		if i == 0 {
			copy(gr.prefix[0][:], data[:4])
			last.Final = true
			fin, err := enc.Append(nil, &last)
			if err != nil {
				return nil, fmt.Errorf("cannot create load generator: template of %s/%s: %w", spec.Service, spec.Version, err)
			}
			copy(gr.prefix[1][:], fin[:4])
		}
	}
	// The header layout is checked, not assumed: a built batch must decode to what it says.
	if err := gr.check(); err != nil {
		return nil, fmt.Errorf("cannot create load generator: %s/%s: %w", spec.Service, spec.Version, err)
	}
	return gr, nil
}

// headerLen is the length of b's encoded header: magic, version, flags, instance and four
// varints (docs/wire-format.md).
func headerLen(b *proto.Batch) int {
	var tmp [4 * binary.MaxVarintLen64]byte
	x := binary.AppendVarint(tmp[:0], b.InstanceStart)
	x = binary.AppendUvarint(x, b.Seq)
	x = binary.AppendVarint(x, b.Start)
	x = binary.AppendUvarint(x, uint64(b.End-b.Start))
	return 4 + 16 + len(x)
}

// appendBatch appends the batch of instance id (started at instStart) with sequence number
// seq, covering [start, end), with body t.
func (gr *group) appendBatch(dst []byte, id *[16]byte, instStart int64, seq uint64, start, end int64, final bool, t *template) []byte {
	p := &gr.prefix[0]
	if final {
		p = &gr.prefix[1]
	}
	dst = append(dst, p[:]...)
	dst = append(dst, id[:]...)
	dst = binary.AppendVarint(dst, instStart)
	dst = binary.AppendUvarint(dst, seq)
	dst = binary.AppendVarint(dst, start)
	dst = binary.AppendUvarint(dst, uint64(end-start))
	return append(dst, t.body...)
}

// check decodes a built batch of every template and compares it with what was meant.
func (gr *group) check() error {
	var d proto.Decoder
	var b proto.Batch
	id := [16]byte(uuid.New())
	for i := range gr.templates {
		t := &gr.templates[i]
		final := i%2 == 1
		start := time.Now().UnixNano()
		data := gr.appendBatch(nil, &id, start-1e9, uint64(i)+300, start, start+250e6, final, t)
		if err := d.Decode(data, &b); err != nil {
			return fmt.Errorf("a pre-encoded batch does not decode: %w", err)
		}
		var req, errs, obs uint64
		for _, s := range b.Series {
			if len(s.Labels) != 0 {
				continue
			}
			switch s.Name {
			case proto.SeriesRequests:
				req = uint64(s.Value)
			case proto.SeriesErrors:
				errs = uint64(s.Value)
			case proto.SeriesLatency:
				obs = s.Hist.Count
			}
		}
		if b.Service != gr.spec.Service || b.Version != gr.spec.Version || b.Instance != id || b.InstanceStart != start-1e9 ||
			b.Seq != uint64(i)+300 || b.Start != start || b.End != start+250e6 || b.Final != final ||
			req != t.requests || errs != t.errs || obs != t.observed {
			return fmt.Errorf("a pre-encoded batch decodes differently: %s/%s seq %d final %v requests %d errors %d observations %d",
				b.Service, b.Version, b.Seq, b.Final, req, errs, obs)
		}
	}
	return nil
}

// Totals returns what was published per group, in Config.Groups order.
func (g *Generator) Totals() []sim.Totals {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]sim.Totals(nil), g.totals...)
}

// instance is one live simulated instance.
type instance struct {
	g     int
	id    [16]byte
	start int64 // unix nanos
	last  int64 // end of the previous batch
	seq   uint64
	dies  int64
}

// Run publishes until end or until ctx is done, then ends every instance with a final batch
// and returns. Each shard publishes its share of every group at every interval boundary; a
// shard that is late skips the boundaries it missed (those intervals are simply longer) and
// reports them to OnInterval.
func (g *Generator) Run(ctx context.Context, end time.Time) {
	var wg sync.WaitGroup
	for i := range g.cfg.Publishers {
		wg.Go(func() { g.runShard(ctx, i, end) })
	}
	wg.Wait()
}

// shardTarget is how many instances of group gi shard i keeps.
func (g *Generator) shardTarget(gi, shard int) int {
	t, n := g.cfg.Groups[gi].Instances, len(g.cfg.Publishers)
	k := t / n
	if shard < t%n {
		k++
	}
	return k
}

// shardTotals is what one shard published, added to the Generator's totals at the end.
type shardTotals []sim.Totals

func (g *Generator) runShard(ctx context.Context, shard int, end time.Time) {
	rng := rand.New(rand.NewPCG(g.cfg.Seed, uint64(shard)+1))
	pub := g.cfg.Publishers[shard]
	iv := g.cfg.Interval
	tot := make(shardTotals, len(g.groups))
	defer func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for i := range tot {
			t, s := &g.totals[i], &tot[i]
			t.Requests += s.Requests
			t.Errors += s.Errors
			t.LatencyCount += s.LatencyCount
			t.InstancesStarted += s.InstancesStarted
			t.InstancesStopped += s.InstancesStopped
			t.BatchesSent += s.BatchesSent
			t.BatchesUnsent += s.BatchesUnsent
		}
	}()
	var buf []byte
	var wait time.Duration // inside pub, this interval
	publish := func(in *instance, t int64, final bool) {
		gr := g.groups[in.g]
		tp := &gr.templates[rng.IntN(len(gr.templates))]
		start := in.last
		if t <= start {
			t = start + 1
		}
		buf = gr.appendBatch(buf[:0], &in.id, in.start, in.seq, start, t, final, tp)
		in.seq++
		in.last = t
		s := &tot[in.g]
		t0 := time.Now()
		err := pub(gr.subject, buf)
		wait += time.Since(t0)
		if err != nil {
			s.BatchesUnsent++
			return
		}
		s.BatchesSent++
		s.Requests += tp.requests
		s.Errors += tp.errs
		s.LatencyCount += tp.observed
	}
	newInstance := func(gi int, now int64, initial bool) *instance {
		lo, hi := int64(g.cfg.LifetimeMin), int64(g.cfg.LifetimeMax)
		life := lo + rng.Int64N(hi-lo+1)
		if initial {
			life = rng.Int64N(hi) + 1
		}
		tot[gi].InstancesStarted++
		return &instance{g: gi, id: [16]byte(uuid.New()), start: now, last: now, dies: now + life}
	}
	now := time.Now()
	var live []*instance
	for gi := range g.groups {
		for range g.shardTarget(gi, shard) {
			live = append(live, newInstance(gi, now.UnixNano(), true))
		}
	}
	stopAll := func(t int64) {
		for _, in := range live {
			publish(in, t, true)
			tot[in.g].InstancesStopped++
		}
	}
	next := now.Truncate(iv).Add(iv)
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	counts := make([]int, len(g.groups))
	for {
		stopping := false
		select {
		case <-ctx.Done():
			stopping = true
		case <-timer.C:
		}
		t := time.Now()
		if !stopping {
			t = next // a late wake-up still stamps the boundary it was meant for
			if !end.IsZero() && !t.Before(end) {
				stopping = true
			}
		}
		tn := t.UnixNano()
		if stopping {
			stopAll(tn)
			return
		}
		clear(counts)
		kept := live[:0]
		for _, in := range live {
			if tn >= in.dies {
				publish(in, tn, true)
				tot[in.g].InstancesStopped++
				continue
			}
			publish(in, tn, false)
			counts[in.g]++
			kept = append(kept, in)
		}
		live = kept
		for gi := range g.groups {
			for n := g.shardTarget(gi, shard) - counts[gi]; n > 0; n-- {
				live = append(live, newInstance(gi, tn, false))
			}
		}
		boundary, done := next, time.Now()
		next = next.Add(iv)
		skipped := 0
		if time.Until(next) < 0 {
			ahead := time.Now().Truncate(iv).Add(iv)
			skipped = int(ahead.Sub(next) / iv)
			next = ahead
		}
		if g.cfg.OnPublishWait != nil {
			g.cfg.OnPublishWait(shard, wait)
		}
		wait = 0
		if g.cfg.OnInterval != nil {
			g.cfg.OnInterval(shard, boundary, done, skipped)
		}
		timer.Reset(time.Until(next))
	}
}
