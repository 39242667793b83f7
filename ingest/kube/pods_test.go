package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/herd-dev/herd/ingest/mesh"
)

// TestScrapeSpec checks which pods are scraped, where, and as which group.
func TestScrapeSpec(t *testing.T) {
	t.Parallel()
	prom := map[string]string{PromScrape: "true", PromPort: "8080"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name        string
		cfg         Config
		labels, ann map[string]string
		phase       corev1.PodPhase
		deleting    bool
		scrape      bool
		skip        string
		want        spec
	}{
		{name: "recommended labels", labels: map[string]string{"app.kubernetes.io/name": "cart", "app.kubernetes.io/version": "1.4.2"}, ann: prom,
			scrape: true, want: spec{service: "cart", version: "1.4.2", url: "http://10.0.0.7:8080/metrics"}},
		{name: "app and version labels, path", labels: map[string]string{"app": "cart", "version": "v2"}, ann: with(prom, PromPath, "stats"),
			scrape: true, want: spec{service: "cart", version: "v2", url: "http://10.0.0.7:8080/stats"}},
		{name: "herd annotations win", labels: map[string]string{"app": "cart", "version": "v2"},
			ann:    map[string]string{AnnotationScrape: "true", AnnotationPort: "9100", AnnotationPath: "/m", AnnotationService: "basket", AnnotationVersion: "7", PromPort: "8080"},
			scrape: true, want: spec{service: "basket", version: "7", url: "http://10.0.0.7:9100/m"}},
		{name: "argo rollouts hash", labels: map[string]string{"app": "cart", LabelRolloutsHash: "6f7b9c8d4"}, ann: prom,
			scrape: true, want: spec{service: "cart", version: "6f7b9c8d4", url: "http://10.0.0.7:8080/metrics"}},
		{name: "flagger primary", labels: map[string]string{"app": "podinfo-primary"}, ann: prom,
			scrape: true, want: spec{service: "podinfo", version: "primary", url: "http://10.0.0.7:8080/metrics"}},
		{name: "flagger canary", cfg: Config{Flagger: true}, labels: map[string]string{"app": "podinfo"}, ann: prom,
			scrape: true, want: spec{service: "podinfo", version: "canary", url: "http://10.0.0.7:8080/metrics"}},
		{name: "no version", labels: map[string]string{"app": "podinfo"}, ann: prom, scrape: true, skip: SkipNoVersion},
		{name: "no service", labels: map[string]string{"version": "1"}, ann: prom, scrape: true, skip: SkipNoService},
		{name: "bad service", labels: map[string]string{"app": "Cart.Service", "version": "1"}, ann: prom, scrape: true, skip: SkipBadService},
		{name: "bad port", labels: map[string]string{"app": "cart", "version": "1"}, ann: with(prom, PromPort, "http"), scrape: true, skip: SkipBadPort},
		{name: "no port", labels: map[string]string{"app": "cart", "version": "1"}, ann: map[string]string{PromScrape: "true"}, scrape: true, skip: SkipBadPort},
		{name: "bad mesh", labels: map[string]string{"app": "cart", "version": "1"}, ann: with(prom, AnnotationMesh, "consul"), scrape: true, skip: SkipBadMesh},
		{name: "not annotated", labels: map[string]string{"app": "cart", "version": "1"}},
		{name: "opted out", labels: map[string]string{"app": "cart", "version": "1"}, ann: with(prom, AnnotationScrape, "false")},
		{name: "pending", labels: map[string]string{"app": "cart", "version": "1"}, ann: prom, phase: corev1.PodPending},
		{name: "terminating", labels: map[string]string{"app": "cart", "version": "1"}, ann: prom, deleting: true},
		{name: "istio injected, -mesh istio", cfg: Config{Mesh: mesh.Istio}, labels: map[string]string{"app": "reviews", "version": "v2"},
			ann:    map[string]string{istioStatus: `{"containers":["istio-proxy"]}`, PromScrape: "true", PromPort: "15020", PromPath: "/stats/prometheus"},
			scrape: true, want: spec{service: "reviews", version: "v2", url: "http://10.0.0.7:15020/stats/prometheus", mesh: mesh.Istio}},
		{name: "istio injected, no annotations", cfg: Config{Mesh: mesh.Istio}, labels: map[string]string{"app": "reviews", "version": "v2"},
			ann:    map[string]string{istioStatus: `{"containers":["istio-proxy"]}`},
			scrape: true, want: spec{service: "reviews", version: "v2", url: "http://10.0.0.7:15020/stats/prometheus", mesh: mesh.Istio}},
		{name: "linkerd injected, -mesh linkerd", cfg: Config{Mesh: mesh.Linkerd}, labels: map[string]string{"app": "books", "version": "2"},
			ann:    map[string]string{linkerdVersion: "edge-25.11.1", PromScrape: "true", PromPort: "8080"},
			scrape: true, want: spec{service: "books", version: "2", url: "http://10.0.0.7:4191/metrics", mesh: mesh.Linkerd}},
		{name: "linkerd by annotation", labels: map[string]string{"app": "books", "version": "2"},
			ann:    map[string]string{AnnotationMesh: "linkerd"},
			scrape: true, want: spec{service: "books", version: "2", url: "http://10.0.0.7:4191/metrics", mesh: mesh.Linkerd}},
		{name: "linkerd not injected, -mesh linkerd", cfg: Config{Mesh: mesh.Linkerd}, labels: map[string]string{"app": "books", "version": "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.Node = "n1"
			cfg.setDefaults()
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: tc.labels, Annotations: tc.ann},
				Spec:       corev1.PodSpec{NodeName: "n1"},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7"},
			}
			if tc.phase != "" {
				pod.Status.Phase = tc.phase
			}
			if tc.deleting {
				pod.DeletionTimestamp = &metav1.Time{}
			}
			sp, skip, detail, scrape := cfg.scrapeSpec(pod)
			if scrape != tc.scrape || skip != tc.skip || sp != tc.want {
				t.Errorf("got %+v skip %q (%s) scrape %v; want %+v skip %q scrape %v", sp, skip, detail, scrape, tc.want, tc.skip, tc.scrape)
			}
			if skip != "" && detail == "" {
				t.Errorf("skip %q without a detail for the log", skip)
			}
		})
	}
}

// TestTrimPod checks that the informer keeps only what discovery reads.
func TestTrimPod(t *testing.T) {
	t.Parallel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u", Labels: map[string]string{"app": "a"},
			Annotations:   map[string]string{PromScrape: "true", "kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 10000)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec:   corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	obj, err := trimPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	got := obj.(*corev1.Pod)
	if len(got.Annotations) != 1 || got.Annotations[PromScrape] != "true" || got.ManagedFields != nil || got.Spec.Containers != nil ||
		got.Status.Conditions != nil || got.Labels["app"] != "a" || got.Status.PodIP != "10.0.0.7" || got.Spec.NodeName != "n1" || got.UID != "u" {
		t.Errorf("trimmed pod: %+v", got)
	}
}
