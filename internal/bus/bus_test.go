package bus

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/proto"
)

func testLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// collector gathers what Handlers receive.
type collector struct {
	mu       sync.Mutex
	windows  []*proto.Window
	verdicts []proto.Verdict
	deploys  []proto.Deployment
}

func (c *collector) handlers() Handlers {
	return Handlers{
		Window:     func(w *proto.Window) { c.mu.Lock(); c.windows = append(c.windows, w); c.mu.Unlock() },
		Verdict:    func(v proto.Verdict) { c.mu.Lock(); c.verdicts = append(c.verdicts, v); c.mu.Unlock() },
		Deployment: func(d proto.Deployment) { c.mu.Lock(); c.deploys = append(c.deploys, d); c.mu.Unlock() },
	}
}

func (c *collector) counts() (w, v, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.windows), len(c.verdicts), len(c.deploys)
}

func metric(t *testing.T, set *metrics.Set, name string) string {
	t.Helper()
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return "absent"
}

func window(service, version string, startMs int64) *proto.Window {
	return &proto.Window{Service: service, Version: version, StartMs: startMs, EndMs: startMs + 250, Instances: 1,
		Series: []proto.WindowSeries{{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 10}}}
}

func TestPublishSubscribe(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{})
	set := metrics.NewSet()
	nc, err := Connect(Client{URLs: s.ClientURL()}, "test", set, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var c collector
	dec := NewDecoder(c.handlers(), set)
	sub, err := Subscribe(nc, dec)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	pub := NewPublisher(nc, set, testLogger())
	// Windows 0, 1 and 4 of one group: 2 and 3 are missing.
	for _, k := range []int64{0, 1, 4} {
		if err := pub.Window(window("checkout", "1.4.2", 1_000_000+250*k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Verdict(&proto.Verdict{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0", State: proto.StatePending}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Deployment(proto.Deployment{Service: "checkout", Baseline: "1.4.2", Canary: "1.5.0"}); err != nil {
		t.Fatal(err)
	}
	// Garbage on each subject is counted, not delivered.
	for _, subj := range []string{"herd.rollup.checkout.1_4_2", "herd.verdict.checkout", "herd.deploy.checkout"} {
		if err := nc.Publish(subj, []byte("{not json")); err != nil {
			t.Fatal(err)
		}
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if w, v, d := c.counts(); w != 3 || v != 1 || d != 1 {
			return errorf("got %d windows, %d verdicts, %d deployments; want 3, 1, 1", w, v, d)
		}
		if got := metric(t, set, `herd_bus_bad_messages_total{kind="deployment"}`); got != "1" {
			return errorf("bad deployments counted: %s; want 1", got)
		}
		return nil
	})
	if got := metric(t, set, `herd_bus_windows_missing_total`); got != "2" {
		t.Errorf("missing windows: got %s; want 2", got)
	}
	for _, k := range kinds {
		if got := metric(t, set, `herd_bus_bad_messages_total{kind="`+k+`"}`); got != "1" {
			t.Errorf("bad %s messages: got %s; want 1", k, got)
		}
	}
	if got := metric(t, set, `herd_bus_published_total{kind="window"}`); got != "3" {
		t.Errorf("published windows: got %s; want 3", got)
	}
	c.mu.Lock()
	if c.deploys[0].UnixMs == 0 {
		t.Error("deployment not stamped with the time it was announced")
	}
	c.mu.Unlock()

	// An invalid deployment is the caller's error, not a publish failure.
	if err := pub.Deployment(proto.Deployment{Service: "Bad Name", Baseline: "1", Canary: "2"}); err == nil {
		t.Error("invalid deployment published; want an error")
	}
	// A window that cannot be encoded, and publishing on a closed connection, are counted.
	bad := window("checkout", "1.4.2", 2_000_000)
	bad.Series[0].Value = inf()
	if err := pub.Window(bad); err == nil {
		t.Error("window with an infinite value published; want an error")
	}
	nc.Close()
	if err := pub.Window(window("checkout", "1.4.2", 3_000_000)); err == nil {
		t.Error("published on a closed connection; want an error")
	}
	if got := metric(t, set, `herd_bus_publish_errors_total{kind="window",reason="publish"}`); got != "1" {
		t.Errorf("publish errors: got %s; want 1", got)
	}
	if got := metric(t, set, `herd_bus_publish_errors_total{kind="window",reason="encode"}`); got != "1" {
		t.Errorf("encode errors: got %s; want 1", got)
	}
}

func TestHistoryReplay(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{JetStream: true})
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	set := metrics.NewSet()
	h, err := EnsureHistory(ctx, js, HistoryConfig{MaxAge: time.Hour, MaxBytes: 1 << 20, Replicas: 1}, set)
	if err != nil {
		t.Fatal(err)
	}
	pub := NewPublisher(nc, nil, testLogger())
	for k := range int64(5) {
		if err := pub.Window(window("search", "2.0.1", 1_000_000+250*k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Deployment(proto.Deployment{Service: "search", Baseline: "2.0.1", Canary: "2.1.0"}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("herd.verdict.search", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := js.Stream(ctx, HistoryStream)
		if err != nil {
			return err
		}
		if n := info.CachedInfo().State.Msgs; n != 7 {
			return errorf("stream holds %d messages; want 7", n)
		}
		return nil
	})
	var c collector
	n, bad, err := h.Replay(ctx, NewDecoder(c.handlers(), nil))
	if err != nil || n != 7 || bad != 1 {
		t.Fatalf("Replay: got %d, %d bad, %v; want 7, 1 bad, nil", n, bad, err)
	}
	if w, v, d := c.counts(); w != 5 || v != 0 || d != 1 {
		t.Errorf("replayed %d windows, %d verdicts, %d deployments; want 5, 0, 1", w, v, d)
	}
	if got := metric(t, set, "herd_history_undecodable_total"); got != "1" {
		t.Errorf("undecodable: got %s; want 1", got)
	}
}

func TestEnsureHistoryWithoutJetStream(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{})
	js, err := jetstream.New(natstest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := EnsureHistory(ctx, js, HistoryConfig{MaxAge: time.Hour}, nil); err == nil {
		t.Fatal("EnsureHistory without JetStream: got nil error")
	}
	if ctx.Err() != nil {
		t.Errorf("EnsureHistory retried until the deadline (%s); want it to give up when JetStream is off", time.Since(start))
	}
}

func TestDrainDeliversPending(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{})
	recv := natstest.Connect(t, s)
	sub, err := recv.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := recv.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, err := Connect(Client{URLs: s.ClientURL()}, "drain", nil, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if err := nc.Publish("x", []byte("m")); err != nil {
			t.Fatal(err)
		}
	}
	if err := Drain(nc, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if !nc.IsClosed() {
		t.Error("connection open after Drain")
	}
	for i := range 1000 {
		if _, err := sub.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("message %d of 1000: %v", i, err)
		}
	}
	if err := Drain(nc, time.Second); err != nil {
		t.Errorf("Drain of a closed connection: %v; want nil", err)
	}
}

func TestRedactURLs(t *testing.T) {
	t.Parallel()
	got := RedactURLs("nats://user:secret@a:4222,nats://b:4222")
	if got != "nats://***@a:4222,nats://b:4222" {
		t.Errorf("got %q", got)
	}
}

// TestHistoryWriteFailuresAreCounted checks that a message the history stream refuses (here
// a stream that is full and discards new messages, as a full disk does) is counted and
// reported, while subscribers still receive it.
func TestHistoryWriteFailuresAreCounted(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{JetStream: true})
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: HistoryStream, Subjects: []string{"herd.rollup.>"},
		MaxMsgs: 2, Discard: jetstream.DiscardNew}); err != nil {
		t.Fatal(err)
	}
	var c collector
	sub, err := Subscribe(nc, NewDecoder(c.handlers(), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	set := metrics.NewSet()
	pub := NewPublisher(nc, set, testLogger())
	if err := pub.AckHistory(); err != nil {
		t.Fatal(err)
	}
	for k := range int64(5) {
		if err := pub.Window(window("checkout", "1.4.2", 1_000_000+250*k)); err != nil {
			t.Fatal(err)
		}
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := metric(t, set, "herd_history_write_errors_total"); got != "3" {
			return errorf("history write errors: %s; want 3 (5 windows, room for 2)", got)
		}
		if w, _, _ := c.counts(); w != 5 {
			return errorf("subscriber got %d windows; want all 5", w)
		}
		return nil
	})
	if pub.HistoryFailing(time.Minute) == nil {
		t.Error("HistoryFailing: nil; want the stream's refusal")
	}
}

// TestCorrectionsAreNotGaps: corrections (late data of windows published before) reach the
// handler with their flag, and neither open nor fill gaps in a group's window sequence.
func TestCorrectionsAreNotGaps(t *testing.T) {
	t.Parallel()
	set := metrics.NewSet()
	var c collector
	dec := NewDecoder(c.handlers(), set)
	for _, w := range []struct {
		startMs    int64
		correction bool
	}{{1000, true}, {2000, false}, {1750, true}, {2250, false}, {9000, true}, {2500, false}} {
		win := window("checkout", "1.4.2", w.startMs)
		win.Correction = w.correction
		data, err := proto.MarshalWindow(win)
		if err != nil {
			t.Fatal(err)
		}
		if err := dec.Handle("herd.rollup.checkout.1_2e4_2e2", data); err != nil {
			t.Fatal(err)
		}
	}
	if got := dec.WindowsMissing(); got != 0 {
		t.Errorf("missing windows: got %d; want 0", got)
	}
	corrections := 0
	for _, w := range c.windows {
		if w.Correction {
			corrections++
		}
	}
	if len(c.windows) != 6 || corrections != 3 {
		t.Errorf("got %d windows, %d of them corrections; want 6 and 3", len(c.windows), corrections)
	}
}
