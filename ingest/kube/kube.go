// Package kube is `herd agent --kubernetes`: one agent per node (a DaemonSet) watches the
// pods on its node and scrapes every pod selected for scraping, each as its own herd
// instance.
//
// A shared informer with a spec.nodeName field selector keeps the node's pods; a pod is
// scraped when it runs, has an IP and is annotated for scraping (herd.dev/scrape or
// prometheus.io/scrape "true", or herd.dev/mesh, or marked by the injector of the mesh
// named by -mesh). Its group comes from its labels (see Config), its instance id is its UID.
// Each scraped pod has one goroutine running an ingest.Scraper over its own ingest.Client,
// owned by the Agent: a pod that goes away (deleted, terminating, finished) is scraped once
// more and its final batch flushed; a pod whose group or endpoint changes hands its
// baselines to the scraper of its new group, so no count is lost or counted twice.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/internal/promhelp"
)

// resync is how often every known pod is reconciled again although nothing changed: a pod
// skipped for the limit is taken up within this time once a slot is free.
const resync = time.Minute

// syncWarnAfter is how long Run waits for the first list of pods before it says so, and
// again after each such wait.
const syncWarnAfter = 30 * time.Second

// Agent discovers the pods of one node and scrapes them. Build it with New and run it with
// Run; its event handlers run on the informer's goroutine and never block on a scrape.
type Agent struct {
	cfg     Config
	kube    kubernetes.Interface
	publish ingest.PublishFunc
	set     *metrics.Set
	log     *slog.Logger
	// start is when the agent was built: a pod created or started after it is new, and its
	// first scrape counts whole values.
	start time.Time

	starts, stops *metrics.Counter
	skips         map[string]*metrics.Counter

	wg sync.WaitGroup // the targets' goroutines

	mu      sync.Mutex // Guards the fields below.
	targets map[types.UID]*target
	skipped map[types.UID]string // the skip reason last logged for a pod
	// retired holds the last target of each pod that stopped being scraped but still
	// exists (relabelled into a group it cannot have, unannotated, not running), until it
	// is deleted: scraped again, the pod takes over its baselines, so nothing is counted a
	// second time.
	retired map[types.UID]*target
	closed  bool // Run is stopping: no new targets
}

// target is one scraped pod: its goroutine runs scraper until cancel, then closes done.
type target struct {
	spec      spec
	pod       string // namespace/name, for logs
	cancel    context.CancelFunc
	done      chan struct{}
	scraper   *ingest.Scraper
	client    *ingest.Client
	transport *http.Transport
}

// agentHelp describes the agent's families.
var agentHelp = map[string]string{
	"herd_agent_kube_targets":             "Pods the agent scrapes now.",
	"herd_agent_kube_target_starts_total": "Pods the agent started scraping (again after a change of group or endpoint).",
	"herd_agent_kube_target_stops_total":  "Pods the agent stopped scraping, each after a final scrape and batch.",
	"herd_agent_kube_pods_skipped_total": "Pods selected for scraping that the agent skipped, once per pod and reason: no_service, no_version, " +
		"bad_service, bad_version, bad_port, bad_mesh or limit.",
}

// New builds an agent watching cfg.Node's pods through kube and publishing through publish,
// with its herd_agent_* metrics in set (nil: a private Set). It starts nothing.
func New(cfg Config, kube kubernetes.Interface, set *metrics.Set, publish ingest.PublishFunc, logger *slog.Logger) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if kube == nil || publish == nil {
		return nil, errors.New("invalid kubernetes agent: nil client or publish function")
	}
	if set == nil {
		set = metrics.NewSet()
	}
	if logger == nil {
		logger = slog.Default()
	}
	promhelp.Describe(agentHelp)
	a := &Agent{
		cfg:     cfg,
		kube:    kube,
		publish: publish,
		set:     set,
		log:     logger.With("component", "agent", "node", cfg.Node),
		start:   time.Now(),
		starts:  set.GetOrCreateCounter("herd_agent_kube_target_starts_total"),
		stops:   set.GetOrCreateCounter("herd_agent_kube_target_stops_total"),
		skips:   make(map[string]*metrics.Counter),
		targets: make(map[types.UID]*target),
		skipped: make(map[types.UID]string),
		retired: make(map[types.UID]*target),
	}
	for _, r := range skipReasons {
		a.skips[r] = set.GetOrCreateCounter(`herd_agent_kube_pods_skipped_total{reason="` + r + `"}`)
	}
	set.GetOrCreateGauge("herd_agent_kube_targets", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(len(a.targets))
	})
	return a, nil
}

// Run watches the node's pods and scrapes them until ctx is cancelled; then it stops
// watching, scrapes every pod once more, flushes their final batches and returns when every
// goroutine it started has exited. It returns an error only if the pods cannot be listed
// before ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(a.kube, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.Node).String()
		}),
		informers.WithTransform(trimPod))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.update(obj) },
		UpdateFunc: func(_, obj any) { a.update(obj) },
		DeleteFunc: a.remove,
	}); err != nil {
		return fmt.Errorf("cannot watch the pods of node %s: %w", a.cfg.Node, err)
	}
	factory.Start(ctx.Done())
	synced := false
	for !synced && ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, syncWarnAfter)
		synced = cache.WaitForCacheSync(wctx.Done(), inf.HasSynced)
		cancel()
		if !synced && ctx.Err() == nil {
			a.log.Warn("cannot list the node's pods yet: is the API server reachable, and may the service account list and watch pods (deploy/kubernetes/agent-rbac.yaml)?",
				"waited", syncWarnAfter)
		}
	}
	synced = synced || inf.HasSynced() // WaitForCacheSync polls: it may not have looked since
	if synced {
		a.log.Info("kubernetes discovery started", "pods_scraped", a.Len(), "interval", a.cfg.Interval, "mesh", string(a.cfg.Mesh))
	}
	<-ctx.Done()
	factory.Shutdown() // the informer's goroutines have exited: no handler runs from here on

	a.mu.Lock()
	a.closed = true
	for uid, t := range a.targets {
		a.stopLocked(uid, t)
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.log.Info("kubernetes discovery stopped")
	if !synced {
		return fmt.Errorf("cannot list the pods of node %s: stopped before the first list completed", a.cfg.Node)
	}
	return nil
}

