package tail

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

// TestTailMarksCorrections: `herd tail` prints corrections like windows, marked, so that
// totals (scripts/check-exact.py) add them; ordinary windows carry no mark.
func TestTailMarksCorrections(t *testing.T) {
	t.Parallel()
	w := &proto.Window{Service: "checkout", Version: "1.4.2", StartMs: 1000, EndMs: 1250, Instances: 2,
		Series: []proto.WindowSeries{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 7}}}
	plain, err := json.Marshal(NewWindow(w))
	if err != nil {
		t.Fatal(err)
	}
	w.Correction = true
	corr, err := json.Marshal(NewWindow(w))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain), "correction") || !strings.Contains(string(corr), `"correction":true`) {
		t.Errorf("got %s and %s; want the mark on the correction only", plain, corr)
	}
	if got := Format(w, nil); !strings.Contains(got, " correction") {
		t.Errorf("got %q; want the correction marked", got)
	}
}

// TestTailReadsSignals: `herd tail` reads a window's signals with the definition the
// detector and the dashboard read: the profile detected from the series, or the policy's.
func TestTailReadsSignals(t *testing.T) {
	t.Parallel()
	h := &proto.Histogram{}
	h.Observe(0.02, 100)
	w := &proto.Window{Service: "shop", Version: "1", StartMs: 1000, EndMs: 1250, Instances: 1,
		Series: []proto.WindowSeries{
			{Name: "http_request_duration_seconds", Kind: proto.KindHistogram, Hist: h},
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 96},
			{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "502"}}, Kind: proto.KindCounter, Value: 4},
		}}
	sr, err := NewSignalReader("")
	if err != nil {
		t.Fatal(err)
	}
	sig := sr.Read(w)
	if sig.Profile != "prometheus" || sig.Requests != 100 || sig.Errors != 4 || !(sig.P50 > 0.019 && sig.P50 < 0.021) {
		t.Fatalf("got %+v; want the prometheus profile, 100 requests, 4 errors, p50 20ms", sig)
	}
	if got := Format(w, sig); !strings.Contains(got, " [prometheus req=100 err=4 p50=") {
		t.Errorf("got %q; want the signals summarized", got)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("services:\n  shop:\n    errors: http_requests_total{code=\"502\"}\n    requests: http_requests_total{code=\"200\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if sr, err = NewSignalReader(path); err != nil {
		t.Fatal(err)
	}
	if sig := sr.Read(w); sig.Profile != "policy" || sig.Requests != 96 || sig.Errors != 4 {
		t.Fatalf("with a policy: got %+v; want the policy's selectors (96 requests, 4 errors)", sig)
	}
	if _, err := NewSignalReader(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("a missing policy file: got no error")
	}
}

// TestRunPrintsWindows runs Run against a real nats-server: the windows of the service asked
// for are printed, a message that does not decode is reported, and another service's windows
// are not printed.
func TestRunPrintsWindows(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{})
	sub, pub := natstest.Connect(t, s), natstest.Connect(t, s)
	subject, err := Subject("checkout")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Subject("no spaces allowed"); err == nil {
		t.Error("Subject of an invalid service: got no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	n0 := s.NumSubscriptions()
	go func() { done <- Run(ctx, sub, Config{Subject: subject, JSON: true, Out: &out}) }()
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s.NumSubscriptions() == n0 {
			return errors.New("not subscribed yet")
		}
		return nil
	})
	for _, svc := range []string{"checkout", "search"} {
		w := &proto.Window{Service: svc, Version: "1.4.2", StartMs: 1000, EndMs: 1250, Instances: 2,
			Series: []proto.WindowSeries{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 7}}}
		b, err := proto.MarshalWindow(w)
		if err != nil {
			t.Fatal(err)
		}
		subj, _ := proto.RollupSubject(svc, "1.4.2")
		if err := pub.Publish(subj, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(proto.PrefixRollup+"checkout.1_4_2", []byte("not a window")); err != nil {
		t.Fatal(err)
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	cancel() // Run drains: what the server delivered is printed before it returns
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"service":"checkout"`) || !strings.Contains(lines[0], `"signals":{`) ||
		!strings.HasPrefix(lines[1], "# "+proto.PrefixRollup+"checkout.") {
		t.Errorf("got %q; want checkout's window as JSON, then the undecodable message reported", lines)
	}
}
