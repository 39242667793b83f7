package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herd-dev/herd/proto"
)

func get(t *testing.T, url, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: cannot decode %q: %v", url, body, err)
		}
	}
	return resp.StatusCode
}

func TestAPI(t *testing.T) {
	t.Parallel()
	ts := startServer(t, testConfig())
	f := newFeeder(ts.srv, 250*time.Millisecond, demoGroups()...)
	f.backfill(10 * time.Second)
	ts.srv.AddDeployment(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"})
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StatePending})
	ts.srv.SetVerdict(proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback,
		Sentence: "errors 5.2× baseline", Evidence: proto.Evidence{EValue: 140, Threshold: 100}})
	ts.srv.SetDecisions(func() []proto.Decision {
		return []proto.Decision{{ID: "d1", Verdict: proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StateRollback}, Status: "delivered",
			Deliveries: []proto.Delivery{{DecisionID: "d1", Target: "webhook:http://x", Attempt: 1, Status: 204, Outcome: "done"}}}}
	})
	waitApplied(t, ts, 41*4+3)
	base := ts.http.URL + "/api/v1"

	var services struct{ Services []ServiceSummary }
	if code := get(t, base+"/services", "", &services); code != 200 || len(services.Services) != 3 {
		t.Fatalf("got %d with %d services; want 200 with 3", code, len(services.Services))
	}
	co := services.Services[0]
	if co.Service != "checkout" || len(co.Groups) != 2 || co.Groups[0].Version != "1.4.2" || co.Verdicts[0].State != proto.StateRollback {
		t.Fatalf("got %+v; want checkout with 2 groups and the rollback verdict", co)
	}
	if g := co.Groups[0]; g.Instances < 18 || g.Instances > 22 || g.RequestsPerSecond < 1500 || g.RequestsPerSecond > 2500 || g.P99 <= g.P50 || g.Windows != 41 {
		t.Fatalf("got group %+v; want ~20 instances, ~2000 req/s, p99 > p50, 41 windows", g)
	}
	var one ServiceSummary
	if code := get(t, base+"/services/checkout", "", &one); code != 200 || len(one.History) != 2 || len(one.Deployments) != 1 {
		t.Fatalf("got %d %+v; want 2 verdict changes and 1 deployment", code, one)
	}
	if code := get(t, base+"/services/nope", "", nil); code != 404 {
		t.Fatalf("got %d for an unknown service; want 404", code)
	}
	var wins struct {
		Fields []string
		Groups []struct {
			Version string
			Points  [][]float64
		}
	}
	since := f.next - 250 - 1000 // a second before the newest backfilled window's end
	if code := get(t, base+"/services/checkout/windows?version=1.5.0&since_ms="+fmt.Sprint(since), "", &wins); code != 200 ||
		len(wins.Groups) != 1 || len(wins.Groups[0].Points) != 4 || wins.Fields[0] != "end_unix_ms" {
		t.Fatalf("got %d %+v; want the 4 newest points of 1.5.0", code, wins)
	}
	if code := get(t, base+"/services/checkout/windows?since_ms=x", "", nil); code != 400 {
		t.Fatalf("got %d for a bad since_ms; want 400", code)
	}
	var series struct{ Windows []proto.Window }
	if code := get(t, base+"/services/checkout/series", "", &series); code != 200 || len(series.Windows) != 2 ||
		series.Windows[0].Find("latency_seconds").Hist == nil {
		t.Fatalf("got %d with %d windows; want 2 full windows with histograms", code, len(series.Windows))
	}
	var verdicts struct{ Verdicts []proto.Verdict }
	if code := get(t, base+"/verdicts", "", &verdicts); code != 200 || len(verdicts.Verdicts) != 1 || verdicts.Verdicts[0].Sentence == "" {
		t.Fatalf("got %d %+v; want the latest verdict only", code, verdicts)
	}
	var deps struct{ Deployments []proto.Deployment }
	if code := get(t, base+"/deployments?service=checkout", "", &deps); code != 200 || len(deps.Deployments) != 1 || deps.Deployments[0].UnixMs == 0 {
		t.Fatalf("got %d %+v; want one stamped deployment", code, deps)
	}
	var decs struct{ Decisions []proto.Decision }
	if code := get(t, base+"/dashboard/decisions", "", &decs); code != 200 || len(decs.Decisions) != 1 || decs.Decisions[0].Deliveries[0].Status != 204 {
		t.Fatalf("got %d %+v; want one decision with its delivery", code, decs)
	}
	for _, page := range []string{"/", "/services/checkout", "/decisions", "/static/app.js", "/static/vendor/uPlot.iife.min.js"} {
		if code := get(t, ts.http.URL+page, "", nil); code != 200 {
			t.Errorf("got %d for %s; want 200", code, page)
		}
	}
}

