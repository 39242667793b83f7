package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/sim"
	"github.com/herd-dev/herd/sim/load"
)

// loadFlags are the flags of `herd bench load`.
type loadFlags struct {
	nats                     bus.Client
	instances, conns, procs  int
	rps                      float64
	duration                 time.Duration
	lifetimeMin, lifetimeMax time.Duration
	seed                     uint64
	serveMetrics             string
	lagLimit                 time.Duration
	child                    bool
	cpuProfile               string
	templates                int
}

func benchLoadCommand() command {
	return command{
		name:  "bench load",
		usage: "--nats URL [--instances N] [--conns C] [--procs P] [--duration D] [--serve-metrics URL]",
		short: "drive a running herd serve with a churning fleet over many connections; report whether the generator or herd fell behind, as JSON",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var l loadFlags
			natsFlags(fs, &l.nats, defaultNATSURL)
			fs.IntVar(&l.instances, "instances", 5000, "instances alive at any time, over all processes (count)")
			fs.IntVar(&l.conns, "conns", 8, "NATS connections per process; each publishes the instances of one shard (count)")
			fs.IntVar(&l.procs, "procs", 1, "generator processes; more than 1 runs copies of this binary, each with its share of the instances (count)")
			fs.Float64Var(&l.rps, "rps", 20, "requests per second of each instance (rate)")
			fs.DurationVar(&l.duration, "duration", 30*time.Second, "how long the fleet publishes (duration)")
			fs.DurationVar(&l.lifetimeMin, "lifetime-min", 20*time.Second, "shortest instance lifetime (duration)")
			fs.DurationVar(&l.lifetimeMax, "lifetime-max", 60*time.Second, "longest instance lifetime (duration)")
			fs.Uint64Var(&l.seed, "seed", 1, "random seed of the traffic (process i uses seed+i)")
			fs.StringVar(&l.serveMetrics, "serve-metrics", "", "`URL` of the herd serve's /metrics, scraped every second for its CPU, RSS and refusals (optional)")
			fs.DurationVar(&l.lagLimit, "lag-limit", 100*time.Millisecond, "publish lag (boundary → last batch of the interval handed to NATS) beyond which the generator counts as behind, at p99 (duration)")
			fs.StringVar(&l.cpuProfile, "cpuprofile", "", "write the generator's CPU profile to this `file` (with -procs 1)")
			fs.IntVar(&l.templates, "templates", 64, "batch bodies encoded once per group and reused (sim/load); 0 draws and encodes every batch through a client like herd sim (count)")
			fs.BoolVar(&l.child, "child", false, "run as one of --procs processes: publish and print what was sent, without collecting windows")
			return func(ctx context.Context) error { return benchLoad(ctx, e, l) }
		},
	}
}

// genReport is what one generator process sent and how far behind it was.
type genReport struct {
	Totals           []sim.Totals `json:"totals"`
	Intervals        int          `json:"intervals"`
	BoundariesMissed int          `json:"boundaries_missed"`
	LagP50Ms         float64      `json:"publish_lag_p50_ms"`
	LagP99Ms         float64      `json:"publish_lag_p99_ms"`
	LagMaxMs         float64      `json:"publish_lag_max_ms"`
	OwnLagP99Ms      float64      `json:"own_lag_p99_ms"`
	PublishWaitS     float64      `json:"publish_wait_seconds"`
	CPUCores         float64      `json:"cpu_cores_used"`
	MaxRSSMiB        float64      `json:"max_rss_mib"`
}

