package otlp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/otlptest"
	"github.com/herd-dev/herd/proto"
)

// batchSums totals the batches a receiver publishes, decoded as the intake decodes them.
type batchSums struct {
	mu      sync.Mutex
	dec     proto.Decoder
	b       proto.Batch
	bad     []error
	batches int
	// sums[version][series] is the sum of counter deltas, or of histogram counts.
	sums map[string]map[string]float64
	// seqs checks that each instance's batches come in sequence.
	seqs map[[16]byte]uint64
}

func newBatchSums() *batchSums {
	return &batchSums{sums: map[string]map[string]float64{}, seqs: map[[16]byte]uint64{}}
}

func (s *batchSums) publish(subject string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.dec.Decode(data, &s.b); err != nil {
		s.bad = append(s.bad, err)
		return nil
	}
	b := &s.b
	if want, _ := proto.InSubject(b.Service, b.Version); want != subject {
		s.bad = append(s.bad, fmt.Errorf("batch of %s/%s on %s", b.Service, b.Version, subject))
	}
	if next, ok := s.seqs[b.Instance]; ok && b.Seq != next {
		s.bad = append(s.bad, fmt.Errorf("instance %x: seq %d after %d", b.Instance, b.Seq, next-1))
	}
	s.seqs[b.Instance] = b.Seq + 1
	if b.Start >= b.End {
		s.bad = append(s.bad, fmt.Errorf("interval [%d, %d)", b.Start, b.End))
	}
	s.batches++
	m := s.sums[b.Version]
	if m == nil {
		m = map[string]float64{}
		s.sums[b.Version] = m
	}
	for i := range b.Series {
		sr := &b.Series[i]
		switch sr.Kind {
		case proto.KindCounter:
			m[sr.String()] += sr.Value
		case proto.KindHistogram:
			m[sr.String()] += float64(sr.Hist.Count)
		}
	}
	return nil
}

func (s *batchSums) get(version, series string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sums[version][series]
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(&testWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// startReceiver runs a receiver on random ports until the test ends.
func startReceiver(t testing.TB, cfg Config, publish func(string, []byte) error) *Receiver {
	t.Helper()
	if cfg.HTTPListen == "" && cfg.GRPCListen == "" {
		cfg.HTTPListen, cfg.GRPCListen = "127.0.0.1:0", "127.0.0.1:0"
	}
	r, err := New(cfg, metrics.NewSet(), publish, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// runChurn runs instances of two versions of one service, each living a few export
// intervals, at most three at a time, recording requests with random status codes and
// durations spanning six orders of magnitude; it returns when every instance has shut down
// (its last export answered).
func runChurn(t *testing.T, cfg otlptest.Config, instances int, rec *otlptest.Recorded) {
	t.Helper()
	ctx := context.Background()
	sem := make(chan struct{}, 3)
	var wg sync.WaitGroup
	for i := range instances {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c := cfg
			c.Version = []string{"1.0.0", "1.1.0"}[i%2]
			c.Instance = fmt.Sprintf("%s-%d", cfg.Service, i)
			in, err := otlptest.Start(ctx, c)
			if err != nil {
				t.Error(err)
				return
			}
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			deadline := time.Now().Add(time.Duration(200+rng.IntN(300)) * time.Millisecond)
			for time.Now().Before(deadline) {
				for range 20 {
					code := 200
					if rng.IntN(10) == 0 {
						code = 500
					}
					in.Serve(ctx, code, 1e-4*float64(rng.IntN(1_000_000)+1))
					rec.Add(c.Version, code)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := in.Shutdown(ctx); err != nil {
				t.Errorf("instance %d: shutdown: %v", i, err)
			}
		})
	}
	wg.Wait()
}

// TestSDKExact checks, for both transports and both temporalities, that the batches made
// from what the OpenTelemetry SDK exported under instance churn carry exactly what the
// services recorded: every counter increment and every histogram observation.
func TestSDKExact(t *testing.T) {
	for _, tc := range []struct {
		transport string
		delta     bool
	}{{"http", false}, {"http", true}, {"grpc", false}, {"grpc", true}} {
		name := tc.transport + "/cumulative"
		if tc.delta {
			name = tc.transport + "/delta"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sums := newBatchSums()
			r := startReceiver(t, Config{}, sums.publish)
			ep := r.HTTPAddr()
			if tc.transport == "grpc" {
				ep = r.GRPCAddr()
			}
			var rec otlptest.Recorded
			runChurn(t, otlptest.Config{Transport: tc.transport, Endpoint: ep, Delta: tc.delta, Service: "checkout"}, 8, &rec)
			st := r.Stats()
			if len(st.PointsRefused) > 0 || len(st.RequestsRefused) > 0 {
				t.Errorf("refused: points %v, requests %v; want none", st.PointsRefused, st.RequestsRefused)
			}
			sums.mu.Lock()
			for _, err := range sums.bad {
				t.Error(err)
			}
			sums.mu.Unlock()
			for v, m := range rec.Sums() {
				for s, want := range m {
					if got := sums.get(v, s); got != want {
						t.Errorf("version %s, %s: got %v; want %v", v, s, got, want)
					}
				}
			}
			if st.Points == 0 || st.Batches == 0 {
				t.Errorf("stats %+v; want points and batches", st)
			}
		})
	}
}
