package kube_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/kube"
	"github.com/herd-dev/herd/ingest/mesh"
	"github.com/herd-dev/herd/internal/checkfor"
	"github.com/herd-dev/herd/internal/natstest"
	"github.com/herd-dev/herd/internal/perftest"
	"github.com/herd-dev/herd/proto"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const node = "node-a"

// pods is one real HTTP server standing for the pods' metrics endpoints: pod p's endpoint
// is /pods/<p>/metrics, exposing its requests_total and errors_total.
type pods struct {
	srv  *httptest.Server
	host string // the server's IP, as the pods' IP
	port string

	mu       sync.Mutex // Guards counters.
	counters map[string]*podCounters
}

type podCounters struct {
	requests, errors atomic.Int64
	scrapes          atomic.Int64
	body             []byte // a fixed exposition instead of the counters, if set
}

func newPods(t *testing.T) *pods {
	p := &pods{counters: make(map[string]*podCounters)}
	p.srv = httptest.NewServer(p)
	t.Cleanup(p.srv.Close)
	host, port, err := net.SplitHostPort(p.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p.host, p.port = host, port
	return p
}

func (p *pods) counter(name string) *podCounters {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counters[name]
	if c == nil {
		c = &podCounters{}
		p.counters[name] = c
	}
	return c
}

func (p *pods) forget(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.counters, name)
}

func (p *pods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, "/pods/")
	name, ok2 := strings.CutSuffix(name, "/metrics")
	if !ok || !ok2 {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	c := p.counters[name]
	p.mu.Unlock()
	if c == nil {
		http.NotFound(w, r)
		return
	}
	c.scrapes.Add(1)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	if c.body != nil {
		_, _ = w.Write(c.body)
		return
	}
	fmt.Fprintf(w, "# TYPE requests_total counter\nrequests_total %d\n# TYPE errors_total counter\nerrors_total %d\n",
		c.requests.Load(), c.errors.Load())
}

// pod returns a running pod on nodeName, annotated for scraping at p.
func (p *pods) pod(name, nodeName string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "shop", UID: types.UID(uuid.NewString()), Labels: labels,
			CreationTimestamp: metav1.Now(),
			Annotations: map[string]string{
				kube.PromScrape: "true", kube.PromPort: p.port, kube.PromPath: "/pods/" + name + "/metrics",
				"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 2048),
			},
		},
		Spec:   corev1.PodSpec{NodeName: nodeName},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.host},
	}
}

func group(svc, ver string) map[string]string {
	return map[string]string{"app.kubernetes.io/name": svc, "app.kubernetes.io/version": ver}
}

// intake is a real NATS intake summing what the agent delivers, per group.
type intake struct {
	mu       sync.Mutex
	requests map[string]float64            // by service/version
	errors   map[string]float64            // by service/version
	finals   map[string]map[uuid.UUID]bool // instances whose final batch arrived, by group
	seen     map[uuid.UUID]map[string]bool // groups each instance published in
	batches  int
}

func startIntake(t *testing.T) (*intake, ingest.PublishFunc) {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t, natstest.Options{}))
	sum := &intake{requests: map[string]float64{}, errors: map[string]float64{}, finals: map[string]map[uuid.UUID]bool{}, seen: map[uuid.UUID]map[string]bool{}}
	in, err := ingest.NewIntake(ingest.IntakeConfig{}, nil, nc, func(b *proto.Batch) {
		sum.mu.Lock()
		defer sum.mu.Unlock()
		g := b.Service + "/" + b.Version
		sum.batches++
		for _, s := range b.Series {
			switch s.Name {
			case proto.SeriesRequests:
				sum.requests[g] += s.Value
			case proto.SeriesErrors:
				sum.errors[g] += s.Value
			}
		}
		if sum.seen[b.Instance] == nil {
			sum.seen[b.Instance] = map[string]bool{}
		}
		sum.seen[b.Instance][g] = true
		if b.Final {
			if sum.finals[g] == nil {
				sum.finals[g] = map[uuid.UUID]bool{}
			}
			sum.finals[g][b.Instance] = true
		}
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-in.Ready()
	return sum, nc.Publish
}

func (in *intake) total(g string) float64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.requests[g]
}

func (in *intake) final(g string, id uuid.UUID) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.finals[g][id]
}

