package load

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/uuid"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/traffic"
)

func testGroups() []sim.Group {
	return []sim.Group{
		{Service: "checkout", Version: "v1", Instances: 7, RPS: 20, ErrorRate: 0.05, LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
		{Service: "checkout", Version: "v2", Instances: 3, RPS: 20, ErrorRate: 0.05, LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond},
	}
}

// recorder decodes what one shard published.
type recorder struct {
	mu      sync.Mutex
	d       proto.Decoder
	b       proto.Batch
	err     error
	byGroup map[[2]string]*sim.Totals
	last    map[[16]byte]proto.Batch // each instance's previous batch (series dropped)
	final   map[[16]byte]bool
	stopped map[[2]string]uint64
	gaps    int
}

func newRecorder() *recorder {
	return &recorder{byGroup: map[[2]string]*sim.Totals{}, last: map[[16]byte]proto.Batch{}, final: map[[16]byte]bool{}, stopped: map[[2]string]uint64{}}
}

func (r *recorder) publish(_ string, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.d.Decode(data, &r.b); err != nil {
		r.err = err
		return nil
	}
	b := &r.b
	k := [2]string{b.Service, b.Version}
	t := r.byGroup[k]
	if t == nil {
		t = &sim.Totals{Service: b.Service, Version: b.Version}
		r.byGroup[k] = t
	}
	t.BatchesSent++
	for _, s := range b.Series {
		if len(s.Labels) != 0 {
			continue
		}
		switch s.Name {
		case proto.SeriesRequests:
			t.Requests += uint64(s.Value)
		case proto.SeriesErrors:
			t.Errors += uint64(s.Value)
		case proto.SeriesLatency:
			t.LatencyCount += s.Hist.Count
		}
	}
	prev, seen := r.last[b.Instance]
	switch {
	case r.final[b.Instance]:
		r.gaps++ // a batch after the final one
	case !seen && (b.Seq != 0 || b.Start != b.InstanceStart):
		r.gaps++
	case seen && (b.Seq != prev.Seq+1 || b.Start != prev.End || b.InstanceStart != prev.InstanceStart):
		r.gaps++
	}
	r.last[b.Instance] = proto.Batch{Seq: b.Seq, Start: b.Start, End: b.End, InstanceStart: b.InstanceStart}
	if b.Final {
		r.final[b.Instance] = true
		r.stopped[k]++
	}
	return nil
}

// TestGeneratorExactAndChurning runs a generator for 10 s of fake time with short lifetimes
// over three shards and decodes everything published: the totals match, every instance's
// batches are numbered and contiguous from its start to one final batch, and instances churn.
func TestGeneratorExactAndChurning(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		recs := []*recorder{newRecorder(), newRecorder(), newRecorder()}
		var intervals, skipped int
		var mu sync.Mutex
		g, err := New(Config{Groups: testGroups(), Interval: 250 * time.Millisecond, LifetimeMin: time.Second, LifetimeMax: 3 * time.Second,
			Seed: 1, Publishers: []ingest.PublishFunc{recs[0].publish, recs[1].publish, recs[2].publish},
			OnInterval: func(_ int, _, _ time.Time, s int) { mu.Lock(); intervals++; skipped += s; mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		g.Run(context.Background(), time.Now().Add(10*time.Second))
		got := map[[2]string]*sim.Totals{}
		stopped := map[[2]string]uint64{}
		gaps, instances := 0, 0
		for _, r := range recs {
			if r.err != nil {
				t.Fatalf("a published batch does not decode: %v", r.err)
			}
			for k, v := range r.byGroup {
				if got[k] == nil {
					got[k] = &sim.Totals{}
				}
				got[k].Requests += v.Requests
				got[k].Errors += v.Errors
				got[k].LatencyCount += v.LatencyCount
				got[k].BatchesSent += v.BatchesSent
			}
			for k, v := range r.stopped {
				stopped[k] += v
			}
			gaps += r.gaps
			instances += len(r.last)
			for id := range r.last {
				if !r.final[id] {
					t.Errorf("instance %x sent no final batch", id)
				}
			}
		}
		if gaps != 0 {
			t.Errorf("got %d batches out of sequence or not contiguous; want 0", gaps)
		}
		for _, want := range g.Totals() {
			k := [2]string{want.Service, want.Version}
			gt := got[k]
			if gt == nil || gt.Requests != want.Requests || gt.Errors != want.Errors || gt.LatencyCount != want.LatencyCount ||
				gt.BatchesSent != want.BatchesSent || stopped[k] != want.InstancesStopped || want.InstancesStarted != want.InstancesStopped {
				t.Errorf("%s/%s: decoded %+v, %d stopped; generator says %+v", want.Service, want.Version, gt, stopped[k], want)
			}
			if want.Requests == 0 || want.Errors == 0 {
				t.Errorf("%s/%s: %+v; want requests and errors", want.Service, want.Version, want)
			}
		}
		if instances <= 10 {
			t.Errorf("got %d instances over 10 s with lifetimes of 1–3 s; want churn beyond the 10 kept alive", instances)
		}
		if skipped != 0 || intervals < 3*39 {
			t.Errorf("got %d intervals published, %d skipped; want about 3 × 40, none skipped", intervals, skipped)
		}
	})
}

// TestTemplatesFollowTheModel checks that the pre-encoded bodies carry the group's traffic:
// mean requests per interval near RPS × interval, errors near the error rate.
func TestTemplatesFollowTheModel(t *testing.T) {
	t.Parallel()
	spec := testGroups()[0]
	gr, err := newGroup(spec, 250*time.Millisecond, 400, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	var req, errs, obs uint64
	for _, tp := range gr.templates {
		req, errs, obs = req+tp.requests, errs+tp.errs, obs+tp.observed
	}
	mean := float64(req) / float64(len(gr.templates))
	if mean < 4 || mean > 6 {
		t.Errorf("got %.2f requests per interval; want about 5 (20 rps × 250 ms)", mean)
	}
	if rate := float64(errs) / float64(req); rate < 0.02 || rate > 0.09 {
		t.Errorf("got error rate %.3f; want about 0.05", rate)
	}
	if obs != req {
		t.Errorf("got %d latency observations for %d requests; want one each", obs, req)
	}
}

// BenchmarkBatch compares the cost of one instance's batch built the way sim.Fleet does
// (draw the interval's requests into a client, encode) with a pre-encoded body.
func BenchmarkBatch(b *testing.B) {
	spec := testGroups()[0]
	iv := 250 * time.Millisecond
	noop := func(string, []byte) error { return nil }
	b.Run("client", func(b *testing.B) {
		c, err := ingest.NewClient(ingest.ClientConfig{Service: spec.Service, Version: spec.Version, Interval: iv, Instance: uuid.New(),
			Start: time.Unix(0, 0), Publish: noop})
		if err != nil {
			b.Fatal(err)
		}
		red := c.RED()
		rng := rand.New(rand.NewPCG(1, 1))
		m := traffic.LogNormal(spec.LatencyMedian, spec.LatencyP99, 1)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			traffic.Requests(rng, spec.RPS*iv.Seconds(), spec.ErrorRate, m, red.Observe)
			if err := c.Flush(time.Unix(0, 0).Add(time.Duration(i+1)*iv), false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("preencoded", func(b *testing.B) {
		gr, err := newGroup(spec, iv, 64, rand.New(rand.NewPCG(1, 1)))
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 1))
		id := [16]byte(uuid.New())
		var buf []byte
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			tp := &gr.templates[rng.IntN(len(gr.templates))]
			buf = gr.appendBatch(buf[:0], &id, 1, uint64(i), int64(i)*int64(iv), int64(i+1)*int64(iv), false, tp)
			if err := noop(gr.subject, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
