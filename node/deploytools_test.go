package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"

	"github.com/herd-dev/herd/alert/deliver"
	"github.com/herd-dev/herd/internal/bus"
	"github.com/herd-dev/herd/proto"
)

// fakeKube plays the Kubernetes API server for herd's Argo abort: a Rollout with a
// workloadRef to a Deployment, whose version herd reads from the Deployment's template, and
// a pod-template-hash as the current canary. Every request is checked exactly; anything
// else fails the test.
type fakeKube struct {
	t     *testing.T
	token string
	mu    sync.Mutex
	calls []string // "METHOD path body"
}

func (f *fakeKube) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path+" "+string(body))
	f.mu.Unlock()
	if got := r.Header.Get("Authorization"); got != "Bearer "+f.token {
		f.t.Errorf("%s %s: got Authorization %q; want the service account's bearer token", r.Method, r.URL.Path, got)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.Method + " " + r.URL.Path {
	case "GET /apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout":
		io.WriteString(w, `{"apiVersion":"argoproj.io/v1alpha1","kind":"Rollout","metadata":{"name":"checkout","namespace":"shop"},
			"spec":{"replicas":10,"workloadRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"checkout"}},
			"status":{"currentPodHash":"6f9c7d8e1","stableRS":"5d8b4c7f9","phase":"Progressing"}}`)
	case "GET /apis/apps/v1/namespaces/shop/deployments/checkout":
		io.WriteString(w, `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"checkout"},
			"spec":{"replicas":0,"template":{"metadata":{"labels":{"app":"checkout","app.kubernetes.io/version":"1.5.0"}}}}}`)
	case "PATCH /apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout/status":
		if ct := r.Header.Get("Content-Type"); ct != "application/merge-patch+json" {
			f.t.Errorf("PATCH: got Content-Type %q; want application/merge-patch+json", ct)
		}
		if string(body) != `{"status":{"abort":true}}` {
			f.t.Errorf("PATCH: got body %s; want {\"status\":{\"abort\":true}}", body)
		}
		io.WriteString(w, `{"kind":"Rollout"}`)
	default:
		f.t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}
}

// analysisTemplate is the part of deploy/argo/analysis-template.yaml's AnalysisTemplate
// that Argo Rollouts' web metric provider reads.
type analysisTemplate struct {
	Kind string `json:"kind"`
	Spec struct {
		Metrics []struct {
			Name             string `json:"name"`
			SuccessCondition string `json:"successCondition"`
			FailureCondition string `json:"failureCondition"`
			Provider         struct {
				Web *struct {
					URL            string `json:"url"`
					TimeoutSeconds int    `json:"timeoutSeconds"`
					Headers        []struct {
						Key   string `json:"key"`
						Value string `json:"value"`
					} `json:"headers"`
					JSONPath string `json:"jsonPath"`
				} `json:"web"`
			} `json:"provider"`
		} `json:"metrics"`
	} `json:"spec"`
}

// loadAnalysisTemplate reads the AnalysisTemplate document of the shipped file.
func loadAnalysisTemplate(t *testing.T) analysisTemplate {
	t.Helper()
	raw, err := os.ReadFile("../deploy/argo/analysis-template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var at analysisTemplate
		if err := yaml.Unmarshal([]byte(doc), &at); err != nil {
			t.Fatalf("cannot decode a document of the analysis template file: %v", err)
		}
		if at.Kind == "AnalysisTemplate" {
			if len(at.Spec.Metrics) != 1 || at.Spec.Metrics[0].Provider.Web == nil {
				t.Fatalf("got %+v; want one metric with the web provider", at.Spec)
			}
			return at
		}
	}
	t.Fatal("no AnalysisTemplate in deploy/argo/analysis-template.yaml")
	return analysisTemplate{}
}

// conditionRE is the shape of the template's conditions: result == "<state>".
var conditionRE = regexp.MustCompile(`^result == "([a-z]+)"$`)

