package web

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Handler returns the HTTP handler of the API, the websocket and the dashboard:
//
//	GET  /api/v1/services                              services with groups and latest verdicts
//	GET  /api/v1/services/{service}                    one service, with verdict and deploy history
//	GET  /api/v1/services/{service}/windows[?version=V&since_ms=T]  window summaries from the ring buffers
//	GET  /api/v1/services/{service}/series[?version=V] the newest full window of each group (all series)
//	GET  /api/v1/verdicts[?service=S&canary=V&wait=D]  latest verdict of every canary (see serveVerdicts)
//	GET  /api/v1/deployments[?service=S]               recent deploy announcements
//	POST /api/v1/deployments                           announce a deployment (only with SetAnnounce)
//	GET  /api/v1/dashboard/decisions[?service=S]       decisions with delivery logs (SetDecisions)
//	GET  /api/v1/stream[?service=S&history_ms=H&since=N]  the websocket stream
//	GET  /, /services/{service}, /decisions, /static/… the dashboard
//
// It leaves /api/v1/decisions… (the deliverer's API), /metrics, /livez and /readyz to the
// caller. Every /api/ route goes through Protect: with tokens it requires one, and POST
// requires the read+write token; without tokens POST is accepted only as same-origin JSON
// from loopback (see Guard).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	api := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.Protect(h)) }
	api("GET /api/v1/services", s.serveServices)
	api("GET /api/v1/services/{service}", s.serveService)
	api("GET /api/v1/services/{service}/windows", s.serveWindows)
	api("GET /api/v1/services/{service}/series", s.serveSeries)
	api("GET /api/v1/verdicts", s.serveVerdicts)
	api("GET /api/v1/deployments", s.serveDeployments)
	api("POST /api/v1/deployments", s.servePostDeployment)
	api("GET /api/v1/dashboard/decisions", s.serveDecisions)
	api("GET /api/v1/stream", s.serveStream)
	api("GET /api/v1/graph", s.serveGraph)
	mux.Handle("GET /static/", staticHandler())
	mux.HandleFunc("GET /{$}", serveIndex)
	mux.HandleFunc("GET /services/{service}", serveIndex)
	mux.HandleFunc("GET /decisions", serveIndex)
	mux.HandleFunc("GET /graph", serveIndex)
	return mux
}

// Protect wraps h with the Server's Guard (see Guard): the tokens of Config.HTTP, the
// write rules, counted refusals. The node wraps the deliverer's decisions and Flagger
// endpoints and /metrics with it.
func (s *Server) Protect(h http.Handler) http.Handler { return s.guard.Protect(h) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// apiError is the body of every error answer.
type apiError struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, apiError{Error: msg, Reason: reason})
}

// GroupSummary is the API's view of one (service, version) group.
type GroupSummary struct {
	Version string `json:"version"`
	// Instances is the instance count of the newest window.
	Instances int   `json:"instances"`
	LastEndMs int64 `json:"last_end_unix_ms"`
	// RequestsPerSecond and ErrorRatio are over the newest second of windows; latencies (seconds)
	// are those of the newest window.
	RequestsPerSecond float64 `json:"requests_per_second"`
	ErrorRatio        float64 `json:"error_ratio"`
	P50               float64 `json:"p50"`
	P90               float64 `json:"p90"`
	P99               float64 `json:"p99"`
	Windows           int     `json:"windows"`
}

// SignalsSummary is the API's view of the definition of a service's signals (see package
// signals): the profile the dashboard and the detector read, and its selectors.
type SignalsSummary struct {
	// Profile is a built-in profile's name, or "policy" for the policy file's selectors.
	Profile string `json:"profile"`
	// Detected is false while none of the service's windows carried a profile's series
	// (herd's own names are read meanwhile); Pinned is true when the policy file fixes it.
	Detected bool   `json:"detected"`
	Pinned   bool   `json:"pinned"`
	Requests string `json:"requests"`
	Errors   string `json:"errors"`
	Latency  string `json:"latency"`
	// LatencyUnitSeconds is the latency histogram's unit (0.001: milliseconds); the API and
	// the dashboard show latencies in seconds whatever it is.
	LatencyUnitSeconds float64 `json:"latency_unit_seconds"`
}

// signalsSummary describes the current definition of sv.
func signalsSummary(sv *service) SignalsSummary {
	d := sv.choice.Definition()
	return SignalsSummary{Profile: d.Profile, Detected: sv.choice.Detected(), Pinned: d.Pinned(),
		Requests: d.Requests.String(), Errors: d.Errors.String(), Latency: d.Latency.String(),
		LatencyUnitSeconds: d.LatencyUnit}
}

