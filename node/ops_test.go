package node

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMetricsListenServesWithoutToken checks that with a token on the main listener,
// /metrics there needs it, and the operations listener serves /metrics, /livez and /readyz
// without it (and nothing else).
func TestMetricsListenServesWithoutToken(t *testing.T) {
	lightParallel(t)
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.HTTPListen, cfg.MetricsListen, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	cfg.Web.HTTP.Token = "s3cret-token"
	n := startRoles(t, cfg, Roles{Ingest: true, Detect: true, Web: true})
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(n.HTTPURL() + "/metrics"); code != http.StatusUnauthorized {
		t.Errorf("main listener /metrics without the token: got %d; want 401", code)
	}
	ops := "http://" + n.opsLn.Addr().String()
	if code, body := get(ops + "/metrics"); code != http.StatusOK || !strings.Contains(body, "herd_rollup_batches_total") {
		t.Errorf("operations /metrics: got %d; want 200 with herd's families", code)
	}
	for _, p := range []string{"/livez", "/readyz"} {
		if code, _ := get(ops + p); code != http.StatusOK {
			t.Errorf("operations %s: got %d; want 200", p, code)
		}
	}
	if code, _ := get(ops + "/api/v1/groups"); code != http.StatusNotFound {
		t.Errorf("operations /api/v1/groups: got %d; want 404 (only metrics and probes there)", code)
	}
}
