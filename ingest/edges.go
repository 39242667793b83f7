package ingest

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Defaults of EdgeConfig.
const (
	// DefaultMaxCallees bounds the distinct edges (callee and operation) one Edges records.
	DefaultMaxCallees = 64
	// DefaultMaxCallers bounds the distinct caller groups one Inbound records.
	DefaultMaxCallers = 64
)

// EdgeConfig configures the request-flow instruments of a Client.
type EdgeConfig struct {
	// MaxCallees bounds the distinct edges recorded (default 64); calls beyond it are
	// recorded under callee proto.CalleeOther and counted (Edges.Overflow).
	MaxCallees int
	// Callee names the callee of an outbound request; nil takes the first label of the
	// request's host ("payments" for payments.shop.svc.cluster.local:8080). A name that is not
	// a valid service token becomes proto.CalleeOther.
	Callee func(*http.Request) string
	// Operation, if set, names the operation of an outbound request (e.g. a route template).
	// It must be bounded: every distinct value is an edge of its own, within MaxCallees.
	Operation func(*http.Request) string
	// GRPCCallee names the callee of an outbound gRPC call from its connection's target and
	// full method ("/shop.Payments/Charge"); nil takes the first label of the target's host
	// ("payments" for dns:///payments.shop.svc:443). See Edges.UnaryClientInterceptor.
	GRPCCallee func(target, method string) string
	// GRPCOperation, if set, names the operation of an outbound gRPC call from its full method
	// (returning the method itself is bounded by the services' definitions). Every distinct
	// value is an edge of its own, within MaxCallees.
	GRPCOperation func(method string) string
}

// Edges records the outbound calls of one instance as edges (see proto.SeriesEdgeCalls) in
// its Client's batches. Safe for concurrent use.
type Edges struct {
	c   *Client
	cfg EdgeConfig

	mu    sync.Mutex // Guards edges.
	edges map[proto.EdgeKey]*edgeInstruments

	overflow atomic.Uint64
}

type edgeInstruments struct {
	calls, errors *Counter
	latency       *Histogram
}

// Edges returns the client's recorder of outbound calls. Call it once per client and share
// the result: each call returns a recorder with its own bound.
func (c *Client) Edges(cfg EdgeConfig) *Edges {
	if cfg.MaxCallees <= 0 {
		cfg.MaxCallees = DefaultMaxCallees
	}
	return &Edges{c: c, cfg: cfg, edges: map[proto.EdgeKey]*edgeInstruments{}}
}

// Overflow returns the calls recorded under proto.CalleeOther because the edge bound was
// reached or the callee was not a valid service name.
func (e *Edges) Overflow() uint64 { return e.overflow.Load() }

// instruments returns the instruments of an edge, registering them on first use.
func (e *Edges) instruments(k proto.EdgeKey) *edgeInstruments {
	if proto.ValidService(k.Callee) != nil || len(k.Operation) > proto.MaxStringBytes {
		k = proto.EdgeKey{Callee: proto.CalleeOther}
		e.overflow.Add(1)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.edges[k]
	if in != nil {
		return in
	}
	if len(e.edges) >= e.cfg.MaxCallees && k.Callee != proto.CalleeOther {
		e.overflow.Add(1)
		k = proto.EdgeKey{Callee: proto.CalleeOther}
		if in = e.edges[k]; in != nil {
			return in
		}
	}
	ls := proto.EdgeLabels(k)
	in = &edgeInstruments{
		calls:   e.c.Counter(proto.SeriesEdgeCalls, ls...),
		errors:  e.c.Counter(proto.SeriesEdgeErrors, ls...),
		latency: e.c.Histogram(proto.SeriesEdgeLatency, ls...),
	}
	e.edges[k] = in
	return in
}

// Observe records one call to callee (operation may be empty) that took d; failed counts it
// as an error too.
func (e *Edges) Observe(callee, operation string, d time.Duration, failed bool) {
	in := e.instruments(proto.EdgeKey{Callee: callee, Operation: operation})
	in.calls.Inc()
	if failed {
		in.errors.Inc()
	}
	in.latency.Observe(d.Seconds())
}

// RoundTripper returns an http.RoundTripper that records every request through next (nil:
// http.DefaultTransport) as a call on its edge, and adds the caller's group to the request's
// W3C baggage header so that the callee's Inbound can split its RED by caller. A call fails
// when the transport returns an error or the status is 5xx; its latency is the time to the
// response headers.
func (e *Edges) RoundTripper(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &edgeTransport{e: e, next: next, baggage: callerBaggage(e.c.cfg.Service, e.c.cfg.Version)}
}

type edgeTransport struct {
	e       *Edges
	next    http.RoundTripper
	baggage string
}

func (t *edgeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	callee := ""
	if t.e.cfg.Callee != nil {
		callee = t.e.cfg.Callee(r)
	} else {
		callee = hostCallee(r.URL.Host)
	}
	op := ""
	if t.e.cfg.Operation != nil {
		op = t.e.cfg.Operation(r)
	}
	// A RoundTripper must not modify the caller's request: clone the headers it changes.
	r2 := r.Clone(r.Context())
	if b := r2.Header.Get("Baggage"); b != "" {
		r2.Header.Set("Baggage", b+","+t.baggage)
	} else {
		r2.Header.Set("Baggage", t.baggage)
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(r2)
	t.e.Observe(callee, op, time.Since(start), err != nil || resp.StatusCode >= 500)
	return resp, err
}

// hostCallee returns the first DNS label of a host, lower-cased, without the port.
func hostCallee(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if i := strings.IndexByte(host, '.'); i > 0 && net.ParseIP(host) == nil {
		host = host[:i]
	}
	return strings.ToLower(host)
}

// callerBaggage returns the baggage members naming the caller group.
func callerBaggage(service, version string) string {
	return proto.BaggageCaller + "=" + baggageEscape(service) + "," + proto.BaggageCallerVersion + "=" + baggageEscape(version)
}

// baggageEscape percent-encodes a baggage value: every byte outside the unreserved URL
// characters.
func baggageEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte("0123456789ABCDEF"[c>>4])
		b.WriteByte("0123456789ABCDEF"[c&15])
	}
	return b.String()
}

