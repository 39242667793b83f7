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
	deployment  map[string]any // the workloadRef's Deployment "checkout-app", if any
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
	case r.Method == http.MethodGet && r.URL.Path == "/apis/apps/v1/namespaces/shop/deployments/checkout-app" && f.deployment != nil:
		f.calls = append(f.calls, "GET-deployment")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(f.deployment)
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

// workloadRefRollout is a rollout whose pod template is the Deployment checkout-app's.
func workloadRefRollout(kind, currentHash, stableRS string) map[string]any {
	ro := rolloutJSON("", currentHash, stableRS, false)
	ro["spec"] = map[string]any{"workloadRef": map[string]any{"apiVersion": "apps/v1", "kind": kind, "name": "checkout-app"}}
	return ro
}

// deploymentJSON is the Deployment checkout-app with the version label.
func deploymentJSON(version string) map[string]any {
	return map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "spec": map[string]any{
		"replicas": 0, "template": map[string]any{"metadata": map[string]any{
			"labels": map[string]any{"app": "checkout", "app.kubernetes.io/version": version}}}}}
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
		deployment  map[string]any
		canary      string // default 1.4.2
	}{
		{"progressing", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 0, classDone, "GET PATCH", nil, ""},
		{"patch conflict", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 409, classDone, "GET PATCH", nil, ""},
		{"patch 503", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 503, classRetry, "GET PATCH", nil, ""},
		{"patch 422", rolloutJSON("1.4.2", "6f9c7", "5d8b4", false), 0, 422, classFailed, "GET PATCH", nil, ""},
		{"already aborted", rolloutJSON("1.4.2", "6f9c7", "5d8b4", true), 0, 0, classDone, "GET", nil, ""},
		{"moved to another version", rolloutJSON("1.4.3", "7a1e2", "5d8b4", false), 0, 0, classSkipped, "GET", nil, ""},
		{"fully promoted", rolloutJSON("1.4.2", "6f9c7", "6f9c7", false), 0, 0, classSkipped, "GET", nil, ""},
		{"rollout not found", nil, 404, 0, classFailed, "GET", nil, ""},
		{"api server down", nil, 500, 0, classRetry, "GET", nil, ""},
		{name: "pod-template-hash version", rollout: rolloutJSON("", "6f9c7", "5d8b4", false), canary: "6f9c7", class: classDone, calls: "GET PATCH"},
		{name: "hash version promoted", rollout: rolloutJSON("", "6f9c7", "6f9c7", false), canary: "6f9c7", class: classSkipped, calls: "GET"},
		{name: "hash version moved on", rollout: rolloutJSON("", "7a1e2", "5d8b4", false), canary: "6f9c7", class: classSkipped, calls: "GET"},
		{name: "workloadRef", rollout: workloadRefRollout("Deployment", "6f9c7", "5d8b4"), deployment: deploymentJSON("1.4.2"), class: classDone, calls: "GET GET-deployment PATCH"},
		{name: "workloadRef moved on", rollout: workloadRefRollout("Deployment", "7a1e2", "5d8b4"), deployment: deploymentJSON("1.4.3"), class: classSkipped, calls: "GET GET-deployment"},
		{name: "workloadRef with a hash version", rollout: workloadRefRollout("Deployment", "6f9c7", "5d8b4"), deployment: deploymentJSON("1.4.3"), canary: "6f9c7", class: classDone, calls: "GET GET-deployment PATCH"},
		{name: "workloadRef not a Deployment", rollout: workloadRefRollout("ReplicaSet", "6f9c7", "5d8b4"), class: classFailed, calls: "GET"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeArgo{t: t, rollout: c.rollout, deployment: c.deployment, getStatus: c.getStatus, patchStatus: c.patchStatus}
			srv := httptest.NewServer(f)
			defer srv.Close()
			a, err := newArgo(argoTarget(t, srv.URL), srv.Client(), nil)
			if err != nil {
				t.Fatal(err)
			}
			v := testVerdict(proto.StateRollback)
			if c.canary != "" {
				v.Canary = c.canary
			}
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
