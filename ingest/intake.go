package ingest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
	"github.com/nats-io/nats.go"
)

// Refusal reasons of the intake besides proto.Reason's decode reasons.
const (
	ReasonBadSubject      = "bad_subject"      // the subject does not name a valid service and version
	ReasonSubjectMismatch = "subject_mismatch" // the batch names another service or version than its subject
	ReasonSlowConsumer    = "slow_consumer"    // the NATS client dropped messages: the handler is too slow
	// ReasonWrongPartition: the batch arrived on herd.p.<n>.<service>.<version> but its group
	// belongs to another partition (proto.PartitionOf). The partition mapping never does
	// that; a publisher allowed on herd.p.> could, and two workers would merge one group.
	ReasonWrongPartition = "wrong_partition"
)

// IntakeConfig configures an Intake.
type IntakeConfig struct {
	// Subject is subscribed to (default proto.SubjectInAll, "herd.in.>").
	Subject string
	// Prefix precedes <service>.<version> in the subjects received (default proto.PrefixIn).
	Prefix string
	// PendingMsgs and PendingBytes bound the subscription's buffer; beyond them the NATS
	// client drops messages, counted with reason "slow_consumer".
	PendingMsgs  int
	PendingBytes int
	// DrainTimeout bounds how long Run waits, on cancellation, for buffered messages to be
	// handled (default 5 s).
	DrainTimeout time.Duration
	// Queue, when set, subscribes as a member of this NATS queue group: each message reaches
	// one member only. Two intakes of one process in the same group hand the subscription
	// over without loss or duplicates: the second subscribes, then the first drains.
	Queue string
	// Workers is how many goroutines decode and hand on batches (0: one per core, at most
	// 8). The messages of one subject, so of one group, always go to the same worker, in
	// order. With more than one, the subscription's goroutine only routes messages; each
	// worker's queue holds at most min(64, PendingMsgs/(4·Workers)) of them and a full one
	// blocks the routing, so the subscription's own bounded buffer fills and its overflow is
	// counted as slow_consumer.
	Workers int
	// Limiter, if set, bounds the handlers running at once over every intake sharing it
	// (see Limiter); nil: no bound beyond Workers.
	Limiter *Limiter
}

// Defaults of IntakeConfig.
const (
	// Four seconds of 50,000 instances' batches (200,000 a second, 60 MB/s): a stall of
	// the process, or a burst of reconnecting agents flushing their buffers, is absorbed,
	// not dropped.
	DefaultPendingMsgs  = 1_000_000
	DefaultPendingBytes = 256 << 20
	DefaultDrainTimeout = 5 * time.Second
	// maxWorkers bounds the default Workers.
	maxWorkers = 8
)

// DefaultIntakeConfig returns the config with every default filled in.
func DefaultIntakeConfig() IntakeConfig {
	var c IntakeConfig
	c.setDefaults()
	return c
}

// RegisterFlags registers the -intake.* flags on fs.
func (c *IntakeConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Subject, "intake.subject", proto.SubjectInAll, "NATS `subject` the intake subscribes to for agent batches")
	fs.StringVar(&c.Prefix, "intake.prefix", proto.PrefixIn, "subject `prefix` before <service>.<version> in received subjects")
	fs.IntVar(&c.PendingMsgs, "intake.pending-msgs", DefaultPendingMsgs, "messages buffered for the intake before the NATS client drops them (`count`)")
	fs.IntVar(&c.PendingBytes, "intake.pending-bytes", DefaultPendingBytes, "bytes buffered for the intake before the NATS client drops messages (`bytes`)")
	fs.DurationVar(&c.DrainTimeout, "intake.drain-timeout", DefaultDrainTimeout, "how long shutdown waits for buffered batches (`duration`)")
	fs.IntVar(&c.Workers, "intake.workers", 0, "goroutines that decode batches, one group's always on the same one (`count`; 0: one per core, at most 8)")
}

