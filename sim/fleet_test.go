package sim

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

// recorder decodes what a fleet publishes and totals it per group, the way a pipeline that
// loses nothing would.
type recorder struct {
	mu       sync.Mutex // guards the fields below
	dec      proto.Decoder
	b        proto.Batch
	totals   map[[2]string]*Totals
	finals   map[[16]byte]int
	seen     map[[16]byte]bool
	badAlign int
	err      error
	fail     bool // publish fails (counted unsent)
}

func newRecorder() *recorder {
	return &recorder{totals: map[[2]string]*Totals{}, finals: map[[16]byte]int{}, seen: map[[16]byte]bool{}}
}

func (r *recorder) publish(subject string, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("publish failed")
	}
	if err := r.dec.Decode(data, &r.b); err != nil {
		r.err = err
		return nil
	}
	b := &r.b
	if !strings.HasPrefix(subject, "herd.in."+b.Service+".") {
		r.err = errors.New("batch of " + b.Service + " on " + subject)
	}
	k := [2]string{b.Service, b.Version}
	t := r.totals[k]
	if t == nil {
		t = &Totals{Service: b.Service, Version: b.Version}
		r.totals[k] = t
	}
	if !r.seen[b.Instance] {
		r.seen[b.Instance] = true
		t.InstancesStarted++
	}
	if b.Final {
		r.finals[b.Instance]++
		t.InstancesStopped++
	}
	if b.End%int64(250*time.Millisecond) != 0 {
		r.badAlign++
	}
	t.addBatch(b)
	return nil
}

func testGroups() []Group {
	return []Group{
		{Service: "checkout", Version: "1.4.2", Instances: 6, RPS: 40, ErrorRate: 0.01,
			LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
		{Service: "checkout", Version: "1.5.0", Instances: 2, RPS: 40, ErrorRate: 0.01,
			LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
	}
}

func newTestFleet(t *testing.T, seed uint64, publish func(string, []byte) error) *Fleet {
	t.Helper()
	f, err := NewFleet(FleetConfig{Groups: testGroups(), LifetimeMin: time.Second, LifetimeMax: 3 * time.Second,
		Interval: 250 * time.Millisecond, Seed: seed, Shards: 3, Publish: publish})
	if err != nil {
		t.Fatalf("NewFleet: got %v; want no error", err)
	}
	return f
}

// TestFleetTotalsExact runs a churning fleet for 10 s of fake time: its totals equal what was
// published, every instance ends with exactly one final batch, batches end on interval
// boundaries, and the traffic has the configured rate.
func TestFleetTotalsExact(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		f := newTestFleet(t, 1, rec.publish)
		if err := f.Run(t.Context(), time.Now().Add(10*time.Second)); err != nil {
			t.Fatalf("Run: got %v; want no error", err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if rec.err != nil {
			t.Fatalf("published: got %v; want decodable batches on their subjects", rec.err)
		}
		got := f.Totals()
		if len(got) != 2 || got[0].Version != "1.4.2" || got[1].Version != "1.5.0" {
			t.Fatalf("Totals: got %+v; want checkout 1.4.2 and 1.5.0 in order", got)
		}
		for i, g := range testGroups() {
			want := rec.totals[[2]string{g.Service, g.Version}]
			if want == nil || got[i] != *want {
				t.Errorf("%s/%s: fleet totals %+v; published %+v", g.Service, g.Version, got[i], want)
				continue
			}
			if got[i].InstancesStarted <= uint64(g.Instances) || got[i].InstancesStopped != got[i].InstancesStarted {
				t.Errorf("%s/%s: started %d, stopped %d; want churn beyond the %d initial instances and all stopped",
					g.Service, g.Version, got[i].InstancesStarted, got[i].InstancesStopped, g.Instances)
			}
			// 10 s × instances × rps requests, give or take (Poisson, the first partial interval).
			if exp := 10 * float64(g.Instances) * g.RPS; float64(got[i].Requests) < 0.85*exp || float64(got[i].Requests) > 1.1*exp {
				t.Errorf("%s/%s: %d requests; want ≈ %.0f", g.Service, g.Version, got[i].Requests, exp)
			}
			if got[i].LatencyCount != got[i].Requests || got[i].Errors == 0 || got[i].Errors > got[i].Requests/20 {
				t.Errorf("%s/%s: %d requests, %d latencies, %d errors; want one latency per request and ≈ 1 %% errors",
					g.Service, g.Version, got[i].Requests, got[i].LatencyCount, got[i].Errors)
			}
		}
		for id, n := range rec.finals {
			if n != 1 {
				t.Errorf("instance %x: %d final batches; want 1", id, n)
			}
		}
		if len(rec.finals) != len(rec.seen) {
			t.Errorf("%d instances published, %d sent a final batch; want all", len(rec.seen), len(rec.finals))
		}
		if rec.badAlign > 0 {
			t.Errorf("%d batches end off an interval boundary; want none", rec.badAlign)
		}
	})
}

// TestFleetSeed: one seed gives the same traffic, another seed other traffic.
func TestFleetSeed(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []Totals {
		var out []Totals
		synctest.Test(t, func(t *testing.T) {
			f := newTestFleet(t, seed, func(string, []byte) error { return nil })
			if err := f.Run(t.Context(), time.Now().Add(5*time.Second)); err != nil {
				t.Fatalf("Run: got %v; want no error", err)
			}
			out = f.Totals()
		})
		return out
	}
	a, b, c := run(7), run(7), run(8)
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("seed 7 twice: got %+v and %+v; want the same totals", a[i], b[i])
		}
	}
	if a[0] == c[0] && a[1] == c[1] {
		t.Errorf("seeds 7 and 8: got the same totals %+v; want different traffic", a)
	}
}

