package deploytest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// TestKubernetesManifests decodes every manifest of deploy/kubernetes strictly into the
// Kubernetes API types and checks the references between them and to herd's flags; then
// that the deploy tools' recipes (deploy/argo, deploy/flagger) reach the endpoints they call
// through the Services, and that the Argo abort's permissions are granted.
func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	help := helpFlags(t)
	objs, others := readManifests(t, "../../deploy/kubernetes")
	if len(objs) < 15 {
		t.Fatalf("got %d objects; want herd's roles, Services, secrets, RBAC and NATS", len(objs))
	}
	herds := checkReferences(t, objs, help)
	roles := map[string]bool{}
	for _, h := range herds {
		roles[h.role] = true
	}
	for _, r := range []string{"rollup", "detect", "web", "agent"} {
		if !roles[r] {
			t.Errorf("no herd %s container in deploy/kubernetes", r)
		}
	}
	// Every role serving HTTP has a Service.
	for _, h := range herds {
		if _, ok := h.flags["http"]; !ok || h.role == "agent" {
			continue
		}
		found := false
		for _, o := range objs {
			if s, ok := o.obj.(*corev1.Service); ok && o.meta.Namespace == h.pod.owner.meta.Namespace && matches(s.Spec.Selector, h.pod.tmpl.Labels) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s serves HTTP (herd %s --http %s) but no Service selects it", h.pod.owner, h.role, h.flags["http"])
		}
	}
	for f, docs := range others {
		if len(docs) > 0 && !strings.HasSuffix(f, "kustomization.yaml") {
			t.Errorf("%s: %d documents of kinds the test does not know", f, len(docs))
		}
	}
	checkKustomization(t)
	// The deploy tools' recipes reach their endpoints through the Services.
	flagger := readOthers(t, "../../deploy/flagger/canary.yaml")
	var hooks int
	for _, doc := range flagger {
		var c struct {
			Spec struct {
				Analysis struct {
					Webhooks []struct {
						Type, URL string
					}
				}
			}
		}
		remarshal(t, doc, &c)
		for _, w := range c.Spec.Analysis.Webhooks {
			reachable(t, objs, herds, w.URL, "detect", "serve")
			u := strings.SplitN(w.URL, "?token=", 2)
			if len(u) != 2 || u[1] != secretValue(t, objs, "herd", "herd-web", "HERD_HTTP_TOKEN") {
				t.Errorf("Flagger hook %s: want ?token= with the detect role's HERD_HTTP_TOKEN", w.URL)
			}
			hooks++
		}
	}
	if hooks != 2 {
		t.Errorf("got %d Flagger hooks; want rollback and confirm-promotion", hooks)
	}
	for _, doc := range readOthers(t, "../../deploy/argo/analysis-template.yaml") {
		var at struct {
			Kind string
			Spec struct {
				Metrics []struct {
					Provider struct {
						Web struct{ URL string }
					}
				}
			}
		}
		remarshal(t, doc, &at)
		if at.Kind == "AnalysisTemplate" {
			reachable(t, objs, herds, at.Spec.Metrics[0].Provider.Web.URL, "web", "serve")
		}
	}
	checkArgoRBAC(t, objs, herds)
}

