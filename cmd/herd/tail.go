package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

func tailCommand() command {
	return command{
		name:  "tail",
		usage: "--nats URL [--service S] [--json]",
		short: "print closed windows as they arrive",
		flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			var client bus.Client
			natsFlags(fs, &client, defaultNATSURL)
			service := fs.String("service", "", "only windows of this `service` (default all)")
			asJSON := fs.Bool("json", false, "print one JSON object per window and line")
			policy := fs.String("detect.policy", "", "the detector's policy `file` (JSON or YAML), for the signal definitions it pins (empty: every service's profile is detected from its series)")
			return func(ctx context.Context) error {
				sr, err := newSignalReader(*policy)
				if err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				subject := proto.SubjectRollupAll
				if *service != "" {
					if err := proto.ValidService(*service); err != nil {
						return fmt.Errorf("%w: -service: %v", errUsage, err)
					}
					subject = proto.PrefixRollup + *service + ".>"
				}
				if err := client.Validate(); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				nc, err := bus.Connect(client, "herd-tail", nil, e.logger)
				if err != nil {
					return err
				}
				defer nc.Close()
				return tail(ctx, nc, subject, *asJSON, sr, e.stdout)
			}
		},
	}
}

// tailSeries is one series of a window as `herd tail --json` prints it.
type tailSeries struct {
	Name   string       `json:"name"`
	Labels proto.Labels `json:"labels,omitempty"`
	Kind   proto.Kind   `json:"kind"`
	Value  *float64     `json:"value,omitempty"`
	Min    *float64     `json:"min,omitempty"`
	Max    *float64     `json:"max,omitempty"`
	Count  *uint64      `json:"count,omitempty"`
	Sum    *float64     `json:"sum,omitempty"`
	P50    *float64     `json:"p50,omitempty"`
	P90    *float64     `json:"p90,omitempty"`
	P99    *float64     `json:"p99,omitempty"`
}

// tailWindow is a window as `herd tail --json` prints it.
type tailWindow struct {
	Service          string       `json:"service"`
	Version          string       `json:"version"`
	StartMs          int64        `json:"start_unix_ms"`
	EndMs            int64        `json:"end_unix_ms"`
	Instances        int          `json:"instances"`
	InstancesStarted int          `json:"instances_started"`
	InstancesStopped int          `json:"instances_stopped"`
	Correction       bool         `json:"correction,omitempty"` // late data of a window printed before; totals add it
	Signals          *tailSignals `json:"signals,omitempty"`
	Series           []tailSeries `json:"series"`
}

// tailSignals are a window's signals under its service's definition (package signals), the
// one the detector and the dashboard read. Latencies are in seconds (0: no latency).
type tailSignals struct {
	Profile  string  `json:"profile"`
	Requests float64 `json:"requests"`
	Errors   float64 `json:"errors"`
	P50      float64 `json:"p50"`
	P90      float64 `json:"p90"`
	P99      float64 `json:"p99"`
}

// maxTailServices bounds the services whose detected profile `herd tail` remembers; beyond
// it the memory starts over (profiles are detected again from the next windows).
const maxTailServices = 10_000

// signalReader reads windows' signals as the detector does: the definitions a policy pins,
// else the profile detected per service. It is used from one goroutine at a time.
type signalReader struct {
	pinned  func(service string) *signals.Definition
	choices map[string]*signals.Choice
	vals    signals.Values
}

// newSignalReader loads the policy file at path ("" for none).
func newSignalReader(path string) (*signalReader, error) {
	sr := &signalReader{pinned: func(string) *signals.Definition { return nil }, choices: map[string]*signals.Choice{}}
	if path == "" {
		return sr, nil
	}
	cfg := alert.DefaultConfig()
	pol, err := alert.LoadPolicy(path, &cfg)
	if err != nil {
		return nil, fmt.Errorf("-detect.policy: %w", err)
	}
	sr.pinned = func(service string) *signals.Definition { return pol.Signals(&cfg, service) }
	return sr, nil
}

// read returns w's signals, after letting w's series choose its service's profile.
func (sr *signalReader) read(w *proto.Window) *tailSignals {
	c := sr.choices[w.Service]
	if c == nil {
		if len(sr.choices) >= maxTailServices {
			clear(sr.choices)
		}
		ch := signals.NewChoice(sr.pinned(w.Service))
		c = &ch
		sr.choices[w.Service] = c
	}
	c.Observe(w.Series)
	d := c.Definition()
	v := &sr.vals
	d.Read(w.Series, v)
	out := &tailSignals{Profile: d.Profile, Requests: v.Requests, Errors: v.Errors}
	if v.HasLatency && v.Latency.Count > 0 {
		out.P50, out.P90, out.P99 = v.Latency.Quantile(0.5), v.Latency.Quantile(0.9), v.Latency.Quantile(0.99)
	}
	return out
}

