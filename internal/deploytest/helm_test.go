package deploytest

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
)

// chartDir is herd's Helm chart.
const chartDir = "../../deploy/helm/herd"

// renderChart renders the chart with Helm's own engine (what `helm template` runs) for a
// release "herd" in namespace herd, with values over the chart's values.yaml.
func renderChart(t *testing.T, values map[string]any) (map[string]string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("cannot load the chart: %v", err)
	}
	if err := ch.Validate(); err != nil {
		t.Fatalf("chart: %v", err)
	}
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: "herd", Namespace: "herd", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatalf("cannot build the render values: %v", err)
	}
	return engine.Render(ch, vals)
}

// TestHelmChart renders herd's chart with Helm's engine, decodes every rendered manifest
// strictly into the Kubernetes API types and checks the same references as the plain
// manifests: secrets and keys, flags and variables of `herd <role> --help`, Services
// selecting pods and reaching the hooks, the Argo abort's permissions.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	help := helpFlags(t)
	out, err := renderChart(t, map[string]any{
		"nats":    map[string]any{"password": "EXAMPLE-herd-password"},
		"secrets": map[string]any{"httpToken": "EXAMPLE-token", "webhookSecret": "EXAMPLE-webhook-secret"},
		"detect":  map[string]any{"webhooks": []any{"https://deploy-hooks.example.internal/herd"}},
		"argo": map[string]any{"rollouts": []any{
			map[string]any{"service": "checkout", "namespace": "shop", "rollout": "checkout"},
			map[string]any{"service": "search", "namespace": "shop", "rollout": "search"},
			map[string]any{"service": "payments", "namespace": "pay", "rollout": "payments"},
		}},
		"policy": map[string]any{"services": map[string]any{"checkout": map[string]any{"alpha": 0.001}}},
	})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var objs []object
	for _, name := range slices.Sorted(maps.Keys(out)) {
		if strings.HasSuffix(name, ".tpl") {
			continue
		}
		o, others := decodeStrict(t, name, []byte(out[name]))
		if len(others) > 0 {
			t.Errorf("%s: %d documents of kinds the test does not know", name, len(others))
		}
		objs = append(objs, o...)
	}
	// The Services, Roles and RoleBindings in the applications' namespaces are the chart's;
	// the ServiceAccount lives in the release's.
	herds := checkReferences(t, objs, help)
	roles := map[string]int{}
	for _, h := range herds {
		roles[h.role]++
	}
	if roles["rollup"] != 1 || roles["detect"] != 1 || roles["web"] != 1 {
		t.Errorf("got herd containers %v; want one rollup, detect and web", roles)
	}
	reachable(t, objs, herds, "http://herd-detect.herd.svc:8080/api/v1/flagger/rollback", "detect")
	reachable(t, objs, herds, "http://herd-detect.herd.svc:8080/api/v1/decisions", "detect")
	reachable(t, objs, herds, "http://herd-web.herd.svc:8080/api/v1/verdicts", "web")
	checkArgoRBAC(t, objs, herds)
	for _, ns := range []string{"shop", "pay"} {
		if find(objs, "RoleBinding", ns, "herd-argo-abort") == nil {
			t.Errorf("no RoleBinding herd-argo-abort in %s", ns)
		}
	}
	if n := len(objs); n < 12 {
		t.Errorf("rendered %d objects; want at least 12", n)
	}
}

// TestHelmChartRequired checks that the chart refuses to render without the credentials it
// cannot invent, naming the value.
func TestHelmChartRequired(t *testing.T) {
	t.Parallel()
	if _, err := renderChart(t, nil); err == nil || !strings.Contains(err.Error(), "nats.password") {
		t.Errorf("without nats.password: got %v; want an error naming nats.password", err)
	}
	_, err := renderChart(t, map[string]any{"nats": map[string]any{"password": "p"}})
	if err == nil || !strings.Contains(err.Error(), "secrets.httpToken") {
		t.Errorf("without secrets.httpToken: got %v; want an error naming secrets.httpToken", err)
	}
	// Existing secrets replace the generated ones.
	out, err := renderChart(t, map[string]any{"nats": map[string]any{"existingSecret": "my-nats"}, "secrets": map[string]any{"existingSecret": "my-herd"}})
	if err != nil {
		t.Fatalf("with existing secrets: %v", err)
	}
	if s := out["herd/templates/secrets.yaml"]; strings.Contains(s, "kind: Secret") {
		t.Errorf("with existing secrets the chart still renders secrets:\n%s", s)
	}
}
