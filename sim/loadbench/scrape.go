package loadbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServeSample is what Load read from herd serve's /metrics over the run.
type ServeSample struct {
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

// scraper samples herd serve's /metrics.
type scraper struct {
	url     string
	mu      sync.Mutex // Guards the fields below.
	samples []map[string]float64
	times   []time.Time
}

// run samples every second until ctx is done.
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

// sample reads the families Load reports, summing over labels.
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
func (s *scraper) summary() *ServeSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) < 2 {
		return nil
	}
	a, b := s.samples[0], s.samples[len(s.samples)-1]
	d := func(k string) float64 { return b[k] - a[k] }
	out := &ServeSample{
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
