package deploytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// object is one decoded Kubernetes manifest.
type object struct {
	source string // file (and document) it came from
	kind   string
	meta   metav1.ObjectMeta
	obj    any // a pointer to the k8s.io/api type of kind
}

func (o object) String() string {
	return o.kind + " " + o.meta.Namespace + "/" + o.meta.Name + " (" + o.source + ")"
}

// newObject returns a pointer to the k8s.io/api type of kind, or nil for a kind herd's
// manifests do not use.
func newObject(kind string) any {
	switch kind {
	case "Namespace":
		return &corev1.Namespace{}
	case "Secret":
		return &corev1.Secret{}
	case "ConfigMap":
		return &corev1.ConfigMap{}
	case "Service":
		return &corev1.Service{}
	case "ServiceAccount":
		return &corev1.ServiceAccount{}
	case "Deployment":
		return &appsv1.Deployment{}
	case "StatefulSet":
		return &appsv1.StatefulSet{}
	case "DaemonSet":
		return &appsv1.DaemonSet{}
	case "Role":
		return &rbacv1.Role{}
	case "RoleBinding":
		return &rbacv1.RoleBinding{}
	case "ClusterRole":
		return &rbacv1.ClusterRole{}
	case "ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	}
	return nil
}

// splitDocs splits a YAML stream into its documents, dropping empty ones.
func splitDocs(data []byte) [][]byte {
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		empty := true
		for _, l := range strings.Split(d, "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				empty = false
			}
		}
		if !empty {
			out = append(out, []byte(d))
		}
	}
	return out
}

// decodeStrict decodes every document of data into its k8s.io/api type with strict field
// checking (sigs.k8s.io/yaml UnmarshalStrict: unknown and duplicate fields are errors).
// Documents of other kinds (Argo's and Flagger's resources) are returned in others.
func decodeStrict(t *testing.T, source string, data []byte) (objs []object, others []map[string]any) {
	t.Helper()
	for i, doc := range splitDocs(data) {
		src := fmt.Sprintf("%s#%d", source, i)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Errorf("%s: cannot read kind: %v", src, err)
			continue
		}
		o := newObject(tm.Kind)
		if o == nil {
			var m map[string]any
			if err := yaml.UnmarshalStrict(doc, &m); err != nil {
				t.Errorf("%s: %v", src, err)
			}
			others = append(others, m)
			continue
		}
		if err := yaml.UnmarshalStrict(doc, o); err != nil {
			t.Errorf("%s: strict decode as %s: %v", src, tm.Kind, err)
			continue
		}
		var meta metav1.ObjectMeta
		b, _ := json.Marshal(o)
		var withMeta struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		_ = json.Unmarshal(b, &withMeta)
		meta = withMeta.Metadata
		if meta.Name == "" {
			t.Errorf("%s: %s without a name", src, tm.Kind)
		}
		objs = append(objs, object{source: src, kind: tm.Kind, meta: meta, obj: o})
	}
	return objs, others
}

// helpFlags reads the flags of `herd <role> --help` from the golden help files, which
// TestHelpGolden (cmd/herd) keeps equal to the binary's output.
func helpFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	files, err := filepath.Glob("../../cmd/herd/testdata/help/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden help files: %v", err)
	}
	re := regexp.MustCompile(`^  --([a-z0-9.-]+)`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		role := strings.TrimSuffix(filepath.Base(f), ".txt")
		out[role] = map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				out[role][m[1]] = true
			}
		}
	}
	return out
}

// envName is the environment variable a flag falls back to (cmd/herd's rule).
func envName(flag string) string {
	return "HERD_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flag))
}

