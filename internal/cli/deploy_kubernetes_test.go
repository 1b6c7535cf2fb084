package cli

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8sjson "sigs.k8s.io/json"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers/builtin"
)

// kustomization is a kustomization.yaml, the fields udpgate's uses.
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Namespace       string   `json:"namespace,omitempty"`
	Resources       []string `json:"resources,omitempty"`
	Images          []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// scaledObject is KEDA's keda.sh/v1alpha1 ScaledObject, as its CRD
// defines it (KEDA's Go module is the whole operator: too large to import
// for one type). Decoded strictly, a misspelt field is refused.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion             string `json:"apiVersion,omitempty"`
			Kind                   string `json:"kind,omitempty"`
			Name                   string `json:"name"`
			EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
		} `json:"scaleTargetRef"`
		PollingInterval       *int32 `json:"pollingInterval,omitempty"`
		InitialCooldownPeriod *int32 `json:"initialCooldownPeriod,omitempty"`
		CooldownPeriod        *int32 `json:"cooldownPeriod,omitempty"`
		IdleReplicaCount      *int32 `json:"idleReplicaCount,omitempty"`
		MinReplicaCount       *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount       *int32 `json:"maxReplicaCount,omitempty"`
		Advanced              *struct {
			RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
			HorizontalPodAutoscalerConfig *struct {
				Name     string                                         `json:"name,omitempty"`
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Fallback *struct {
			FailureThreshold int32 `json:"failureThreshold"`
			Replicas         int32 `json:"replicas"`
		} `json:"fallback,omitempty"`
		Triggers []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name,omitempty"`
			UseCachedMetrics  bool              `json:"useCachedMetrics,omitempty"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
				Kind string `json:"kind,omitempty"`
			} `json:"authenticationRef,omitempty"`
			MetricType autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

// natsJetStreamMetadata are the metadata of KEDA's nats-jetstream scaler
// (keda.sh/docs/scalers/nats-jetstream), true for the required ones.
var natsJetStreamMetadata = map[string]bool{
	"natsServerMonitoringEndpoint": true,
	"account":                      true,
	"stream":                       true,
	"consumer":                     true,
	"lagThreshold":                 false,
	"activationLagThreshold":       false,
	"useHttps":                     false,
}

// k8sTypes maps the apiVersion and kind of each object the manifests may
// hold to the Go type it is decoded into: Kubernetes' own (k8s.io/api),
// the Prometheus Operator's, and the two above.
var k8sTypes = map[string]func() any{
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/ConfigMap":                                  func() any { return new(corev1.ConfigMap) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                            func() any { return new(appsv1.Deployment) },
	"apps/v1/DaemonSet":                             func() any { return new(appsv1.DaemonSet) },
	"autoscaling/v2/HorizontalPodAutoscaler":        func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"monitoring.coreos.com/v1/PodMonitor":           func() any { return new(monitoringv1.PodMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule":       func() any { return new(monitoringv1.PrometheusRule) },
	"keda.sh/v1alpha1/ScaledObject":                 func() any { return new(scaledObject) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kustomization) },
}

// builtinKind reports whether a cluster without add-ons knows apiVersion.
func builtinKind(apiVersion string) bool {
	group, _, _ := strings.Cut(apiVersion, "/")
	return !strings.Contains(group, ".") || strings.HasSuffix(group, ".k8s.io")
}

// k8sDoc is one object of a manifest, decoded into its type.
type k8sDoc struct {
	file       string // its file's name in deploy/kubernetes
	apiVersion string
	kind, name string
	namespace  string
	obj        any
}

func (d k8sDoc) String() string { return d.file + ": " + d.kind + " " + d.name }

// decodeManifests decodes every YAML document of files (names to
// contents) strictly into its type: an unknown field, a field of the
// wrong type, a duplicate key or a kind with no schema is a problem.
func decodeManifests(files map[string]string) ([]k8sDoc, []string) {
	var docs []k8sDoc
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		dec := yaml.NewDecoder(strings.NewReader(files[name]))
		for i := 1; ; i++ {
			var v any
			if err := dec.Decode(&v); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
				break
			}
			if v == nil {
				continue
			}
			b, err := json.Marshal(v)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: document %d: %v", name, i, err))
				continue
			}
			var meta struct {
				metav1.TypeMeta
				Metadata struct{ Name, Namespace string }
			}
			json.Unmarshal(b, &meta)
			d := k8sDoc{file: name, apiVersion: meta.APIVersion, kind: meta.Kind, name: meta.Metadata.Name, namespace: meta.Metadata.Namespace}
			newObj, ok := k8sTypes[meta.APIVersion+"/"+meta.Kind]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: %s %s: no schema for %s %s", name, meta.Kind, d.name, meta.APIVersion, meta.Kind))
				continue
			}
			d.obj = newObj()
			strict, err := k8sjson.UnmarshalStrict(b, d.obj)
			for _, e := range append(strict, err) {
				if e != nil {
					problems = append(problems, fmt.Sprintf("%s: %v", d, e))
				}
			}
			docs = append(docs, d)
		}
	}
	return docs, problems
}

// k8sFacts are what the manifests are checked against besides themselves.
type k8sFacts struct {
	known      []string            // udpgate's variables
	args       func([]string) bool // whether args are a udpgate command line
	bytes      func(string) int64  // a size as udpgate reads it; -1 if invalid
	natsMinor  string              // the embedded NATS server's major.minor
	metrics    string              // docs/metrics.md
	deployDocs string              // deploy/README.md, with the NATS Helm command
}

// workload is a Deployment or DaemonSet with what the checks need of it.
type workload struct {
	doc      k8sDoc
	kind     string
	labels   map[string]string // the pods'
	spec     corev1.PodSpec
	replicas int32
}

// kubernetesProblems checks the decoded manifests of deploy/kubernetes
// against each other, udpgate's configuration and the NATS they expect.
func kubernetesProblems(docs []k8sDoc, f k8sFacts) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var kust *kustomization
	var cm *corev1.ConfigMap
	var workloads []workload
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *kustomization:
			kust = o
		case *corev1.ConfigMap:
			if d.name == "udpgate" {
				cm = o
			}
		case *appsv1.Deployment:
			r := int32(1)
			if o.Spec.Replicas != nil {
				r = *o.Spec.Replicas
			}
			workloads = append(workloads, workload{d, d.kind, o.Spec.Template.Labels, o.Spec.Template.Spec, r})
			checkSelector(d, o.Spec.Selector, o.Spec.Template.Labels, bad)
		case *appsv1.DaemonSet:
			workloads = append(workloads, workload{d, d.kind, o.Spec.Template.Labels, o.Spec.Template.Spec, 0})
			checkSelector(d, o.Spec.Selector, o.Spec.Template.Labels, bad)
		}
		if strings.Contains(strings.ToLower(d.kind), "statefulset") || strings.Contains(d.name, "nats") {
			bad("%s: NATS is referenced (UDPGATE_NATS_URL), not defined here", d)
		}
	}
	if kust == nil || cm == nil {
		return append(problems, "no kustomization.yaml or no ConfigMap udpgate")
	}

	// The base applies to a cluster without add-ons; the optional files,
	// applied on their own, name the namespace themselves.
	fileKinds := map[string][]string{}
	for _, d := range docs {
		fileKinds[d.file] = append(fileKinds[d.file], d.apiVersion)
	}
	for _, r := range kust.Resources {
		if _, ok := fileKinds[r]; !ok {
			bad("kustomization.yaml: resource %s is not a manifest here", r)
		}
		for _, v := range fileKinds[r] {
			if !builtinKind(v) {
				bad("kustomization.yaml: %s needs %s, which a cluster has only with an add-on: apply it on its own", r, v)
			}
		}
	}
	for _, d := range docs {
		if d.kind != "Kustomization" && d.kind != "Namespace" && !slices.Contains(kust.Resources, d.file) && d.namespace != kust.Namespace {
			bad("%s: applied on its own, it names namespace %q, not %q", d, d.namespace, kust.Namespace)
		}
	}
	var releaseTag string
	for _, im := range kust.Images {
		if im.Name == "ghcr.io/udpgate/udpgate" {
			releaseTag = im.NewTag
		}
	}
	if msg := imageProblem("ghcr.io/udpgate/udpgate:" + releaseTag); msg != "" {
		bad("kustomization.yaml: images: %s", msg)
	}

	// The settings every process reads.
	for k := range cm.Data {
		if !slices.Contains(f.known, k) {
			bad("ConfigMap: %s is not a udpgate variable", k)
		}
	}
	if r := cm.Data["UDPGATE_STREAM_REPLICAS"]; r != "3" {
		bad("ConfigMap: UDPGATE_STREAM_REPLICAS %q, want 3", r)
	}
	if !strings.HasPrefix(cm.Data["UDPGATE_NATS_URL"], "nats://") {
		bad("ConfigMap: UDPGATE_NATS_URL %q", cm.Data["UDPGATE_NATS_URL"])
	}
	ls, err := config.ParseListeners(cm.Data["UDPGATE_LISTENERS"])
	if err != nil || len(ls) == 0 {
		return append(problems, fmt.Sprintf("ConfigMap: UDPGATE_LISTENERS: %v", err))
	}
	ports := map[int]bool{}
	for _, l := range ls {
		ports[int(l.Addr.Port())] = true
	}
	_, httpPortText, _ := strings.Cut(cm.Data["UDPGATE_HTTP_LISTEN"], ":")
	httpPort, _ := strconv.Atoi(httpPortText)
	if httpPort == 0 {
		bad("ConfigMap: UDPGATE_HTTP_LISTEN %q is not a fixed port (probes and Prometheus ask there)", cm.Data["UDPGATE_HTTP_LISTEN"])
	}
	stream := cmp.Or(cm.Data["UDPGATE_STREAM"], schemas.StreamIn)

	// The NATS the manifests expect: the Helm chart, installed as
	// deploy/README.md says, whose volume is each node's max_file_store.
	if m := regexp.MustCompile(`container\.image\.tag=(\S+)`).FindStringSubmatch(f.deployDocs); m == nil {
		bad("deploy/README.md: the Helm command does not pin the NATS image (container.image.tag)")
	} else if minor := natsImageMinor("nats:" + m[1]); minor != f.natsMinor {
		bad("deploy/README.md: the Helm command installs NATS %s; udpgate embeds and is tested with %s (go.mod)", minor, f.natsMinor)
	}
	if m := regexp.MustCompile(`config\.jetstream\.fileStore\.pvc\.size=(\S+)`).FindStringSubmatch(f.deployDocs); m == nil {
		bad("deploy/README.md: the Helm command does not size the JetStream volume (config.jetstream.fileStore.pvc.size)")
	} else if q, err := resource.ParseQuantity(m[1]); err != nil {
		bad("deploy/README.md: volume size %q: %v", m[1], err)
	} else if problem := storageProblem(f.bytes(cm.Data["UDPGATE_STREAM_MAX_BYTES"]), q.Value()); problem != "" {
		bad("ConfigMap and the NATS volume of deploy/README.md: %s", problem)
	}

	// The pods.
	group := map[string]string{}    // worker Deployment -> its group
	delivery := map[string]string{} // worker Deployment -> direct or durable
	for _, w := range workloads {
		d := w.doc
		for _, c := range w.spec.Containers {
			image, tag, _ := strings.Cut(c.Image, ":")
			if image != "ghcr.io/udpgate/udpgate" {
				continue
			}
			if tag != releaseTag {
				bad("%s: image %s, not the release kustomization.yaml names (%s)", d, c.Image, releaseTag)
			}
			if len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/udpgate"}) {
				bad("%s: command %q replaces the udpgate entrypoint", d, c.Command)
			}
			if !f.args(c.Args) {
				bad("%s: %q is not a udpgate command line", d, c.Args)
				continue
			}
			env := map[string]string{}
			for k, v := range cm.Data {
				env[k] = v
			}
			for _, e := range c.Env {
				env[e.Name] = e.Value
				if strings.HasPrefix(e.Name, config.Prefix+"_") && !slices.Contains(f.known, e.Name) {
					bad("%s: %s is not a udpgate variable", d, e.Name)
				}
				if strings.HasPrefix(e.Name, "AWS_") && e.Name != "AWS_REGION" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
					bad("%s: %s is set in the file, not taken from a Secret", d, e.Name)
				}
			}
			if c.Args[0] == "worker" {
				group[d.name] = cmp.Or(env["UDPGATE_WORKER_GROUP"], c.Args[1])
				delivery[d.name] = cmp.Or(env["UDPGATE_DELIVERY"], "direct")
			}
			for _, s := range config.SplitList(env["UDPGATE_LAMBDA_SUBJECTS"]) {
				tok := strings.Split(s, ".")
				if p, err := strconv.Atoi(tok[min(2, len(tok)-1)]); len(tok) < 3 || err != nil || !ports[p] {
					bad("%s: subject %s is not one of a listener", d, s)
				}
			}
			udp := map[int]bool{}
			for _, p := range c.Ports {
				switch {
				case p.Protocol == corev1.ProtocolUDP:
					udp[int(p.ContainerPort)] = true
				case p.Protocol != corev1.ProtocolTCP && p.Protocol != "":
					bad("%s: port %d has protocol %q", d, p.ContainerPort, p.Protocol)
				case int(p.ContainerPort) != httpPort || p.Name != "http":
					bad("%s: TCP port %s/%d is not UDPGATE_HTTP_LISTEN's, named http", d, p.Name, p.ContainerPort)
				}
			}
			for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
				if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.IntValue() != httpPort {
					bad("%s: no probe of %s on port %d", d, path, httpPort)
				}
			}
			if w.kind == "DaemonSet" {
				if !w.spec.HostNetwork {
					bad("%s: the gateway is not on the host network", d)
				}
				if !slices.Equal(c.Args, []string{"gateway"}) {
					bad("%s: runs %q, want the gateway", d, c.Args)
				}
				if !mapsEqual(udp, ports) {
					bad("%s: UDP ports %v, listeners %v", d, keys(udp), keys(ports))
				}
			} else if len(udp) > 0 {
				bad("%s: only the gateway has UDP ports", d)
			}
		}
	}
	daemonSets := 0
	for _, w := range workloads {
		if w.kind == "DaemonSet" {
			daemonSets++
		}
	}
	if daemonSets != 1 {
		bad("%d DaemonSets, want the gateway's", daemonSets)
	}
	if got := slices.Sorted(maps.Values(group)); !slices.Equal(got, builtin.Names()) {
		bad("worker groups %v, want every built-in worker %v", got, builtin.Names())
	}

	// Who selects which pods: each budget, autoscaler and monitor must
	// find the pods it is for.
	selects := func(sel *metav1.LabelSelector) []workload {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil || s.Empty() {
			return nil
		}
		var out []workload
		for _, w := range workloads {
			if s.Matches(labels.Set(w.labels)) {
				out = append(out, w)
			}
		}
		return out
	}
	budgeted := map[string]bool{}
	scaledBy := map[string][]string{}
	target := func(d k8sDoc, kind, name string) bool {
		for _, w := range workloads {
			if w.kind == cmp.Or(kind, "Deployment") && w.doc.name == name {
				scaledBy[name] = append(scaledBy[name], d.String())
				return true
			}
		}
		bad("%s: scales %s %s, which is not defined", d, kind, name)
		return false
	}
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *policyv1.PodDisruptionBudget:
			ws := selects(o.Spec.Selector)
			if len(ws) != 1 {
				bad("%s: selects the pods of %d workloads, want one", d, len(ws))
				continue
			}
			budgeted[ws[0].doc.name] = true
			if (o.Spec.MinAvailable == nil) == (o.Spec.MaxUnavailable == nil) {
				bad("%s: set one of minAvailable and maxUnavailable", d)
			}
			if ws[0].kind == "DaemonSet" && (o.Spec.MaxUnavailable != nil || (o.Spec.MinAvailable != nil && o.Spec.MinAvailable.Type != 0)) {
				bad("%s: a DaemonSet's budget can only be an integer minAvailable (no scale subresource)", d)
			}
			if m := o.Spec.MaxUnavailable; m != nil && m.Type == intstr.Int && m.IntValue() == 0 {
				bad("%s: maxUnavailable 0 blocks every drain", d)
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			ref := o.Spec.ScaleTargetRef
			if !target(d, ref.Kind, ref.Name) {
				continue
			}
			if delivery[ref.Name] == "durable" {
				bad("%s: %s is a durable group: scale it on its consumer's lag (keda.yaml), not on CPU", d, ref.Name)
			}
		case *scaledObject:
			ref := o.Spec.ScaleTargetRef
			if !target(d, ref.Kind, ref.Name) {
				continue
			}
			if delivery[ref.Name] != "durable" {
				bad("%s: %s is a %s group, which has no consumer lag", d, ref.Name, cmp.Or(delivery[ref.Name], "no worker"))
			}
			if o.Spec.MinReplicaCount == nil || *o.Spec.MinReplicaCount < 1 {
				bad("%s: scales to zero, and a request waits only until its deadline", d)
			}
			if len(o.Spec.Triggers) != 1 || o.Spec.Triggers[0].Type != "nats-jetstream" {
				bad("%s: want one trigger, nats-jetstream", d)
				continue
			}
			md := o.Spec.Triggers[0].Metadata
			for k := range md {
				if _, ok := natsJetStreamMetadata[k]; !ok {
					bad("%s: nats-jetstream has no metadata %q", d, k)
				}
			}
			for k, required := range natsJetStreamMetadata {
				if required && md[k] == "" {
					bad("%s: nats-jetstream needs %s", d, k)
				}
			}
			if md["stream"] != stream || md["consumer"] != group[ref.Name] {
				bad("%s: reads consumer %s on stream %s; the group's is %s on %s", d, md["consumer"], md["stream"], group[ref.Name], stream)
			}
			for _, k := range []string{"lagThreshold", "activationLagThreshold"} {
				if v, ok := md[k]; ok {
					if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 0 || (k == "lagThreshold" && n == 0) {
						bad("%s: %s %q is not a positive integer", d, k, v)
					}
				}
			}
			if _, port, err := net.SplitHostPort(md["natsServerMonitoringEndpoint"]); err != nil || port == "4222" {
				bad("%s: natsServerMonitoringEndpoint %q is not HOST:PORT of the monitoring port", d, md["natsServerMonitoringEndpoint"])
			}
		case *monitoringv1.PodMonitor:
			ws := selects(&o.Spec.Selector)
			if len(ws) != len(workloads) {
				bad("%s: selects %d of the %d workloads", d, len(ws), len(workloads))
			}
			for _, ep := range o.Spec.PodMetricsEndpoints {
				if ep.Port == nil || (ep.Path != "" && ep.Path != "/metrics") {
					bad("%s: scrapes %v%s, want port http, /metrics", d, ep.Port, ep.Path)
					continue
				}
				for _, w := range ws {
					if !slices.ContainsFunc(w.spec.Containers, func(c corev1.Container) bool {
						return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == *ep.Port && int(p.ContainerPort) == httpPort })
					}) {
						bad("%s: %s has no port %q serving /metrics", d, w.doc, *ep.Port)
					}
				}
			}
		case *monitoringv1.PrometheusRule:
			for _, g := range o.Spec.Groups {
				for _, r := range g.Rules {
					for _, m := range regexp.MustCompile(`udpgate_[a-z_]+`).FindAllString(r.Expr.String(), -1) {
						if !strings.Contains(f.metrics, "`"+m+"`") {
							bad("%s: %s uses %s, which docs/metrics.md does not list", d, cmp.Or(r.Alert, r.Record), m)
						}
					}
				}
			}
		case *corev1.Service:
			for _, p := range o.Spec.Ports {
				if p.Protocol != corev1.ProtocolUDP || !ports[p.TargetPort.IntValue()] || p.Port != int32(p.TargetPort.IntValue()) {
					bad("%s: port %d->%s/%s is not a listener", d, p.Port, p.TargetPort.String(), p.Protocol)
				}
			}
		}
	}
	for _, w := range workloads {
		if !budgeted[w.doc.name] {
			bad("%s: no PodDisruptionBudget", w.doc)
		}
		if g, ok := group[w.doc.name]; ok && len(scaledBy[w.doc.name]) != 1 {
			bad("%s: worker group %s is scaled by %q, want one autoscaler", w.doc, g, scaledBy[w.doc.name])
		}
	}
	return problems
}

// checkSelector reports a workload whose selector does not select its own
// pods, which the API server refuses.
func checkSelector(d k8sDoc, sel *metav1.LabelSelector, podLabels map[string]string, bad func(string, ...any)) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() || !s.Matches(labels.Set(podLabels)) {
		bad("%s: selector %s does not select its pods %v", d, metav1.FormatLabelSelector(sel), podLabels)
	}
}

// kubernetesFiles reads deploy/kubernetes: every file, by name.
func kubernetesFiles(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob("deploy/kubernetes/*")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	files := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = string(b)
	}
	return files
}

// TestKubernetesManifests decodes every object in deploy/kubernetes
// strictly into its Go type (k8s.io/api, the Prometheus Operator's
// monitoring/v1, KEDA's ScaledObject as its CRD has it) and checks them
// against each other, udpgate's configuration and the NATS Helm chart;
// deliberately broken variants must be refused.
func TestKubernetesManifests(t *testing.T) {
	files := kubernetesFiles(t)
	readme, err := os.ReadFile("deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	defaults(t)
	facts := k8sFacts{
		known:     config.KnownVariables(),
		args:      isCommandLine,
		bytes:     udpgateBytes(t),
		natsMinor: embeddedNATSMinor(t),
		metrics:   string(metrics),
	}
	type edit struct{ file, old, new string }
	for _, tc := range []struct {
		name  string
		edits []edit
		want  string // a problem reported; "" for none
	}{
		{name: "as written"},
		{name: "an unknown field", edits: []edit{{"workers.yaml", "  replicas: 2\n", "  replica: 2\n"}}, want: `unknown field "spec.replica"`},
		{name: "a field of the wrong type", edits: []edit{{"gateway.yaml", "containerPort: 9780", `containerPort: "9780"`}}, want: "containerPort"},
		{name: "a duplicate key", edits: []edit{{"configmap.yaml", "  UDPGATE_DEADLINE: 5s\n", "  UDPGATE_DEADLINE: 5s\n  UDPGATE_DEADLINE: 4s\n"}}, want: "already defined"},
		{name: "a removed API version", edits: []edit{{"pdb.yaml", "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: udpgate-gateway", "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: udpgate-gateway"}}, want: "no schema for policy/v1beta1"},
		{name: "a selector that misses its pods", edits: []edit{{"gateway.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: udpgate\n      app.kubernetes.io/component: gateway", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: udpgate\n      app.kubernetes.io/component: gateways"}}, want: "does not select its pods"},
		{name: "an unpinned image", edits: []edit{{"gateway.yaml", "udpgate:v0.1.0", "udpgate:latest"}}, want: "not the release"},
		{name: "a latest release", edits: []edit{{"kustomization.yaml", "newTag: v0.1.0", "newTag: latest"}}, want: "is not pinned"},
		{name: "streams larger than the NATS volume", edits: []edit{{"configmap.yaml", "UDPGATE_STREAM_MAX_BYTES: 3GiB", "UDPGATE_STREAM_MAX_BYTES: 10GiB"}}, want: "more than four fifths"},
		{name: "a budget a DaemonSet cannot have", edits: []edit{{"pdb.yaml", "  minAvailable: 1\n", "  maxUnavailable: 1\n"}}, want: "integer minAvailable"},
		{name: "a budget for no pods", edits: []edit{{"pdb.yaml", "      udpgate.io/group: coap\n", "      udpgate.io/group: coaps\n"}}, want: "selects the pods of 0 workloads"},
		{name: "a worker without budget", edits: []edit{{"pdb.yaml", "      udpgate.io/group: time\n", "      udpgate.io/group: tim\n"}}, want: "udpgate-worker-time: no PodDisruptionBudget"},
		{name: "a misspelt scaler parameter", edits: []edit{{"keda.yaml", "lagThreshold:", "lagTreshold:"}}, want: `has no metadata "lagTreshold"`},
		{name: "the wrong consumer", edits: []edit{{"keda.yaml", "consumer: places", "consumer: place"}}, want: "reads consumer place on stream UDPGATE_IN"},
		{name: "scaled on CPU by KEDA", edits: []edit{{"keda.yaml", "type: nats-jetstream", "type: cpu"}}, want: "want one trigger, nats-jetstream"},
		{name: "lag of a direct group", edits: []edit{{"workers.yaml", "value: durable", "value: direct"}}, want: "is a direct group, which has no consumer lag"},
		{name: "a durable group on CPU", edits: []edit{{"workers.yaml", `args: ["worker", "echo"]`, `args: ["worker", "echo"]` + "\n          env: [{name: UDPGATE_DELIVERY, value: durable}]"}}, want: "echo is a durable group: scale it on its consumer's lag"},
		{name: "a group scaled twice", edits: []edit{{"keda.yaml", "kind: Deployment\n    name: udpgate-worker-places", "kind: Deployment\n    name: udpgate-worker-echo"}, {"workers.yaml", `args: ["worker", "echo"]`, `args: ["worker", "echo"]` + "\n          env: [{name: UDPGATE_DELIVERY, value: durable}, {name: UDPGATE_WORKER_GROUP, value: places}]"}}, want: "is scaled by"},
		{name: "scaled to zero", edits: []edit{{"keda.yaml", "minReplicaCount: 2", "minReplicaCount: 0"}}, want: "scales to zero"},
		{name: "a CRD in the base", edits: []edit{{"kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - keda.yaml\n"}}, want: "keda.yaml needs keda.sh/v1alpha1"},
		{name: "an optional file without namespace", edits: []edit{{"monitoring.yaml", "  name: udpgate\n  namespace: udpgate\n", "  name: udpgate\n"}}, want: "applied on its own"},
		{name: "a monitor on a port that is not there", edits: []edit{{"monitoring.yaml", "- port: http", "- port: metrics"}}, want: `has no port "metrics"`},
		{name: "an alert on a metric udpgate lacks", edits: []edit{{"monitoring.yaml", "expr: udpgate_nats_connected == 0", "expr: udpgate_nats_conected == 0"}}, want: "uses udpgate_nats_conected"},
		{name: "a NATS of another minor version", edits: []edit{{"README.md", "container.image.tag=2.15.2-alpine", "container.image.tag=2.12.1-alpine"}}, want: "installs NATS 2.12"},
		{name: "a smaller NATS volume", edits: []edit{{"README.md", "pvc.size=10Gi", "pvc.size=5Gi"}}, want: "more than four fifths"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := map[string]string{}
			for k, v := range files {
				changed[k] = v
			}
			changed["README.md"] = string(readme)
			for _, e := range tc.edits {
				if !strings.Contains(changed[e.file], e.old) {
					t.Fatalf("%s has no %q to change", e.file, e.old)
				}
				changed[e.file] = strings.Replace(changed[e.file], e.old, e.new, 1)
			}
			f := facts
			f.deployDocs = changed["README.md"]
			delete(changed, "README.md")
			docs, problems := decodeManifests(changed)
			problems = append(problems, kubernetesProblems(docs, f)...)
			switch {
			case tc.want == "" && len(problems) > 0:
				t.Errorf("deploy/kubernetes:\n%s", strings.Join(problems, "\n"))
			case tc.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }):
				t.Errorf("not refused: want %q among:\n%s", tc.want, strings.Join(problems, "\n"))
			}
		})
	}
}
