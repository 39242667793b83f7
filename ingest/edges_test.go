package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// seriesValue returns the value of the series with this name and labels in b, or -1.
func seriesValue(b *proto.Batch, name string, labels ...proto.Label) float64 {
	want := string(proto.SeriesString(name, labels))
	for i := range b.Series {
		if b.Series[i].String() == want {
			if b.Series[i].Kind == proto.KindHistogram {
				return float64(b.Series[i].Hist.Count)
			}
			return b.Series[i].Value
		}
	}
	return -1
}

// TestEdgesHTTP sends requests through the RoundTripper of a caller to a real HTTP server
// wrapped in Inbound, and checks both sides' batches: the caller's edge to the callee, and
// the callee's RED split by the caller group named in the baggage.
func TestEdgesHTTP(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	var callerRec, calleeRec recorder
	caller, err := NewClient(ClientConfig{Service: "checkout", Version: "1.5.0+build/7", Publish: callerRec.publish, Start: start, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	callee := newTestClient(t, &calleeRec, start)
	in := callee.Inbound(0)
	var seenBaggage []string
	srv := httptest.NewServer(in.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenBaggage = r.Header.Values("Baggage")
		if r.URL.Path == "/fail" {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})))
	defer srv.Close()

	edges := caller.Edges(EdgeConfig{Callee: func(*http.Request) string { return "payments" }})
	hc := &http.Client{Transport: edges.RoundTripper(srv.Client().Transport)}
	for i := range 10 {
		path := "/ok"
		if i%5 == 0 {
			path = "/fail"
		}
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("Baggage", "user=alice")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// Plain requests without herd baggage count under the unknown caller.
	resp, err := srv.Client().Get(srv.URL + "/ok")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(seenBaggage) != 0 {
		t.Errorf("plain request carried baggage %q", seenBaggage)
	}

	if err := caller.Flush(start.Add(time.Second), false); err != nil {
		t.Fatal(err)
	}
	if err := callee.Flush(start.Add(time.Second), false); err != nil {
		t.Fatal(err)
	}
	cb, sb := callerRec.all(), calleeRec.all()
	if len(cb) != 1 || len(sb) != 1 {
		t.Fatalf("got %d caller and %d callee batches; want 1 each", len(cb), len(sb))
	}
	edge := proto.EdgeLabels(proto.EdgeKey{Callee: "payments"})
	for _, c := range []struct {
		name string
		want float64
	}{{proto.SeriesEdgeCalls, 10}, {proto.SeriesEdgeErrors, 2}, {proto.SeriesEdgeLatency, 10}} {
		if got := seriesValue(&cb[0], c.name, edge...); got != c.want {
			t.Errorf("caller %s: got %v; want %v", c.name, got, c.want)
		}
	}
	from := []proto.Label{{Name: proto.LabelCaller, Value: "checkout"}, {Name: proto.LabelCallerVersion, Value: "1.5.0+build/7"}}
	unknown := []proto.Label{{Name: proto.LabelCaller, Value: proto.CallerUnknown}}
	for _, c := range []struct {
		name   string
		labels []proto.Label
		want   float64
	}{
		{proto.SeriesInboundRequests, from, 10}, {proto.SeriesInboundErrors, from, 2},
		{proto.SeriesInboundRequests, unknown, 1}, {proto.SeriesInboundErrors, unknown, -1}, // a zero delta is not sent
		{proto.SeriesRequests, nil, 11}, {proto.SeriesErrors, nil, 2}, {proto.SeriesLatency, nil, 11},
	} {
		if got := seriesValue(&sb[0], c.name, c.labels...); got != c.want {
			t.Errorf("callee %s: got %v; want %v", proto.SeriesString(c.name, c.labels), got, c.want)
		}
	}
	if got := in.Unknown(); got != 1 {
		t.Errorf("unknown callers: got %d; want 1", got)
	}
}

// errTransport fails every request.
type errTransport struct{}

func (errTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}

// TestEdgesBounded names far more callees than the bound: the extra calls go to the other
// edge and are counted, the first edges stay exact, and a failed transport is an error.
func TestEdgesBounded(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	var rec recorder
	c := newTestClient(t, &rec, start)
	e := c.Edges(EdgeConfig{MaxCallees: 4})
	hc := &http.Client{Transport: e.RoundTripper(errTransport{})}
	const n = 1000
	for i := range n {
		resp, err := hc.Get(fmt.Sprintf("http://svc-%d.prod.svc:8080/x", i%100))
		if err == nil {
			resp.Body.Close()
			t.Fatal("request through a failing transport succeeded")
		}
	}
	e.Observe("Not A Service!", "", time.Millisecond, false)
	if err := c.Flush(start.Add(time.Second), false); err != nil {
		t.Fatal(err)
	}
	b := rec.all()[0]
	var calls, errs float64
	edges := 0
	for i := range b.Series {
		s := &b.Series[i]
		switch s.Name {
		case proto.SeriesEdgeCalls:
			calls += s.Value
			edges++
		case proto.SeriesEdgeErrors:
			errs += s.Value
		}
	}
	if calls != n+1 || errs != n || edges != 5 {
		t.Errorf("got %v calls, %v errors on %d edges; want %d, %d on 5 (4 and the other edge)", calls, errs, edges, n+1, n)
	}
	if got := seriesValue(&b, proto.SeriesEdgeCalls, proto.EdgeLabels(proto.EdgeKey{Callee: "svc-0"})...); got != n/100 {
		t.Errorf("svc-0 calls: got %v; want %d", got, n/100)
	}
	// 96 of every 100 callees overflow, and the invalid name.
	if got, want := e.Overflow(), uint64(n*96/100+1); got != want {
		t.Errorf("overflow: got %d; want %d", got, want)
	}
}

func TestCallerFromBaggage(t *testing.T) {
	for _, c := range []struct {
		in       []string
		svc, ver string
		ok       bool
	}{
		{[]string{"herd.caller=checkout,herd.caller_version=1.5.0"}, "checkout", "1.5.0", true},
		{[]string{"a=b", " herd.caller = web ;p=1", "herd.caller_version=v%202"}, "", "", false}, // space in version
		{[]string{"herd.caller=web", "herd.caller_version=2%2B3"}, "web", "2+3", true},
		{[]string{"herd.caller=Web,herd.caller_version=1"}, "", "", false},
		{[]string{"herd.caller=web"}, "", "", false},
		{[]string{"herd.caller=%zz,herd.caller_version=1"}, "", "", false},
		{nil, "", "", false},
	} {
		svc, ver, ok := CallerFromBaggage(c.in)
		if svc != c.svc || ver != c.ver || ok != c.ok {
			t.Errorf("CallerFromBaggage(%q) = %q, %q, %v; want %q, %q, %v", c.in, svc, ver, ok, c.svc, c.ver, c.ok)
		}
	}
}
