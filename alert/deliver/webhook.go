package deliver

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/herd-dev/herd/proto"
)

// Webhook event types.
const (
	TypeRollbackRequested  = "canary.rollback.requested"
	TypePromotionConfirmed = "canary.promotion.confirmed"
)

// WebhookBody is the JSON body of a generic webhook (see docs/webhooks.md).
type WebhookBody struct {
	// Type is canary.rollback.requested or canary.promotion.confirmed.
	Type string `json:"type"`
	// DecisionID is the decision's UUID, equal to the webhook-id and Idempotency-Key headers.
	DecisionID string `json:"decision_id"`
	// Timestamp is when the decision was made, RFC 3339 with milliseconds, UTC.
	Timestamp string      `json:"timestamp"`
	Data      WebhookData `json:"data"`
}

// WebhookData is the payload of a WebhookBody.
type WebhookData struct {
	Service  string `json:"service"`
	Baseline Group  `json:"baseline"`
	Canary   Group  `json:"canary"`
	// Verdict is "rollback" or "pass"; Sentence says the evidence in words.
	Verdict  proto.State `json:"verdict"`
	Sentence string      `json:"sentence"`
	// StartedMs and DecidedMs bound the comparison (unix milliseconds).
	StartedMs int64 `json:"started_unix_ms"`
	DecidedMs int64 `json:"decided_unix_ms"`
	// DecidedAfterMs is how long the canary had run when decided: the "decided after"
	// figure of the sentence and the dashboard (proto.Verdict.DecidedAfterMs).
	DecidedAfterMs int64 `json:"decided_after_ms"`
	// Evidence holds the numbers, Evidence.Effects the evidence in the metrics' units.
	Evidence proto.Evidence `json:"evidence"`
	// Watch is set on a pass that keeps watching the canary, and on a rollback of a
	// regression found while watching after a pass (see docs/detector.md).
	Watch *proto.Watch `json:"watch,omitempty"`
	// Actions are what herd asks the receiver to do, e.g. ["abort_rollout",
	// "scale_canary_to_zero"] for a rollback and ["promote_canary"] for a pass.
	Actions []string `json:"actions"`
}

// Group is one deploy group of a service.
type Group struct {
	Version   string `json:"version"`
	Instances int    `json:"instances"`
}

// NewWebhookBody builds the webhook body of decision d.
func NewWebhookBody(d *proto.Decision) WebhookBody {
	v := &d.Verdict
	typ, actions := TypeRollbackRequested, []string{"abort_rollout", "scale_canary_to_zero"}
	if v.State == proto.StatePass {
		typ, actions = TypePromotionConfirmed, []string{"promote_canary"}
	}
	return WebhookBody{
		Type:       typ,
		DecisionID: d.ID,
		Timestamp:  time.UnixMilli(v.UnixMs).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Data: WebhookData{
			Service:        v.Service,
			Baseline:       Group{Version: v.Baseline, Instances: v.Evidence.BaselineInstances},
			Canary:         Group{Version: v.Canary, Instances: v.Evidence.CanaryInstances},
			Verdict:        v.State,
			Sentence:       v.Sentence,
			StartedMs:      v.StartedMs,
			DecidedMs:      v.UnixMs,
			DecidedAfterMs: v.DecidedAfterMs,
			Evidence:       v.Evidence,
			Watch:          v.Watch,
			Actions:        actions,
		},
	}
}

// Sign returns the Standard Webhooks webhook-signature header value for a message: for each
// key, "v1," + base64(HMAC-SHA256(key, id + "." + unixSeconds + "." + body)), separated by
// spaces.
func Sign(keys [][]byte, id string, unixSeconds int64, body []byte) string {
	var buf []byte
	ts := strconv.AppendInt(nil, unixSeconds, 10)
	var sum [sha256.Size]byte
	for i, k := range keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(id))
		m.Write([]byte{'.'})
		m.Write(ts)
		m.Write([]byte{'.'})
		m.Write(body)
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = append(buf, "v1,"...)
		buf = base64.StdEncoding.AppendEncode(buf, m.Sum(sum[:0]))
	}
	return string(buf)
}

// webhook is a generic Standard Webhooks receiver.
type webhook struct {
	url     string
	label   string
	secrets [][]byte
	pass    bool
}

func (w *webhook) name() string { return w.label }
func (w *webhook) kind() string { return KindWebhook }

func (w *webhook) wants(v *proto.Verdict) bool {
	return v.State == proto.StateRollback || w.pass && v.State == proto.StatePass
}

func (w *webhook) attempt(ctx context.Context, c *http.Client, d *proto.Decision) result {
	body, err := json.Marshal(NewWebhookBody(d))
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot encode webhook body: %w", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot build request: %w", netError(err))}
	}
	ts := time.Now().Unix()
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", userAgent)
	h.Set("webhook-id", d.ID)
	h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	h.Set("webhook-signature", Sign(w.secrets, d.ID, ts, body))
	h.Set("Idempotency-Key", d.ID)
	resp, err := c.Do(req)
	if err != nil {
		return result{class: classRetry, err: netError(err)}
	}
	defer drain(resp)
	return statusResult(resp)
}

const userAgent = "herd-deliver/1"