// ServiceSummary is the API's view of one service.
type ServiceSummary struct {
	Service string         `json:"service"`
	Signals SignalsSummary `json:"signals"`
	Groups  []GroupSummary `json:"groups"`
	// Verdicts holds the latest verdict of each canary, newest first.
	Verdicts []proto.Verdict `json:"verdicts"`
	// History (single-service route only) holds the recent verdict changes, oldest first.
	History     []proto.Verdict    `json:"history,omitempty"`
	Deployments []proto.Deployment `json:"deployments,omitempty"`
}

// summaryLocked summarizes a service; the caller holds s.mu.
func (s *Server) summaryLocked(sv *service, full bool) ServiceSummary {
	now := time.Now()
	out := ServiceSummary{Service: sv.name, Signals: signalsSummary(sv), Groups: []GroupSummary{}, Verdicts: stampAges(nonNil(sv.latestVerdicts()), now)}
	win := s.window()
	per := max(1, int(time.Second/win))
	for _, g := range sv.sortedGroups() {
		gs := GroupSummary{Version: g.version, Windows: g.ring.n}
		if last := g.ring.last(); last != nil {
			gs.Instances, gs.LastEndMs = int(last.Instances), last.EndMs
			gs.P50, gs.P90, gs.P99 = last.P50, last.P90, last.P99
			var req, errs float64
			k := min(per, g.ring.n)
			for i := g.ring.n - k; i < g.ring.n; i++ {
				req += g.ring.at(i).Requests
				errs += g.ring.at(i).Errors
			}
			gs.RequestsPerSecond = req / (float64(k) * win.Seconds())
			if req > 0 {
				gs.ErrorRatio = errs / req
			}
		}
		out.Groups = append(out.Groups, gs)
	}
	if full {
		out.History = stampAges(nonNil(append([]proto.Verdict(nil), sv.verdicts...)), now)
		out.Deployments = nonNil(append([]proto.Deployment(nil), sv.deployments...))
	}
	return out
}

func (s *Server) serveServices(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	out := make([]ServiceSummary, 0, len(s.services))
	for _, name := range sortedKeys(s.services) {
		out = append(out, s.summaryLocked(s.services[name], false))
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, struct {
		Services []ServiceSummary `json:"services"`
	}{out})
}

func (s *Server) serveService(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	sv := s.services[r.PathValue("service")]
	var out ServiceSummary
	if sv != nil {
		out = s.summaryLocked(sv, true)
	}
	s.mu.RUnlock()
	if sv == nil {
		writeError(w, http.StatusNotFound, "unknown_service", "unknown service")
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// windowsResponse is the body of the windows route: each point is an array in Fields order.
type windowsResponse struct {
	Service  string            `json:"service"`
	WindowMs int64             `json:"window_ms"`
	Fields   []string          `json:"fields"`
	Groups   []json.RawMessage `json:"groups"`
}

func (s *Server) serveWindows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var sinceMs int64
	if v := q.Get("since_ms"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_since", "since_ms must be unix milliseconds")
			return
		}
		sinceMs = n
	}
	version := q.Get("version")
	s.mu.RLock()
	sv := s.services[r.PathValue("service")]
	var groups []snapGroup
	if sv != nil {
		for _, g := range sv.sortedGroups() {
			if version == "" || g.version == version {
				groups = append(groups, snapGroup{version: g.version, points: g.ring.since(nil, sinceMs)})
			}
		}
	}
	s.mu.RUnlock()
	if sv == nil {
		writeError(w, http.StatusNotFound, "unknown_service", "unknown service")
		return
	}
	out := windowsResponse{Service: sv.name, WindowMs: s.window().Milliseconds(), Fields: pointFields, Groups: []json.RawMessage{}}
	for _, g := range groups {
		b := append([]byte(`{"version":`), appendString(nil, g.version)...)
		b = append(b, `,"points":[`...)
		for i := range g.points {
			if i > 0 {
				b = append(b, ',')
			}
			b = g.points[i].appendJSON(b)
		}
		out.Groups = append(out.Groups, append(b, "]}"...))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) serveSeries(w http.ResponseWriter, r *http.Request) {
	version := r.URL.Query().Get("version")
	s.mu.RLock()
	sv := s.services[r.PathValue("service")]
	var ws []*proto.Window
	if sv != nil {
		for _, g := range sv.sortedGroups() {
			if g.latest != nil && (version == "" || g.version == version) {
				ws = append(ws, g.latest)
			}
		}
	}
	s.mu.RUnlock()
	if sv == nil {
		writeError(w, http.StatusNotFound, "unknown_service", "unknown service")
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Windows []*proto.Window `json:"windows"`
	}{nonNil(ws)})
}

// maxVerdictWait bounds the wait parameter of GET /api/v1/verdicts.
const maxVerdictWait = 5 * time.Minute

// verdictWaitPoll is how often a waiting verdicts request looks for a final verdict.
const verdictWaitPoll = 100 * time.Millisecond