// TestFleetKnobs turns a running fleet's knobs and watches the next intervals.
func TestFleetKnobs(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		f := newTestFleet(t, 1, rec.publish)
		base, canary := f.Group("checkout", "1.4.2"), f.Group("checkout", "1.5.0")
		if f.Group("checkout", "9.9.9") != nil {
			t.Fatal("Group(unknown): got a group; want nil")
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx, time.Time{}) }()
		time.Sleep(time.Second)
		synctest.Wait()
		if base.Live() != 6 || canary.Live() != 2 {
			t.Fatalf("live: got %d and %d; want 6 and 2", base.Live(), canary.Live())
		}

		// More canary instances, all failing.
		canary.SetTarget(5)
		canary.SetErrorRate(1)
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		if canary.Live() != 5 || canary.Target() != 5 {
			t.Errorf("canary after SetTarget(5): got %d live, target %d; want 5", canary.Live(), canary.Target())
		}
		before := f.Totals()[1]
		time.Sleep(time.Second)
		synctest.Wait()
		after := f.Totals()[1]
		if dn, de := after.Requests-before.Requests, after.Errors-before.Errors; dn == 0 || dn != de {
			t.Errorf("canary at error rate 1: %d requests, %d errors in 1 s; want all failed", dn, de)
		}

		// A crash loop: every instance ends at the next boundary, replacements at their first.
		canary.SetErrorRate(0.01)
		canary.SetCrash(true)
		if !canary.Crashing() {
			t.Error("Crashing after SetCrash(true): got false; want true")
		}
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		before = f.Totals()[1]
		time.Sleep(2 * time.Second)
		synctest.Wait()
		after = f.Totals()[1]
		if started := after.InstancesStarted - before.InstancesStarted; started < 5*7 {
			t.Errorf("crash loop over 2 s: %d instances started; want ≥ 35 (5 every boundary)", started)
		}
		if dn, de := after.Requests-before.Requests, after.Errors-before.Errors; dn != de {
			t.Errorf("crash loop: %d requests, %d errors; want all failed", dn, de)
		}
		canary.SetCrash(false)

		// Scaling to zero: no canary instance is left.
		canary.SetTarget(0)
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if canary.Live() != 0 {
			t.Errorf("canary after SetTarget(0): got %d live; want 0", canary.Live())
		}
		tot := f.Totals()[1]
		if tot.InstancesStarted != tot.InstancesStopped {
			t.Errorf("canary after SetTarget(0): started %d, stopped %d; want equal", tot.InstancesStarted, tot.InstancesStopped)
		}

		// Knobs ignore bad input, and the baseline never changed.
		base.SetLatencyFactor(-1)
		base.SetTarget(-3)
		base.SetErrorRate(2)
		if base.LatencyFactor() != 1 || base.Target() != 0 || base.ErrorRate() != 1 || base.Spec().Instances != 6 {
			t.Errorf("after bad knobs: factor %g, target %d, error rate %g, spec %d instances; want 1, 0, 1, 6",
				base.LatencyFactor(), base.Target(), base.ErrorRate(), base.Spec().Instances)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: got %v; want no error", err)
		}
		if base.Live() != 0 {
			t.Errorf("after Run: %d baseline instances live; want 0", base.Live())
		}
	})
}

