package deliver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/herd-dev/herd/proto"
)

// DefaultVersionLabel is the pod template label that names a rollout's version unless an
// ArgoTarget sets another.
const DefaultVersionLabel = "app.kubernetes.io/version"

// argoAbortBody is the merge patch that aborts a rollout.
const argoAbortBody = `{"status":{"abort":true}}`

// argo aborts an Argo Rollouts rollout through the Kubernetes API.
type argo struct {
	cfg    ArgoTarget
	label  string
	url    string       // .../namespaces/<ns>/rollouts/<name>
	client *http.Client // nil: the deliverer's client
	getenv func(string) string
}

func newArgo(cfg ArgoTarget, base *http.Client, getenv func(string) string) (*argo, error) {
	if cfg.VersionLabel == "" {
		cfg.VersionLabel = DefaultVersionLabel
	}
	a := &argo{
		cfg:    cfg,
		getenv: getenv,
		label:  "argo:" + cfg.Namespace + "/" + cfg.Rollout,
		url: strings.TrimSuffix(cfg.APIServer, "/") + "/apis/argoproj.io/v1alpha1/namespaces/" +
			url.PathEscape(cfg.Namespace) + "/rollouts/" + url.PathEscape(cfg.Rollout),
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read ca_file of %s: %w", a.label, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s of %s holds no PEM certificate", cfg.CAFile, a.label)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		c := *base
		c.Transport = tr
		a.client = &c
	}
	return a, nil
}

func (a *argo) name() string { return a.label }
func (a *argo) kind() string { return KindArgo }

func (a *argo) wants(v *proto.Verdict) bool {
	return v.State == proto.StateRollback && v.Service == a.cfg.Service
}

// podTemplate is the part of a pod template the abort precondition reads.
type podTemplate struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
}

// workloadRef names the Deployment (or ReplicaSet, PodTemplate) whose pod template a Rollout
// with spec.workloadRef uses instead of its own.
type workloadRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
}

// rollout is the part of an Argo Rollouts Rollout that the abort precondition reads.
type rollout struct {
	Spec struct {
		Template    podTemplate  `json:"template"`
		WorkloadRef *workloadRef `json:"workloadRef"`
	} `json:"spec"`
	Status struct {
		Abort          bool   `json:"abort"`
		CurrentPodHash string `json:"currentPodHash"`
		StableRS       string `json:"stableRS"`
		Phase          string `json:"phase"`
	} `json:"status"`
}

// attempt GETs the rollout and PATCHes its status with abort=true only if the rollout is
// still progressing to the judged version: the canary version is the pod template's version
// label or the rollout's current pod-template-hash (agents that report the
// rollouts-pod-template-hash label as their version), and the current pod hash is not yet
// the stable one. A rollout with spec.workloadRef has no template of its own: the label is
// read from the referenced Deployment's template. A rollout that is already aborted counts
// as done.
func (a *argo) attempt(ctx context.Context, c *http.Client, d *proto.Decision) result {
	if a.client != nil {
		c = a.client
	}
	token, err := readToken(a.cfg.TokenFile, a.cfg.TokenEnv, a.getenv)
	if err != nil {
		return result{class: classRetry, err: err}
	}
	ro, res := a.get(ctx, c, token)
	if res.err != nil || res.class != classDone {
		return res
	}
	if ro.Status.Abort {
		return result{class: classDone, status: res.status, err: errors.New("rollout already aborted")}
	}
	labels, where := ro.Spec.Template.Metadata.Labels, "rollout template"
	if ref := ro.Spec.WorkloadRef; ref != nil && ref.Name != "" {
		if ref.Kind != "Deployment" {
			return result{class: classFailed, status: res.status,
				err: fmt.Errorf("not aborted: workloadRef kind %q is not a Deployment (herd reads the version of a Deployment's template only)", ref.Kind)}
		}
		tpl, res := a.getDeployment(ctx, c, token, ref.Name)
		if res.err != nil || res.class != classDone {
			return res
		}
		labels, where = tpl.Metadata.Labels, "template of deployment "+ref.Name
	}
	canary := d.Verdict.Canary
	switch got := labels[a.cfg.VersionLabel]; {
	case got != canary && (ro.Status.CurrentPodHash == "" || ro.Status.CurrentPodHash != canary):
		return result{class: classSkipped, status: res.status,
			err: fmt.Errorf("not aborted: %s label %s is %q and the current pod hash %q, neither the judged canary %q", where, a.cfg.VersionLabel, got, ro.Status.CurrentPodHash, canary)}
	case ro.Status.StableRS != "" && ro.Status.CurrentPodHash == ro.Status.StableRS:
		return result{class: classSkipped, status: res.status,
			err: fmt.Errorf("not aborted: rollout is fully promoted to %q", canary)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, a.url+"/status", strings.NewReader(argoAbortBody))
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot build request: %w", netError(err))}
	}
	a.header(req, token)
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := c.Do(req)
	if err != nil {
		return result{class: classRetry, err: netError(err)}
	}
	defer drain(resp)
	return statusResult(resp)
}

func (a *argo) header(req *http.Request, token string) {
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
}

func (a *argo) get(ctx context.Context, c *http.Client, token string) (*rollout, result) {
	var ro rollout
	return &ro, a.getJSON(ctx, c, token, a.url, "rollout", &ro)
}

// getDeployment GETs the pod template of the Deployment name in the rollout's namespace.
func (a *argo) getDeployment(ctx context.Context, c *http.Client, token, name string) (*podTemplate, result) {
	var dep struct {
		Spec struct {
			Template podTemplate `json:"template"`
		} `json:"spec"`
	}
	u := strings.TrimSuffix(a.cfg.APIServer, "/") + "/apis/apps/v1/namespaces/" + url.PathEscape(a.cfg.Namespace) +
		"/deployments/" + url.PathEscape(name)
	return &dep.Spec.Template, a.getJSON(ctx, c, token, u, "deployment "+name, &dep)
}

// getJSON GETs u and decodes the object into dst; what names it in errors.
func (a *argo) getJSON(ctx context.Context, c *http.Client, token, u, what string, dst any) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return result{class: classFailed, err: fmt.Errorf("cannot build request: %w", netError(err))}
	}
	a.header(req, token)
	resp, err := c.Do(req)
	if err != nil {
		return result{class: classRetry, err: netError(err)}
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		r := statusResult(resp)
		if r.class == classDone { // 2xx other than 200, or 409: no object to read
			r = result{class: classRetry, status: resp.StatusCode, err: fmt.Errorf("HTTP %d", resp.StatusCode)}
		}
		r.err = fmt.Errorf("cannot get %s: %w", what, r.err)
		return r
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(dst); err != nil {
		return result{class: classRetry, status: resp.StatusCode, err: fmt.Errorf("cannot decode %s: %w", what, err)}
	}
	return result{class: classDone, status: resp.StatusCode}
}
