package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/herd-dev/herd/internal/promhelp"
	"github.com/herd-dev/herd/proto"
)

// ScraperConfig configures a Scraper.
type ScraperConfig struct {
	// URL is the Prometheus / OpenMetrics endpoint, e.g. http://127.0.0.1:9100/metrics.
	URL string
	// Timeout bounds one scrape (default: the client's interval).
	Timeout time.Duration
	// FinalTimeout bounds the final scrape Run makes when it is stopped (default: the larger
	// of Timeout and DefaultFinalTimeout, 5 s). A target going away (a pod being deleted, an
	// app shutting down with its agent) still serves for a while, and its last counts are in
	// that scrape alone: worth waiting longer for than one interval.
	FinalTimeout time.Duration
	// MaxSeries bounds the series tracked from the target (default 1000). Series beyond it
	// are skipped and counted with reason "limit".
	MaxSeries int
	// MaxBodyBytes bounds a response body (default 16 MiB).
	MaxBodyBytes int64
	// StaleAfter is how long the baseline of a series that disappeared from the target is
	// kept (default 5 min): if it comes back within that time its delta continues from the
	// baseline instead of counting its whole value again.
	StaleAfter time.Duration
	// HTTPClient is used for requests (nil: a client of its own).
	HTTPClient *http.Client
	// CountFirst makes the first scrape count the whole value of every counter and
	// histogram, as later scrapes do for a series they first see: for a target known to have
	// started after the agent began watching it (a pod created while the agent runs), whose
	// every count is new. Otherwise the first scrape only sets baselines.
	CountFirst bool
	// Rewriter, if set, rewrites each scrape before it is converted (the mesh profiles).
	Rewriter Rewriter
}

// Rewriter rewrites what a target exposes before the scraper converts it: a service-mesh
// proxy's request metrics become herd's RED series (package ingest/mesh).
type Rewriter interface {
	// Rewrite returns the families to convert. It may modify and return fams.
	Rewrite(fams []*dto.MetricFamily) []*dto.MetricFamily
	// Publish returns the labels the series name{labels} is published with (sorted by
	// name). The scraper keeps its baseline per scraped series and adds each one's delta to
	// the published series: scraped series published alike are summed (counters,
	// histograms; a gauge takes the last value).
	Publish(name string, labels []proto.Label) []proto.Label
}

// Defaults of ScraperConfig.
const (
	DefaultMaxBodyBytes = 16 << 20
	DefaultStaleAfter   = 5 * time.Minute
	DefaultFinalTimeout = 5 * time.Second
)

// acceptHeader prefers the protobuf format (the only one carrying native histograms in this
// expfmt version), then the classic text format, then OpenMetrics (its parser is slower).
const acceptHeader = `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,` +
	`text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.3,*/*;q=0.1`

// Scrape failure reasons (herd_agent_scrape_errors_total) and series skip reasons
// (herd_agent_scrape_series_skipped_total).
var (
	scrapeErrorReasons = []string{"http", "status", "too_large", "parse"}
	skipReasons        = []string{"limit", "bad_value", "bad_histogram", "unsupported_schema", "gauge_histogram", "unsupported_type"}
)

// Scraper turns a Prometheus / OpenMetrics endpoint into deltas on a Client.
//
// Conversion rules (see docs/agent.md):
//   - counters: delta = value - previous value; a decrease means the target restarted and the
//     new value is the delta. The first successful scrape only sets baselines; a series that
//     first appears in a later scrape counts its whole value (client libraries create
//     labelled series at their first increment).
//   - gauges and untyped: the value, as a herd gauge.
//   - summaries: <name>_count and <name>_sum as counters (quantiles cannot be merged: skipped).
//   - native histograms: schema 5 bucket j is herd bucket j-1 exactly; finer schemas (6–8)
//     fold exactly into herd buckets; coarser ones (-4–4) put each bucket's count in the herd
//     bucket at its geometric midpoint. Deltas are taken bucket by bucket.
//   - classic histograms: each bucket's count at a representative value (geometric midpoint
//     of its bounds; arithmetic midpoint when the lower bound is ≤ 0; the first bucket at
//     half its upper bound; +Inf at the last finite bound); sum and count are exact.
//   - gauge histograms are skipped and counted.
//
// Scrape is not safe for concurrent use; Run calls it from one goroutine.
type Scraper struct {
	cfg    ScraperConfig
	client *Client
	http   *http.Client
	log    *slog.Logger

	scrapes, fallbacks, resets *metrics.Counter
	errs                       map[string]*metrics.Counter
	skips                      map[string]*metrics.Counter

	mu      sync.Mutex // Guards the fields below; held by Scrape.
	primed  bool       // a scrape succeeded: later new series count from zero
	state   map[string]*scrapeSeries
	key     []byte
	labels  []proto.Label
	body    bytes.Buffer
	failing bool // the last scrape failed (logged on change only)
	scratch proto.Histogram
	delta   proto.Histogram
}