func post(t *testing.T, url, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAPITokenAndAnnounce(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.HTTP.Token = "tok"
	ts := startServer(t, cfg)
	base := ts.http.URL + "/api/v1"
	if code := get(t, base+"/services", "", nil); code != 401 {
		t.Fatalf("got %d without a token; want 401", code)
	}
	if code := get(t, base+"/services", "wrong", nil); code != 401 {
		t.Fatalf("got %d with a wrong token; want 401", code)
	}
	if code := get(t, base+"/services", "tok", nil); code != 200 {
		t.Fatalf("got %d with the token; want 200", code)
	}
	if code := get(t, base+"/services?token=tok", "", nil); code != 200 {
		t.Fatalf("got %d with the token in the query; want 200", code)
	}
	if code := get(t, ts.http.URL+"/", "", nil); code != 200 {
		t.Fatalf("got %d for the page without a token; want 200 (the page holds no data)", code)
	}
	body := `{"service":"checkout","baseline":"1.4.2","canary":"1.5.0"}`
	if code := post(t, base+"/deployments", "tok", body); code != 403 {
		t.Fatalf("got %d for POST without SetAnnounce; want 403 (read-only)", code)
	}
	var got []proto.Deployment
	ts.srv.SetAnnounce(func(d proto.Deployment) error {
		if d.Canary == "9" {
			return errors.New("detector unavailable")
		}
		if d.Canary == "8" {
			return fmt.Errorf("8 is the established version of checkout: %w", proto.ErrDeploymentRefused)
		}
		got = append(got, d)
		return nil
	})
	if code := post(t, base+"/deployments", "", body); code != 401 {
		t.Fatalf("got %d for POST without the token; want 401", code)
	}
	for body, want := range map[string]int{
		body: 202,
		`{"service":"checkout","baseline":"1","canary":"1"}`: 400,
		`{"service":"Checkout","baseline":"1","canary":"2"}`: 400,
		`not json`: 400,
		`{"service":"checkout","baseline":"1","canary":"9"}`: 503,
		`{"service":"checkout","baseline":"1","canary":"8"}`: 409, // refused by the detector
	} {
		if code := post(t, base+"/deployments", "tok", body); code != want {
			t.Errorf("got %d for POST %s; want %d", code, body, want)
		}
	}
	if len(got) != 1 || got[0].Canary != "1.5.0" {
		t.Fatalf("got announcements %+v; want the one valid deployment", got)
	}
	if n := ts.srv.guard.refused[ReasonUnauthorized].Get(); n != 3 {
		t.Fatalf("got %d unauthorized requests; want 3", n)
	}
}

func TestInputsRefused(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxGroups = 1
	srv, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.AddWindow(nil)
	srv.AddWindow(&proto.Window{Service: "Bad", Version: "1"})
	srv.SetVerdict(proto.Verdict{})
	srv.AddDeployment(proto.Deployment{Service: "a", Baseline: "1", Canary: "1"})
	if n := srv.m.inputsRefused[ReasonBadInput].Get(); n != 4 {
		t.Fatalf("got %d bad inputs; want 4", n)
	}
	srv.apply(input{w: window("a", "1", 1000, 1)})
	srv.apply(input{w: window("a", "1", 1000, 1)})
	srv.apply(input{w: window("a", "2", 1000, 1)})
	if s, g := srv.m.inputsRefused[ReasonStale].Get(), srv.m.inputsRefused[ReasonMaxGroups].Get(); s != 1 || g != 1 {
		t.Fatalf("got %d stale, %d max_groups; want 1, 1", s, g)
	}
	for range inputQueue + 5 {
		srv.AddWindow(window("a", "1", 2000, 1))
	}
	if n := srv.m.inputsRefused[ReasonHubFull].Get(); n != 5 {
		t.Fatalf("got %d hub_full; want 5", n)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, mut := range []func(*Config){
		func(c *Config) { c.MaxClients = 0 },
		func(c *Config) { c.History = time.Millisecond },
		func(c *Config) { c.ClientQueue = 0 },
		func(c *Config) { c.WriteTimeout = 0 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-web.") {
			t.Errorf("got %v for %+v; want an error naming the flag", err, c)
		}
	}
	if c := DefaultConfig(); c.Validate() != nil {
		t.Fatalf("the default config is invalid: %v", c.Validate())
	}
}

// TestReplayExpiresAndGroupsPrune checks the time logic with a fake clock: the replay ring
// forgets events older than Config.Replay (a resume then resets), and groups without windows
// for Config.History are forgotten.
func TestReplayExpiresAndGroupsPrune(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.Replay = 30 * time.Second
		srv, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UnixMilli()
		srv.apply(input{w: window("checkout", "1", now, 1)})
		srv.apply(input{w: window("checkout", "2", now, 1)})
		if evs, ok := srv.replay.since(0, srv.seq, "checkout"); !ok || len(evs) != 2 {
			t.Fatalf("got %d events, ok %v; want both events", len(evs), ok)
		}
		time.Sleep(20 * time.Second)
		srv.apply(input{w: window("checkout", "1", time.Now().UnixMilli(), 1)})
		time.Sleep(15 * time.Second)
		srv.prune(time.Now())
		if _, ok := srv.replay.since(0, srv.seq, ""); ok {
			t.Fatalf("got a resume from seq 0 after 35 s; want a reset (events 1, 2 expired)")
		}
		if evs, ok := srv.replay.since(2, srv.seq, ""); !ok || len(evs) != 1 {
			t.Fatalf("got %d events, ok %v from seq 2; want event 3", len(evs), ok)
		}
		time.Sleep(30 * time.Second) // version 2's only window is now 65 s old, beyond History
		srv.prune(time.Now())
		if srv.ngroups != 1 || srv.services["checkout"].groups["2"] != nil {
			t.Fatalf("got %d groups; want only version 1 left", srv.ngroups)
		}
		time.Sleep(time.Minute)
		srv.prune(time.Now())
		if len(srv.services) != 0 || srv.m.groupsEvicted[groupExpired].Get() != 2 {
			t.Fatalf("got %d services, %d expired; want 0, 2", len(srv.services), srv.m.groupsEvicted[groupExpired].Get())
		}
	})
}

// TestRing checks the ring buffer's bound and since search.
func TestRing(t *testing.T) {
	t.Parallel()
	r := newRing(4)
	for i := range 6 {
		r.add(point{EndMs: int64(i)})
	}
	if r.n != 4 || r.at(0).EndMs != 2 || r.last().EndMs != 5 {
		t.Fatalf("got n %d, oldest %d, newest %d; want 4, 2, 5", r.n, r.at(0).EndMs, r.last().EndMs)
	}
	for since, want := range map[int64]int{-1: 4, 2: 3, 4: 1, 5: 0} {
		if got := len(r.since(nil, since)); got != want {
			t.Errorf("got %d points since %d; want %d", got, since, want)
		}
	}
}
