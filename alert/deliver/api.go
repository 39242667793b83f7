package deliver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/herd-dev/herd/proto"
)

// HTTPHandler serves the decisions API (JSON); cmd/herd mounts it on its web server:
//
//	GET  /api/v1/decisions[?service=S&limit=N]   decisions with evidence and target states, newest first
//	GET  /api/v1/decisions/{id}                  one decision
//	GET  /api/v1/decisions/{id}/deliveries       its delivery log
//	POST /api/v1/decisions/{id}/redeliver[?target=T]  deliver again (202; 404 unknown; 409 refused)
//
// No response holds a secret: targets are named by redacted URL or by object name.
func (d *Deliverer) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/decisions", d.serveList)
	mux.HandleFunc("GET /api/v1/decisions/{id}", d.serveDecision)
	mux.HandleFunc("GET /api/v1/decisions/{id}/deliveries", d.serveDeliveries)
	mux.HandleFunc("POST /api/v1/decisions/{id}/redeliver", d.serveRedeliver)
	return mux
}

const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

func (d *Deliverer) serveList(w http.ResponseWriter, r *http.Request) {
	limit := defaultListLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			d.apiError(w, http.StatusBadRequest, "bad_limit", "limit must be a positive integer")
			return
		}
		limit = min(n, maxListLimit)
	}
	service := r.URL.Query().Get("service")
	rs := d.records()
	out := rs[:0]
	for _, rec := range rs {
		if service == "" || rec.Verdict.Service == service {
			out = append(out, rec)
		}
		if len(out) == limit {
			break
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Decisions []record `json:"decisions"`
	}{out})
}

