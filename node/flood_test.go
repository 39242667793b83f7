package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/web"
)

// metricValues returns the samples of set by name with labels ("herd_rollup_groups",
// `herd_rollup_batches_refused_total{reason="late"}`).
func metricValues(set *metrics.Set) map[string]float64 {
	var b strings.Builder
	set.WritePrometheus(&b)
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// byReason returns the non-zero samples of family by their reason label.
func byReason(vals map[string]float64, family string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range vals {
		if r, ok := strings.CutPrefix(k, family+`{reason="`); ok && v > 0 {
			out[strings.TrimSuffix(r, `"}`)] = v
		}
	}
	return out
}

// TestGroupFloodLeavesNewServiceExact floods a serve node with 50,000 distinct group subjects
// in about 20 s (under make perf; make test floods 5,000 into tables of 1,000) (half of them versions of four services — one in make test —, half services of one version each)
// while a new service with a baseline and a canary starts: the new service's window totals
// equal what its fleet published, exactly, and the dashboard shows both its groups. The flood
// is paced by what the intake has handled (at most 200 batches ahead), so that the test's
// outcome does not depend on the machine's speed, only its duration does.
func TestGroupFloodLeavesNewServiceExact(t *testing.T) {
	heavyParallel(t)
	if testing.Short() {
		t.Skip("floods a node for 8-20 s")
	}
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.DataDir, cfg.HTTPListen = "127.0.0.1:0", t.TempDir(), ""
	subjects, floodFor, many := 50_000, 20*time.Second, 4
	if !perftest.Enabled() {
		// make test floods a tenth as much into tables a tenth as large: the same pressure on
		// admission for a tenth of the work. make perf floods at full size with the defaults.
		// One service takes every new version (over 300 a second), so its quota binds
		// however fast one-shot groups are evicted.
		subjects, floodFor, many = 5_000, 8*time.Second, 1
		cfg.Rollup.MaxGroups, cfg.Detect.MaxGroups, cfg.Web.MaxGroups = 1_000, 1_000, 100
		cfg.Rollup.InstanceTTL = 3 * time.Second // the table drains sooner after the flood
	}
	n, stop := runNode(t, cfg, testLogger(t))
	waitReady(t, n)
	ws := collectWindows(t, n.NATSURL(), proto.PrefixRollup+"fresh.>")

	const ahead = 200 // batches the flood may be ahead of the intake
	floodNC, err := nats.Connect(n.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer floodNC.Close()
	var (
		sent     atomic.Int64
		maxRoll  atomic.Int64
		maxWeb   atomic.Int64
		maxDet   atomic.Int64
		floodEnd time.Time
	)
	handled := func() int64 { st := n.Intake().Stats(); return int64(st.Batches + st.Refused()) }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { // samples the tables
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			v := metricValues(n.Metrics())
			maxRoll.Store(max(maxRoll.Load(), int64(v["herd_rollup_groups"])))
			maxWeb.Store(max(maxWeb.Load(), int64(v["herd_web_groups"])))
			maxDet.Store(max(maxDet.Load(), int64(v["herd_detector_groups"])))
		}
	})
	start := time.Now()
	floodDone := make(chan error, 1)
	go func() {
		var enc proto.Encoder
		var b proto.Batch
		b.Series = []proto.Series{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 1}}
		var data []byte
		for i := range subjects {
			due := start.Add(time.Duration(i) * floodFor / time.Duration(subjects))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			for int64(i)-handled() > ahead {
				time.Sleep(time.Millisecond)
			}
			b.Service, b.Version = fmt.Sprintf("one-%d", i), "1"
			if i%2 == 0 {
				b.Service, b.Version = fmt.Sprintf("many-%d", i/2%many), fmt.Sprintf("v%d", i)
			}
			b.Instance = [16]byte{byte(i), byte(i >> 8), byte(i >> 16), 0xf1}
			now := time.Now()
			b.InstanceStart, b.Start, b.End = now.UnixNano(), now.Add(-250*time.Millisecond).UnixNano(), now.UnixNano()
			subject, err := proto.InSubject(b.Service, b.Version)
			if err != nil {
				floodDone <- err
				return
			}
			if data, err = enc.Append(data[:0], &b); err != nil {
				floodDone <- err
				return
			}
			if err := floodNC.Publish(subject, data); err != nil {
				floodDone <- err
				return
			}
			sent.Add(1)
		}
		floodDone <- floodNC.Flush()
	}()

	// The new service starts a third into the flood and reports for 7 s.
	time.Sleep(floodFor / 3)
	fleetNC, err := nats.Connect(n.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer fleetNC.Close()
	f := churnFleet(t, fleetNC.Publish, 9, sim.SpreadConfig{Services: []string{"fresh"}, Instances: 12, CanaryShare: 0.25},
		2*time.Second, 5*time.Second)
	fleetDone := make(chan error, 1)
	fleetStart := time.Now()
	go func() { fleetDone <- f.Run(context.Background(), fleetStart.Add(7*time.Second)) }()

	// While it reports, the dashboard shows both groups of the new service (idle for 2 s
	// after the fleet stops, they may make room for the flood). How soon depends on how fast
	// the dashboard's table turns over under the flood: a bound for make perf.
	shown := func() error {
		rec := httptest.NewRecorder()
		n.web.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/services/fresh", nil))
		var sum web.ServiceSummary
		if err := json.Unmarshal(rec.Body.Bytes(), &sum); err != nil || len(sum.Groups) != 2 || sum.Groups[0].Windows < 2 || sum.Groups[1].Windows < 2 {
			return errorf("dashboard of fresh: got %d %s; want both groups with 2 windows or more", rec.Code, rec.Body.String())
		}
		return nil
	}
	shownAfter := 8 * time.Second
	for deadline := fleetStart.Add(shownAfter); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := shown(); err == nil {
			shownAfter = time.Since(fleetStart)
			break
		}
	}
	perftest.Within(t, "dashboard shows both groups of the new service after it started", shownAfter, 8*time.Second)
	if err := <-fleetDone; err != nil {
		t.Fatal(err)
	}
	if err := fleetNC.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := <-floodDone; err != nil {
		t.Fatalf("flood: %v", err)
	}
	floodEnd = time.Now()
	t.Logf("flood: %d subjects in %s", sent.Load(), floodEnd.Sub(start).Round(time.Millisecond))

	// The rollup's table drains once the flood and the fleet have stopped (InstanceTTL after
	// the last batch at the least; how much longer depends on the machine's load).
	checkFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
		if g := n.Rollup().Stats().Groups; g > 0 {
			return errorf("rollup still holds %d groups", g)
		}
		return nil
	})
	drained := time.Since(floodEnd)
	perftest.Within(t, "rollup table empty after the flood", drained, 30*time.Second)
	cancel()
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	v := metricValues(n.Metrics())
	t.Logf("groups held at most: rollup %d (limit %d), detector %d (limit %d), dashboard %d (limit %d); rollup table empty %s after the flood",
		maxRoll.Load(), cfg.Rollup.MaxGroups, maxDet.Load(), cfg.Detect.MaxGroups, maxWeb.Load(), cfg.Web.MaxGroups, drained.Round(100*time.Millisecond))
	t.Logf("rollup: refused %v, groups forgotten %v, windows emitted %v (empty %v)",
		byReason(v, "herd_rollup_batches_refused_total"), byReason(v, "herd_rollup_groups_forgotten_total"),
		v["herd_rollup_windows_emitted_total"], v["herd_rollup_empty_windows_emitted_total"])
	t.Logf("detector: dropped %v, groups forgotten %v, groups held at the end %v", byReason(v, "herd_detector_windows_dropped_total"),
		byReason(v, "herd_detector_groups_forgotten_total"), v["herd_detector_groups"])
	t.Logf("dashboard: refused %v, groups evicted %v, groups held at the end %v", byReason(v, "herd_web_inputs_refused_total"),
		byReason(v, "herd_web_groups_evicted_total"), v["herd_web_groups"])
	t.Logf("intake: dropped %v", byReason(v, "herd_ingest_dropped_total"))

	want := f.Totals()
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		for _, w := range want {
			got := ws.byGroup[[2]string{w.Service, w.Version}]
			if got == nil {
				return errorf("no windows for %s/%s", w.Service, w.Version)
			}
			if got.Requests != w.Requests || got.Errors != w.Errors || got.LatencyCount != w.LatencyCount {
				return errorf("%s/%s: windows hold requests=%d errors=%d latency_count=%d; the fleet published %d %d %d",
					w.Service, w.Version, got.Requests, got.Errors, got.LatencyCount, w.Requests, w.Errors, w.LatencyCount)
			}
		}
		return nil
	})
	for _, w := range want {
		t.Logf("%s/%s: exact, %d requests, %d errors, %d latencies, %d instances started", w.Service, w.Version,
			w.Requests, w.Errors, w.LatencyCount, w.InstancesStarted)
	}
	if v[`herd_rollup_batches_refused_total{reason="too_many_versions"}`] == 0 {
		t.Errorf("no batch refused as too_many_versions; want the flooding services held to their quota")
	}
}
