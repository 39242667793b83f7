package kube

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/herd-dev/herd/ingest/mesh"
	"github.com/herd-dev/herd/proto"
)

// Skip reasons (herd_agent_kube_pods_skipped_total): a pod selected for scraping that herd
// cannot scrape.
const (
	SkipNoService  = "no_service"  // none of the name labels, nor herd.dev/service
	SkipNoVersion  = "no_version"  // none of the version labels or fallbacks
	SkipBadService = "bad_service" // not a valid herd service name
	SkipBadVersion = "bad_version" // not a valid herd version
	SkipBadPort    = "bad_port"    // the port annotation is not a port number
	SkipBadMesh    = "bad_mesh"    // herd.dev/mesh names no profile
	SkipLimit      = "limit"       // -kubernetes.max-pods pods are scraped already
)

var skipReasons = []string{SkipNoService, SkipNoVersion, SkipBadService, SkipBadVersion, SkipBadPort, SkipBadMesh, SkipLimit}

// spec is what a pod is scraped as. Two specs are equal when nothing about the scrape
// changed.
type spec struct {
	service, version string
	url              string
	mesh             mesh.Profile
}

// Default endpoints of the meshes' proxies.
const (
	istioPort, istioPath     = "15020", "/stats/prometheus"
	linkerdPort, linkerdPath = "4191", "/metrics"
)

// scrapeSpec returns how pod is scraped: ok false when it is not to be scraped (not
// selected, not running yet, going away), else a spec or a skip reason with its detail.
func (c *Config) scrapeSpec(pod *corev1.Pod) (sp spec, skip, detail string, ok bool) {
	if pod.Spec.NodeName != c.Node || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
		return spec{}, "", "", false
	}
	ann := pod.Annotations
	profile := c.Mesh
	if v, set := ann[AnnotationMesh]; set {
		p, err := mesh.Parse(v)
		if err != nil {
			return spec{}, SkipBadMesh, err.Error(), true
		}
		profile = p
	}
	meshed := profile == mesh.Istio && ann[istioStatus] != "" || profile == mesh.Linkerd && ann[linkerdVersion] != ""
	_, herdMesh := ann[AnnotationMesh]
	switch {
	case ann[AnnotationScrape] == "false":
		return spec{}, "", "", false
	case ann[AnnotationScrape] == "true", ann[PromScrape] == "true", herdMesh, meshed:
	default:
		return spec{}, "", "", false
	}

	port, path := first(ann[AnnotationPort], ann[PromPort]), first(ann[AnnotationPath], ann[PromPath])
	switch profile {
	case mesh.Linkerd:
		// prometheus.io/* name the application's endpoint; the proxy's is its admin port.
		port, path = first(ann[AnnotationPort], linkerdPort), first(ann[AnnotationPath], linkerdPath)
	case mesh.Istio:
		port, path = first(port, istioPort), first(path, istioPath)
	}
	if path == "" {
		path = "/metrics"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return spec{}, SkipBadPort, fmt.Sprintf("port %q is not a port number (annotations %s, %s)", port, AnnotationPort, PromPort), true
	}
	scheme := "http"
	if ann[PromScheme] == "https" {
		scheme = "https"
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(pod.Status.PodIP, port), Path: path}

	service, version, skip, detail := c.group(pod)
	if skip != "" {
		return spec{}, skip, detail, true
	}
	return spec{service: service, version: version, url: u.String(), mesh: profile}, "", "", true
}

// group returns the pod's (service, version), or a skip reason and its detail.
func (c *Config) group(pod *corev1.Pod) (service, version, skip, detail string) {
	service, from := pod.Annotations[AnnotationService], AnnotationService
	if service == "" {
		service, from = firstLabel(pod.Labels, c.NameLabels)
	}
	if service == "" {
		return "", "", SkipNoService, fmt.Sprintf("no service: none of the labels %s nor the annotation %s is set",
			strings.Join(c.NameLabels, ", "), AnnotationService)
	}
	version, vfrom := pod.Annotations[AnnotationVersion], AnnotationVersion
	if version == "" {
		version, vfrom = firstLabel(pod.Labels, c.VersionLabels)
	}
	if version == "" {
		version, vfrom = pod.Labels[LabelRolloutsHash], LabelRolloutsHash
	}
	if base, primary := strings.CutSuffix(service, FlaggerPrimarySuffix); primary && from != AnnotationService {
		service = base
		if version == "" {
			version, vfrom = "primary", "the Flagger primary's name"
		}
	} else if version == "" && c.Flagger {
		version, vfrom = "canary", "-kubernetes.flagger"
	}
	if version == "" {
		return "", "", SkipNoVersion, fmt.Sprintf("no version: none of the labels %s, %s nor the annotation %s is set, and %q is no Flagger primary",
			strings.Join(c.VersionLabels, ", "), LabelRolloutsHash, AnnotationVersion, service)
	}
	if err := proto.ValidService(service); err != nil {
		return "", "", SkipBadService, fmt.Sprintf("service from %s: %v", from, err)
	}
	if err := proto.ValidVersion(version); err != nil {
		return "", "", SkipBadVersion, fmt.Sprintf("version from %s: %v", vfrom, err)
	}
	return service, version, "", ""
}

func firstLabel(labels map[string]string, names []string) (value, name string) {
	for _, n := range names {
		if v := labels[n]; v != "" {
			return v, n
		}
	}
	return "", ""
}

func first(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// instanceID is the pod's UID as herd's instance id (Kubernetes UIDs are UUIDs; anything
// else is hashed into one).
func instanceID(pod *corev1.Pod) uuid.UUID {
	if id, err := uuid.Parse(string(pod.UID)); err == nil {
		return id
	}
	return uuid.NewSHA1(uuid.NameSpaceOID, []byte(pod.Namespace+"/"+pod.Name+"/"+string(pod.UID)))
}

// startedAfter reports whether the pod was created, or all its containers started, after t:
// then every count its endpoint shows is new to herd, and the first scrape counts it.
func startedAfter(pod *corev1.Pod, t time.Time) bool {
	if pod.CreationTimestamp.After(t) {
		return true
	}
	cs := pod.Status.ContainerStatuses
	if len(cs) == 0 {
		return false
	}
	for _, s := range cs {
		if s.State.Running == nil || !s.State.Running.StartedAt.After(t) {
			return false
		}
	}
	return true
}

// keptAnnotations are the annotation prefixes discovery reads; the informer's cache keeps
// no others (kubectl's last-applied configuration can be large).
var keptAnnotations = []string{"herd.dev/", "prometheus.io/", istioStatus, linkerdVersion}

// trimPod is the informer's transform: it keeps only what discovery reads, so hundreds of
// pods cost little memory.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deletion tombstone: its object was trimmed when stored
	}
	var ann map[string]string
	for k, v := range pod.Annotations {
		for _, p := range keptAnnotations {
			if strings.HasPrefix(k, p) {
				if ann == nil {
					ann = make(map[string]string)
				}
				ann[k] = v
				break
			}
		}
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: pod.Labels, Annotations: ann,
			CreationTimestamp: pod.CreationTimestamp, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: pod.Spec.NodeName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP},
	}
	for _, s := range pod.Status.ContainerStatuses {
		out.Status.ContainerStatuses = append(out.Status.ContainerStatuses, corev1.ContainerStatus{State: corev1.ContainerState{Running: s.State.Running}})
	}
	return out, nil
}