func (c *IntakeConfig) setDefaults() {
	if c.Subject == "" {
		c.Subject = proto.SubjectInAll
	}
	if c.Prefix == "" {
		c.Prefix = proto.PrefixIn
	}
	if c.PendingMsgs == 0 {
		c.PendingMsgs = DefaultPendingMsgs
	}
	if c.PendingBytes == 0 {
		c.PendingBytes = DefaultPendingBytes
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Workers == 0 {
		c.Workers = min(runtime.GOMAXPROCS(0), maxWorkers)
	}
}

// Validate checks the config; zero fields take their defaults.
func (c *IntakeConfig) Validate() error {
	d := *c
	d.setDefaults()
	if strings.ContainsAny(d.Subject, " \t\r\n") || strings.HasPrefix(d.Subject, ".") || strings.HasSuffix(d.Subject, ".") {
		return fmt.Errorf("-intake.subject %q is not a valid NATS subject", d.Subject)
	}
	if !strings.HasSuffix(d.Prefix, ".") {
		return fmt.Errorf("-intake.prefix %q must end with '.'", d.Prefix)
	}
	if d.PendingMsgs < 1 || d.PendingBytes < 1<<20 {
		return fmt.Errorf("-intake.pending-msgs %d must be ≥ 1 and -intake.pending-bytes %d ≥ 1 MiB", d.PendingMsgs, d.PendingBytes)
	}
	if d.DrainTimeout < 0 {
		return fmt.Errorf("-intake.drain-timeout %v must be ≥ 0", d.DrainTimeout)
	}
	if d.Workers < 1 || d.Workers > 256 {
		return fmt.Errorf("-intake.workers %d must be between 1 and 256 (0: one per core)", c.Workers)
	}
	return nil
}

// IntakeMetrics are the intakes' self-metrics, registered in a Set their caller owns:
// herd_ingest_batches_total, herd_ingest_bytes_total and herd_ingest_dropped_total{reason}.
// A process builds one IntakeMetrics and passes it to every Intake it runs (`herd rollup`
// runs one per owned partition, started and stopped as partitions move), so that all of them
// count into the same families and nothing has to sum them. It is safe for concurrent use.
type IntakeMetrics struct {
	set     *metrics.Set
	batches *metrics.Counter
	bytes   *metrics.Counter
	slow    *metrics.Counter // dropped by the NATS client: reason slow_consumer

	mu      sync.Mutex // Guards reasons.
	reasons map[string]*metrics.Counter
}

// intakeHelp describes the intake's families.
var intakeHelp = map[string]string{
	"herd_ingest_batches_total": "Agent batches the intake decoded and handed to the rollup.",
	"herd_ingest_bytes_total":   "Bytes of agent batches the intake received, good or refused.",
	"herd_ingest_dropped_total": "Agent batches the intake refused or the NATS client dropped, by reason: a decode reason " +
		"(truncated, bad_magic, unknown_version, oversized, ...), bad_subject, subject_mismatch, wrong_partition (a " +
		"partition subject whose number is not its group's) or slow_consumer.",
}

// NewIntakeMetrics registers the intake families in set; nil means a private Set (tests).
// It panics if set already holds them: build one IntakeMetrics per Set and share it.
func NewIntakeMetrics(set *metrics.Set) *IntakeMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(intakeHelp)
	m := &IntakeMetrics{
		set:     set,
		batches: set.NewCounter("herd_ingest_batches_total"),
		bytes:   set.NewCounter("herd_ingest_bytes_total"),
		slow:    set.NewCounter(`herd_ingest_dropped_total{reason="` + ReasonSlowConsumer + `"}`),
		reasons: make(map[string]*metrics.Counter),
	}
	for _, r := range []string{ReasonBadSubject, ReasonSubjectMismatch, ReasonWrongPartition, "truncated", "bad_magic", "unknown_version", "oversized", "histogram_span"} {
		m.reason(r)
	}
	return m
}

// reason returns the drop counter of a reason other than slow_consumer, registering it.
func (m *IntakeMetrics) reason(reason string) *metrics.Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.reasons[reason]
	if !ok {
		c = m.set.GetOrCreateCounter(`herd_ingest_dropped_total{reason="` + reason + `"}`)
		m.reasons[reason] = c
	}
	return c
}

