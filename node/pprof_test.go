package node

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestPprofNeedsToken checks that /debug/pprof/ on the main listener is behind the HTTP
// token, serves profiles with it, and is absent from the operations listener.
func TestPprofNeedsToken(t *testing.T) {
	lightParallel(t)
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.HTTPListen, cfg.MetricsListen, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	cfg.Web.HTTP.Token = "s3cret-token"
	n := startRoles(t, cfg, Roles{Ingest: true})
	get := func(url, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	heap := "/debug/pprof/heap?debug=1"
	if code, _ := get(n.HTTPURL()+heap, ""); code != http.StatusUnauthorized {
		t.Errorf("%s without the token: got %d; want 401", heap, code)
	}
	if code, body := get(n.HTTPURL()+heap, "s3cret-token"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("%s with the token: got %d; want 200 with a heap profile", heap, code)
	}
	if code, body := get(n.HTTPURL()+"/debug/pprof/", "s3cret-token"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ index with the token: got %d; want 200 listing the profiles", code)
	}
	if code, _ := get("http://"+n.opsLn.Addr().String()+heap, ""); code != http.StatusNotFound {
		t.Errorf("operations listener %s: got %d; want 404", heap, code)
	}
}
