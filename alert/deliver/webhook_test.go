package deliver

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

// verifyStandardWebhook checks a request the way a Standard Webhooks receiver does, written
// from the specification independently of Sign: the signed content is
// "{webhook-id}.{webhook-timestamp}.{body}", the key is the base64 part of a whsec_ secret,
// and the header is a space-delimited list of "v1,{base64 signature}" of which one must
// match. It returns nil if some signature verifies.
func verifyStandardWebhook(secret string, h http.Header, body []byte, now time.Time) error {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return fmt.Errorf("missing webhook headers: id=%q timestamp=%q signature=%q", id, ts, sigs)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q is not unix seconds", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %d is %s away from now", sec, d)
	}
	var key []byte
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		if key, err = base64.StdEncoding.DecodeString(rest); err != nil {
			return err
		}
	} else {
		key = []byte(secret)
	}
	mac := hmac.New(sha256.New, key)
	io.WriteString(mac, id+"."+ts+".")
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Split(sigs, " ") {
		version, b64, ok := strings.Cut(s, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("no signature in %q verifies", sigs)
}

type capturedRequest struct {
	method, path string
	header       http.Header
	body         []byte
	at           time.Time
}

// recorder is a webhook receiver that answers with the statuses in order (the last one
// repeating) and records every request.
type recorder struct {
	mu       sync.Mutex
	statuses []int
	reqs     []capturedRequest
	hang     bool // block until the client gives up
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, capturedRequest{r.Method, r.URL.Path, r.Header.Clone(), body, time.Now()})
	status := http.StatusOK
	if n := len(rc.reqs) - 1; len(rc.statuses) > 0 {
		status = rc.statuses[min(n, len(rc.statuses)-1)]
	}
	hang := rc.hang
	rc.mu.Unlock()
	if hang {
		<-r.Context().Done()
		return
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "status %d", status)
}

func (rc *recorder) requests() []capturedRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]capturedRequest(nil), rc.reqs...)
}

func (rc *recorder) setStatuses(s ...int) {
	rc.mu.Lock()
	rc.statuses = s
	rc.reqs = rc.reqs[:0:0]
	rc.mu.Unlock()
}

const (
	testSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testOldSecret = "plain-old-secret"
)

func TestWebhookSignedAndShaped(t *testing.T) {
	t.Parallel()
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	d := newTestDeliverer(t, Config{
		Webhooks:       []string{srv.URL + "/hooks/herd?token=abc"},
		WebhookSecrets: []string{testSecret + " " + testOldSecret},
	}, nil)
	startRun(t, d)
	v := testVerdict(proto.StateRollback)
	if err := d.Decide(v); err != nil {
		t.Fatalf("Decide: %v", err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if dec, _ := d.Decision(v.DecisionID); dec.Status != "delivered" {
			return fmt.Errorf("got status %q; want delivered", dec.Status)
		}
		return nil
	})
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("got %d requests; want 1", len(reqs))
	}
	r := reqs[0]
	if r.method != http.MethodPost || r.path != "/hooks/herd" {
		t.Errorf("got %s %s; want POST /hooks/herd", r.method, r.path)
	}
	for _, secret := range []string{testSecret, testOldSecret} {
		if err := verifyStandardWebhook(secret, r.header, r.body, time.Now()); err != nil {
			t.Errorf("secret %d: %v", len(secret), err)
		}
	}
	if err := verifyStandardWebhook("whsec_"+base64.StdEncoding.EncodeToString([]byte("wrong")), r.header, r.body, time.Now()); err == nil {
		t.Errorf("a wrong secret verifies; want an error")
	}
	if got := len(strings.Fields(r.header.Get("webhook-signature"))); got != 2 {
		t.Errorf("got %d signatures; want 2 (one per secret)", got)
	}
	for h, want := range map[string]string{
		"webhook-id":      v.DecisionID,
		"Idempotency-Key": v.DecisionID,
		"Content-Type":    "application/json",
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("header %s: got %q; want %q", h, got, want)
		}
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("cannot decode body: %v", err)
	}
	data, _ := body["data"].(map[string]any)
	ev, _ := data["evidence"].(map[string]any)
	for _, c := range []struct {
		name string
		got  any
		want any
	}{
		{"type", body["type"], "canary.rollback.requested"},
		{"decision_id", body["decision_id"], v.DecisionID},
		{"timestamp", body["timestamp"], "2026-01-01T00:00:07.800Z"},
		{"data.service", data["service"], "checkout"},
		{"data.verdict", data["verdict"], "rollback"},
		{"data.canary", fmt.Sprint(data["canary"]), "map[instances:2 version:1.4.2]"},
		{"data.baseline", fmt.Sprint(data["baseline"]), "map[instances:38 version:1.4.1]"},
		{"data.actions", fmt.Sprint(data["actions"]), "[abort_rollout scale_canary_to_zero]"},
		{"data.evidence.alpha", ev["alpha"], 0.01},
		{"data.evidence.windows", ev["windows"], 31.0},
		{"data.evidence.tests[0].cs_high", ev["tests"].([]any)[0].(map[string]any)["cs_high"], 5.4},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v; want %v", c.name, c.got, c.want)
		}
	}
	// The log names the target without its query (which may hold a token).
	dec, _ := d.Decision(v.DecisionID)
	if got, want := dec.Deliveries[0].Target, "webhook:"+srv.URL+"/hooks/herd"; got != want {
		t.Errorf("got target %q; want %q", got, want)
	}
}