// benchLoadReport is what `herd bench load` prints.
type benchLoadReport struct {
	Instances     int     `json:"instances"`
	Procs         int     `json:"procs"`
	Conns         int     `json:"conns_per_proc"`
	Seconds       float64 `json:"seconds"`
	RequestsSent  uint64  `json:"requests_sent"`
	BatchesSent   uint64  `json:"batches_sent"`
	BatchesUnsent uint64  `json:"batches_unsent"`
	BatchesPerSec float64 `json:"batches_per_second"`
	// The generator: the worst of its processes.
	BoundariesMissed int     `json:"gen_boundaries_missed"`
	LagP50Ms         float64 `json:"gen_publish_lag_p50_ms"`
	LagP99Ms         float64 `json:"gen_publish_lag_p99_ms"`
	LagMaxMs         float64 `json:"gen_publish_lag_max_ms"`
	// OwnLagP99Ms is the lag without the time spent blocked in Publish (the NATS server
	// not reading): the generator's own part. PublishWaitS is that blocked time, summed
	// over the shards.
	OwnLagP99Ms  float64 `json:"gen_own_lag_p99_ms"`
	PublishWaitS float64 `json:"gen_publish_wait_seconds"`
	GenCPUCores  float64 `json:"gen_cpu_cores"`
	GenMaxRSSMiB float64 `json:"gen_max_rss_mib"`
	// What a consumer of herd.rollup.> saw.
	WindowsReceived int     `json:"windows_received"`
	Corrections     int     `json:"corrections_received"`
	LostRequests    int64   `json:"lost_requests"`
	WindowDelayP50  float64 `json:"window_delay_p50_ms"`
	WindowDelayP99  float64 `json:"window_delay_p99_ms"`
	Exact           bool    `json:"exact"`
	// herd serve, from its /metrics (with --serve-metrics).
	Serve *serveSample `json:"serve,omitempty"`
	// Behind names who fell behind: "generator", "herd", "both" or "" (neither); Why says
	// what showed it.
	Behind  string  `json:"behind"`
	Why     string  `json:"why,omitempty"`
	LoadAvg float64 `json:"load_avg_1m_at_end"`
}

// serveSample is what `herd bench load` read from herd serve's /metrics over the run.
type serveSample struct {
	CPUCores       float64   `json:"cpu_cores"`
	RSSMiB         []float64 `json:"rss_mib_by_quarter"`
	MaxRSSMiB      float64   `json:"max_rss_mib"`
	RefusedLate    float64   `json:"batches_refused_late"`
	Refused        float64   `json:"batches_refused"`
	Corrected      float64   `json:"batches_corrected"`
	SlowConsumer   float64   `json:"intake_slow_consumer_drops"`
	ClosedComplete float64   `json:"windows_closed_complete"`
	WindowsEmitted float64   `json:"windows_emitted"`
}

