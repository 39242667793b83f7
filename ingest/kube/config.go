package kube

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/ingest/mesh"
)

// Pod annotations herd reads. The prometheus.io ones are the usual scrape annotations; the
// herd.dev ones override them and name the group or the mesh explicitly.
const (
	AnnotationScrape  = "herd.dev/scrape"  // "true" scrapes the pod, "false" never does
	AnnotationPort    = "herd.dev/port"    // port of the metrics endpoint
	AnnotationPath    = "herd.dev/path"    // path of the metrics endpoint
	AnnotationMesh    = "herd.dev/mesh"    // none, istio or linkerd: read the pod's proxy
	AnnotationService = "herd.dev/service" // the group's service, before any label
	AnnotationVersion = "herd.dev/version" // the group's version, before any label

	PromScrape = "prometheus.io/scrape"
	PromPort   = "prometheus.io/port"
	PromPath   = "prometheus.io/path"
	PromScheme = "prometheus.io/scheme"

	// Set by the meshes' injectors on every meshed pod: with -mesh, such a pod is scraped
	// without any annotation of its own.
	istioStatus    = "sidecar.istio.io/status"
	linkerdVersion = "linkerd.io/proxy-version"
)

// Labels the group falls back to after the configured ones.
const (
	// LabelRolloutsHash is Argo Rollouts' label on the pods of each ReplicaSet of a Rollout:
	// the stable and the canary pods differ in it.
	LabelRolloutsHash = "rollouts-pod-template-hash"
	// FlaggerPrimarySuffix ends the name of the primary workload Flagger copies from the
	// target (podinfo → podinfo-primary); its pods carry the suffixed name labels.
	FlaggerPrimarySuffix = "-primary"
)

// Defaults of Config.
const (
	DefaultMaxPods      = 500
	DefaultFinalTimeout = ingest.DefaultFinalTimeout
)

// DefaultNameLabels and DefaultVersionLabels are the pod labels the group is read from, first
// set wins.
var (
	DefaultNameLabels    = []string{"app.kubernetes.io/name", "app"}
	DefaultVersionLabels = []string{"app.kubernetes.io/version", "version"}
)

// Config configures Kubernetes pod discovery for `herd agent --kubernetes`.
type Config struct {
	// Node is the node whose pods are watched (flag -kubernetes.node; in a DaemonSet, the
	// downward API's spec.nodeName through HERD_KUBERNETES_NODE).
	Node string
	// Kubeconfig is a kubeconfig file; empty uses the in-cluster service account.
	Kubeconfig string
	// NameLabels and VersionLabels are the pod labels giving the group's service and
	// version, the first one set winning (herd.dev/service and herd.dev/version
	// annotations come before them).
	NameLabels    []string
	VersionLabels []string
	// Flagger makes a pod without a version label whose service does not end in -primary
	// a Flagger canary (version "canary"). A pod whose name label ends in -primary is
	// always taken as a Flagger primary: service without the suffix, version "primary"
	// when it has no version label.
	Flagger bool
	// Mesh is the profile for pods without a herd.dev/mesh annotation. With a mesh set,
	// every pod that mesh's injector marked is scraped at its proxy.
	Mesh mesh.Profile
	// Interval is the scrape and batch interval of every pod (default 250 ms).
	Interval time.Duration
	// MaxPods bounds the pods scraped at once (default 500); pods beyond it are skipped
	// with reason "limit".
	MaxPods int
	// FinalTimeout bounds the last scrape of a pod going away (default 5 s): it holds the
	// pod's last counts, and a terminating pod serves for its grace period (30 s unless
	// set otherwise).
	FinalTimeout time.Duration
}

// RegisterFlags registers the -kubernetes.* flags on fs (-interval and -mesh are the
// agent's, shared with the single-target mode).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	if c.NameLabels == nil {
		c.NameLabels = DefaultNameLabels
	}
	if c.VersionLabels == nil {
		c.VersionLabels = DefaultVersionLabels
	}
	fs.StringVar(&c.Node, "kubernetes.node", c.Node, "`node` whose pods are scraped (in a DaemonSet: spec.nodeName via HERD_KUBERNETES_NODE)")
	fs.StringVar(&c.Kubeconfig, "kubernetes.kubeconfig", c.Kubeconfig, "kubeconfig `file` (empty: the in-cluster service account)")
	fs.Var((*listFlag)(&c.NameLabels), "kubernetes.name-labels", "pod `labels` naming the service, comma-separated, first set wins")
	fs.Var((*listFlag)(&c.VersionLabels), "kubernetes.version-labels", "pod `labels` naming the version, comma-separated, first set wins; then "+LabelRolloutsHash+" and Flagger naming")
	fs.BoolVar(&c.Flagger, "kubernetes.flagger", c.Flagger, "take pods without a version label as Flagger canaries (version \"canary\"); -primary pods are Flagger primaries either way")
	fs.IntVar(&c.MaxPods, "kubernetes.max-pods", DefaultMaxPods, "most pods scraped at once (`count`); more are skipped and counted")
	fs.DurationVar(&c.FinalTimeout, "kubernetes.final-timeout", DefaultFinalTimeout, "bound of the last scrape of a pod going away, which holds its last counts (`duration`)")
}

// Validate checks the config, naming the flag at fault.
func (c *Config) Validate() error {
	if c.Node == "" {
		return errors.New("-kubernetes.node is required: the node whose pods are scraped (HERD_KUBERNETES_NODE from spec.nodeName)")
	}
	if len(c.NameLabels) == 0 {
		return errors.New("-kubernetes.name-labels: want at least one label")
	}
	if c.Interval < 0 {
		return fmt.Errorf("-interval %v: must be positive", c.Interval)
	}
	if c.FinalTimeout < 0 {
		return fmt.Errorf("-kubernetes.final-timeout %v: must be positive", c.FinalTimeout)
	}
	if c.MaxPods < 0 {
		return fmt.Errorf("-kubernetes.max-pods %d: must be positive", c.MaxPods)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Interval == 0 {
		c.Interval = ingest.DefaultInterval
	}
	if c.MaxPods == 0 {
		c.MaxPods = DefaultMaxPods
	}
	if c.FinalTimeout == 0 {
		c.FinalTimeout = DefaultFinalTimeout
	}
	if c.NameLabels == nil {
		c.NameLabels = DefaultNameLabels
	}
	if c.VersionLabels == nil {
		c.VersionLabels = DefaultVersionLabels
	}
}

// NewClientset connects to the Kubernetes API: with the kubeconfig file if given, else as
// the pod's service account.
func NewClientset(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot configure the Kubernetes client: %w", err)
	}
	rc.UserAgent = "herd-agent"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cannot build the Kubernetes client: %w", err)
	}
	return cs, nil
}

// listFlag is a comma-separated list flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = nil
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
