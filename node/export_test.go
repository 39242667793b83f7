package node

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/herd-dev/herd/export"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// scrapeGroups GETs url and parses it as Prometheus does.
func scrapeGroups(t *testing.T, url string) (map[string]*dto.MetricFamily, error) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(bytes.NewReader(body))
}

// metricWith returns the metric of family name carrying every label of want, or nil.
func metricWith(mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	if mfs[name] == nil {
		return nil
	}
next:
	for _, m := range mfs[name].Metric {
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

// promQuantile is PromQL's histogram_quantile over classic buckets.
func promQuantile(q float64, bs []*dto.Bucket) float64 {
	total := float64(bs[len(bs)-1].GetCumulativeCount())
	rank := q * total
	i := sort.Search(len(bs), func(i int) bool { return float64(bs[i].GetCumulativeCount()) >= rank })
	if math.IsInf(bs[i].GetUpperBound(), 1) {
		return bs[i-1].GetUpperBound()
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = bs[i-1].GetUpperBound(), float64(bs[i-1].GetCumulativeCount())
	}
	return lo + (bs[i].GetUpperBound()-lo)*(rank-below)/(float64(bs[i].GetCumulativeCount())-below)
}

// TestExportGroups publishes windows through NATS to a detect+web node and checks that
// /metrics/groups, parsed with expfmt, carries the windows' totals, a latency histogram
// whose histogram_quantile lands in herd's own p99 bucket, and the verdict the API shows.
func TestExportGroups(t *testing.T) {
	lightParallel(t)
	ns := natstest.RunServer(t, natstest.Options{JetStream: true})
	cfg := DefaultConfig()
	cfg.NATS.URLs, cfg.DataDir, cfg.HTTPListen, cfg.MetricsListen = ns.ClientURL(), t.TempDir(), "127.0.0.1:0", "127.0.0.1:0"
	n := startRoles(t, cfg, Roles{Detect: true, Web: true})
	nc := natstest.Connect(t, ns)

	var hist [2]proto.Histogram
	var req, errs [2]float64
	end := time.Now().Add(-time.Minute).Truncate(250 * time.Millisecond).UnixMilli()
	for k := range 40 {
		for i, v := range []string{"1.4.2", "1.5.0"} {
			w := &proto.Window{Service: "checkout", Version: v, StartMs: end - 250, EndMs: end, Instances: 4 + i, ClosedMs: end + 100}
			h := &proto.Histogram{}
			for j := range 200 {
				h.Observe(0.02*float64(1+i)*(1+float64(j%50)/10), 1) // 20–118 ms, twice that for the canary
			}
			w.Series = []proto.WindowSeries{
				{Name: "requests_total", Kind: proto.KindCounter, Value: 200},
				{Name: "errors_total", Kind: proto.KindCounter, Value: float64(k % (2 + 3*i))},
				{Name: "latency_seconds", Kind: proto.KindHistogram, Hist: h, Count: h.Count, Sum: h.Sum},
			}
			w.Series[2].SetQuantiles()
			hist[i].Merge(h)
			req[i] += 200
			errs[i] += w.Series[1].Value
			data, err := proto.MarshalWindow(w)
			if err != nil {
				t.Fatal(err)
			}
			subj, err := proto.RollupSubject(w.Service, w.Version)
			if err != nil {
				t.Fatal(err)
			}
			if err := nc.Publish(subj, data); err != nil {
				t.Fatal(err)
			}
		}
		end += 250
	}
	if err := n.Announce(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"}); err != nil {
		t.Fatal(err)
	}
	// The token-free operations listener serves the same export as the main one.
	opsURL := "http://" + n.opsLn.Addr().String() + "/metrics/groups"
	var mfs map[string]*dto.MetricFamily
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		var err error
		if mfs, err = scrapeGroups(t, opsURL); err != nil {
			return err
		}
		for i, v := range []string{"1.4.2", "1.5.0"} {
			g := map[string]string{"service": "checkout", "version": v}
			if m := metricWith(mfs, "herd_group_requests_total", g); m == nil || m.GetCounter().GetValue() != req[i] {
				return errorf("%s requests: got %v; want %v", v, m, req[i])
			}
		}
		if metricWith(mfs, "herd_verdict", map[string]string{"canary": "1.5.0"}) == nil {
			return errorf("no verdict for 1.5.0 yet")
		}
		return nil
	})
	if _, err := scrapeGroups(t, n.HTTPURL()+"/metrics/groups"); err != nil {
		t.Errorf("main listener: %v", err)
	}
	for i, v := range []string{"1.4.2", "1.5.0"} {
		g := map[string]string{"service": "checkout", "version": v}
		if m := metricWith(mfs, "herd_group_errors_total", g); m.GetCounter().GetValue() != errs[i] {
			t.Errorf("%s errors: got %v; want %v", v, m, errs[i])
		}
		if m := metricWith(mfs, "herd_group_instances", g); m.GetGauge().GetValue() != float64(4+i) {
			t.Errorf("%s instances: got %v; want %d", v, m, 4+i)
		}
		h := metricWith(mfs, "herd_group_latency_seconds", g).GetHistogram()
		if h.GetSampleCount() != hist[i].Count {
			t.Errorf("%s latency count: got %d; want %d", v, h.GetSampleCount(), hist[i].Count)
		}
		bounds := export.DefaultBuckets()
		got, own := promQuantile(0.99, h.Bucket), hist[i].Quantile(0.99)
		gb, ob := sort.SearchFloat64s(bounds, got), sort.SearchFloat64s(bounds, own)
		if gb-ob > 1 || ob-gb > 1 {
			t.Errorf("%s p99: histogram_quantile %v in bucket %d; herd's %v in bucket %d", v, got, gb, own, ob)
		}
		t.Logf("%s p99: histogram_quantile %.4f s, herd %.4f s", v, got, own)
	}
	// The verdict the export shows is the API's (the comparison may decide meanwhile: the
	// canary is slower, so compare both reads until they agree).
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get(n.HTTPURL() + "/api/v1/verdicts?service=checkout&canary=1.5.0")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var api struct {
			Verdicts []proto.Verdict `json:"verdicts"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&api); err != nil {
			return err
		}
		if len(api.Verdicts) != 1 || api.Verdicts[0].Baseline != "1.4.2" {
			return errorf("API verdicts: got %+v; want one of 1.5.0 against 1.4.2", api.Verdicts)
		}
		if mfs, err = scrapeGroups(t, opsURL); err != nil {
			return err
		}
		for _, st := range []proto.State{proto.StatePending, proto.StatePass, proto.StateRollback, proto.StateInconclusive} {
			want := 0.0
			if st == api.Verdicts[0].State {
				want = 1
			}
			m := metricWith(mfs, "herd_verdict", map[string]string{"service": "checkout", "baseline": "1.4.2", "canary": "1.5.0", "state": string(st)})
			if m == nil || m.GetGauge().GetValue() != want {
				return errorf("herd_verdict %s: got %v; want %v (the API says %s)", st, m, want, api.Verdicts[0].State)
			}
		}
		return nil
	})
	if !strings.Contains(mfs["herd_verdict"].GetHelp(), "verdict") {
		t.Errorf("herd_verdict help: got %q", mfs["herd_verdict"].GetHelp())
	}
}