// measure runs one measurement of the template's web metric against herd as Argo Rollouts
// does: the URL with the arguments substituted (the host replaced by herd's listener), GET
// with the headers, the JSON path over the body (k8s.io/client-go's jsonpath, which Argo
// uses), then the success and failure conditions. It returns the result and the phase.
//
// wait, if not empty, replaces the URL's wait parameter.
func measure(t *testing.T, at analysisTemplate, herdURL string, args map[string]string, wait string) (result, phase string) {
	t.Helper()
	m := at.Spec.Metrics[0]
	web := m.Provider.Web
	sub := func(s string) string {
		for k, v := range args {
			s = strings.ReplaceAll(s, "{{args."+k+"}}", v)
		}
		if strings.Contains(s, "{{") {
			t.Fatalf("unsubstituted argument in %q", s)
		}
		return s
	}
	u, err := url.Parse(sub(web.URL))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := url.Parse(herdURL)
	u.Scheme, u.Host = h.Scheme, h.Host
	if wait != "" {
		q := u.Query()
		q.Set("wait", wait)
		u.RawQuery = q.Encode()
	}
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	for _, hd := range web.Headers {
		req.Header.Set(hd.Key, sub(hd.Value))
	}
	resp, err := (&http.Client{Timeout: time.Duration(web.TimeoutSeconds) * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("measurement: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("measurement: got %s; want 2xx", resp.Status)
	}
	var data any
	if err := json.NewDecoder(resp.Body).Decode(&data); err != nil {
		t.Fatal(err)
	}
	jp := jsonpath.New("metrics")
	if err := jp.Parse(web.JSONPath); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := jp.Execute(&buf, data); err != nil {
		t.Fatalf("json path %s: %v", web.JSONPath, err)
	}
	result = buf.String()
	succ, fail := conditionRE.FindStringSubmatch(m.SuccessCondition), conditionRE.FindStringSubmatch(m.FailureCondition)
	if succ == nil || fail == nil {
		t.Fatalf("conditions %q and %q: want result == \"<state>\"", m.SuccessCondition, m.FailureCondition)
	}
	switch result {
	case succ[1]:
		return result, "Successful"
	case fail[1]:
		return result, "Failed"
	}
	return result, "Inconclusive"
}

// flaggerHook POSTs a Flagger webhook payload to herd and returns the status.
func flaggerHook(t *testing.T, base, hook, checksum string) int {
	t.Helper()
	body := `{"name":"checkout","namespace":"shop","phase":"Progressing","checksum":"` + checksum + `","metadata":{"service":"checkout"}}`
	resp, err := http.Post(base+"/api/v1/flagger/"+hook, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDeployToolsAgainstServe runs herd serve with an Argo Rollouts target on a fake
// Kubernetes API and a fleet whose versions are pod-template-hashes: the shipped
// AnalysisTemplate's measurement is Inconclusive while herd compares and Failed once it rolls
// back, herd aborts the workloadRef rollout with the exact requests, and Flagger's hooks
// answer per revision (checksum).
func TestDeployToolsAgainstServe(t *testing.T) {
	lightParallel(t)
	if testing.Short() {
		t.Skip("runs a fleet in real time")
	}
	const baseline, canary = "5d8b4c7f9", "6f9c7d8e1"
	kube := &fakeKube{t: t, token: "sa-token-7Hq"}
	api := httptest.NewServer(kube)
	defer api.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(kube.token), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.NATSListen, cfg.HTTPListen, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	// A wait longer than the listener's write timeout still gets its answer.
	cfg.Web.HTTP.WriteTimeout = time.Second
	cfg.Deliver.Targets.Argo = []deliver.ArgoTarget{{Service: "checkout", APIServer: api.URL, Namespace: "shop", Rollout: "checkout", TokenFile: tokenFile}}
	n := startNode(t, cfg)
	at := loadAnalysisTemplate(t)
	args := map[string]string{"service": "checkout", "canary-hash": canary, "herd-token": ""}

	// No comparison yet: the gate is inconclusive, it does not pass.
	if res, phase := measure(t, at, n.HTTPURL(), args, "1500ms"); res != "none" || phase != "Inconclusive" {
		t.Errorf("before the canary: got %s %s; want none Inconclusive", res, phase)
	}
	pc, err := bus.Connect(bus.Client{URLs: n.NATSURL()}, "test-fleet", nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fl := steadyFleet(t, pc.Publish, 7, testGroup("checkout", baseline, 10), testGroup("checkout", canary, 3))
	fctx, fstop := context.WithCancel(context.Background())
	var fwg sync.WaitGroup
	fwg.Go(func() { _ = fl.Run(fctx, time.Time{}) })
	defer func() { fstop(); fwg.Wait() }()
	if err := n.Announce(proto.Deployment{Service: "checkout", Baseline: baseline, Canary: canary}); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v, ok := n.det.Latest("checkout"); !ok || v.Canary != canary || v.State != proto.StatePending {
			return errorf("no pending comparison of %s yet", canary)
		}
		return nil
	})
	// Flagger's rollback hook, first call of revision rev-1 while herd compares: not yet.
	if code := flaggerHook(t, n.HTTPURL(), "rollback", "rev-1"); code != 403 {
		t.Errorf("rollback hook while pending: got %d; want 403", code)
	}
	// The canary crash-loops: herd rolls back, the gate fails, the rollout is aborted.
	fl.Group("checkout", canary).SetCrash(true)
	var res, phase string
	measured := make(chan struct{})
	go func() {
		defer close(measured)
		res, phase = measure(t, at, n.HTTPURL(), args, "") // waits in herd until the verdict is final
	}()
	select {
	case <-measured:
	case <-time.After(60 * time.Second):
		t.Fatal("the gate's measurement did not return")
	}
	if res != "rollback" || phase != "Failed" {
		t.Errorf("after the crash: got %s %s; want rollback Failed", res, phase)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		kube.mu.Lock()
		defer kube.mu.Unlock()
		want := []string{
			"GET /apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout ",
			"GET /apis/apps/v1/namespaces/shop/deployments/checkout ",
			`PATCH /apis/argoproj.io/v1alpha1/namespaces/shop/rollouts/checkout/status {"status":{"abort":true}}`,
		}
		if strings.Join(kube.calls, "\n") != strings.Join(want, "\n") {
			return errorf("Kubernetes API calls: got %q; want %q", kube.calls, want)
		}
		return nil
	})
	// rev-1's comparison decided: its rollback hook says roll back.
	if code := flaggerHook(t, n.HTTPURL(), "rollback", "rev-1"); code != 200 {
		t.Errorf("rollback hook after the rollback: got %d; want 200", code)
	}
	if code := flaggerHook(t, n.HTTPURL(), "confirm-promotion", "rev-1"); code != 403 {
		t.Errorf("promotion hook after the rollback: got %d; want 403", code)
	}
	// A new revision with the same versions does not get rev-1's rollback; herd compares
	// afresh.
	rolledBack, _ := n.det.Latest("checkout")
	if code := flaggerHook(t, n.HTTPURL(), "rollback", "rev-2"); code != 403 {
		t.Errorf("rollback hook of a new revision: got %d; want 403", code)
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v, _ := n.det.Latest("checkout"); v.StartedMs <= rolledBack.StartedMs {
			return errorf("no new comparison for rev-2 yet (latest started %d)", v.StartedMs)
		}
		return nil
	})
}
