package web

import (
	"context"
	"crypto/subtle"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/herd-dev/herd/internal/promhelp"
)

// Reasons a request is refused by a Guard (label reason of herd_web_api_requests_refused_total),
// besides ReasonUnauthorized: tokens are configured and the request carries none of them.
const (
	ReasonReadOnlyToken = "read_only_token" // a state-changing request with the read-only token
	ReasonNotLoopback   = "not_loopback"    // no tokens: a state-changing request from a non-loopback address
	ReasonContentType   = "content_type"    // no tokens: a state-changing request that is not application/json
	ReasonCrossOrigin   = "cross_origin"    // a state-changing request from another origin (Origin, Sec-Fetch-Site)
	ReasonBadHost       = "bad_host"        // no tokens: a state-changing request whose Host names neither loopback nor this listener
)

var guardReasons = []string{ReasonUnauthorized, ReasonReadOnlyToken, ReasonNotLoopback, ReasonContentType, ReasonCrossOrigin, ReasonBadHost}

// guardHelp describes the Guard's families.
var guardHelp = map[string]string{
	"herd_web_api_requests_total": "Requests to the endpoints a Guard protects: the JSON API, the websocket stream, the decisions and Flagger endpoints and /metrics.",
	"herd_web_api_requests_refused_total": "Requests refused by the Guard, by reason: unauthorized (no valid token), read_only_token (a write with the read token), " +
		"and, for state-changing requests, not_loopback, content_type, cross_origin and bad_host.",
}

// Guard decides who may call a node's HTTP endpoints. With tokens (HTTPConfig.Token, and
// optionally HTTPConfig.ReadToken) every request needs one, as "Authorization: Bearer
// <token>" (the scheme in any case) or a token query parameter (browsers cannot set headers
// on a websocket, Flagger cannot on its webhooks); a state-changing request (any method but
// GET, HEAD and OPTIONS) needs the read+write token. Without tokens, reads are open and a
// state-changing request is accepted only when all of these hold, so that neither another
// web site (CSRF) nor a DNS-rebinding page can make one:
//
//   - it comes from a loopback address;
//   - its Content-Type is application/json (a cross-site form or text/plain POST cannot be);
//   - it is not cross-origin: no Sec-Fetch-Site other than same-origin or none, and an Origin,
//     if any, naming the Host the request was sent to;
//   - its Host is localhost, a loopback IP or this listener's own address.
//
// In every mode a state-changing request must not be cross-origin. A refused request gets a
// JSON error {"error","reason"} and is counted by reason. A Guard is safe for concurrent use.
type Guard struct {
	token, readToken []byte
	cop              *http.CrossOriginProtection
	requests         *metrics.Counter
	refused          map[string]*metrics.Counter
	// onRefuse, if set, is called for every refused request (the Server counts refused
	// websocket upgrades with it).
	onRefuse func(r *http.Request, reason string)
}

// NewGuard returns a Guard for cfg (which has passed Validate). Its metrics
// (herd_web_api_requests_total and herd_web_api_requests_refused_total) go into set, which
// must not hold another Guard's. A Server has its own Guard (see Server.Protect); a node
// without the web role builds one for its decisions endpoints and /metrics.
func NewGuard(cfg HTTPConfig, set *metrics.Set) *Guard {
	promhelp.Describe(guardHelp)
	g := &Guard{
		cop:      http.NewCrossOriginProtection(),
		requests: set.NewCounter("herd_web_api_requests_total"),
		refused:  map[string]*metrics.Counter{},
	}
	if cfg.Token != "" {
		g.token = []byte(cfg.Token)
	}
	if cfg.ReadToken != "" {
		g.readToken = []byte(cfg.ReadToken)
	}
	for _, r := range guardReasons {
		g.refused[r] = set.NewCounter(`herd_web_api_requests_refused_total{reason="` + r + `"}`)
	}
	return g
}

// Protect wraps h so that it serves only the requests the Guard accepts (see Guard).
func (g *Guard) Protect(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.requests.Inc()
		caller, status, reason, msg := g.check(r)
		if reason != "" {
			g.refused[reason].Inc()
			if g.onRefuse != nil {
				g.onRefuse(r, reason)
			}
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="herd"`)
			}
			writeError(w, status, reason, msg)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller)))
	})
}

// callerKey is the context key of the caller a Guard accepted: "token:read", "token:write"
// or "addr:<remote IP>" without tokens. Per-token limits count by it.
type callerKey struct{}

// callerOf returns who made r, as Protect recorded it, else its remote address.
func callerOf(r *http.Request) string {
	if c, ok := r.Context().Value(callerKey{}).(string); ok {
		return c
	}
	return "addr:" + remoteAddr(r).String()
}

// check decides on r: the caller when accepted, else the status, reason and message.
func (g *Guard) check(r *http.Request) (caller string, status int, reason, msg string) {
	write := r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
	if g.token != nil {
		switch tok := bearer(r); {
		case subtle.ConstantTimeCompare(tok, g.token) == 1:
			caller = "token:write"
		case g.readToken != nil && subtle.ConstantTimeCompare(tok, g.readToken) == 1:
			if write {
				return "", http.StatusForbidden, ReasonReadOnlyToken, "this token may only read: a state-changing request needs the read+write token (-http-token)"
			}
			caller = "token:read"
		default:
			return "", http.StatusUnauthorized, ReasonUnauthorized, "a bearer token is required"
		}
		if write && g.cop.Check(r) != nil {
			return "", http.StatusForbidden, ReasonCrossOrigin, "cross-origin state-changing request refused"
		}
		return caller, 0, "", ""
	}
	addr := remoteAddr(r)
	caller = "addr:" + addr.String()
	if !write {
		return caller, 0, "", ""
	}
	switch {
	case !addr.IsLoopback():
		return "", http.StatusForbidden, ReasonNotLoopback, "without -http-token, state-changing requests are accepted only from loopback"
	case !isJSON(r.Header.Get("Content-Type")):
		return "", http.StatusUnsupportedMediaType, ReasonContentType, "without -http-token, a state-changing request must be sent as Content-Type: application/json"
	case g.cop.Check(r) != nil:
		return "", http.StatusForbidden, ReasonCrossOrigin, "cross-origin state-changing request refused"
	case !hostAllowed(r):
		return "", http.StatusForbidden, ReasonBadHost, "without -http-token, a state-changing request's Host must be localhost, a loopback address or this listener's address"
	}
	return caller, 0, "", ""
}

// bearer returns the token of r: from "Authorization: Bearer <token>" (the scheme in any
// case), else from the token query parameter.
func bearer(r *http.Request) []byte {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(strings.TrimSpace(h), " ")
		if strings.EqualFold(scheme, "bearer") {
			return []byte(strings.TrimSpace(tok))
		}
	}
	return []byte(r.URL.Query().Get("token"))
}

// remoteAddr returns the remote IP of r; the zero Addr (not loopback) when unparsable.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func isJSON(contentType string) bool {
	t, _, err := mime.ParseMediaType(contentType)
	return err == nil && t == "application/json"
}

// hostAllowed reports whether r's Host names localhost, a loopback IP or the local address
// of r's connection. A DNS-rebinding page sends its own host name and is refused.
func hostAllowed(r *http.Request) bool {
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]"), ""
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	local, err := netip.ParseAddrPort(la.String())
	if err != nil || local.Addr().Unmap() != ip {
		return false
	}
	if port == "" {
		port = "80"
	}
	return port == strconv.Itoa(int(local.Port()))
}
