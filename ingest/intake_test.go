package ingest

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/nats-io/nats.go"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

// encodeRED returns an encoded batch of a RED client for service/version.
func encodeRED(t testing.TB, service, version string, seq uint64) []byte {
	t.Helper()
	var b proto.Batch
	b.Service, b.Version, b.Seq = service, version, seq
	b.Start, b.End = int64(seq)*250e6, int64(seq+1)*250e6
	var h proto.Histogram
	for k := range 100 {
		h.Observe(float64(5+k%40)/1000, 1)
	}
	b.Series = []proto.Series{
		{Name: proto.SeriesRequests, Kind: proto.KindCounter, Value: 100},
		{Name: proto.SeriesErrors, Kind: proto.KindCounter, Value: 1},
		{Name: proto.SeriesLatency, Kind: proto.KindHistogram, Hist: h},
	}
	var enc proto.Encoder
	data, err := enc.Append(nil, &b)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return data
}

func TestIntake(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{MaxPayload: 4 << 20})
	nc := natstest.Connect(t, s)

	var mu sync.Mutex
	var got []string
	set := metrics.NewSet()
	in, err := NewIntake(IntakeConfig{}, NewIntakeMetrics(set), nc, func(b *proto.Batch) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprintf("%s/%s#%d", b.Service, b.Version, b.Seq))
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	select {
	case <-in.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("intake not ready after 10s")
	}

	pub := natstest.Connect(t, s)
	good := encodeRED(t, "checkout", "1.4.2", 0)
	subj, _ := proto.InSubject("checkout", "1.4.2")
	future := append([]byte(nil), good...)
	future[2] = proto.FormatVersion + 1
	msgs := []struct {
		subject string
		data    []byte
	}{
		{subj, good},
		{subj, []byte("GET / HTTP/1.1\r\n\r\n")},    // bad_magic
		{subj, good[:len(good)/2]},                  // truncated
		{subj, good[:2]},                            // truncated
		{subj, future},                              // unknown_version
		{"herd.in.payments.1_2e4_2e2", good},        // subject_mismatch
		{"herd.in.checkout", good},                  // bad_subject
		{"herd.in.Checkout.1", good},                // bad_subject
		{subj, make([]byte, proto.MaxBatchBytes+1)}, // oversized
		{subj, encodeRED(t, "checkout", "1.4.2", 1)},
		{subj, nil}, // truncated
	}
	for _, m := range msgs {
		if err := pub.Publish(m.subject, m.data); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{
		"bad_magic": 1, "truncated": 3, "unknown_version": 1, ReasonSubjectMismatch: 1,
		ReasonBadSubject: 2, "oversized": 1, ReasonSlowConsumer: 0,
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := set.GetOrCreateCounter("herd_ingest_batches_total").Get(); n != 2 {
			return fmt.Errorf("got %d good batches; want 2", n)
		}
		for r, w := range want {
			if n := set.GetOrCreateCounter(`herd_ingest_dropped_total{reason="` + r + `"}`).Get(); n != w {
				return fmt.Errorf("reason %s: got %d; want %d", r, n, w)
			}
		}
		return nil
	})
	if st := in.Stats(); st.Batches != 2 || st.Refused() != 9 || st.Dropped["truncated"] != 3 {
		t.Errorf("got stats %+v (refused %d); want 2 batches, 9 refused, 3 truncated", st, st.Refused())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "[checkout/1.4.2#0 checkout/1.4.2#1]" {
		t.Errorf("got %v; want [checkout/1.4.2#0 checkout/1.4.2#1]", got)
	}
}

// TestIntakeClientEndToEnd publishes through a Client on a real connection.
func TestIntakeClientEndToEnd(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	var mu sync.Mutex
	var requests float64
	var finals int
	in, err := NewIntake(IntakeConfig{}, nil, nc, func(b *proto.Batch) {
		mu.Lock()
		defer mu.Unlock()
		if s := find(b, proto.SeriesRequests); s != nil {
			requests += s.Value
		}
		if b.Final {
			finals++
		}
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	<-in.Ready()

	c, err := NewClient(ClientConfig{Service: "checkout", Version: "2026-11-26.3", Publish: nc.Publish, Logger: quiet, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(t.Context())
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(cctx) }()
	red := c.RED()
	for i := range 500 {
		red.Observe(time.Millisecond, i%50 == 0)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := c.Stats().Sent; n < 2 {
			return fmt.Errorf("got %d batches sent; want ≥ 2 before stopping", n)
		}
		return nil
	})
	ccancel()
	if err := <-cdone; err != nil {
		t.Fatalf("client Run: %v", err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if requests != 500 || finals != 1 {
			return fmt.Errorf("got %v requests and %d final batches; want 500 and 1", requests, finals)
		}
		return nil
	})
	cancel()
	<-done
}

func TestIntakeConfigFlags(t *testing.T) {
	t.Parallel()
	var c IntakeConfig
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"-intake.subject", "herd.in.>"}); err != nil {
		t.Fatal(err)
	}
	if c.Subject != "herd.in.>" {
		t.Errorf("got subject %q; want the flag to win", c.Subject)
	}
	if err := (&IntakeConfig{Prefix: "herd.in"}).Validate(); err == nil {
		t.Errorf("got nil error for a prefix without a trailing dot")
	}
}

