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

// rollout is the part of an Argo Rollouts Rollout that the abort precondition reads.
type rollout struct {
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		} `json:"template"`
	} `json:"spec"`
	Status struct {
		Abort          bool   `json:"abort"`
		CurrentPodHash string `json:"currentPodHash"`
		StableRS       string `json:"stableRS"`
		Phase          string `json:"phase"`
	} `json:"status"`
}

// attempt GETs the rollout and PATCHes its status with abort=true only if the rollout is
// still progressing to the judged version: the pod template's version label equals the
// canary version, and the current pod hash is not yet the stable one. A rollout that is
// already aborted counts as done.
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
	canary := d.Verdict.Canary
	switch got := ro.Spec.Template.Metadata.Labels[a.cfg.VersionLabel]; {
	case ro.Status.Abort:
		return result{class: classDone, status: res.status, err: errors.New("rollout already aborted")}
	case got != canary:
		return result{class: classSkipped, status: res.status,
			err: fmt.Errorf("not aborted: rollout template label %s is %q, not the judged canary %q", a.cfg.VersionLabel, got, canary)}
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url, nil)
	if err != nil {
		return nil, result{class: classFailed, err: fmt.Errorf("cannot build request: %w", netError(err))}
	}
	a.header(req, token)
	resp, err := c.Do(req)
	if err != nil {
		return nil, result{class: classRetry, err: netError(err)}
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		r := statusResult(resp)
		if r.class == classDone { // 2xx other than 200, or 409: no rollout to read
			r = result{class: classRetry, status: resp.StatusCode, err: fmt.Errorf("HTTP %d", resp.StatusCode)}
		}
		r.err = fmt.Errorf("cannot get rollout: %w", r.err)
		return nil, r
	}
	var ro rollout
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&ro); err != nil {
		return nil, result{class: classRetry, status: resp.StatusCode, err: fmt.Errorf("cannot decode rollout: %w", err)}
	}
	return &ro, result{class: classDone, status: resp.StatusCode}
}
