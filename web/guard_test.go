package web

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// guardRequest is one request to a Guard-protected handler, as the listener would pass it.
type guardRequest struct {
	name   string
	method string
	remote string // remote address, default 127.0.0.1:50000
	local  string // the connection's local address, default 127.0.0.1:8080
	host   string // Host, default the local address
	header map[string]string
	status int    // the answer wanted
	reason string // the refusal reason wanted, "" when served
}

func (c guardRequest) run(t *testing.T, g *Guard) {
	t.Helper()
	served := false
	h := g.Protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served = true
		w.WriteHeader(http.StatusAccepted)
	}))
	method := c.method
	if method == "" {
		method = http.MethodPost
	}
	r := httptest.NewRequest(method, "/api/v1/deployments", strings.NewReader(`{}`))
	r.RemoteAddr = "127.0.0.1:50000"
	if c.remote != "" {
		r.RemoteAddr = c.remote
	}
	local := "127.0.0.1:8080"
	if c.local != "" {
		local = c.local
	}
	la, err := net.ResolveTCPAddr("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, la))
	r.Host = local
	if c.host != "" {
		r.Host = c.host
	}
	for k, v := range c.header {
		r.Header.Set(k, v)
	}
	before := map[string]uint64{}
	for reason, ctr := range g.refused {
		before[reason] = ctr.Get()
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != c.status {
		t.Errorf("%s: got %d %s; want %d", c.name, w.Code, w.Body, c.status)
	}
	if c.reason == "" {
		if !served {
			t.Errorf("%s: got refused %s; want served", c.name, w.Body)
		}
		return
	}
	if served {
		t.Errorf("%s: got served; want refused as %s", c.name, c.reason)
	}
	var body apiError
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Reason != c.reason || body.Error == "" {
		t.Errorf("%s: got body %q; want a JSON error with reason %s", c.name, w.Body, c.reason)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: got Content-Type %q; want application/json", c.name, ct)
	}
	for reason, ctr := range g.refused {
		want := before[reason]
		if reason == c.reason {
			want++
		}
		if got := ctr.Get(); got != want {
			t.Errorf("%s: got herd_web_api_requests_refused_total{reason=%q} %d; want %d", c.name, reason, got, want)
		}
	}
}

// TestGuardWritesWithoutToken checks the write rules without tokens: reads are open; a write
// must come from loopback, as JSON, not cross-origin, to a Host naming loopback or the
// listener. A cross-site form or text/plain POST and a DNS-rebinding page are refused.
func TestGuardWritesWithoutToken(t *testing.T) {
	g := NewGuard(DefaultHTTPConfig(), metrics.NewSet())
	jsonCT := map[string]string{"Content-Type": "application/json"}
	for _, c := range []guardRequest{
		{name: "GET from anywhere", method: http.MethodGet, remote: "203.0.113.9:4000", status: 202},
		{name: "curl on the host", header: jsonCT, status: 202},
		{name: "JSON with charset", header: map[string]string{"Content-Type": "application/json; charset=utf-8"}, status: 202},
		{name: "IPv6 loopback", remote: "[::1]:50000", local: "[::1]:8080", header: jsonCT, status: 202},
		{name: "Host localhost", host: "localhost:8080", header: jsonCT, status: 202},
		{name: "Host localhost.", host: "LOCALHOST.:8080", header: jsonCT, status: 202},
		{name: "Host another loopback port (a local proxy)", host: "127.0.0.1:9999", header: jsonCT, status: 202},
		{name: "same-origin page", header: map[string]string{"Content-Type": "application/json",
			"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}, status: 202},
		{name: "listener's own address", local: "192.0.2.1:8080", host: "192.0.2.1:8080", header: jsonCT, status: 202},

		{name: "from another machine", remote: "203.0.113.9:4000", local: "192.0.2.1:8080", header: jsonCT,
			status: 403, reason: ReasonNotLoopback},
		{name: "no Content-Type", status: 415, reason: ReasonContentType},
		{name: "cross-site text/plain POST", header: map[string]string{"Content-Type": "text/plain",
			"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, status: 415, reason: ReasonContentType},
		{name: "cross-site form POST", header: map[string]string{"Content-Type": "application/x-www-form-urlencoded",
			"Origin": "http://evil.example"}, status: 415, reason: ReasonContentType},
		{name: "cross-origin JSON (Origin)", header: map[string]string{"Content-Type": "application/json",
			"Origin": "http://evil.example"}, status: 403, reason: ReasonCrossOrigin},
		{name: "another local port's page (same-site)", header: map[string]string{"Content-Type": "application/json",
			"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"}, status: 403, reason: ReasonCrossOrigin},
		{name: "opaque origin", header: map[string]string{"Content-Type": "application/json", "Origin": "null"},
			status: 403, reason: ReasonCrossOrigin},
		{name: "DNS rebinding: same origin to the browser", host: "evil.example:8080", header: map[string]string{
			"Content-Type": "application/json", "Origin": "http://evil.example:8080", "Sec-Fetch-Site": "same-origin"},
			status: 403, reason: ReasonBadHost},
		{name: "DNS rebinding without Origin", host: "evil.example:8080", header: jsonCT, status: 403, reason: ReasonBadHost},
		{name: "Host 0.0.0.0", host: "0.0.0.0:8080", header: jsonCT, status: 403, reason: ReasonBadHost},
		{name: "Host another address", local: "127.0.0.1:8080", host: "192.0.2.1:8080", header: jsonCT,
			status: 403, reason: ReasonBadHost},
		{name: "Host the listener's address, another port", local: "192.0.2.1:8080", host: "192.0.2.1:9090", header: jsonCT,
			status: 403, reason: ReasonBadHost},
	} {
		c.run(t, g)
	}
}

// TestGuardTokens checks the scopes: the read token reads, only the read+write token writes,
// "Bearer" in any case, the query parameter, and a cross-origin write refused even with the
// token.
func TestGuardTokens(t *testing.T) {
	cfg := DefaultHTTPConfig()
	cfg.Token, cfg.ReadToken = "w-secret", "r-secret"
	g := NewGuard(cfg, metrics.NewSet())
	for _, c := range []guardRequest{
		{name: "read with the read token", method: http.MethodGet, remote: "203.0.113.9:4000",
			header: map[string]string{"Authorization": "Bearer r-secret"}, status: 202},
		{name: "read with the write token", method: http.MethodGet, header: map[string]string{"Authorization": "Bearer w-secret"}, status: 202},
		{name: "write from anywhere with the token", remote: "203.0.113.9:4000", host: "herd.example:8080",
			header: map[string]string{"Authorization": "Bearer w-secret"}, status: 202},
		{name: "lower-case bearer", header: map[string]string{"Authorization": "bearer w-secret"}, status: 202},
		{name: "upper-case BEARER", header: map[string]string{"Authorization": "BEARER w-secret"}, status: 202},

		{name: "no token", method: http.MethodGet, status: 401, reason: ReasonUnauthorized},
		{name: "no token from loopback", header: map[string]string{"Content-Type": "application/json"}, status: 401, reason: ReasonUnauthorized},
		{name: "wrong token", method: http.MethodGet, header: map[string]string{"Authorization": "Bearer nope"}, status: 401, reason: ReasonUnauthorized},
		{name: "another scheme", method: http.MethodGet, header: map[string]string{"Authorization": "Basic w-secret"}, status: 401, reason: ReasonUnauthorized},
		{name: "write with the read token", header: map[string]string{"Authorization": "Bearer r-secret"}, status: 403, reason: ReasonReadOnlyToken},
		{name: "cross-origin write with the token", header: map[string]string{"Authorization": "Bearer w-secret",
			"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, status: 403, reason: ReasonCrossOrigin},
	} {
		c.run(t, g)
	}
	// The query parameter (the websocket, Flagger's webhooks).
	h := g.Protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	for url, want := range map[string]int{"/x?token=w-secret": 202, "/x?token=r-secret": 403, "/x?token=nope": 401} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, url, nil))
		if w.Code != want {
			t.Errorf("POST %s: got %d; want %d", url, w.Code, want)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/x", nil))
	if got := w.Header().Get("WWW-Authenticate"); got != `Bearer realm="herd"` {
		t.Errorf("got WWW-Authenticate %q; want the bearer challenge", got)
	}
}

func TestHTTPConfigValidate(t *testing.T) {
	for _, mut := range []func(*HTTPConfig){
		func(c *HTTPConfig) { c.ReadToken = "r" },
		func(c *HTTPConfig) { c.Token, c.ReadToken = "same", "same" },
		func(c *HTTPConfig) { c.Token = "has space" },
		func(c *HTTPConfig) { c.MaxConns = 0 },
		func(c *HTTPConfig) { c.ReadHeaderTimeout = 0 },
		func(c *HTTPConfig) { c.ReadTimeout = c.ReadHeaderTimeout / 2 },
		func(c *HTTPConfig) { c.WriteTimeout = 0 },
		func(c *HTTPConfig) { c.IdleTimeout = 0 },
	} {
		c := DefaultHTTPConfig()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "-http") {
			t.Errorf("got %v for %+v; want an error naming the flag", err, c)
		}
	}
	c := DefaultHTTPConfig()
	c.Token, c.ReadToken = "w", "r"
	if err := c.Validate(); err != nil {
		t.Fatalf("got %v for two tokens; want nil", err)
	}
}