// BenchmarkIntakeHandle is decode + subject check + a no-op handler for one RED batch.
func BenchmarkIntakeHandle(b *testing.B) {
	in, err := NewIntake(IntakeConfig{}, nil, &nats.Conn{}, func(*proto.Batch) {}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	data := encodeRED(b, "checkout", "1.4.2", 7)
	subj, _ := proto.InSubject("checkout", "1.4.2")
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		in.handleMsg(subj, data)
	}
	if in.m.batches.Get() == 0 {
		b.Fatal(errors.New("no batch handled"))
	}
}

// TestIntakeSlowConsumer blocks the handler so the NATS client drops messages. Two intakes
// run one after the other on one IntakeMetrics, as a partition's intakes do when it moves
// away and back: the drops of both add up.
func TestIntakeSlowConsumer(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	m := NewIntakeMetrics(nil)
	var dropped uint64 // by the intakes before
	for round := 1; round <= 2; round++ {
		release := make(chan struct{})
		in, err := NewIntake(IntakeConfig{PendingMsgs: 5}, m, nc, func(*proto.Batch) { <-release }, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- in.Run(ctx) }()
		<-in.Ready()
		data := encodeRED(t, "checkout", "1", 0)
		for range 50 {
			if err := nc.Publish("herd.in.checkout.1", data); err != nil {
				t.Fatal(err)
			}
		}
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			if n := in.Stats().Dropped[ReasonSlowConsumer] - dropped; n < 40 {
				return fmt.Errorf("round %d: got %d slow-consumer drops; want ≥ 40", round, n)
			}
			return nil
		})
		close(release)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		st := m.Stats()
		if st.Batches+st.Dropped[ReasonSlowConsumer] != uint64(50*round) {
			t.Errorf("round %d: got %d handled + %d dropped; want %d in all", round, st.Batches, st.Dropped[ReasonSlowConsumer], 50*round)
		}
		dropped = st.Dropped[ReasonSlowConsumer]
	}
}

// TestIntakesShareMetrics runs intakes side by side and one after another on one
// IntakeMetrics, as `herd rollup` does with its partitions: they count into the same
// families, which the Set holds once.
func TestIntakesShareMetrics(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	set := metrics.NewSet()
	m := NewIntakeMetrics(set)
	start := func(service string) (stop func()) {
		t.Helper()
		in, err := NewIntake(IntakeConfig{Subject: "herd.in." + service + ".>"}, m, nc, func(*proto.Batch) {}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- in.Run(ctx) }()
		<-in.Ready()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	publish := func(service string, seq uint64) {
		t.Helper()
		if err := nc.Publish("herd.in."+service+".1", encodeRED(t, service, "1", seq)); err != nil {
			t.Fatal(err)
		}
	}
	waitBatches := func(want uint64) {
		t.Helper()
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if n := set.GetOrCreateCounter("herd_ingest_batches_total").Get(); n != want {
				return fmt.Errorf("got %d batches; want %d", n, want)
			}
			return nil
		})
	}
	stopCheckout, stopPayments := start("checkout"), start("payments")
	for seq := range uint64(3) {
		publish("checkout", seq)
		publish("payments", seq)
	}
	if err := nc.Publish("herd.in.payments.1", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	waitBatches(6)
	stopCheckout()
	stopCheckout = start("checkout") // the partition came back
	publish("checkout", 3)
	waitBatches(7)
	stopCheckout()
	stopPayments()

	st := m.Stats()
	if st.Batches != 7 || st.Refused() != 1 || st.Dropped["bad_magic"] != 1 {
		t.Errorf("got stats %+v; want 7 batches and 1 bad_magic refusal", st)
	}
	var buf bytes.Buffer
	promhelp.WritePrometheus(&buf, set)
	if n := strings.Count(buf.String(), "# TYPE herd_ingest_batches_total counter\n"); n != 1 {
		t.Errorf("got herd_ingest_batches_total typed %d times; want once in\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "\nherd_ingest_batches_total 7\n") {
		t.Errorf("got\n%s\nwant herd_ingest_batches_total 7", buf.String())
	}
}

func TestParseWithPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		prefix, subject, svc, ver string
		ok                        bool
	}{
		{"herd.in.", "herd.in.checkout.1_2e4_2e2", "checkout", "1.4.2", true},
		{"herd.p.*.", "herd.p.17.checkout.1_2e4_2e2", "checkout", "1.4.2", true},
		{"herd.p.*.", "herd.p.17.checkout", "", "", false},
		{"herd.p.*.", "herd.x.17.checkout.1", "", "", false},
		{"herd.p.*.", "herd.p", "", "", false},
	} {
		svc, ver, err := parseWithPrefix(tc.prefix, tc.subject)
		if (err == nil) != tc.ok || svc != tc.svc || ver != tc.ver {
			t.Errorf("parseWithPrefix(%q, %q) = %q, %q, %v; want %q, %q, ok=%v", tc.prefix, tc.subject, svc, ver, err, tc.svc, tc.ver, tc.ok)
		}
	}
}