// checkKustomization checks that kustomization.yaml lists every manifest of herd's roles
// (the agent examples belong to the applications) and only existing files.
func checkKustomization(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile("../../deploy/kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob("../../deploy/kubernetes/*.yaml")
	for _, f := range files {
		b := filepath.Base(f)
		if b == "kustomization.yaml" || strings.HasPrefix(b, "agent-") {
			continue
		}
		if !slices.Contains(k.Resources, b) {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join("../../deploy/kubernetes", r)); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
}

// checkArgoRBAC checks that each Argo target of the detector's policy can be aborted with
// the detect pods' service account: a RoleBinding in the rollout's namespace grants get on
// rollouts and deployments and patch on rollouts/status, and the target reads that
// account's token.
func checkArgoRBAC(t *testing.T, objs []object, herds []herdContainer) {
	t.Helper()
	for _, h := range herds {
		if h.role != "detect" {
			continue
		}
		path := h.flags["detect.policy"]
		pol := policyFromConfigMap(t, objs, h, path)
		if pol == nil {
			t.Errorf("%s: no policy file %q in a mounted ConfigMap", h.pod.owner, path)
			continue
		}
		sa := h.pod.tmpl.Spec.ServiceAccountName
		for _, a := range pol.Targets.Argo {
			if a.TokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
				t.Errorf("argo target %s/%s: token_file %q is not the service account's token", a.Namespace, a.Rollout, a.TokenFile)
			}
			need := map[string]bool{"argoproj.io/rollouts/get": false, "argoproj.io/rollouts/status/patch": false, "apps/deployments/get": false}
			for _, o := range objs {
				rb, ok := o.obj.(*rbacv1.RoleBinding)
				if !ok || o.meta.Namespace != a.Namespace {
					continue
				}
				bound := false
				for _, s := range rb.Subjects {
					bound = bound || s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == h.pod.owner.meta.Namespace
				}
				role := find(objs, "Role", a.Namespace, rb.RoleRef.Name)
				if !bound || role == nil {
					continue
				}
				for _, r := range role.obj.(*rbacv1.Role).Rules {
					for _, g := range r.APIGroups {
						for _, res := range r.Resources {
							for _, v := range r.Verbs {
								need[g+"/"+res+"/"+v] = true
							}
						}
					}
				}
			}
			for perm, ok := range need {
				if !ok {
					t.Errorf("argo target %s/%s: service account %s may not %s", a.Namespace, a.Rollout, sa, perm)
				}
			}
		}
		if len(pol.Targets.Argo) == 0 {
			t.Errorf("the policy of %s has no argo target", h.pod.owner)
		}
	}
}

type policyTargets struct {
	Targets struct {
		Argo []struct {
			Namespace string `json:"namespace"`
			Rollout   string `json:"rollout"`
			TokenFile string `json:"token_file"`
		} `json:"argo"`
	} `json:"targets"`
}

// policyFromConfigMap returns the policy file at path as the container mounts it from a
// ConfigMap, or nil.
func policyFromConfigMap(t *testing.T, objs []object, h herdContainer, path string) *policyTargets {
	t.Helper()
	for _, m := range h.c.VolumeMounts {
		if !strings.HasPrefix(path, m.MountPath+"/") {
			continue
		}
		for _, v := range h.pod.tmpl.Spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			key := strings.TrimPrefix(path, m.MountPath+"/")
			for _, it := range v.ConfigMap.Items {
				if it.Path == key {
					key = it.Key
				}
			}
			cm := find(objs, "ConfigMap", h.pod.owner.meta.Namespace, v.ConfigMap.Name)
			if cm == nil {
				return nil
			}
			var p policyTargets
			if err := json.Unmarshal([]byte(cm.obj.(*corev1.ConfigMap).Data[key]), &p); err != nil {
				t.Errorf("policy %s: %v", key, err)
				return nil
			}
			return &p
		}
	}
	return nil
}

func secretValue(t *testing.T, objs []object, ns, name, key string) string {
	t.Helper()
	o := find(objs, "Secret", ns, name)
	if o == nil {
		t.Errorf("no secret %s/%s", ns, name)
		return ""
	}
	return o.obj.(*corev1.Secret).StringData[key]
}

func readOthers(t *testing.T, file string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	objs, others := decodeStrict(t, file, data)
	if len(objs) > 0 {
		t.Logf("%s: %d Kubernetes objects beside the deploy tool's", file, len(objs))
	}
	return others
}

func remarshal(t *testing.T, in any, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

// TestNATSStatefulSet checks the NATS cluster of deploy/kubernetes/nats.yaml: its accounts
// are deploy/nats/herd-accounts.conf byte for byte (with the partition mapping, tested with
// real servers by this package), and its configuration loads in nats-server with JetStream
// and the cluster routes to the three pods.
func TestNATSStatefulSet(t *testing.T) {
	objs, _ := readManifests(t, "../../deploy/kubernetes")
	sec := find(objs, "Secret", "herd", "nats-config")
	if sec == nil {
		t.Fatal("no Secret herd/nats-config")
	}
	data := sec.obj.(*corev1.Secret).StringData
	want, err := os.ReadFile("../../deploy/nats/herd-accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	if data["herd-accounts.conf"] != string(want) {
		t.Errorf("nats-config's herd-accounts.conf differs from deploy/nats/herd-accounts.conf")
	}
	dir := t.TempDir()
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("POD_NAME", "nats-1")
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("nats-server cannot load the StatefulSet's configuration: %v", err)
	}
	if opts.ServerName != "nats-1" || !opts.JetStream || opts.StoreDir != "/data/jetstream" || len(opts.Routes) != 3 || opts.Cluster.Name != "herd" {
		t.Errorf("got server %q, JetStream %v in %q, %d routes, cluster %q; want nats-1, JetStream in /data/jetstream, 3 routes, herd",
			opts.ServerName, opts.JetStream, opts.StoreDir, len(opts.Routes), opts.Cluster.Name)
	}
	for i, r := range opts.Routes {
		if want := "nats-" + string(rune('0'+i)) + ".nats-headless.herd.svc.cluster.local:6222"; r.Host != want {
			t.Errorf("route %d: got %s; want %s", i, r.Host, want)
		}
	}
	// The accounts (users, permissions, the partition mapping) are the file the cluster tests
	// of this package run three real servers from; being byte-equal, they need no test here.
	ss := find(objs, "StatefulSet", "herd", "nats")
	if ss == nil {
		t.Fatal("no StatefulSet herd/nats")
	}
}