// TestFleetUnsent: batches whose publish fails are counted unsent, not in the totals.
func TestFleetUnsent(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.fail = true
		f := newTestFleet(t, 1, rec.publish)
		if err := f.Run(t.Context(), time.Now().Add(2*time.Second)); err != nil {
			t.Fatalf("Run: got %v; want no error", err)
		}
		for _, tot := range f.Totals() {
			if tot.BatchesUnsent == 0 || tot.BatchesSent != 0 || tot.Requests != 0 {
				t.Errorf("%s/%s: %+v; want every batch unsent and nothing counted", tot.Service, tot.Version, tot)
			}
		}
	})
}

func TestNewFleetRejects(t *testing.T) {
	t.Parallel()
	ok := FleetConfig{Groups: testGroups(), LifetimeMin: time.Second, LifetimeMax: 2 * time.Second,
		Publish: func(string, []byte) error { return nil }}
	if _, err := NewFleet(ok); err != nil {
		t.Fatalf("NewFleet(good config): got %v; want no error", err)
	}
	for _, c := range []struct {
		name   string
		change func(*FleetConfig)
		want   string
	}{
		{"no publish", func(c *FleetConfig) { c.Publish = nil }, "no publish"},
		{"empty lifetimes", func(c *FleetConfig) { c.LifetimeMax = c.LifetimeMin / 2 }, "lifetime range"},
		{"long interval", func(c *FleetConfig) { c.Interval = 2 * time.Hour }, "interval"},
		{"bad service", func(c *FleetConfig) { c.Groups[0].Service = "Check out" }, "cannot create fleet"},
		{"bad latency", func(c *FleetConfig) { c.Groups[0].LatencyP99 = time.Millisecond }, "median ≤ p99"},
		{"negative instances", func(c *FleetConfig) { c.Groups[0].Instances = -1 }, "instances"},
		{"bad error rate", func(c *FleetConfig) { c.Groups[0].ErrorRate = 1.5 }, "error rate"},
		{"bad rps", func(c *FleetConfig) { c.Groups[0].RPS = -1 }, "request rate"},
		{"twice", func(c *FleetConfig) { c.Groups[1].Version = c.Groups[0].Version }, "twice"},
	} {
		cfg := ok
		cfg.Groups = testGroups()
		c.change(&cfg)
		if _, err := NewFleet(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestTotalsAddWindow(t *testing.T) {
	t.Parallel()
	var tot Totals
	w := &proto.Window{Service: "checkout", Version: "1.5.0", InstancesStarted: 2, InstancesStopped: 1,
		Series: []proto.WindowSeries{
			{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 40},
			{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 7, Labels: proto.Labels{{Name: "code", Value: "500"}}},
			{Name: proto.SeriesErrors, Kind: proto.KindCounter, Value: 3},
			{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: &proto.Histogram{Count: 40}},
		}}
	tot.AddWindow(w)
	tot.AddWindow(w)
	want := Totals{Requests: 80, Errors: 6, LatencyCount: 80, InstancesStarted: 4, InstancesStopped: 2}
	if tot != want {
		t.Fatalf("two windows: got %+v; want %+v (labelled series left out)", tot, want)
	}
}