// TestIntakeWrongPartition runs the intakes of two partitions as rollup workers do, on a
// server with the partition mapping: a batch published on herd.in.> reaches its partition's
// intake; one published directly on another partition's subject, or on a partition number
// spelled otherwise, is refused as wrong_partition, so two workers never merge one group.
func TestIntakeWrongPartition(t *testing.T) {
	t.Parallel()
	s := natstest.RunServer(t, natstest.Options{Mapping: true})
	nc := natstest.Connect(t, s)
	tok, err := proto.EscapeVersion("1.4.2")
	if err != nil {
		t.Fatal(err)
	}
	right := proto.PartitionOf("checkout", tok)
	wrong := (right + 1) % proto.Partitions

	set := metrics.NewSet()
	m := NewIntakeMetrics(set)
	var mu sync.Mutex
	got := map[int][]uint64{} // partition → sequence numbers handed on
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, p := range []int{right, wrong} {
		cfg := IntakeConfig{Subject: proto.PartitionSubject(p), Prefix: proto.PartitionSubjectPrefix(p)}
		in, err := NewIntake(cfg, m, nc, func(b *proto.Batch) {
			mu.Lock()
			defer mu.Unlock()
			got[p] = append(got[p], b.Seq)
		}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := in.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		<-in.Ready()
	}
	// A catch-all intake on herd.p.> sees the odd spellings no worker subscribes to.
	all, err := NewIntake(IntakeConfig{Subject: proto.SubjectPartitionAll, Prefix: proto.PrefixPartition + "*."}, m, nc, func(b *proto.Batch) {
		mu.Lock()
		defer mu.Unlock()
		got[-1] = append(got[-1], b.Seq)
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := all.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-all.Ready()

	pub := natstest.Connect(t, s)
	group := ".checkout." + tok
	for seq, subject := range []string{
		proto.PrefixIn + "checkout." + tok,                                 // mapped to its partition
		proto.PartitionSubjectPrefix(right) + "checkout." + tok,            // its partition, directly
		proto.PartitionSubjectPrefix(wrong) + "checkout." + tok,            // another partition
		proto.PrefixPartition + "0" + fmt.Sprint(right) + group,            // its number with a leading zero
		proto.PrefixPartition + fmt.Sprint(right+proto.Partitions) + group, // beyond the partitions
	} {
		if err := pub.Publish(subject, encodeRED(t, "checkout", "1.4.2", uint64(seq))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	// right's intake and the catch-all take 0 and 1; wrong's intake and the catch-all
	// refuse 2; the catch-all refuses 3 and 4.
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := m.Stats(); st.Batches != 4 || st.Dropped[ReasonWrongPartition] != 4 {
			return fmt.Errorf("got %d batches, %d wrong_partition; want 4, 4", st.Batches, st.Dropped[ReasonWrongPartition])
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "map[-1:[0 1] "+fmt.Sprint(right)+":[0 1]]" {
		t.Errorf("handed on: got %v; want partition %d (and the catch-all) to take batches 0 and 1, partition %d none", got, right, wrong)
	}
}