// checkHerdCommand checks a herd command line (role and arguments) and the HERD_*
// variables of its environment against `herd <role> --help`; where names the container or
// unit.
func checkHerdCommand(t *testing.T, help map[string]map[string]bool, where string, args []string, env []string) (role string, flags map[string]string) {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: herd without a command", where)
		return "", nil
	}
	role, flags = args[0], map[string]string{}
	known, ok := help[role]
	if !ok {
		t.Errorf("%s: herd has no command %q", where, role)
		return role, flags
	}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: unexpected argument %q", where, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !known[name] {
			t.Errorf("%s: herd %s has no flag --%s", where, role, name)
		}
		if !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			val = args[i+1]
			i++
		}
		flags[name] = val
	}
	byEnv := map[string]string{}
	for f := range known {
		byEnv[envName(f)] = f
	}
	for _, e := range env {
		if !strings.HasPrefix(e, "HERD_") {
			continue
		}
		f, ok := byEnv[e]
		if !ok {
			t.Errorf("%s: %s is the variable of no flag of herd %s", where, e, role)
			continue
		}
		if _, set := flags[f]; !set {
			flags[f] = "$" + e
		}
	}
	return role, flags
}

// podTemplate is a workload's pod template with where it came from.
type podTemplate struct {
	owner object
	tmpl  corev1.PodTemplateSpec
	pvcs  []string // volume claim templates
}

func podTemplates(objs []object) []podTemplate {
	var out []podTemplate
	for _, o := range objs {
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			out = append(out, podTemplate{owner: o, tmpl: w.Spec.Template})
		case *appsv1.DaemonSet:
			out = append(out, podTemplate{owner: o, tmpl: w.Spec.Template})
		case *appsv1.StatefulSet:
			pt := podTemplate{owner: o, tmpl: w.Spec.Template}
			for _, c := range w.Spec.VolumeClaimTemplates {
				pt.pvcs = append(pt.pvcs, c.Name)
			}
			out = append(out, pt)
		}
	}
	return out
}

// find returns the object of kind, namespace and name, or nil.
func find(objs []object, kind, ns, name string) *object {
	for i := range objs {
		if o := &objs[i]; o.kind == kind && o.meta.Namespace == ns && o.meta.Name == name {
			return o
		}
	}
	return nil
}

// hasKey reports whether a Secret or ConfigMap holds key.
func hasKey(o *object, key string) bool {
	switch v := o.obj.(type) {
	case *corev1.Secret:
		_, a := v.StringData[key]
		_, b := v.Data[key]
		return a || b
	case *corev1.ConfigMap:
		_, a := v.Data[key]
		_, b := v.BinaryData[key]
		return a || b
	}
	return false
}

// herdContainer is a herd container with its role and flags.
type herdContainer struct {
	pod   podTemplate
	c     corev1.Container
	role  string
	flags map[string]string
}