func benchLoad(ctx context.Context, e *env, l loadFlags) error {
	if l.instances < 1 || l.conns < 1 || l.procs < 1 || l.duration <= 0 {
		return fmt.Errorf("%w: -instances, -conns, -procs must be ≥ 1 and -duration > 0", errUsage)
	}
	if err := l.nats.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if l.cpuProfile != "" {
		f, err := os.Create(l.cpuProfile)
		if err != nil {
			return fmt.Errorf("cannot write the CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cannot start the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	if l.child {
		r, err := generate(ctx, e, l, l.instances, l.seed)
		if err != nil {
			return err
		}
		out, _ := json.Marshal(r)
		fmt.Fprintln(e.stdout, string(out))
		return nil
	}
	// Windows are counted as a consumer of herd.rollup.> sees them.
	col := &windowCollector{got: map[[2]string]uint64{}}
	wc, err := bus.Connect(l.nats, "herd-bench-windows", nil, e.logger)
	if err != nil {
		return err
	}
	defer wc.Close()
	if _, err := bus.Subscribe(wc, bus.NewDecoder(bus.Handlers{Window: col.add}, nil)); err != nil {
		return err
	}
	if err := wc.Flush(); err != nil {
		return fmt.Errorf("cannot subscribe to windows: %w", err)
	}
	var scr *scraper
	if l.serveMetrics != "" {
		scr = &scraper{url: l.serveMetrics}
		if err := scr.sample(); err != nil {
			return err
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	var swg sync.WaitGroup
	if scr != nil {
		swg.Go(func() { scr.run(runCtx) })
	}
	t0 := time.Now()
	reports, err := generateAll(ctx, e, l)
	elapsed := time.Since(t0)
	stop()
	swg.Wait()
	if err != nil {
		return err
	}
	r := benchLoadReport{Instances: l.instances, Procs: l.procs, Conns: l.conns, Seconds: elapsed.Seconds()}
	var totals []sim.Totals
	for _, g := range reports {
		totals = append(totals, g.Totals...)
		r.BoundariesMissed += g.BoundariesMissed
		r.LagP50Ms = max(r.LagP50Ms, g.LagP50Ms)
		r.LagP99Ms = max(r.LagP99Ms, g.LagP99Ms)
		r.LagMaxMs = max(r.LagMaxMs, g.LagMaxMs)
		r.OwnLagP99Ms = max(r.OwnLagP99Ms, g.OwnLagP99Ms)
		r.PublishWaitS += g.PublishWaitS
		r.GenCPUCores += g.CPUCores
		r.GenMaxRSSMiB += g.MaxRSSMiB
	}
	var want uint64
	for _, t := range totals {
		want += t.Requests
		r.BatchesSent += t.BatchesSent
		r.BatchesUnsent += t.BatchesUnsent
	}
	r.RequestsSent = want
	// The last windows close within the lateness, corrections within another.
	for deadline := time.Now().Add(5 * time.Second); col.requests() != want && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	r.LostRequests = int64(want) - int64(col.requests())
	col.mu.Lock()
	r.WindowsReceived, r.Corrections = col.windows, col.corrections
	r.WindowDelayP50 = float64(percentile(col.delays, 0.50)) / 1e6
	r.WindowDelayP99 = float64(percentile(col.delays, 0.99)) / 1e6
	col.mu.Unlock()
	r.BatchesPerSec = float64(r.BatchesSent) / elapsed.Seconds()
	r.Exact = r.LostRequests == 0 && r.BatchesUnsent == 0
	if scr != nil {
		if err := scr.sample(); err == nil {
			r.Serve = scr.summary()
		}
	}
	r.Behind, r.Why = blameLoad(&r, l.lagLimit)
	r.LoadAvg = loadAvg()
	out, _ := json.Marshal(r)
	fmt.Fprintln(e.stdout, string(out))
	return nil
}

// blameLoad names who fell behind in a bench load run. A generator that was late only
// while blocked in Publish (its own lag within limit, nothing unsent) was held up by the
// NATS server not reading its connections: that counts against herd, whose server it is.
func blameLoad(r *benchLoadReport, limit time.Duration) (behind, why string) {
	gen := genBehind(r.BoundariesMissed, r.LagP99Ms, r.BatchesUnsent, limit)
	herd := herdBehind(r.Serve, r.LostRequests)
	if gen != "" && r.BatchesUnsent == 0 && r.PublishWaitS > 0 && r.OwnLagP99Ms <= float64(limit.Milliseconds()) {
		wait := fmt.Sprintf("the NATS server read the generator's connections late: the generator waited %.1f s in Publish "+
			"(its own lag p99 %.0f ms ≤ %v; %s)", r.PublishWaitS, r.OwnLagP99Ms, limit, gen)
		if herd != "" {
			herd += "; "
		}
		herd, gen = herd+wait, ""
	}
	return blame(gen, herd)
}

// genBehind says why the generator fell behind, or "".
func genBehind(missed int, lagP99Ms float64, unsent uint64, limit time.Duration) string {
	var why []string
	if missed > 0 {
		why = append(why, fmt.Sprintf("generator missed %d interval boundaries", missed))
	}
	if lagP99Ms > float64(limit.Milliseconds()) {
		why = append(why, fmt.Sprintf("generator publish lag p99 %.0f ms > %v", lagP99Ms, limit))
	}
	if unsent > 0 {
		why = append(why, fmt.Sprintf("generator could not send %d batches", unsent))
	}
	return strings.Join(why, "; ")
}

// herdBehind says why herd fell behind, or "", from its /metrics (nil: unknown) and the
// requests missing from its windows.
func herdBehind(s *serveSample, lost int64) string {
	var why []string
	if s != nil {
		if s.RefusedLate > 0 {
			why = append(why, fmt.Sprintf("herd refused %.0f batches as late", s.RefusedLate))
		}
		if s.SlowConsumer > 0 {
			why = append(why, fmt.Sprintf("herd's intake dropped %.0f batches (slow consumer)", s.SlowConsumer))
		}
	}
	if lost != 0 && len(why) == 0 {
		why = append(why, fmt.Sprintf("%d requests missing from the windows", lost))
	}
	return strings.Join(why, "; ")
}

// blame combines the two sides' reasons into who fell behind and why.
func blame(gen, herd string) (behind, why string) {
	switch {
	case gen != "" && herd != "":
		return "both", gen + "; " + herd
	case gen != "":
		return "generator", gen
	case herd != "":
		return "herd", herd
	}
	return "", ""
}

// generateAll runs the fleet in this process, or in l.procs child processes, and returns
// each process's report.
func generateAll(ctx context.Context, e *env, l loadFlags) ([]genReport, error) {
	if l.procs == 1 {
		r, err := generate(ctx, e, l, l.instances, l.seed)
		if err != nil {
			return nil, err
		}
		return []genReport{r}, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find this binary to run generator processes: %w", err)
	}
	reports := make([]genReport, l.procs)
	errs := make([]error, l.procs)
	var wg sync.WaitGroup
	for i := range l.procs {
		n := l.instances / l.procs
		if i < l.instances%l.procs {
			n++
		}
		args := []string{"bench", "load", "-child", "-cpuprofile", "", "-serve-metrics", "", "-nats", l.nats.URLs, "-instances", strconv.Itoa(n),
			"-conns", strconv.Itoa(l.conns), "-rps", fmt.Sprint(l.rps), "-duration", l.duration.String(),
			"-lifetime-min", l.lifetimeMin.String(), "-lifetime-max", l.lifetimeMax.String(),
			"-seed", strconv.FormatUint(l.seed+uint64(i), 10), "-templates", strconv.Itoa(l.templates)}
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, exe, args...)
			cmd.Stderr = e.stderr
			// The credentials go by environment (a password on a command line is visible to
			// every user of the machine), the files by flag.
			cmd.Env = append(os.Environ(), "HERD_NATS_USER="+l.nats.User, "HERD_NATS_PASSWORD="+l.nats.Password,
				"HERD_NATS_CREDS="+l.nats.CredsFile, "HERD_NATS_NKEY="+l.nats.NKeyFile, "HERD_NATS_TLS_CA="+l.nats.TLSCA,
				"HERD_NATS_TLS_CERT="+l.nats.TLSCert, "HERD_NATS_TLS_KEY="+l.nats.TLSKey)
			out, err := cmd.Output()
			if err != nil {
				errs[i] = fmt.Errorf("generator process %d: %w", i, err)
				return
			}
			if err := json.Unmarshal(lastLine(out), &reports[i]); err != nil {
				errs[i] = fmt.Errorf("cannot read generator process %d's report: %w", i, err)
			}
		})
	}
	wg.Wait()
	return reports, errors.Join(errs...)
}

func lastLine(b []byte) []byte {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return []byte(s)
}

// generate runs a fleet of instances over l.conns connections for l.duration and reports
// what it sent and how late it published.
func generate(ctx context.Context, e *env, l loadFlags, instances int, seed uint64) (genReport, error) {
	var r genReport
	groups, err := sim.Spread(sim.SpreadConfig{Services: []string{"checkout", "search", "cart", "auth"}, Instances: instances,
		CanaryShare: 0.2, RPS: l.rps, ErrorRate: 0.005, LatencyMedian: 40 * time.Millisecond, LatencyP99: 200 * time.Millisecond})
	if err != nil {
		return r, fmt.Errorf("%w: -instances %d: %v", errUsage, instances, err)
	}
	conns := make([]*nats.Conn, 0, l.conns)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	pubs := make([]ingest.PublishFunc, 0, l.conns)
	for i := range l.conns {
		nc, err := bus.Connect(l.nats, fmt.Sprintf("herd-bench-load-%d", i), nil, e.logger)
		if err != nil {
			return r, err
		}
		conns = append(conns, nc)
		pubs = append(pubs, nc.Publish)
	}
	lag := newLagRecorder(l.conns)
	var run func(context.Context, time.Time) error
	var totals func() []sim.Totals
	if l.templates > 0 {
		g, err := load.New(load.Config{Groups: groups, LifetimeMin: l.lifetimeMin, LifetimeMax: l.lifetimeMax, Interval: ingest.DefaultInterval,
			Seed: seed, Publishers: pubs, Templates: l.templates, OnInterval: lag.record, OnPublishWait: lag.waited})
		if err != nil {
			return r, fmt.Errorf("%w: %v", errUsage, err)
		}
		run = func(ctx context.Context, end time.Time) error { g.Run(ctx, end); return nil }
		totals = g.Totals
	} else {
		f, err := sim.NewFleet(sim.FleetConfig{Groups: groups, LifetimeMin: l.lifetimeMin, LifetimeMax: l.lifetimeMax,
			Interval: ingest.DefaultInterval, Seed: seed, Shards: l.conns, Publishers: pubs, OnInterval: lag.record, Logger: e.logger})
		if err != nil {
			return r, fmt.Errorf("%w: %v", errUsage, err)
		}
		run, totals = f.Run, f.Totals
	}
	cpu0, t0 := cpuTime(), time.Now()
	if err := run(ctx, t0.Add(l.duration)); err != nil {
		return r, err
	}
	for _, nc := range conns {
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			return r, fmt.Errorf("cannot flush the last batches to NATS: %w", err)
		}
	}
	r.CPUCores = (cpuTime() - cpu0).Seconds() / time.Since(t0).Seconds()
	r.MaxRSSMiB = maxRSSMiB()
	r.Totals = totals()
	lag.report(&r)
	return r, nil
}