func toTail(w *proto.Window) tailWindow {
	t := tailWindow{Service: w.Service, Version: w.Version, StartMs: w.StartMs, EndMs: w.EndMs,
		Instances: w.Instances, InstancesStarted: w.InstancesStarted, InstancesStopped: w.InstancesStopped,
		Correction: w.Correction, Series: make([]tailSeries, 0, len(w.Series))}
	for i := range w.Series {
		s := &w.Series[i]
		ts := tailSeries{Name: s.Name, Labels: s.Labels, Kind: s.Kind}
		switch s.Kind {
		case proto.KindCounter:
			ts.Value = &s.Value
		case proto.KindGauge:
			ts.Value, ts.Min, ts.Max, ts.Count, ts.Sum = &s.Value, &s.Min, &s.Max, &s.Count, &s.Sum
		case proto.KindHistogram:
			s.SetQuantiles()
			ts.Count, ts.Sum, ts.P50, ts.P90, ts.P99 = &s.Count, &s.Sum, &s.P50, &s.P90, &s.P99
		}
		t.Series = append(t.Series, ts)
	}
	return t
}

// tail prints every window on subject until ctx is done. Windows are printed by the
// subscription's goroutine; a window that does not decode is reported on its own line.
func tail(ctx context.Context, nc *nats.Conn, subject string, asJSON bool, sr *signalReader, out io.Writer) error {
	bw := bufio.NewWriter(out)
	var mu sync.Mutex // guards bw
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			fmt.Fprintf(bw, "# %s: %v\n", m.Subject, err)
		} else if asJSON {
			t := toTail(w)
			t.Signals = sr.read(w)
			b, _ := json.Marshal(t)
			bw.Write(b)
			bw.WriteByte('\n')
		} else {
			bw.WriteString(formatWindow(w, sr.read(w)))
		}
		bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", subject, err)
	}
	if err := sub.SetPendingLimits(1<<20, 256<<20); err != nil {
		return fmt.Errorf("cannot set pending limits on %s: %w", subject, err)
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", subject, err)
	}
	<-ctx.Done()
	// Print what already arrived before returning.
	if err := sub.Drain(); err != nil {
		return fmt.Errorf("cannot drain %s: %w", subject, err)
	}
	for deadline := time.Now().Add(2 * time.Second); sub.IsValid() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return bw.Flush()
}

// formatWindow renders a window on one line for people, its signals (if not nil) first.
func formatWindow(w *proto.Window, sig *tailSignals) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s inst=%d", time.UnixMilli(w.StartMs).Format("15:04:05.000"), w.Service, w.Version, w.Instances)
	if w.Correction {
		b.WriteString(" correction")
	}
	if w.InstancesStarted > 0 || w.InstancesStopped > 0 {
		fmt.Fprintf(&b, " (+%d -%d)", w.InstancesStarted, w.InstancesStopped)
	}
	if sig != nil {
		fmt.Fprintf(&b, " [%s req=%s err=%s", sig.Profile, fmtNum(sig.Requests), fmtNum(sig.Errors))
		if sig.P99 > 0 {
			fmt.Fprintf(&b, " p50=%s p99=%s", fmtSeconds(sig.P50), fmtSeconds(sig.P99))
		}
		b.WriteByte(']')
	}
	for i := range w.Series {
		s := &w.Series[i]
		b.WriteByte(' ')
		b.WriteString(proto.SeriesString(s.Name, s.Labels))
		switch s.Kind {
		case proto.KindCounter:
			fmt.Fprintf(&b, "=%s", fmtNum(s.Value))
		case proto.KindGauge:
			fmt.Fprintf(&b, "=%s[%s..%s]", fmtNum(s.Value), fmtNum(s.Min), fmtNum(s.Max))
		case proto.KindHistogram:
			s.SetQuantiles()
			fmt.Fprintf(&b, "{n=%d p50=%s p90=%s p99=%s}", s.Count, fmtSeconds(s.P50), fmtSeconds(s.P90), fmtSeconds(s.P99))
		}
	}
	b.WriteByte('\n')
	return b.String()
}

func fmtNum(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.4g", v)
}

func fmtSeconds(v float64) string {
	return time.Duration(v * float64(time.Second)).Round(100 * time.Microsecond).String()
}