// checkReferences checks what the manifests refer to: secrets and their keys, config maps
// and their keys, volumes, service accounts, environment references, herd's flags and
// variables, probe ports, Services' selectors and target ports, RBAC bindings. It returns
// the herd containers.
func checkReferences(t *testing.T, objs []object, help map[string]map[string]bool) []herdContainer {
	t.Helper()
	var herds []herdContainer
	pods := podTemplates(objs)
	for _, p := range pods {
		ns, spec := p.owner.meta.Namespace, p.tmpl.Spec
		if sa := spec.ServiceAccountName; sa != "" && sa != "default" && find(objs, "ServiceAccount", ns, sa) == nil {
			t.Errorf("%s: service account %s/%s is not defined", p.owner, ns, sa)
		}
		sel := workloadSelector(p.owner)
		if sel != nil && !matches(sel.MatchLabels, p.tmpl.Labels) {
			t.Errorf("%s: selector %v does not match its pod labels %v", p.owner, sel.MatchLabels, p.tmpl.Labels)
		}
		volumes := map[string]bool{}
		for _, name := range p.pvcs {
			volumes[name] = true
		}
		for _, v := range spec.Volumes {
			volumes[v.Name] = true
			switch {
			case v.ConfigMap != nil:
				checkKeys(t, objs, p.owner, "ConfigMap", ns, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
			case v.Secret != nil:
				checkKeys(t, objs, p.owner, "Secret", ns, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
			}
		}
		for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			where := p.owner.String() + " container " + c.Name
			defined := map[string]bool{}
			var env []string
			for _, e := range c.Env {
				for _, m := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(e.Value, -1) {
					if !defined[m[1]] {
						t.Errorf("%s: %s refers to $(%s), not defined before it", where, e.Name, m[1])
					}
				}
				if f := e.ValueFrom; f != nil {
					switch {
					case f.SecretKeyRef != nil:
						checkKey(t, objs, where, "Secret", ns, f.SecretKeyRef.Name, f.SecretKeyRef.Key, f.SecretKeyRef.Optional)
					case f.ConfigMapKeyRef != nil:
						checkKey(t, objs, where, "ConfigMap", ns, f.ConfigMapKeyRef.Name, f.ConfigMapKeyRef.Key, f.ConfigMapKeyRef.Optional)
					}
				}
				defined[e.Name] = true
				env = append(env, e.Name)
			}
			for _, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					t.Errorf("%s: mounts volume %s, which the pod does not define", where, m.Name)
				}
			}
			ports := map[string]int32{}
			for _, cp := range c.Ports {
				ports[cp.Name] = cp.ContainerPort
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Port.Type == intstr.String {
					if _, ok := ports[pr.HTTPGet.Port.StrVal]; !ok {
						t.Errorf("%s: probe on port %q, which the container does not declare", where, pr.HTTPGet.Port.StrVal)
					}
				}
			}
			if strings.HasPrefix(c.Image, "herd:") || strings.Contains(c.Image, "/herd:") {
				role, flags := checkHerdCommand(t, help, where, c.Args, env)
				herds = append(herds, herdContainer{pod: p, c: c, role: role, flags: flags})
				for _, l := range []string{"http", "http.metrics-listen"} {
					if hp, ok := flags[l]; ok && !strings.HasPrefix(hp, "$") {
						_, port, err := net.SplitHostPort(hp)
						n, _ := strconv.Atoi(port)
						if err != nil || !slices.Contains(slices.Collect(mapsValues(ports)), int32(n)) {
							t.Errorf("%s: --%s %s listens on a port the container does not declare", where, l, hp)
						}
					}
				}
			}
		}
	}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Service:
			checkService(t, o, v, pods)
		case *rbacv1.RoleBinding:
			if v.RoleRef.Kind == "Role" && find(objs, "Role", o.meta.Namespace, v.RoleRef.Name) == nil {
				t.Errorf("%s: role %s is not defined in %s", o, v.RoleRef.Name, o.meta.Namespace)
			}
			for _, s := range v.Subjects {
				if s.Kind == "ServiceAccount" && find(objs, "ServiceAccount", s.Namespace, s.Name) == nil {
					t.Errorf("%s: service account %s/%s is not defined", o, s.Namespace, s.Name)
				}
			}
		}
	}
	return herds
}