// lagRecorder records, per shard, how long after each boundary the shard finished
// publishing, and the boundaries it skipped.
type lagRecorder struct {
	// By shard; each written by its shard's goroutine only.
	lags    [][]time.Duration
	own     [][]time.Duration // lags without the wait in Publish
	skipped []int
	wait    []time.Duration // the interval's wait in Publish, until recorded
	waitSum []time.Duration
}

func newLagRecorder(shards int) *lagRecorder {
	return &lagRecorder{lags: make([][]time.Duration, shards), own: make([][]time.Duration, shards), skipped: make([]int, shards),
		wait: make([]time.Duration, shards), waitSum: make([]time.Duration, shards)}
}

func (l *lagRecorder) record(shard int, boundary, done time.Time, skipped int) {
	lag := done.Sub(boundary)
	l.lags[shard] = append(l.lags[shard], lag)
	l.own[shard] = append(l.own[shard], max(0, lag-l.wait[shard]))
	l.waitSum[shard] += l.wait[shard]
	l.wait[shard] = 0
	l.skipped[shard] += skipped
}

// waited records how long shard's interval, recorded next, waited in Publish.
func (l *lagRecorder) waited(shard int, d time.Duration) { l.wait[shard] = d }

// report fills in r's lag figures; the shards have stopped.
func (l *lagRecorder) report(r *genReport) {
	var all, own []time.Duration
	for i := range l.lags {
		all = append(all, l.lags[i]...)
		own = append(own, l.own[i]...)
		r.BoundariesMissed += l.skipped[i]
		r.PublishWaitS += l.waitSum[i].Seconds()
	}
	r.OwnLagP99Ms = float64(percentile(own, 0.99)) / 1e6
	r.Intervals = len(all)
	r.LagP50Ms = float64(percentile(all, 0.5)) / 1e6
	r.LagP99Ms = float64(percentile(all, 0.99)) / 1e6
	r.LagMaxMs = float64(percentile(all, 1)) / 1e6
}