// scrapeSeries is the baseline of one target series.
type scrapeSeries struct {
	kind     proto.Kind
	counter  *Counter
	gauge    *Gauge
	hist     *Histogram
	prev     float64         // counter baseline
	prevH    proto.Histogram // histogram baseline (cumulative, in herd buckets)
	lastSeen time.Time
	name     string        // published name
	labels   []proto.Label // published labels
}

// NewScraper builds a scraper feeding c. It starts nothing. set (may be nil) receives the
// herd_agent_scrape_* metrics.
func NewScraper(cfg ScraperConfig, c *Client, logger *slog.Logger, set *metrics.Set) (*Scraper, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid scrape URL %q: want http(s)://host[:port]/path", cfg.URL)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = c.Interval()
	}
	if cfg.FinalTimeout == 0 {
		cfg.FinalTimeout = max(cfg.Timeout, DefaultFinalTimeout)
	}
	if cfg.MaxSeries == 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.Timeout < 0 || cfg.FinalTimeout < 0 || cfg.MaxSeries < 0 || cfg.MaxBodyBytes < 0 || cfg.StaleAfter < 0 {
		return nil, errors.New("invalid scraper config: negative timeout, series, body or stale limit")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	if logger == nil {
		logger = slog.Default()
	}
	if set == nil {
		set = metrics.NewSet()
	}
	promhelp.Describe(scrapeHelp)
	s := &Scraper{
		cfg:       cfg,
		client:    c,
		http:      hc,
		log:       logger,
		scrapes:   set.GetOrCreateCounter("herd_agent_scrapes_total"),
		fallbacks: set.GetOrCreateCounter("herd_agent_scrape_format_fallbacks_total"),
		resets:    set.GetOrCreateCounter("herd_agent_scrape_counter_resets_total"),
		errs:      make(map[string]*metrics.Counter),
		skips:     make(map[string]*metrics.Counter),
		state:     make(map[string]*scrapeSeries),
		primed:    cfg.CountFirst,
	}
	for _, r := range scrapeErrorReasons {
		s.errs[r] = set.GetOrCreateCounter(`herd_agent_scrape_errors_total{reason="` + r + `"}`)
	}
	for _, r := range skipReasons {
		s.skips[r] = set.GetOrCreateCounter(`herd_agent_scrape_series_skipped_total{reason="` + r + `"}`)
	}
	return s, nil
}

// scrapeHelp describes the scraper's families.
var scrapeHelp = map[string]string{
	"herd_agent_scrapes_total":                 "Scrapes of the local metrics endpoint that succeeded.",
	"herd_agent_scrape_format_fallbacks_total": "Scrapes whose Content-Type was missing or unknown and were parsed as the Prometheus text format.",
	"herd_agent_scrape_counter_resets_total":   "Scraped counters that decreased (the target restarted); the new value is taken as the delta.",
	"herd_agent_scrape_errors_total":           "Scrapes that failed, by reason: http, status, too_large or parse.",
	"herd_agent_scrape_series_skipped_total": "Scraped series skipped, by reason: limit, bad_value, bad_histogram, unsupported_schema, " +
		"gauge_histogram or unsupported_type.",
}