// Stats returns the totals of every intake counting into m. The slow-consumer count is as of
// each running intake's last poll (every second).
func (m *IntakeMetrics) Stats() IntakeStats {
	st := IntakeStats{Batches: m.batches.Get(), Bytes: m.bytes.Get(), Dropped: make(map[string]uint64)}
	if n := m.slow.Get(); n > 0 {
		st.Dropped[ReasonSlowConsumer] = n
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for r, c := range m.reasons {
		if n := c.Get(); n > 0 {
			st.Dropped[r] = n
		}
	}
	return st
}

// IntakeStats are intake totals.
type IntakeStats struct {
	Batches uint64            // good batches handed on
	Bytes   uint64            // bytes received, good or not
	Dropped map[string]uint64 // refused or dropped messages by reason
}

// Refused returns the total of Dropped.
func (s IntakeStats) Refused() uint64 {
	var n uint64
	for _, v := range s.Dropped {
		n += v
	}
	return n
}

// Intake receives agent batches from NATS: it decodes each message with a reused
// proto.Decoder, checks that the subject's service and version match the batch's, and hands
// good batches to the handler. With one worker (IntakeConfig.Workers) that happens on the
// subscription's goroutine; with several, that goroutine routes each message by its subject
// to a worker, so batches of different groups are decoded in parallel and those of one
// group in order. On a partition subject,
// herd.p.<n>.<service>.<version>, it also checks that n is the group's partition
// (proto.PartitionOf), so that no publisher can make two partitions' workers merge one group.
// Refusals are counted in herd_ingest_dropped_total{reason} (decode reasons of proto.Reason,
// "bad_subject", "subject_mismatch", "wrong_partition", "slow_consumer") and logged at most
// every 10 s.
type Intake struct {
	cfg   IntakeConfig
	nc    *nats.Conn
	fn    func(*proto.Batch)
	log   *slog.Logger
	m     *IntakeMetrics
	ready chan struct{}
	// slowSeen is the subscription's drop count already added to m.slow; only Run's
	// goroutine touches it.
	slowSeen uint64

	// workers decode and hand on messages; with one, the subscription's goroutine runs it
	// itself. queues[i] feeds workers[i] when there are several.
	workers []*worker
	queues  []chan *nats.Msg

	// routeMu guards stopped: the subscription's goroutine holds it for reading while it
	// routes a message, Run for writing when it stops routing.
	routeMu sync.RWMutex
	// stopped is set when Run stops: the handler is never called after Run returns.
	stopped bool

	logMu      sync.Mutex // Guards the fields below.
	lastLog    time.Time
	suppressed int
}

// worker is the decoding state of one of an Intake's workers.
type worker struct {
	mu       sync.Mutex // Guards the fields below; held while a message is handled.
	stopped  bool       // set when Run stops
	dec      proto.Decoder
	batch    proto.Batch
	subjects map[string]subjectInfo // parsed subjects, bounded
}

type subjectInfo struct {
	service, version string
	bad              bool
	// wrongPartition: a partition subject whose number is not the group's partition.
	wrongPartition bool
}

// maxSubjects bounds the parsed-subject cache; it is cleared when full.
const maxSubjects = 4096

// NewIntake builds an intake reading from nc that counts into m (nil: metrics of its own, for
// tests). handle is called with each good batch, on the subscription's goroutine or, with
// several workers, concurrently from the workers (never two batches of one group at once);
// the batch and everything it points to are valid only during the call. NewIntake subscribes nothing;
// Run does.
//
// Slow-consumer drops are read from the subscription (nats.Subscription.Dropped), so the
// connection's own async error handler stays the caller's; HandleAsyncError may be called
// from it to log them as the intake's.
func NewIntake(cfg IntakeConfig, m *IntakeMetrics, nc *nats.Conn, handle func(*proto.Batch), logger *slog.Logger) (*Intake, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if nc == nil || handle == nil {
		return nil, errors.New("cannot create intake: nil connection or handler")
	}
	if logger == nil {
		logger = slog.Default()
	}
	if m == nil {
		m = NewIntakeMetrics(nil)
	}
	in := &Intake{
		cfg:   cfg,
		nc:    nc,
		fn:    handle,
		log:   logger,
		m:     m,
		ready: make(chan struct{}),
	}
	for range cfg.Workers {
		in.workers = append(in.workers, &worker{subjects: make(map[string]subjectInfo)})
	}
	return in, nil
}

// Stats returns the totals of the intake's IntakeMetrics: those of every intake sharing them.
func (in *Intake) Stats() IntakeStats { return in.m.Stats() }

// Ready is closed once Run's subscription is registered with the server.
func (in *Intake) Ready() <-chan struct{} { return in.ready }

// Run subscribes and handles messages until ctx is cancelled; then it drains the
// subscription (handling what is buffered, up to DrainTimeout), unsubscribes and returns.
// The handler is not called after Run returns.
func (in *Intake) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if len(in.workers) > 1 {
		size := min(64, in.cfg.PendingMsgs/(4*len(in.workers)))
		in.queues = make([]chan *nats.Msg, len(in.workers))
		for i, w := range in.workers {
			q := make(chan *nats.Msg, size)
			in.queues[i] = q
			wg.Go(func() {
				for m := range q {
					in.cfg.Limiter.acquire()
					in.handle(w, m.Subject, m.Data)
					in.cfg.Limiter.release()
				}
			})
		}
	}
	// Whatever way Run returns, routing stops first, then the workers finish their queues.
	defer func() {
		in.routeMu.Lock()
		in.stopped = true
		in.routeMu.Unlock()
		for _, q := range in.queues {
			close(q)
		}
		wg.Wait()
		for _, w := range in.workers {
			w.mu.Lock()
			w.stopped = true
			w.mu.Unlock()
		}
	}()
	sub, err := in.nc.QueueSubscribe(in.cfg.Subject, in.cfg.Queue, in.onMsg)
	if err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", in.cfg.Subject, err)
	}
	if err := sub.SetPendingLimits(in.cfg.PendingMsgs, in.cfg.PendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("cannot set pending limits of %s: %w", in.cfg.Subject, err)
	}
	if err := in.nc.FlushTimeout(5 * time.Second); err != nil {
		// The subscription is re-sent on reconnect; say so and go on.
		in.log.Warn("cannot confirm the subscription with the NATS server", "subject", in.cfg.Subject, "err", err)
	} else {
		in.log.Info("intake subscribed", "subject", in.cfg.Subject)
	}
	close(in.ready)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			in.pollDropped(sub)
		}
	}
	in.pollDropped(sub)
	if err := sub.Drain(); err == nil {
		deadline := time.Now().Add(in.cfg.DrainTimeout)
		for sub.IsValid() && time.Now().Before(deadline) && !in.nc.IsClosed() {
			time.Sleep(5 * time.Millisecond)
		}
	}
	in.pollDropped(sub)
	if sub.IsValid() {
		_ = sub.Unsubscribe()
	}
	in.log.Info("intake stopped", "subject", in.cfg.Subject)
	return nil
}

