package deliver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/herd-dev/herd/proto"
)

// spinnaker triggers a Spinnaker pipeline through Gate's webhook trigger. The trigger is not
// idempotent, so the deliverer sends each decision to it at most once (see
// Deliverer.deliver) and this attempt reports classUnknown whenever the request may have
// been received.
type spinnaker struct {
	cfg    SpinnakerTarget
	label  string
	url    string
	getenv func(string) string
}

func newSpinnaker(cfg SpinnakerTarget, getenv func(string) string) *spinnaker {
	return &spinnaker{
		cfg:    cfg,
		getenv: getenv,
		label:  "spinnaker:" + spinnakerName(cfg),
		url:    strings.TrimSuffix(cfg.Gate, "/") + "/webhooks/webhook/" + url.PathEscape(cfg.Source),
	}
}

func (s *spinnaker) name() string { return s.label }
func (s *spinnaker) kind() string { return KindSpinnaker }

func (s *spinnaker) wants(v *proto.Verdict) bool {
	return spinnakerOn(s.cfg, v.State) && (len(s.cfg.Services) == 0 || slices.Contains(s.cfg.Services, v.Service))
}

// SpinnakerPayload is the JSON body of a Spinnaker webhook trigger. Gate passes
// Parameters to the pipeline as its parameters; the other fields are available to
// payload constraints and expressions (${trigger.payload.decision_id}).
type SpinnakerPayload struct {
	Parameters map[string]string `json:"parameters"`
	Type       string            `json:"type"`
	DecisionID string            `json:"decision_id"`
}

func (s *spinnaker) payload(d *proto.Decision) SpinnakerPayload {
	v := &d.Verdict
	p := make(map[string]string, len(s.cfg.Parameters)+6)
	for k, val := range s.cfg.Parameters {
		p[k] = val
	}
	p["service"] = v.Service
	p["baseline"] = v.Baseline
	p["canary"] = v.Canary
	p["verdict"] = string(v.State)
	p["decision_id"] = d.ID
	p["reason"] = v.Sentence
	typ := TypeRollbackRequested
	if v.State == proto.StatePass {
		typ = TypePromotionConfirmed
	}
	return SpinnakerPayload{Parameters: p, Type: typ, DecisionID: d.ID}
}

// attempt POSTs the trigger once. It is retried (classRetry) only when the request surely
// did not start a pipeline: no byte of it was written, or Gate answered 425, 429 or 503. A
// timeout or error after the request was written, or another 5xx, is classUnknown.
// No Idempotency-Key header is sent: net/http would then treat the POST as replayable and
// could resend it on a broken keep-alive connection.
func (s *spinnaker) attempt(ctx context.Context, c *http.Client, d *proto.Decision) result {
	token, err := readToken(s.cfg.TokenFile, s.cfg.TokenEnv, s.getenv)
	if err != nil {
		return result{class: classRetry, err: err}
	}
	body, err := json.Marshal(s.payload(d))
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot encode trigger: %w", err)}
	}
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteHeaderField: func(string, []string) { wrote.Store(true) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot build request: %w", netError(err))}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		if !wrote.Load() {
			return result{class: classRetry, err: netError(err)}
		}
		return result{class: classUnknown, err: fmt.Errorf("outcome unknown, not resent: %w", netError(err))}
	}
	defer drain(resp)
	r := statusResult(resp)
	if r.class == classRetry {
		switch resp.StatusCode {
		case http.StatusTooEarly, http.StatusTooManyRequests, http.StatusServiceUnavailable:
		default:
			r.class = classUnknown
			r.err = fmt.Errorf("outcome unknown, not resent: %w", r.err)
		}
	}
	return r
}
