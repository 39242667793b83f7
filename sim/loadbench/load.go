// Package loadbench measures herd's intake under load: it drives herd with a churning fleet
// over many NATS connections, counts what comes back as windows, and says whether the
// generator or herd fell behind. It owns `herd bench load` (Load: a fleet against a running
// herd serve, in one or many processes, with serve's CPU, RSS and refusals read from its
// /metrics) and `herd bench ingest` (Ingest: herd and the fleet in one process).
//
// The fleet is Generate's: sim/load's template generator by default, or sim.Fleet drawing
// every batch. A generator that publishes late is behind; so is one whose NATS server does
// not read its connections (the wait in Publish), but that lag is charged to herd, whose
// server it is. What herd did not keep up with shows as refusals, slow-consumer drops and
// requests missing from the windows.
package loadbench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/herd-dev/herd/sim"
)

// LoadConfig configures Load.
type LoadConfig struct {
	// Gen is the fleet: all of it when this process generates alone, else the total over
	// the generator processes (Instances, Conns per process).
	Gen GenConfig
	// Procs is the number of generator processes Generate runs (reported only).
	Procs int
	// ServeMetrics is the URL of herd serve's /metrics, scraped every second for its CPU,
	// RSS and refusals (empty: not scraped).
	ServeMetrics string
	// LagLimit is the publish lag p99 beyond which the generator counts as behind.
	LagLimit time.Duration
	// Generate runs the generators and returns each one's report; nil runs Generate(ctx,
	// Gen) in this process. `herd bench load --procs N` runs N processes of itself.
	Generate func(ctx context.Context) ([]GenReport, error)
}

// LoadReport is what `herd bench load` prints.
type LoadReport struct {
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
	// herd serve, from its /metrics (with ServeMetrics).
	Serve *ServeSample `json:"serve,omitempty"`
	// Behind names who fell behind: "generator", "herd", "both" or "" (neither); Why says
	// what showed it.
	Behind  string  `json:"behind"`
	Why     string  `json:"why,omitempty"`
	LoadAvg float64 `json:"load_avg_1m_at_end"`
}

// Load drives a running herd with cfg's fleet, counts the windows it publishes, and reports
// what was sent, what came back, and who fell behind.
func Load(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	if err := cfg.Gen.NATS.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	gen := cfg.Generate
	if gen == nil {
		gen = func(ctx context.Context) ([]GenReport, error) {
			r, err := Generate(ctx, cfg.Gen)
			return []GenReport{r}, err
		}
	}
	// Windows are counted as a consumer of herd.rollup.> sees them.
	col := NewCollector()
	wc, err := col.Subscribe(cfg.Gen.NATS, loggerOf(cfg.Gen.Logger))
	if err != nil {
		return nil, err
	}
	defer wc.Close()
	var scr *scraper
	if cfg.ServeMetrics != "" {
		scr = &scraper{url: cfg.ServeMetrics}
		if err := scr.sample(); err != nil {
			return nil, err
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	var swg sync.WaitGroup
	if scr != nil {
		swg.Go(func() { scr.run(runCtx) })
	}
	t0 := time.Now()
	reports, err := gen(ctx)
	elapsed := time.Since(t0)
	stop()
	swg.Wait()
	if err != nil {
		return nil, err
	}
	r := &LoadReport{Instances: cfg.Gen.Instances, Procs: cfg.Procs, Conns: cfg.Gen.Conns, Seconds: elapsed.Seconds()}
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
	for _, t := range totals {
		r.RequestsSent += t.Requests
		r.BatchesSent += t.BatchesSent
		r.BatchesUnsent += t.BatchesUnsent
	}
	r.LostRequests = col.Wait(r.RequestsSent, 5*time.Second)
	seen := col.Seen()
	r.WindowsReceived, r.Corrections = seen.Windows, seen.Corrections
	r.WindowDelayP50, r.WindowDelayP99 = ms(seen.DelayP50), ms(seen.DelayP99)
	r.BatchesPerSec = float64(r.BatchesSent) / elapsed.Seconds()
	r.Exact = r.LostRequests == 0 && r.BatchesUnsent == 0
	if scr != nil {
		if err := scr.sample(); err == nil {
			r.Serve = scr.summary()
		}
	}
	r.Behind, r.Why = blameLoad(r, cfg.LagLimit)
	r.LoadAvg = loadAvg()
	return r, nil
}

// blameLoad names who fell behind in a Load run. A generator that was late only while
// blocked in Publish (its own lag within limit, nothing unsent) was held up by the NATS
// server not reading its connections: that counts against herd, whose server it is.
func blameLoad(r *LoadReport, limit time.Duration) (behind, why string) {
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
func herdBehind(s *ServeSample, lost int64) string {
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

// loadAvg returns the 1-minute load average, or 0.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0
	}
	f, _ := strconv.ParseFloat(fields[0], 64)
	return f
}

// loggerOf returns l, or a logger that discards everything when l is nil.
func loggerOf(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