// pollDropped adds the subscription's new slow-consumer drops to the shared counter.
func (in *Intake) pollDropped(sub *nats.Subscription) {
	if n, err := sub.Dropped(); err == nil && n > 0 && uint64(n) > in.slowSeen {
		in.m.slow.Add(int(uint64(n) - in.slowSeen))
		in.slowSeen = uint64(n)
	}
}

// HandleAsyncError logs a slow-consumer error of the intake's subscription; the drop count
// itself is read from the subscription by Run. cmd may call it from its connection's
// error handler.
func (in *Intake) HandleAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) && sub != nil && sub.Subject == in.cfg.Subject {
		n, _ := sub.Dropped()
		in.log.Warn("intake is a slow consumer: NATS client dropped batches", "subject", sub.Subject, "dropped", n)
	}
}

// onMsg handles m on the subscription's goroutine, or routes it to the worker of its
// subject.
func (in *Intake) onMsg(m *nats.Msg) {
	if len(in.queues) == 0 {
		in.cfg.Limiter.acquire()
		in.handle(in.workers[0], m.Subject, m.Data)
		in.cfg.Limiter.release()
		return
	}
	in.routeMu.RLock()
	defer in.routeMu.RUnlock()
	if in.stopped {
		return
	}
	in.queues[workerOf(m.Subject, len(in.queues))] <- m
}