func (d *Deliverer) serveDecision(w http.ResponseWriter, r *http.Request) {
	rec, ok := d.record(r.PathValue("id"))
	if !ok {
		d.apiError(w, http.StatusNotFound, "unknown_decision", "unknown decision")
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (d *Deliverer) serveDeliveries(w http.ResponseWriter, r *http.Request) {
	rec, ok := d.record(r.PathValue("id"))
	if !ok {
		d.apiError(w, http.StatusNotFound, "unknown_decision", "unknown decision")
		return
	}
	writeJSON(w, http.StatusOK, struct {
		DecisionID string           `json:"decision_id"`
		Status     string           `json:"status"`
		Targets    []TargetState    `json:"targets"`
		Deliveries []proto.Delivery `json:"deliveries"`
	}{rec.ID, rec.Status, rec.Targets, rec.Deliveries})
}

func (d *Deliverer) serveRedeliver(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := d.Redeliver(id, r.URL.Query().Get("target"))
	switch {
	case err == nil:
		rec, _ := d.record(id)
		writeJSON(w, http.StatusAccepted, rec)
	case errors.Is(err, ErrUnknownDecision), errors.Is(err, ErrUnknownTarget):
		writeJSON(w, http.StatusNotFound, apiErr{err.Error()})
	default:
		writeJSON(w, http.StatusConflict, apiErr{err.Error()})
	}
}

type apiErr struct {
	Error string `json:"error"`
}

func (d *Deliverer) apiError(w http.ResponseWriter, status int, reason, msg string) {
	d.counter(`herd_deliver_api_refused_total{reason=%q}`, reason).Inc()
	writeJSON(w, status, apiErr{msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "cannot encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// FlaggerPayload is the JSON body Flagger POSTs to a webhook.
type FlaggerPayload struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Phase     string            `json:"phase"`
	Checksum  string            `json:"checksum,omitempty"`
	Type      string            `json:"type,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

// FlaggerHandler serves the endpoints Flagger's webhooks call, answering from lookup (the
// detector's latest verdict of a service):
//
//	POST /api/v1/flagger/rollback            200 if the verdict is rollback, else 403
//	POST /api/v1/flagger/confirm-promotion   200 if the verdict is pass, else 403
//
// The canary (namespace/name) maps to a herd service through Targets.Flagger, else the
// metadata key "service", else its name. When the metadata key "canary" is set, the
// verdict must be about that canary version. A malformed payload gets 400.
//
// Answers are keyed by the payload's checksum (the canary's revision): a verdict of a
// comparison that started before herd first saw the checksum belongs to an earlier revision
// and is not answered (403), so a config-only revision with the same version does not get the
// previous revision's verdict. At the first call of a new revision, unless the service's
// latest comparison is still pending, restart (may be nil) starts a new comparison of the same
// baseline and canary versions. See MaxFlaggerRevisions.
func (d *Deliverer) FlaggerHandler(lookup func(service string) (proto.Verdict, bool), restart RestartFunc) http.Handler {
	rv := &revisions{m: map[string]revision{}, evicted: d.counter(`herd_deliver_flagger_revisions_total{event="evicted"}`)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/flagger/rollback", func(w http.ResponseWriter, r *http.Request) {
		d.serveFlagger(w, r, lookup, rv, restart, "rollback", proto.StateRollback)
	})
	mux.HandleFunc("POST /api/v1/flagger/confirm-promotion", func(w http.ResponseWriter, r *http.Request) {
		d.serveFlagger(w, r, lookup, rv, restart, "confirm-promotion", proto.StatePass)
	})
	return mux
}

// flaggerAnswer is the body of a Flagger hook response; Flagger shows it in its events.
type flaggerAnswer struct {
	Service    string      `json:"service,omitempty"`
	Canary     string      `json:"canary,omitempty"`
	Verdict    proto.State `json:"verdict,omitempty"`
	DecisionID string      `json:"decision_id,omitempty"`
	Reason     string      `json:"reason"`
}

func (d *Deliverer) serveFlagger(w http.ResponseWriter, r *http.Request, lookup func(string) (proto.Verdict, bool), rv *revisions, restart RestartFunc, hook string, want proto.State) {
	answer := func(status int, a flaggerAnswer) {
		d.counter(`herd_deliver_flagger_requests_total{hook=%q,answer="%d"}`, hook, status).Inc()
		writeJSON(w, status, a)
	}
	refuse := func(status int, reason, msg string) {
		d.counter(`herd_deliver_flagger_refused_total{reason=%q}`, reason).Inc()
		answer(status, flaggerAnswer{Reason: msg})
	}
	var p FlaggerPayload
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err == nil && len(body) > 64<<10 {
		refuse(http.StatusRequestEntityTooLarge, "too_large", "payload larger than 64 KiB")
		return
	}
	if err == nil {
		err = json.Unmarshal(body, &p)
	}
	if err != nil || p.Name == "" || p.Namespace == "" {
		refuse(http.StatusBadRequest, "bad_payload", "want a Flagger webhook payload with name and namespace")
		return
	}
	service, ok := d.flagger[p.Namespace+"/"+p.Name]
	if !ok {
		service = p.Metadata["service"]
		if service == "" {
			service = p.Name
		}
	}
	if proto.ValidService(service) != nil {
		refuse(http.StatusForbidden, "unknown_canary", "canary "+p.Namespace+"/"+p.Name+" maps to no valid herd service")
		return
	}
	v, ok := lookup(service)
	if p.Checksum != "" {
		if why := d.checkRevision(rv, restart, p.Namespace+"/"+p.Name, p.Checksum, service, v, ok); why != "" {
			answer(http.StatusForbidden, flaggerAnswer{Service: service, Reason: why})
			return
		}
	}
	if !ok {
		refuse(http.StatusForbidden, "no_verdict", "herd has no verdict for service "+service)
		return
	}
	a := flaggerAnswer{Service: service, Canary: v.Canary, Verdict: v.State, DecisionID: v.DecisionID, Reason: v.Sentence}
	if c := p.Metadata["canary"]; c != "" && c != v.Canary {
		a.Reason = "herd's verdict is about canary " + v.Canary + ", not " + c
		answer(http.StatusForbidden, a)
		return
	}
	if v.State != want {
		if a.Reason == "" {
			a.Reason = "verdict is " + string(v.State)
		}
		answer(http.StatusForbidden, a)
		return
	}
	answer(http.StatusOK, a)
}
