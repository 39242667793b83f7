package deliver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herd-dev/herd/proto"
)

const argoToken = "eyJhbGciOiJSUzI1NiJ9.test-token"

// fakeArgo is a Kubernetes API server holding one rollout; it checks every request's exact
// method, path, headers and body and records the accepted ones.
type fakeArgo struct {
	t           *testing.T
	mu          sync.Mutex
	rollout     map[string]any
	patchStatus int
	getStatus   int
	calls       []string
}

func (f *fakeArgo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const path = "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout"
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := r.Header.Get("Authorization"); got != "Bearer "+argoToken {
		f.t.Errorf("%s %s: got Authorization %q; want the bearer token", r.Method, r.URL.Path, got)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.Method == http.MethodGet && r.URL.Path == path:
		f.calls = append(f.calls, "GET")
		if f.getStatus != 0 {
			w.WriteHeader(f.getStatus)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(f.rollout)
	case r.Method == http.MethodPatch && r.URL.Path == path+"/status":
		if ct := r.Header.Get("Content-Type"); ct != "application/merge-patch+json" {
			f.t.Errorf("PATCH: got Content-Type %q; want application/merge-patch+json", ct)
		}
		if string(body) != `{"status":{"abort":true}}` {
			f.t.Errorf("PATCH: got body %s; want {\"status\":{\"abort\":true}}", body)
		}
		f.calls = append(f.calls, "PATCH")
		if f.patchStatus != 0 {
			w.WriteHeader(f.patchStatus)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(f.rollout)
	default:
		f.t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}
}

func rolloutJSON(version, currentHash, stableRS string, abort bool) map[string]any {
	return map[string]any{
		"apiVersion": "argoproj.io/v1alpha1",
		"kind":       "Rollout",
		"metadata":   map[string]any{"name": "checkout", "namespace": "shop"},
		"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
			"labels": map[string]any{"app": "checkout", "app.kubernetes.io/version": version},
		}}},
		"status": map[string]any{
			"abort": abort, "currentPodHash": currentHash, "stableRS": stableRS, "phase": "Progressing",
		},
	}
}

func argoTarget(t *testing.T, url string) ArgoTarget {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(argoToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return ArgoTarget{Service: "checkout", APIServer: url, Namespace: "shop", Rollout: "checkout", TokenFile: tokenFile}
}

func TestArgoAttempt(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name        string
		rollout     map[string]any
		getStatus   int
		patchStatus int
		class       class
		calls       string
	}{
		{"progressing", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 0, classDone, "GET PATCH"},
		{"patch conflict", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 409, classDone, "GET PATCH"},
		{"patch 503", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 503, classRetry, "GET PATCH"},
		{"patch 422", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 422, classFailed, "GET PATCH"},
		{"already aborted", rolloutJSON("1.4.2", "6f9c7", "5d8b4", true), 0, 0, classDone, "GET"},
		{"moved to another version", rolloutJSON("1.4.3", "7a1e2", "5d8b4", false), 0, 0, classSkipped, "GET"},
		{"fully promoted", rolloutJSON("1.4.2", "6f9c7", "6f9c7", false), 0, 0, classSkipped, "GET"},
		{"rollout not found", nil, 404, 0, classFailed, "GET"},
		{"api server down", nil, 500, 0, classRetry, "GET"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeArgo{t: t, rollout: c.rollout, getStatus: c.getStatus, patchStatus: c.patchStatus}
			srv := httptest.NewServer(f)
			defer srv.Close()
			a, err := newArgo(argoTarget(t, srv.URL), srv.Client(), nil)
			if err != nil {
				t.Fatal(err)
			}
			v := testVerdict(proto.StateRollback)
			res := a.attempt(context.Background(), srv.Client(), &proto.Decision{ID: v.DecisionID, Verdict: v})
			if res.class != c.class {
				t.Errorf("got class %d (%v); want %d", res.class, res.err, c.class)
			}
			if got := strings.Join(f.calls, " "); got != c.calls {
				t.Errorf("got calls %q; want %q", got, c.calls)
			}
			if res.err != nil && strings.Contains(res.err.Error(), argoToken) {
				t.Errorf("error %q holds the token", res.err)
			}
		})
	}
}

func TestArgoDeliveryNeverShowsToken(t *testing.T) {
	t.Parallel()
	f := &fakeArgo{t: t, rollout: rolloutJSON("1.4.2", "6f9c7", "5d8b4", false)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	d := newTestDeliverer(t, Config{Targets: Targets{Argo: []ArgoTarget{argoTarget(t, srv.URL)}}}, nil)
	startRun(t, d)
	v := testVerdict(proto.StateRollback)
	other := testVerdict(proto.StateRollback)
	other.Service = "payments" // no Argo target for it
	for _, v := range []proto.Verdict{v, other} {
		if err := d.Decide(v); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if dec, _ := d.Decision(v.DecisionID); dec.Status != "delivered" {
			return fmt.Errorf("got status %q; want delivered", dec.Status)
		}
		return nil
	})
	if dec, _ := d.Decision(other.DecisionID); dec.Status != "none" {
		t.Errorf("decision for another service: got status %q; want none", dec.Status)
	}
	api := httptest.NewServer(d.HTTPHandler())
	defer api.Close()
	resp, err := http.Get(api.URL + "/api/v1/decisions")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), argoToken) || !strings.Contains(string(body), `"target":"argo:shop/checkout"`) {
		t.Errorf("got API body %s; want the argo target named, without its token", body)
	}
}

// TestArgoTokenFromGetenv: a target's token_env is looked up with the caller's Getenv.
func TestArgoTokenFromGetenv(t *testing.T) {
	f := &fakeArgo{t: t, rollout: rolloutJSON("1.4.2", "6f9c7", "5d8b4", false)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	target := argoTarget(t, srv.URL)
	target.TokenFile, target.TokenEnv = "", "ARGO_TOKEN"
	getenv := func(k string) string {
		if k == "ARGO_TOKEN" {
			return argoToken
		}
		return ""
	}
	a, err := newArgo(target, srv.Client(), getenv)
	if err != nil {
		t.Fatal(err)
	}
	v := testVerdict(proto.StateRollback)
	if res := a.attempt(context.Background(), srv.Client(), &proto.Decision{ID: v.DecisionID, Verdict: v}); res.class != classDone {
		t.Errorf("got class %d (%v); want done with the token from getenv", res.class, res.err)
	}
}