func mapsValues(m map[string]int32) func(func(int32) bool) {
	return func(yield func(int32) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func workloadSelector(o object) *metav1.LabelSelector {
	switch w := o.obj.(type) {
	case *appsv1.Deployment:
		return w.Spec.Selector
	case *appsv1.DaemonSet:
		return w.Spec.Selector
	case *appsv1.StatefulSet:
		return w.Spec.Selector
	}
	return nil
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkKey(t *testing.T, objs []object, where, kind, ns, name, key string, optional *bool) {
	t.Helper()
	if optional != nil && *optional {
		return
	}
	o := find(objs, kind, ns, name)
	switch {
	case o == nil:
		t.Errorf("%s: %s %s/%s is not defined", where, kind, ns, name)
	case !hasKey(o, key):
		t.Errorf("%s: %s %s/%s has no key %s", where, kind, ns, name, key)
	}
}

func checkKeys(t *testing.T, objs []object, owner object, kind, ns, name string, items []corev1.KeyToPath, optional *bool) {
	t.Helper()
	if find(objs, kind, ns, name) == nil && (optional == nil || !*optional) {
		t.Errorf("%s: %s %s/%s is not defined", owner, kind, ns, name)
		return
	}
	for _, it := range items {
		checkKey(t, objs, owner.String(), kind, ns, name, it.Key, optional)
	}
}

// checkService checks that a Service selects pods of its namespace and that each target
// port is a port of every pod it selects.
func checkService(t *testing.T, o object, s *corev1.Service, pods []podTemplate) {
	t.Helper()
	var sel []podTemplate
	for _, p := range pods {
		if p.owner.meta.Namespace == o.meta.Namespace && matches(s.Spec.Selector, p.tmpl.Labels) {
			sel = append(sel, p)
		}
	}
	if len(sel) == 0 {
		t.Errorf("%s: selector %v matches no pod template", o, s.Spec.Selector)
		return
	}
	for _, sp := range s.Spec.Ports {
		for _, p := range sel {
			if targetPort(p, sp) == 0 {
				t.Errorf("%s: port %s targets %s, which pods of %s do not declare", o, sp.Name, sp.TargetPort.String(), p.owner)
			}
		}
	}
}

// targetPort returns the container port a Service port reaches in pod p, or 0.
func targetPort(p podTemplate, sp corev1.ServicePort) int32 {
	tp := sp.TargetPort
	if tp.Type == intstr.Int && tp.IntVal == 0 {
		tp = intstr.FromInt32(sp.Port)
	}
	for _, c := range p.tmpl.Spec.Containers {
		for _, cp := range c.Ports {
			if tp.Type == intstr.String && cp.Name == tp.StrVal || tp.Type == intstr.Int && cp.ContainerPort == tp.IntVal {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

// reachable checks that url reaches, through a Service of objs, a herd container whose role
// serves path on the listener the Service port targets (--http, or --http.metrics-listen
// for the token-free routes).
func reachable(t *testing.T, objs []object, herds []herdContainer, rawURL string, roles ...string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Errorf("%s: %v", rawURL, err)
		return
	}
	host := strings.Split(u.Hostname(), ".") // <service>.<namespace>.svc[.cluster.local]
	if len(host) < 3 || host[2] != "svc" {
		t.Errorf("%s: want a Service's cluster DNS name <service>.<namespace>.svc", rawURL)
		return
	}
	port, _ := strconv.Atoi(u.Port())
	if port == 0 {
		port = 80
	}
	so := find(objs, "Service", host[1], host[0])
	if so == nil {
		t.Errorf("%s: no Service %s/%s", rawURL, host[1], host[0])
		return
	}
	svc := so.obj.(*corev1.Service)
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Port == int32(port) {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		t.Errorf("%s: Service %s has no port %d", rawURL, so.meta.Name, port)
		return
	}
	served := 0
	for _, h := range herds {
		if h.pod.owner.meta.Namespace != so.meta.Namespace || !matches(svc.Spec.Selector, h.pod.tmpl.Labels) {
			continue
		}
		cport := targetPort(h.pod, *sp)
		_, lp, _ := net.SplitHostPort(h.flags["http"])
		if n, _ := strconv.Atoi(lp); n != int(cport) || !slices.Contains(roles, h.role) {
			t.Errorf("%s: Service %s port %d reaches %s (herd %s) on %d, not the --http listener of herd %v", rawURL, so.meta.Name, port, h.pod.owner, h.role, cport, roles)
			continue
		}
		served++
	}
	if served == 0 {
		t.Errorf("%s: Service %s selects no herd %v container", rawURL, so.meta.Name, roles)
	}
}

// readManifests decodes every YAML file of dir.
func readManifests(t *testing.T, dir string) (objs []object, others map[string][]map[string]any) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	others = map[string][]map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o, x := decodeStrict(t, f, data)
		objs = append(objs, o...)
		others[f] = x
	}
	return objs, others
}
