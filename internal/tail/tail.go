// Package tail prints herd's closed windows as they arrive on NATS (`herd tail`): one line
// per window for people (Format) or one JSON object per line for scripts (Window), each with
// the window's signals read as the detector and the dashboard read them (SignalReader: the
// definitions the detector's policy pins, else the profile detected from the series).
package tail

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

// Series is one series of a window as `herd tail --json` prints it.
type Series struct {
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

// Window is a window as `herd tail --json` prints it.
type Window struct {
	Service          string   `json:"service"`
	Version          string   `json:"version"`
	StartMs          int64    `json:"start_unix_ms"`
	EndMs            int64    `json:"end_unix_ms"`
	Instances        int      `json:"instances"`
	InstancesStarted int      `json:"instances_started"`
	InstancesStopped int      `json:"instances_stopped"`
	Correction       bool     `json:"correction,omitempty"` // late data of a window printed before; totals add it
	Signals          *Signals `json:"signals,omitempty"`
	Series           []Series `json:"series"`
}

// Signals are a window's signals under its service's definition (package signals), the
// one the detector and the dashboard read. Latencies are in seconds (0: no latency).
type Signals struct {
	Profile  string  `json:"profile"`
	Requests float64 `json:"requests"`
	Errors   float64 `json:"errors"`
	P50      float64 `json:"p50"`
	P90      float64 `json:"p90"`
	P99      float64 `json:"p99"`
}

// maxServices bounds the services whose detected profile `herd tail` remembers; beyond
// it the memory starts over (profiles are detected again from the next windows).
const maxServices = 10_000

// SignalReader reads windows' signals as the detector does: the definitions a policy pins,
// else the profile detected per service. It is used from one goroutine at a time; it
// remembers the profiles of up to maxServices services.
type SignalReader struct {
	pinned  func(service string) *signals.Definition
	choices map[string]*signals.Choice
	vals    signals.Values
}

// NewSignalReader returns a reader of the definitions the detector's policy file at path
// pins ("" for none: every service's profile is detected from its series).
func NewSignalReader(path string) (*SignalReader, error) {
	sr := &SignalReader{pinned: func(string) *signals.Definition { return nil }, choices: map[string]*signals.Choice{}}
	if path == "" {
		return sr, nil
	}
	cfg := alert.DefaultConfig()
	pol, err := alert.LoadPolicy(path, &cfg)
	if err != nil {
		return nil, err
	}
	sr.pinned = func(service string) *signals.Definition { return pol.Signals(&cfg, service) }
	return sr, nil
}

// Read returns w's signals, after letting w's series choose its service's profile.
func (sr *SignalReader) Read(w *proto.Window) *Signals {
	c := sr.choices[w.Service]
	if c == nil {
		if len(sr.choices) >= maxServices {
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
	out := &Signals{Profile: d.Profile, Requests: v.Requests, Errors: v.Errors}
	if v.HasLatency && v.Latency.Count > 0 {
		out.P50, out.P90, out.P99 = v.Latency.Quantile(0.5), v.Latency.Quantile(0.9), v.Latency.Quantile(0.99)
	}
	return out
}

// NewWindow returns w as `herd tail --json` prints it. It sets w's histogram quantiles.
func NewWindow(w *proto.Window) Window {
	t := Window{Service: w.Service, Version: w.Version, StartMs: w.StartMs, EndMs: w.EndMs,
		Instances: w.Instances, InstancesStarted: w.InstancesStarted, InstancesStopped: w.InstancesStopped,
		Correction: w.Correction, Series: make([]Series, 0, len(w.Series))}
	for i := range w.Series {
		s := &w.Series[i]
		ts := Series{Name: s.Name, Labels: s.Labels, Kind: s.Kind}
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

// Config configures Run.
type Config struct {
	// Subject is the NATS subject of the windows (Subject's).
	Subject string
	// JSON prints one JSON object (Window) per window and line instead of Format's line.
	JSON bool
	// Signals reads each window's signals; nil reads them as with no policy.
	Signals *SignalReader
	// Out is where the windows are printed.
	Out io.Writer
}

// Subject returns the NATS subject of service's windows, or of every service's for "".
func Subject(service string) (string, error) {
	if service == "" {
		return proto.SubjectRollupAll, nil
	}
	if err := proto.ValidService(service); err != nil {
		return "", err
	}
	return proto.PrefixRollup + service + ".>", nil
}

// Run prints every window on cfg.Subject until ctx is done, then what already arrived.
// Windows are printed by the subscription's goroutine; a window that does not decode is
// reported on its own line.
func Run(ctx context.Context, nc *nats.Conn, cfg Config) error {
	subject, asJSON, sr := cfg.Subject, cfg.JSON, cfg.Signals
	if sr == nil {
		sr, _ = NewSignalReader("") // no file to read: no error
	}
	bw := bufio.NewWriter(cfg.Out)
	var mu sync.Mutex // guards bw
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			fmt.Fprintf(bw, "# %s: %v\n", m.Subject, err)
		} else if asJSON {
			t := NewWindow(w)
			t.Signals = sr.Read(w)
			b, _ := json.Marshal(t)
			bw.Write(b)
			bw.WriteByte('\n')
		} else {
			bw.WriteString(Format(w, sr.Read(w)))
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

// Format renders a window on one line for people, its signals (if not nil) first.
func Format(w *proto.Window, sig *Signals) string {
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