// Len returns the number of pods scraped now.
func (a *Agent) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.targets)
}

// Target is what the agent scrapes one pod as.
type Target struct {
	Service, Version string
	URL              string
	Mesh             string
	Instance         string
}

// Targets returns the pods scraped now, by pod UID.
func (a *Agent) Targets() map[types.UID]Target {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[types.UID]Target, len(a.targets))
	for uid, t := range a.targets {
		m[uid] = Target{Service: t.spec.service, Version: t.spec.version, URL: t.spec.url, Mesh: string(t.spec.mesh),
			Instance: t.client.Instance().String()}
	}
	return m
}

// update reconciles one pod's target with the pod as it is now.
func (a *Agent) update(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	sp, skip, detail, scrape := a.cfg.scrapeSpec(pod)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	old := a.targets[pod.UID]
	switch {
	case !scrape:
		delete(a.skipped, pod.UID)
		if old != nil {
			a.stopLocked(pod.UID, old)
			a.retired[pod.UID] = old
		}
		return
	case skip != "":
		a.skipLocked(pod, skip, detail)
		if old != nil {
			a.stopLocked(pod.UID, old)
			a.retired[pod.UID] = old
		}
		return
	case old != nil && old.spec == sp:
		return
	case old == nil && len(a.targets) >= a.cfg.MaxPods:
		a.skipLocked(pod, SkipLimit, fmt.Sprintf("%d pods are scraped already (-kubernetes.max-pods)", len(a.targets)))
		return
	}
	delete(a.skipped, pod.UID)
	if old != nil {
		a.stopLocked(pod.UID, old)
	} else if old = a.retired[pod.UID]; old != nil {
		delete(a.retired, pod.UID)
	}
	a.startLocked(pod, sp, old)
}

// remove stops the target of a deleted pod.
func (a *Agent) remove(obj any) {
	if ts, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = ts.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.skipped, pod.UID)
	delete(a.retired, pod.UID)
	if t := a.targets[pod.UID]; t != nil {
		a.stopLocked(pod.UID, t)
	}
}

// skipLocked counts and logs a skipped pod, once per reason.
func (a *Agent) skipLocked(pod *corev1.Pod, reason, detail string) {
	if a.skipped[pod.UID] == reason {
		return
	}
	a.skipped[pod.UID] = reason
	a.skips[reason].Inc()
	a.log.Warn("pod not scraped", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "detail", detail)
}

// stopLocked cancels a target; its goroutine scrapes once more and flushes the final batch.
func (a *Agent) stopLocked(uid types.UID, t *target) {
	delete(a.targets, uid)
	t.cancel()
	a.stops.Inc()
}

// startLocked starts scraping pod as sp. A predecessor (the pod's previous target, stopped
// or being stopped) is waited for; if it scraped the same endpoint, its baselines are taken
// over.
func (a *Agent) startLocked(pod *corev1.Pod, sp spec, pred *target) {
	log := a.log.With("pod", pod.Namespace+"/"+pod.Name)
	c, err := ingest.NewClient(ingest.ClientConfig{Service: sp.service, Version: sp.version, Interval: a.cfg.Interval,
		Instance: instanceID(pod), Publish: a.publish, Logger: log, Metrics: a.set})
	if err != nil { // the spec was validated: a bug
		a.log.Error("BUG: cannot build the client of a pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return
	}
	// A transport of its own: its connection goes with the pod (a shared one would keep an
	// idle connection to every pod that ever was, until its idle timeout).
	tr := &http.Transport{
		DialContext:         (&net.Dialer{}).DialContext, // bounded by the scrape's timeout
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     4 * a.cfg.Interval,
	}
	sc := ingest.ScraperConfig{URL: sp.url, HTTPClient: &http.Client{Transport: tr}, FinalTimeout: a.cfg.FinalTimeout,
		CountFirst: pred == nil && startedAfter(pod, a.start)}
	if r := sp.mesh.Rewriter(); r != nil {
		sc.Rewriter = r.WithMetrics(a.set)
	}
	s, err := ingest.NewScraper(sc, c, log, a.set)
	if err != nil {
		a.log.Error("BUG: cannot build the scraper of a pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &target{spec: sp, pod: pod.Namespace + "/" + pod.Name, cancel: cancel, done: make(chan struct{}),
		scraper: s, client: c, transport: tr}
	a.targets[pod.UID] = t
	a.starts.Inc()
	a.wg.Go(func() { a.run(ctx, t, pred) })
}

// run is a target's goroutine.
func (a *Agent) run(ctx context.Context, t *target, pred *target) {
	defer close(t.done)
	defer t.transport.CloseIdleConnections()
	if pred != nil {
		<-pred.done
		if pred.spec.url == t.spec.url {
			t.scraper.Adopt(pred.scraper.Handover())
		}
	}
	if err := t.scraper.Run(ctx); err != nil {
		a.log.Warn("cannot send a pod's final batch", "pod", t.pod, "err", err)
	}
}
