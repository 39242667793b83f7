package deliver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/herd-dev/herd/proto"
)

// BenchmarkWebhookMessage measures building and signing one webhook body, the work of
// every attempt.
func BenchmarkWebhookMessage(b *testing.B) {
	v := testVerdict(proto.StateRollback)
	dec := &proto.Decision{ID: v.DecisionID, Verdict: v}
	keys := [][]byte{[]byte("secret-one"), []byte("secret-two")}
	b.ReportAllocs()
	for b.Loop() {
		body, err := json.Marshal(NewWebhookBody(dec))
		if err != nil {
			b.Fatal(err)
		}
		_ = Sign(keys, dec.ID, 1767225607, body)
	}
}

// BenchmarkFlaggerHook measures one Flagger hook call, which Flagger makes every analysis
// interval per canary.
func BenchmarkFlaggerHook(b *testing.B) {
	d, err := New(Config{Timeout: 1, MaxRetry: 1}, nil, &FileStore{dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	v := testVerdict(proto.StateRollback)
	h := d.FlaggerHandler(func(string) (proto.Verdict, bool) { return v, true }, nil)
	const body = `{"name":"checkout","namespace":"shop","phase":"Progressing","checksum":"7d9c6d8f5","type":"rollback","metadata":{}}`
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/api/v1/flagger/rollback", strings.NewReader(body)))
		if w.Code != http.StatusOK {
			b.Fatalf("got %d; want 200", w.Code)
		}
	}
}