// newClientset returns a fake API server whose first watch closes watching once it is
// established: the fake replays nothing, so a pod changed between the informer's list and
// its watch would go unseen (a real API server replays from the list's resource version).
func newClientset() (cs *fake.Clientset, watching <-chan struct{}) {
	cs = fake.NewClientset()
	ch := make(chan struct{})
	var once sync.Once
	cs.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := action.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := cs.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return false, nil, err
		}
		once.Do(func() { close(ch) })
		return true, w, nil
	})
	return cs, ch
}

// runAgent starts an agent on node, waits until it watches the pods, and stops it (and
// waits for it) when the test ends.
func runAgent(t *testing.T, cfg kube.Config, cs *fake.Clientset, watching <-chan struct{}, publish ingest.PublishFunc, set *metrics.Set) (*kube.Agent, func()) {
	t.Helper()
	cfg.Node = node
	a, err := kube.New(cfg, cs, set, publish, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not watch the pods within 10s")
	}
	return a, stop
}

// TestAgentChurn adds, relabels and deletes pods at 10 operations a second against a fake
// API server, with real HTTP endpoints and a real NATS intake: every pod is scraped under
// the group its labels name at the time, the counts of a relabelled pod go to the group it
// had when they were made, every deleted pod's last counts arrive in its final batch, and
// the totals are exact. Pods on another node, without annotations or without a version are
// not scraped; the last are counted and logged.
func TestAgentChurn(t *testing.T) {
	t.Parallel()
	n := 30
	if testing.Short() {
		n = 10
	}
	p := newPods(t)
	in, publish := startIntake(t)
	cs, watching := newClientset()
	set := metrics.NewSet()
	a, stop := runAgent(t, kube.Config{Interval: 20 * time.Millisecond}, cs, watching, publish, set)
	ctx := t.Context()
	pods := cs.CoreV1().Pods("shop")

	// Never scraped: another node's pod, an unannotated pod, a pod without a version.
	other := p.pod("other-node", "node-b", group("cart", "v1"))
	plain := p.pod("plain", node, group("cart", "v1"))
	plain.Annotations = nil
	unversioned := p.pod("unversioned", node, map[string]string{"app.kubernetes.io/name": "cart"})
	for _, pod := range []*corev1.Pod{other, plain, unversioned} {
		p.counter(pod.Name).requests.Store(1000)
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	tick := time.NewTicker(100 * time.Millisecond) // 10 API operations a second
	defer tick.Stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	want := map[string]float64{}
	for w := range 3 {
		wg.Go(func() {
			for i := w; i < n; i += 3 {
				svc := []string{"cart", "checkout"}[i%2]
				name := fmt.Sprintf("%s-%d", svc, i)
				c := p.counter(name)
				c.requests.Store(int64(5 + i)) // made before the first scrape: counted (the pod is new)
				pod := p.pod(name, node, group(svc, "v1"))
				id := uuid.MustParse(string(pod.UID))
				<-tick.C
				if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					t.Error(err)
					return
				}
				waitTarget(t, a, pod.UID, "v1")
				k1 := int64(10 + i)
				c.requests.Add(k1)
				pod.Labels = group(svc, "v2")
				<-tick.C
				if _, err := pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
					t.Error(err)
					return
				}
				waitTarget(t, a, pod.UID, "v2")
				// The v1 scraper's final scrape is done once its final batch is in.
				checkfor.Within(t, 10*time.Second, 5*time.Millisecond, func() error {
					if !in.final(svc+"/v1", id) {
						return fmt.Errorf("no final v1 batch of %s yet", name)
					}
					return nil
				})
				k2 := int64(100 + i)
				c.requests.Add(k2)
				<-tick.C
				if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[svc+"/v1"] += float64(5 + i + int(k1))
				want[svc+"/v2"] += float64(k2)
				mu.Unlock()
				checkfor.Within(t, 10*time.Second, 5*time.Millisecond, func() error {
					if !in.final(svc+"/v2", id) {
						return fmt.Errorf("no final v2 batch of %s yet", name)
					}
					return nil
				})
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		for g, w := range want {
			if got := in.total(g); got != w {
				return fmt.Errorf("group %s: got %v requests; want %v", g, got, w)
			}
		}
		return nil
	})
	if n := a.Len(); n != 0 {
		t.Errorf("got %d pods scraped after all were deleted; want 0", n)
	}
	stop()
	for g, w := range want { // nothing more arrives on stopping
		if got := in.total(g); got != w {
			t.Errorf("after stop, group %s: got %v requests; want %v", g, got, w)
		}
	}
	in.mu.Lock()
	for _, g := range []string{"cart/v1"} {
		for _, pod := range []*corev1.Pod{other, plain, unversioned} {
			if in.seen[uuid.MustParse(string(pod.UID))] != nil {
				t.Errorf("pod %s was scraped (group %s); want not", pod.Name, g)
			}
		}
	}
	in.mu.Unlock()
	if got := set.GetOrCreateCounter(`herd_agent_kube_pods_skipped_total{reason="no_version"}`).Get(); got != 1 {
		t.Errorf("got %d pods skipped for no_version; want 1", got)
	}
}

// TestAgentMesh scrapes meshed pods whose proxies serve the recorded Istio and Linkerd
// expositions: Istio pods are found by their injector's annotation alone (-mesh istio),
// Linkerd pods by herd.dev/mesh; each version's group gets its destination RED. The pods are
// new, so the first scrape counts whole values: the totals are those of the last exposition.
func TestAgentMesh(t *testing.T) {
	t.Parallel()
	p := newPods(t)
	in, publish := startIntake(t)
	cs, watching := newClientset()
	_, stop := runAgent(t, kube.Config{Interval: 50 * time.Millisecond, Mesh: mesh.Istio}, cs, watching, publish, nil)
	podsAPI := cs.CoreV1().Pods("shop")
	want := map[string][2]float64{ // requests, errors of the destination, in the second exposition
		"reviews/v1": {1671, 5}, "reviews/v2": {1679, 46}, "books/v1": {8954, 101}, "books/v2": {1488, 88},
	}
	var created []*corev1.Pod
	for _, f := range []struct{ fixture, svc, ver string }{
		{"istio-v1", "reviews", "v1"}, {"istio-v2", "reviews", "v2"}, {"linkerd-v1", "books", "v1"}, {"linkerd-v2", "books", "v2"},
	} {
		body, err := os.ReadFile("../mesh/testdata/" + f.fixture + "-0.txt")
		if err != nil {
			t.Fatal(err)
		}
		name := f.svc + "-" + f.ver
		p.counter(name).body = body
		pod := p.pod(name, node, map[string]string{"app": f.svc, "version": f.ver})
		path := "/pods/" + name + "/metrics"
		if f.svc == "reviews" { // Istio's injector: its status, and the merged endpoint in prometheus.io/*
			pod.Annotations = map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`,
				kube.PromScrape: "true", kube.PromPort: p.port, kube.PromPath: path}
		} else { // Linkerd's proxy, at the port herd.dev/port moves from 4191 to the test server's
			pod.Annotations = map[string]string{kube.AnnotationMesh: "linkerd", kube.AnnotationPort: p.port, kube.AnnotationPath: path}
		}
		if _, err := podsAPI.Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		created = append(created, pod)
	}
	// Scraped once at least: then the second exposition, and the pods go.
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, pod := range created {
			if in.total(pod.Labels["app"]+"/"+pod.Labels["version"]) == 0 {
				return fmt.Errorf("pod %s not delivered yet", pod.Name)
			}
		}
		return nil
	})
	for _, pod := range created {
		fixture := map[string]string{"reviews": "istio-", "books": "linkerd-"}[pod.Labels["app"]] + pod.Labels["version"] + "-1.txt"
		body, err := os.ReadFile("../mesh/testdata/" + fixture)
		if err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		p.counters[pod.Name].body = body
		p.mu.Unlock()
		if err := podsAPI.Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		for g, w := range want {
			in.mu.Lock()
			r, e := in.requests[g], in.errors[g]
			in.mu.Unlock()
			if r != w[0] || e != w[1] {
				return fmt.Errorf("group %s: got %v requests, %v errors; want %v, %v", g, r, e, w[0], w[1])
			}
		}
		return nil
	})
	stop()
}

// TestAgentPauseCountsOnce relabels a scraped pod into a group it cannot have (no version)
// and back: scraped again, it counts from its baselines, not its whole values a second time.
func TestAgentPauseCountsOnce(t *testing.T) {
	t.Parallel()
	p := newPods(t)
	in, publish := startIntake(t)
	cs, watching := newClientset()
	a, _ := runAgent(t, kube.Config{Interval: 20 * time.Millisecond}, cs, watching, publish, nil)
	podsAPI := cs.CoreV1().Pods("shop")
	c := p.counter("cart-1")
	c.requests.Store(10)
	pod := p.pod("cart-1", node, group("cart", "v1"))
	if _, err := podsAPI.Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitTotal := func(want float64) {
		t.Helper()
		checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
			if got := in.total("cart/v1"); got != want {
				return fmt.Errorf("got %v requests; want %v", got, want)
			}
			return nil
		})
	}
	waitTotal(10)
	pod.Labels = map[string]string{"app.kubernetes.io/name": "cart"}
	if _, err := podsAPI.Update(t.Context(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := a.Len(); n != 0 {
			return fmt.Errorf("%d pods scraped; want 0", n)
		}
		return nil
	})
	pod.Labels = group("cart", "v1")
	if _, err := podsAPI.Update(t.Context(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitTarget(t, a, pod.UID, "v1")
	c.requests.Add(5)
	if err := podsAPI.Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	id := uuid.MustParse(string(pod.UID))
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !in.final("cart/v1", id) || a.Len() != 0 {
			return fmt.Errorf("no final batch yet")
		}
		return nil
	})
	waitTotal(15)
}

// TestAgentHundredsOfPods scrapes 300 pods at once at the default 250 ms interval while
// their counters move, then deletes them all: every count arrives, in its pod's group.
func TestAgentHundredsOfPods(t *testing.T) {
	t.Parallel()
	n := 300 // make perf
	switch {
	case testing.Short():
		n = 60
	case !perftest.Enabled():
		n = 120 // every pod is scraped every 250 ms: make test keeps it light
	}
	p := newPods(t)
	in, publish := startIntake(t)
	cs, watching := newClientset()
	set := metrics.NewSet()
	a, _ := runAgent(t, kube.Config{}, cs, watching, publish, set)
	podsAPI := cs.CoreV1().Pods("shop")
	var names []string
	want := map[string]float64{}
	for i := range n {
		svc := fmt.Sprintf("svc-%d", i%10)
		name := fmt.Sprintf("%s-%d", svc, i)
		names = append(names, name)
		p.counter(name).requests.Store(int64(i))
		want[svc+"/v1"] += float64(i)
		if _, err := podsAPI.Create(t.Context(), p.pod(name, node, group(svc, "v1")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if (i+1)%50 == 0 { // the fake API server's watch holds 100 events
			checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
				if a.Len() != i+1 {
					return fmt.Errorf("%d pods scraped; want %d", a.Len(), i+1)
				}
				return nil
			})
		}
	}
	// Three more rounds of counts while every pod is scraped every 250 ms.
	for round := range 3 {
		for i, name := range names {
			p.counter(name).requests.Add(int64(round + 1))
			want[fmt.Sprintf("svc-%d/v1", i%10)] += float64(round + 1)
		}
		scrapes := set.GetOrCreateCounter("herd_agent_scrapes_total").Get()
		checkfor.Within(t, 20*time.Second, 20*time.Millisecond, func() error {
			if got := set.GetOrCreateCounter("herd_agent_scrapes_total").Get(); got < scrapes+uint64(n) {
				return fmt.Errorf("%d scrapes since the counts moved; want ≥ %d", got-scrapes, n)
			}
			return nil
		})
	}
	for i, name := range names {
		if err := podsAPI.Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if (i+1)%50 == 0 {
			checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
				if a.Len() != n-i-1 {
					return fmt.Errorf("%d pods scraped; want %d", a.Len(), n-i-1)
				}
				return nil
			})
		}
	}
	checkfor.Within(t, 20*time.Second, 20*time.Millisecond, func() error {
		for g, w := range want {
			if got := in.total(g); got != w {
				return fmt.Errorf("group %s: got %v requests; want %v", g, got, w)
			}
		}
		return nil
	})
	t.Logf("%d pods at 250 ms: %d scrapes, %d failed (timeouts on this machine), %d missed ticks", n,
		set.GetOrCreateCounter("herd_agent_scrapes_total").Get(),
		set.GetOrCreateCounter(`herd_agent_scrape_errors_total{reason="http"}`).Get(),
		set.GetOrCreateCounter("herd_agent_missed_ticks_total").Get())
}

func waitTarget(t *testing.T, a *kube.Agent, uid types.UID, version string) {
	t.Helper()
	checkfor.Within(t, 10*time.Second, 5*time.Millisecond, func() error {
		if tg, ok := a.Targets()[uid]; !ok || tg.Version != version {
			return fmt.Errorf("pod %s is scraped as %+v; want version %s", uid, tg, version)
		}
		return nil
	})
}

// TestAgentLifecycles runs 10,000 pod lifecycles (HERD_PERF=1; 300 otherwise, 100 with
// -short; created, then deleted at once) through one agent and checks that every one's counts arrive exactly and that neither goroutines nor
// the heap grow: each pod's goroutine, HTTP connection and state go with it.
func TestAgentLifecycles(t *testing.T) {
	n := 300
	switch {
	case perftest.Enabled():
		n = 10_000
	case testing.Short():
		n = 100
	}
	p := newPods(t)
	in, publish := startIntake(t)
	cs, watching := newClientset()
	set := metrics.NewSet()
	a, _ := runAgent(t, kube.Config{Interval: 20 * time.Millisecond}, cs, watching, publish, set)
	defer func() {
		var sb strings.Builder
		set.WritePrometheus(&sb)
		for l := range strings.Lines(sb.String()) {
			if strings.Contains(l, "errors") || strings.Contains(l, "unsent") || strings.Contains(l, "kube") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}()
	ctx := t.Context()
	podsAPI := cs.CoreV1().Pods("shop")

	var want atomic.Int64
	lifecycles := func(count int) {
		t.Helper()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 16 { // pods in flight; the fake API server's watch holds 100 events
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= count {
						return
					}
					name := fmt.Sprintf("pod-%d", i)
					c := p.counter(name)
					c.requests.Store(int64(1 + i%7))
					want.Add(int64(1 + i%7))
					pod := p.pod(name, node, group("cart", "v1"))
					if _, err := podsAPI.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
						t.Error(err)
						return
					}
					waitTarget(t, a, pod.UID, "v1")
					if err := podsAPI.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
						t.Error(err)
						return
					}
					id := uuid.MustParse(string(pod.UID))
					checkfor.Within(t, 20*time.Second, 5*time.Millisecond, func() error {
						if !in.final("cart/v1", id) {
							return fmt.Errorf("no final batch of %s yet", name)
						}
						return nil
					})
					p.forget(name)
				}
			})
		}
		wg.Wait()
		cs.ClearActions() // the fake clientset records every call: not the agent's memory
		in.mu.Lock()
		in.finals = map[string]map[uuid.UUID]bool{} // nor the test's (a cleared map keeps its size)
		in.seen = map[uuid.UUID]map[string]bool{}
		in.mu.Unlock()
	}
	measure := func() (goroutines int, heap uint64) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}

	lifecycles(200) // warm up: pools, the informer's and NATS's buffers
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.Len() != 0 {
			return fmt.Errorf("%d pods still scraped", a.Len())
		}
		return nil
	})
	g0, h0 := measure()
	start := time.Now()
	lifecycles(n)
	elapsed := time.Since(start)
	if t.Failed() {
		return
	}
	checkfor.Within(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := in.total("cart/v1"); got != float64(want.Load()) {
			return fmt.Errorf("got %v requests; want %v", got, want.Load())
		}
		return nil
	})
	var g1 int
	var h1 uint64
	// Connections the server side still holds close asynchronously.
	checkfor.Within(t, 10*time.Second, 50*time.Millisecond, func() error {
		g1, h1 = measure()
		if g1 > g0+4 { // a few transient: connections the server closes after the test's last poll
			var sb strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&sb, 1)
			return fmt.Errorf("goroutines: %d before %d lifecycles, %d after:\n%s", g0, n, g1, sb.String())
		}
		return nil
	})
	growth := int64(h1) - int64(h0)
	t.Logf("%d lifecycles in %v: goroutines %d → %d, heap %.2f MiB → %.2f MiB (%+.1f KiB, %+.1f B per lifecycle)",
		n, elapsed.Round(time.Millisecond), g0, g1, float64(h0)/(1<<20), float64(h1)/(1<<20), float64(growth)/1024, float64(growth)/float64(n))
	// A pod's target holds tens of KiB (client, scraper, buffers, transport): a leak of
	// anything per pod shows as megabytes over 10,000 pods.
	if growth > 2<<20 {
		t.Errorf("heap grew by %.1f MiB over %d lifecycles; want < 2 MiB", float64(growth)/(1<<20), n)
	}
}