// workerOf returns the worker of subject among n: FNV-1a of the subject, so one group's
// messages stay in order on one worker.
func workerOf(subject string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(subject); i++ {
		h ^= uint32(subject[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// handleMsg handles one message on the first worker (tests and benchmarks).
func (in *Intake) handleMsg(subject string, data []byte) { in.handle(in.workers[0], subject, data) }

// handle checks, decodes and hands on one message with w's state.
func (in *Intake) handle(w *worker, subject string, data []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	in.m.bytes.Add(len(data))
	si := in.parseSubject(w, subject)
	if si.bad {
		in.refuse(ReasonBadSubject, subject, fmt.Errorf("subject %q does not name a service and version after %q", subject, in.cfg.Prefix))
		return
	}
	if si.wrongPartition {
		in.refuse(ReasonWrongPartition, subject, fmt.Errorf("subject %q is not the partition of group %s/%s", subject, si.service, si.version))
		return
	}
	b := &w.batch
	if err := w.dec.Decode(data, b); err != nil {
		in.refuse(proto.Reason(err), subject, err)
		return
	}
	if b.Service != si.service || b.Version != si.version {
		in.refuse(ReasonSubjectMismatch, subject, fmt.Errorf("batch of %s/%s arrived on %s", b.Service, b.Version, subject))
		return
	}
	in.m.batches.Inc()
	in.fn(b)
}

// parseSubject returns the service and version a subject names, cached in w. The caller
// holds w.mu.
func (in *Intake) parseSubject(w *worker, subject string) subjectInfo {
	if si, ok := w.subjects[subject]; ok {
		return si
	}
	var si subjectInfo
	svc, ver, err := parseWithPrefix(in.cfg.Prefix, subject)
	if err != nil {
		si.bad = true
	} else {
		si.service, si.version = svc, ver
		si.wrongPartition = !partitionMatches(subject)
	}
	if len(w.subjects) >= maxSubjects {
		clear(w.subjects)
	}
	w.subjects[subject] = si
	return si
}

// parseWithPrefix is proto.ParseGroupSubject for a prefix whose tokens may be "*" (any one
// token), such as "herd.p.*." for the partition subjects of the partition mapping.
func parseWithPrefix(prefix, subject string) (service, version string, err error) {
	if !strings.Contains(prefix, "*") {
		return proto.ParseGroupSubject(prefix, subject)
	}
	rest := subject
	for tok := range strings.SplitSeq(strings.TrimSuffix(prefix, "."), ".") {
		head, tail, ok := strings.Cut(rest, ".")
		if !ok || (tok != "*" && tok != head) {
			return "", "", fmt.Errorf("%w: subject %q does not match prefix %q", proto.ErrBadToken, subject, prefix)
		}
		rest = tail
	}
	return proto.ParseGroupSubject("", rest)
}

// partitionMatches reports whether subject, if it is a partition subject
// herd.p.<n>.<service>.<version token>, names its group's partition; any other subject
// matches. The subject's service and version were parsed already.
func partitionMatches(subject string) bool {
	rest, ok := strings.CutPrefix(subject, proto.PrefixPartition)
	if !ok {
		return true
	}
	num, group, _ := strings.Cut(rest, ".")
	service, token, _ := strings.Cut(group, ".")
	n, err := strconv.Atoi(num)
	return err == nil && num == strconv.Itoa(n) && proto.PartitionOf(service, token) == n
}

// refuse counts a refused message and logs at most one line every 10 s.
func (in *Intake) refuse(reason, subject string, err error) {
	in.m.reason(reason).Inc()
	in.logMu.Lock()
	defer in.logMu.Unlock()
	now := time.Now()
	if now.Sub(in.lastLog) < 10*time.Second {
		in.suppressed++
		return
	}
	in.log.Warn("batch refused", "reason", reason, "subject", subject, "err", err, "suppressed_since_last_log", in.suppressed)
	in.lastLog = now
	in.suppressed = 0
}