// ScrapeError is a failed scrape; Reason is the herd_agent_scrape_errors_total label.
type ScrapeError struct {
	Reason string
	Err    error
}

func (e *ScrapeError) Error() string { return e.Err.Error() }
func (e *ScrapeError) Unwrap() error { return e.Err }

func (s *Scraper) fail(reason string, err error) error {
	s.errs[reason].Inc()
	return &ScrapeError{Reason: reason, Err: err}
}

// Run scrapes and flushes the client at every aligned interval boundary until ctx is
// cancelled, then scrapes once more (bounded by FinalTimeout) and flushes the final batch. Scrape
// failures are counted and logged when the state changes (failing / recovered); the
// interval's batch is published anyway.
func (s *Scraper) Run(ctx context.Context) error {
	return s.client.runAligned(ctx, func(ctx context.Context, final bool) {
		timeout := s.cfg.Timeout
		if final {
			timeout = s.cfg.FinalTimeout
		}
		err := s.scrape(ctx, timeout)
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case err != nil && !s.failing:
			s.failing = true
			s.log.Warn("scrape failing", "url", s.cfg.URL, "err", err)
		case err == nil && s.failing:
			s.failing = false
			s.log.Info("scrape recovered", "url", s.cfg.URL)
		}
	})
}

// Scrape fetches the target once and adds the deltas since the previous scrape to the
// client. A failed scrape (network, status, size, parse error) changes no baseline and is
// returned as a *ScrapeError.
func (s *Scraper) Scrape(ctx context.Context) error {
	return s.scrape(ctx, s.cfg.Timeout)
}

