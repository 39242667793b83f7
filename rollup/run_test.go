package rollup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

func TestRunClosesAtEndPlusLateness(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.CloseComplete = false
		r, s := newTestRollup(t, cfg)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := r.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		base := time.Now()
		for k := range 8 {
			end := base.Add(time.Duration(k+1) * win)
			time.Sleep(time.Until(end))
			r.Add(batch(1, uint64(k), end, counter(proto.SeriesRequests, 1)))
		}
		time.Sleep(time.Until(base.Add(8*win + lateness)))
		synctest.Wait()
		ws := s.take()
		if len(ws) != 8 {
			t.Fatalf("got %d windows; want 8", len(ws))
		}
		for i, w := range ws {
			if w.ClosedMs != w.EndMs+lateness.Milliseconds() || w.StartMs != ms(base.Add(time.Duration(i)*win)) {
				t.Errorf("window %d [%d, %d) closed at %d; want closed at end + %v", i, w.StartMs, w.EndMs, w.ClosedMs, lateness)
			}
		}
		cancel()
		wg.Wait()
		if got := r.Stats().TicksMissed; got != 0 {
			t.Errorf("missed ticks: got %d; want 0", got)
		}
	})
}

func TestRunCountsMissedTicks(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var got []*proto.Window
		emit := func(w *proto.Window) {
			time.Sleep(2 * win) // a slow consumer
			mu.Lock()
			got = append(got, w)
			mu.Unlock()
		}
		r, err := New(fixedConfig(), nil, emit, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { r.Run(ctx) })
		base := time.Now()
		r.Add(batch(1, 0, base.Add(win), counter(proto.SeriesRequests, 1)))
		r.Add(batch(1, 1, base.Add(2*win), counter(proto.SeriesRequests, 1)))
		time.Sleep(3 * time.Second)
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(got) < 2 || got[0].StartMs != ms(base) || got[1].StartMs != ms(base.Add(win)) {
			t.Fatalf("got %d windows; want at least the two with data, in order", len(got))
		}
		if r.Stats().TicksMissed == 0 {
			t.Errorf("missed ticks: got 0; want > 0 with a consumer slower than the window")
		}
	})
}