func TestWebhookPassOnlyWhenEnabled(t *testing.T) {
	t.Parallel()
	for _, pass := range []bool{false, true} {
		t.Run(fmt.Sprint("pass=", pass), func(t *testing.T) {
			t.Parallel()
			rc := &recorder{}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			d := newTestDeliverer(t, Config{Webhooks: []string{srv.URL}, WebhookSecrets: []string{testOldSecret}, DeliverPass: pass}, nil)
			startRun(t, d)
			v := testVerdict(proto.StatePass)
			v.DecidedAfterMs = 7800
			v.Watch = &proto.Watch{Active: true, PassMs: v.UnixMs, UntilMs: v.UnixMs + 1_800_000, Alpha: 0.01}
			if err := d.Decide(v); err != nil {
				t.Fatal(err)
			}
			want := map[bool]string{false: "none", true: "delivered"}[pass]
			checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if dec, _ := d.Decision(v.DecisionID); dec.Status != want {
					return fmt.Errorf("got status %q; want %q", dec.Status, want)
				}
				return nil
			})
			reqs := rc.requests()
			if !pass {
				if len(reqs) != 0 {
					t.Fatalf("got %d requests; want 0", len(reqs))
				}
				return
			}
			var body WebhookBody
			if err := json.Unmarshal(reqs[0].body, &body); err != nil {
				t.Fatal(err)
			}
			if body.Type != TypePromotionConfirmed || fmt.Sprint(body.Data.Actions) != "[promote_canary]" {
				t.Errorf("got type %q actions %v; want %q [promote_canary]", body.Type, body.Data.Actions, TypePromotionConfirmed)
			}
			if body.Data.DecidedAfterMs != 7800 || body.Data.Watch == nil || !body.Data.Watch.Active {
				t.Errorf("got decided_after_ms %d, watch %+v; want 7800 and the active watch", body.Data.DecidedAfterMs, body.Data.Watch)
			}
		})
	}
}

func TestSignKnownVector(t *testing.T) {
	t.Parallel()
	// The example of the Standard Webhooks reference libraries' tests: secret, id, timestamp
	// and payload below sign to this value.
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := Sign([][]byte{key}, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	if got != want {
		t.Errorf("got %q; want %q", got, want)
	}
}