func (s *Scraper) scrape(ctx context.Context, timeout time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scrapes.Inc()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.URL, nil)
	if err != nil {
		return s.fail("http", fmt.Errorf("cannot build request for %s: %w", s.cfg.URL, err))
	}
	req.Header.Set("Accept", acceptHeader)
	resp, err := s.http.Do(req)
	if err != nil {
		return s.fail("http", fmt.Errorf("cannot scrape %s: %w", s.cfg.URL, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return s.fail("status", fmt.Errorf("cannot scrape %s: status %s", s.cfg.URL, resp.Status))
	}
	s.body.Reset()
	n, err := s.body.ReadFrom(io.LimitReader(resp.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return s.fail("http", fmt.Errorf("cannot read the body of %s: %w", s.cfg.URL, err))
	}
	if n > s.cfg.MaxBodyBytes {
		return s.fail("too_large", fmt.Errorf("cannot scrape %s: body exceeds %d bytes", s.cfg.URL, s.cfg.MaxBodyBytes))
	}
	fams, err := s.parse(resp.Header, s.body.Bytes())
	if err != nil {
		return s.fail("parse", fmt.Errorf("cannot parse the response of %s: %w", s.cfg.URL, err))
	}
	if s.cfg.Rewriter != nil {
		fams = s.cfg.Rewriter.Rewrite(fams)
	}
	now := time.Now()
	for _, f := range fams {
		s.family(f, now)
	}
	s.primed = true
	for k, st := range s.state {
		if now.Sub(st.lastSeen) > s.cfg.StaleAfter {
			delete(s.state, k)
		}
	}
	return nil
}

// parse decodes the body by its Content-Type; an unknown or missing one falls back to the
// text format and is counted.
func (s *Scraper) parse(h http.Header, body []byte) ([]*dto.MetricFamily, error) {
	format := expfmt.ResponseFormat(h)
	var fams []*dto.MetricFamily
	switch format.FormatType() {
	case expfmt.TypeProtoDelim, expfmt.TypeOpenMetrics:
		if format.FormatType() == expfmt.TypeProtoDelim {
			if err := checkDelimited(body); err != nil {
				return nil, err
			}
		}
		dec := expfmt.NewDecoder(bytes.NewReader(body), format)
		for {
			f := &dto.MetricFamily{}
			err := dec.Decode(f)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, err
			}
			fams = append(fams, f)
		}
		return fams, nil
	case expfmt.TypeTextPlain:
	default:
		s.fallbacks.Inc()
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	m, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, f := range m {
		fams = append(fams, f)
	}
	return fams, nil
}

// checkDelimited checks that every length prefix of a delimited protobuf body fits in the
// body: expfmt's decoder allocates a message's claimed length before reading it.
func checkDelimited(body []byte) error {
	for off := 0; off < len(body); {
		n, k := binary.Uvarint(body[off:])
		if k <= 0 || n > uint64(len(body)-off-k) {
			return fmt.Errorf("bad protobuf length prefix at byte %d", off)
		}
		off += k + int(n)
	}
	return nil
}

func (s *Scraper) skip(reason string) { s.skips[reason].Inc() }

// family converts one metric family.
func (s *Scraper) family(f *dto.MetricFamily, now time.Time) {
	name := f.GetName()
	for _, m := range f.GetMetric() {
		s.labels = s.labels[:0]
		for _, lp := range m.GetLabel() {
			if lp.GetValue() != "" { // an empty value is an absent label
				s.labels = append(s.labels, proto.Label{Name: lp.GetName(), Value: lp.GetValue()})
			}
		}
		slices.SortFunc(s.labels, func(a, b proto.Label) int { return strings.Compare(a.Name, b.Name) })
		if !hasValue(f.GetType(), m) {
			s.skip("bad_value") // a protobuf metric without a value of its type
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			s.counter(name, m.GetCounter().GetValue(), now)
		case dto.MetricType_GAUGE:
			s.gaugeValue(name, m.GetGauge().GetValue(), now)
		case dto.MetricType_UNTYPED:
			s.gaugeValue(name, m.GetUntyped().GetValue(), now)
		case dto.MetricType_SUMMARY:
			sm := m.GetSummary()
			s.counter(name+"_count", float64(sm.GetSampleCount()), now)
			s.counter(name+"_sum", sm.GetSampleSum(), now)
		case dto.MetricType_HISTOGRAM:
			s.histogram(name, m.GetHistogram(), now)
		case dto.MetricType_GAUGE_HISTOGRAM:
			s.skip("gauge_histogram")
		default:
			s.skip("unsupported_type")
		}
	}
}

// hasValue reports whether m carries the value its family's type needs.
func hasValue(t dto.MetricType, m *dto.Metric) bool {
	switch t {
	case dto.MetricType_COUNTER:
		return m.Counter != nil
	case dto.MetricType_GAUGE:
		return m.Gauge != nil
	case dto.MetricType_UNTYPED:
		return m.Untyped != nil
	case dto.MetricType_SUMMARY:
		return m.Summary != nil
	case dto.MetricType_HISTOGRAM:
		return m.Histogram != nil
	}
	return true
}

// series returns the state of name{s.labels}, creating it; nil if the limit is reached or
// the name is used by another kind.
func (s *Scraper) series(name string, kind proto.Kind, now time.Time) (st *scrapeSeries, isNew bool) {
	s.key = seriesKey(s.key[:0], name, s.labels)
	if st, ok := s.state[string(s.key)]; ok {
		if st.kind != kind {
			s.skip("unsupported_type")
			return nil, false
		}
		st.lastSeen = now
		return st, false
	}
	if len(s.state) >= s.cfg.MaxSeries {
		s.skip("limit")
		return nil, false
	}
	labels := slices.Clone(s.labels)
	if s.cfg.Rewriter != nil {
		labels = s.cfg.Rewriter.Publish(name, labels)
	}
	st = &scrapeSeries{kind: kind, lastSeen: now}
	s.register(st, name, labels)
	s.state[string(s.key)] = st
	return st, true
}

// register binds st to the client's instrument name{labels}.
func (s *Scraper) register(st *scrapeSeries, name string, labels []proto.Label) {
	st.name, st.labels = name, labels
	switch st.kind {
	case proto.KindCounter:
		st.counter = s.client.Counter(name, labels...)
	case proto.KindGauge:
		st.gauge = s.client.Gauge(name, labels...)
	case proto.KindHistogram:
		st.hist = s.client.Histogram(name, labels...)
	}
}