func TestPublishedOnRollupSubject(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	msgs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(proto.SubjectRollupAll, msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var pubErr error
	emit := func(w *proto.Window) {
		subj, err := proto.RollupSubject(w.Service, w.Version)
		if err != nil {
			pubErr = err
			return
		}
		data, err := proto.MarshalWindow(w)
		if err != nil {
			pubErr = err
			return
		}
		pubErr = errors.Join(pubErr, nc.Publish(subj, data))
	}
	r, err := New(DefaultConfig(), nil, emit, nil)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Truncate(win).Add(win)
	for i := range 3 {
		r.Add(groupBatch("checkout", "1.4.2", i, 0, end, counter(proto.SeriesRequests, 10), hist(proto.SeriesLatency, 0.1, 0.2)))
	}
	r.Flush()
	if pubErr != nil {
		t.Fatalf("publish: %v", pubErr)
	}
	select {
	case m := <-msgs:
		if m.Subject != "herd.rollup.checkout.1_2e4_2e2" {
			t.Errorf("subject: got %s; want herd.rollup.checkout.1_2e4_2e2", m.Subject)
		}
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if w.Version != "1.4.2" || w.Instances != 3 || w.Find(proto.SeriesRequests).Value != 30 || w.Find(proto.SeriesLatency).Hist.Count != 6 {
			t.Errorf("got %+v; want version 1.4.2, 3 instances, 30 requests, 6 latencies", w)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no window received within 10s")
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	var c Config
	fs := flag.NewFlagSet("herd", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if c != DefaultConfig() {
		t.Errorf("registered defaults: got %+v; want %+v", c, DefaultConfig())
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults: got %v; want valid", err)
	}
	fs.VisitAll(func(f *flag.Flag) {
		// The unit closes the usage; the default is printed by the help itself, once.
		if !strings.HasPrefix(f.Name, "rollup.") || !strings.HasSuffix(f.Usage, ")") || strings.Contains(f.Usage, "default") {
			t.Errorf("flag %s: usage %q must name the rollup prefix and the unit, and leave the default to the help", f.Name, f.Usage)
		}
	})
	if err := fs.Parse([]string{"-rollup.window=1s", "-rollup.max-groups=5"}); err != nil {
		t.Fatal(err)
	}
	if c.Window != time.Second || c.MaxGroups != 5 {
		t.Errorf("parsed: got window %v groups %d; want 1s 5", c.Window, c.MaxGroups)
	}
	bad := map[string]func(*Config){
		"-rollup.window":                   func(c *Config) { c.Window = 1500 * time.Microsecond },
		"-rollup.lateness":                 func(c *Config) { c.Lateness = -1 },
		"-rollup.max-future":               func(c *Config) { c.MaxFuture = -1 },
		"-rollup.instance-ttl":             func(c *Config) { c.InstanceTTL = time.Second },
		"-rollup.max-groups":               func(c *Config) { c.MaxGroups = 0 },
		"-rollup.max-series-per-group":     func(c *Config) { c.MaxSeriesPerGroup = 0 },
		"-rollup.max-versions-per-service": func(c *Config) { c.MaxVersionsPerService = 0 },
		"-rollup.max-series-per-service":   func(c *Config) { c.MaxSeriesPerService = 0 },
		"-rollup.max-instances":            func(c *Config) { c.MaxInstances = 0 },
		"-rollup.max-window-buckets":       func(c *Config) { c.MaxWindowBuckets = proto.MaxBuckets },
	}
	for flagName, mutate := range bad {
		c := DefaultConfig()
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), flagName+" ") {
			t.Errorf("%s: got %v; want an error naming the flag", flagName, err)
		}
		if _, err := New(c, nil, func(*proto.Window) {}, nil); err == nil {
			t.Errorf("%s: New accepted an invalid config", flagName)
		}
	}
	if _, err := New(DefaultConfig(), nil, nil, nil); err == nil {
		t.Errorf("New with a nil emit: got no error; want one")
	}
}

func TestMetricsExposed(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	s := &sink{}
	r, err := New(DefaultConfig(), NewMetrics(set), s.emit, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Add(batch(1, 0, time.Now().Add(time.Hour), counter(proto.SeriesRequests, 1)))
	r.Add(batch(2, 0, time.Now(), counter(proto.SeriesRequests, 1)))
	r.Flush() // one window, emitted before its end: no delay
	var b strings.Builder
	set.WritePrometheus(&b)
	for _, want := range []string{
		`herd_rollup_batches_total 2`,
		`herd_rollup_batches_refused_total{reason="future"} 1`,
		`herd_rollup_series_refused_total{reason="too_many_series"} 0`,
		`herd_rollup_instances_forgotten_total{reason="expired"} 0`,
		`herd_rollup_batches_refused_total{reason="too_many_versions"} 0`,
		`herd_rollup_series_refused_total{reason="too_many_service_series"} 0`,
		`herd_rollup_groups_forgotten_total{reason="evicted"} 0`,
		`herd_rollup_batches_lost_total 0`,
		`herd_rollup_windows_emitted_total 1`,
		`herd_rollup_groups 1`,
		`herd_rollup_instances 2`,
		`herd_rollup_series 1`,
		`herd_rollup_partition_batches_skipped_total{reason="before_span"} 0`,
		`herd_rollup_window_emit_delay_seconds_bucket{le="0.05"} 1`,
		`herd_rollup_window_emit_delay_seconds_bucket{le="+Inf"} 1`,
		`herd_rollup_window_emit_delay_seconds_count 1`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("metrics: missing %q in\n%s", want, b.String())
		}
	}
	if st := r.Stats(); st.Refused() != 1 {
		t.Errorf("Stats.Refused: got %d; want 1", st.Refused())
	}
}

// TestSharedMetricsSum checks that Rollups built with one Metrics count into the same
// counters and that the size gauges sum over them.
func TestSharedMetricsSum(t *testing.T) {
	t.Parallel()
	m := NewMetrics(metrics.NewSet())
	a, err := New(DefaultConfig(), m, func(*proto.Window) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(DefaultConfig(), m, func(*proto.Window) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a.Add(batch(1, 0, now, counter(proto.SeriesRequests, 1)))
	b.Add(batch(2, 0, now, counter(proto.SeriesRequests, 1), counter(proto.SeriesErrors, 1)))
	b.Add(batch(2, 0, now, counter(proto.SeriesRequests, 1))) // a duplicate
	st := m.stats()
	if st.Batches != 3 || st.BatchesMerged != 2 || st.RefusedBy[ReasonDuplicate] != 1 || st.Samples != 3 {
		t.Errorf("got batches %d, merged %d, duplicates %d, samples %d; want 3, 2, 1, 3",
			st.Batches, st.BatchesMerged, st.RefusedBy[ReasonDuplicate], st.Samples)
	}
	if st.Groups != 2 || st.Instances != 2 || st.Series != 3 {
		t.Errorf("got groups %d, instances %d, series %d; want 2, 2, 3 (summed over both rollups)", st.Groups, st.Instances, st.Series)
	}
	b.releaseSizes()
	if st := m.stats(); st.Groups != 1 || st.Instances != 1 || st.Series != 1 || st.Batches != 3 {
		t.Errorf("after releasing b: got groups %d, instances %d, series %d, batches %d; want 1, 1, 1, 3",
			st.Groups, st.Instances, st.Series, st.Batches)
	}
}

func ExampleRollup() {
	emit := func(w *proto.Window) {
		fmt.Printf("%s %s: %d instances, %v requests\n", w.Service, w.Version, w.Instances, w.Find(proto.SeriesRequests).Value)
	}
	r, err := New(DefaultConfig(), nil, emit, nil)
	if err != nil {
		panic(err)
	}
	end := time.Now().Truncate(250 * time.Millisecond)
	for i := range 3 {
		r.Add(&proto.Batch{
			Service: "checkout", Version: "1.4.2", Instance: [16]byte{byte(i)},
			Start: end.Add(-250 * time.Millisecond).UnixNano(), End: end.UnixNano(),
			Series: []proto.Series{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 100}},
		})
	}
	r.Flush() // on shutdown; a running herd closes windows with Run
	// Output: checkout 1.4.2: 3 instances, 300 requests
}