// CallerFromBaggage returns the caller group named by herd's members of W3C baggage header
// values, or ok false when they are absent or not a valid service and version.
func CallerFromBaggage(values []string) (service, version string, ok bool) {
	for _, v := range values {
		for member := range strings.SplitSeq(v, ",") {
			kv, _, _ := strings.Cut(member, ";") // drop member properties
			k, val, found := strings.Cut(kv, "=")
			if !found {
				continue
			}
			k = strings.TrimSpace(k)
			val, err := url.PathUnescape(strings.TrimSpace(val))
			if err != nil {
				continue
			}
			switch k {
			case proto.BaggageCaller:
				service = val
			case proto.BaggageCallerVersion:
				version = val
			}
		}
	}
	if proto.ValidService(service) != nil || proto.ValidVersion(version) != nil {
		return "", "", false
	}
	return service, version, true
}

// Inbound records the requests an instance serves: its RED (proto.SeriesRequests, …) and
// the same requests and errors split by caller group (proto.SeriesInboundRequests, …) from
// the herd baggage the caller's RoundTripper added. Safe for concurrent use.
type Inbound struct {
	c          *Client
	red        *RED
	maxCallers int

	mu      sync.Mutex // Guards callers.
	callers map[[2]string]*inboundInstruments

	unknown atomic.Uint64
}

type inboundInstruments struct{ requests, errors *Counter }

// Inbound returns the client's recorder of served requests; maxCallers bounds the distinct
// caller groups (0: DefaultMaxCallers), beyond which requests count under caller
// proto.CallerUnknown.
func (c *Client) Inbound(maxCallers int) *Inbound {
	if maxCallers <= 0 {
		maxCallers = DefaultMaxCallers
	}
	return &Inbound{c: c, red: c.RED(), maxCallers: maxCallers, callers: map[[2]string]*inboundInstruments{}}
}

// Unknown returns the requests recorded under proto.CallerUnknown: without valid herd
// baggage, or from callers beyond the bound.
func (in *Inbound) Unknown() uint64 { return in.unknown.Load() }

// Observe records one served request from the caller group (service, version) (empty: not
// known) that took d; failed counts it as an error too.
func (in *Inbound) Observe(service, version string, d time.Duration, failed bool) {
	in.red.Observe(d, failed)
	k := [2]string{service, version}
	if service == "" {
		k = [2]string{proto.CallerUnknown, ""}
	}
	in.mu.Lock()
	ins := in.callers[k]
	if ins == nil {
		if len(in.callers) >= in.maxCallers && k[0] != proto.CallerUnknown {
			k = [2]string{proto.CallerUnknown, ""}
			ins = in.callers[k]
		}
		if ins == nil {
			ls := []proto.Label{{Name: proto.LabelCaller, Value: k[0]}}
			if k[1] != "" {
				ls = append(ls, proto.Label{Name: proto.LabelCallerVersion, Value: k[1]})
			}
			ins = &inboundInstruments{
				requests: in.c.Counter(proto.SeriesInboundRequests, ls...),
				errors:   in.c.Counter(proto.SeriesInboundErrors, ls...),
			}
			in.callers[k] = ins
		}
	}
	in.mu.Unlock()
	if k[0] == proto.CallerUnknown {
		in.unknown.Add(1)
	}
	ins.requests.Inc()
	if failed {
		ins.errors.Inc()
	}
}

// Handler wraps next: every request it serves is recorded (a 5xx status or a panic counts
// as an error; a panic is re-raised after it is recorded).
func (in *Inbound) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service, version, _ := CallerFromBaggage(r.Header.Values("Baggage"))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		failed := true
		defer func() {
			in.Observe(service, version, time.Since(start), failed || sw.status >= 500)
		}()
		next.ServeHTTP(sw, r)
		failed = false
	})
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer (Flush, deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
