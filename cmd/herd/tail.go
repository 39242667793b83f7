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

	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
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
			return func(ctx context.Context) error {
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
				return tail(ctx, nc, subject, *asJSON, e.stdout)
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
	Series           []tailSeries `json:"series"`
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
func tail(ctx context.Context, nc *nats.Conn, subject string, asJSON bool, out io.Writer) error {
	bw := bufio.NewWriter(out)
	var mu sync.Mutex // guards bw
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		w, err := proto.UnmarshalWindow(m.Data)
		if err != nil {
			fmt.Fprintf(bw, "# %s: %v\n", m.Subject, err)
		} else if asJSON {
			b, _ := json.Marshal(toTail(w))
			bw.Write(b)
			bw.WriteByte('\n')
		} else {
			bw.WriteString(formatWindow(w))
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

// formatWindow renders a window on one line for people.
func formatWindow(w *proto.Window) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s inst=%d", time.UnixMilli(w.StartMs).Format("15:04:05.000"), w.Service, w.Version, w.Instances)
	if w.Correction {
		b.WriteString(" correction")
	}
	if w.InstancesStarted > 0 || w.InstancesStopped > 0 {
		fmt.Fprintf(&b, " (+%d -%d)", w.InstancesStarted, w.InstancesStopped)
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