// verdictsResponse is the body of GET /api/v1/verdicts. State is set when the request names
// a service and a canary: the state of that canary's newest verdict, or "none" while herd has none; a
// deploy tool's gate reads it (Argo Rollouts' web provider: jsonPath {$.state}).
type verdictsResponse struct {
	Verdicts []proto.Verdict `json:"verdicts"`
	State    string          `json:"state,omitempty"`
}

// serveVerdicts answers GET /api/v1/verdicts[?service=S&canary=V&wait=D]: the latest verdict
// of every comparison, of service S only, of canary version V only. With both and wait
// (a Go duration up to maxVerdictWait), the answer waits until that canary's verdict is final
// (pass, rollback, inconclusive) or the wait is over, so that one measurement of a gate can
// span herd's decision.
func (s *Server) serveVerdicts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	only, canary := q.Get("service"), q.Get("canary")
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxVerdictWait || canary == "" || only == "" {
			writeError(w, http.StatusBadRequest, "bad_wait", "wait must be a duration between 0 and 5m, with service and canary")
			return
		}
		wait = d
	}
	out := s.verdicts(only, canary)
	if wait > 0 && !final(out) {
		// The listener's write timeout would cut a long wait: this answer gets its own.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 10*time.Second))
		t := time.NewTicker(verdictWaitPoll)
		defer t.Stop()
		deadline := time.NewTimer(wait)
		defer deadline.Stop()
	poll:
		for !final(out) {
			select {
			case <-r.Context().Done():
				return
			case <-deadline.C:
				break poll
			case <-t.C:
				out = s.verdicts(only, canary)
			}
		}
	}
	resp := verdictsResponse{Verdicts: stampAges(out, time.Now())}
	if only != "" && canary != "" {
		resp.State = "none"
		if len(out) > 0 {
			resp.State = string(out[0].State)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// verdicts returns the latest verdict of each comparison of service (all when empty) and
// canary version (all when empty), newest first within a service.
func (s *Server) verdicts(service, canary string) []proto.Verdict {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []proto.Verdict{}
	for _, name := range sortedKeys(s.services) {
		if service != "" && name != service {
			continue
		}
		for _, v := range s.services[name].latestVerdicts() {
			if canary == "" || v.Canary == canary {
				out = append(out, v)
			}
		}
	}
	return out
}

// final reports whether the newest verdict of vs is final.
func final(vs []proto.Verdict) bool {
	return len(vs) > 0 && vs[0].State != proto.StatePending
}

func (s *Server) serveDeployments(w http.ResponseWriter, r *http.Request) {
	only := r.URL.Query().Get("service")
	s.mu.RLock()
	out := []proto.Deployment{}
	for _, name := range sortedKeys(s.services) {
		if only == "" || name == only {
			out = append(out, s.services[name].deployments...)
		}
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, struct {
		Deployments []proto.Deployment `json:"deployments"`
	}{out})
}

// maxDeploymentBody bounds a POSTed announcement.
const maxDeploymentBody = 64 << 10

func (s *Server) servePostDeployment(w http.ResponseWriter, r *http.Request) {
	f := s.announce.Load()
	if f == nil || *f == nil {
		writeError(w, http.StatusForbidden, "read_only", "the API is read-only: deploy announcements are not enabled")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxDeploymentBody+1))
	if err != nil || len(body) > maxDeploymentBody {
		writeError(w, http.StatusBadRequest, "bad_body", "cannot read the body (at most 64 KiB)")
		return
	}
	var d proto.Deployment
	if err := json.Unmarshal(body, &d); err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "cannot decode deployment: "+err.Error())
		return
	}
	if err := checkDeployment(&d); err != nil {
		writeError(w, http.StatusBadRequest, "bad_deployment", err.Error())
		return
	}
	if err := (*f)(d); err != nil {
		if errors.Is(err, proto.ErrDeploymentRefused) {
			writeError(w, http.StatusConflict, "refused", err.Error())
			return
		}
		writeError(w, http.StatusServiceUnavailable, "announce_failed", "cannot announce deployment: "+err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, d)
}

func (s *Server) serveDecisions(w http.ResponseWriter, r *http.Request) {
	out := []proto.Decision{}
	if f := s.decisions.Load(); f != nil && *f != nil {
		only := r.URL.Query().Get("service")
		for _, d := range (*f)() {
			if only != "" && d.Verdict.Service != only {
				continue
			}
			d, err := cleanDecision(d)
			if err != nil {
				s.m.inputsRefused[ReasonBadDecision].Inc()
				continue
			}
			out = append(out, d)
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Decisions []proto.Decision `json:"decisions"`
	}{out})
}

var errNoIndex = errors.New("cannot find the embedded index.html")