// scraper samples herd serve's /metrics.
type scraper struct {
	url     string
	mu      sync.Mutex // Guards the fields below.
	samples []map[string]float64
	times   []time.Time
}

func (s *scraper) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = s.sample()
		}
	}
}

// sample reads the families bench load reports, summing over labels.
func (s *scraper) sample() error {
	resp, err := http.Get(s.url)
	if err != nil {
		return fmt.Errorf("cannot scrape %s: %w", s.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cannot scrape %s: %s", s.url, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		switch {
		case name == "process_cpu_seconds_total", name == "process_resident_memory_bytes",
			name == `herd_rollup_batches_refused_total{reason="late"}`,
			name == `herd_ingest_dropped_total{reason="slow_consumer"}`,
			name == "herd_rollup_batches_corrected_total", name == "herd_rollup_windows_closed_complete_total",
			name == "herd_rollup_windows_emitted_total":
			m[name] += v
		case strings.HasPrefix(name, "herd_rollup_batches_refused_total"):
			m["herd_rollup_batches_refused_total"] += v
		}
	}
	s.mu.Lock()
	s.samples = append(s.samples, m)
	s.times = append(s.times, time.Now())
	s.mu.Unlock()
	return sc.Err()
}

// summary returns the differences between the first and the last sample, and the RSS.
func (s *scraper) summary() *serveSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) < 2 {
		return nil
	}
	a, b := s.samples[0], s.samples[len(s.samples)-1]
	d := func(k string) float64 { return b[k] - a[k] }
	out := &serveSample{
		CPUCores:       d("process_cpu_seconds_total") / s.times[len(s.times)-1].Sub(s.times[0]).Seconds(),
		RefusedLate:    d(`herd_rollup_batches_refused_total{reason="late"}`),
		Refused:        d("herd_rollup_batches_refused_total"),
		Corrected:      d("herd_rollup_batches_corrected_total"),
		SlowConsumer:   d(`herd_ingest_dropped_total{reason="slow_consumer"}`),
		ClosedComplete: d("herd_rollup_windows_closed_complete_total"),
		WindowsEmitted: d("herd_rollup_windows_emitted_total"),
	}
	for q := 1; q <= 4; q++ {
		out.RSSMiB = append(out.RSSMiB, s.samples[(len(s.samples)-1)*q/4]["process_resident_memory_bytes"]/(1<<20))
	}
	for _, m := range s.samples {
		out.MaxRSSMiB = max(out.MaxRSSMiB, m["process_resident_memory_bytes"]/(1<<20))
	}
	return out
}

// loadAvg returns the 1-minute load average, or 0.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
