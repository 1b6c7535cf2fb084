package cli

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers/builtin"
)

// deployFiles are docker-compose.yml and every file in deploy/, except the
// Grafana dashboards.
func deployFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"docker-compose.yml"}
	err := filepath.WalkDir("deploy", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path == filepath.Join("deploy", "grafana") {
			return fs.SkipDir
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDeployFiles checks docker-compose.yml and deploy/ as text (CI has no
// Docker engine): every UDPGATE_* variable named there is one udpgate
// reads, and a secret's value comes only from the environment.
func TestDeployFiles(t *testing.T) {
	known := config.KnownVariables()
	// The default stream names look like variables: NATS permissions name them.
	known = append(known, schemas.StreamIn, schemas.StreamReplies)
	varRE := regexp.MustCompile(`UDPGATE_[A-Z_]+`)
	// A secret value may only come from the environment of compose itself.
	secretRE := regexp.MustCompile(`(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID):\s*(\S*)`)
	for _, f := range deployFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, v := range varRE.FindAllString(s, -1) {
			if !slices.Contains(known, v) {
				t.Errorf("%s: %s is not a udpgate variable", f, v)
			}
		}
		for _, m := range secretRE.FindAllStringSubmatch(s, -1) {
			if !strings.HasPrefix(m[2], "${") {
				t.Errorf("%s: %s is set in the file, not taken from the environment", f, m[1])
			}
		}
	}
}

// udpgateCommand checks that args run a udpgate subcommand.
func udpgateCommand(t *testing.T, where string, args []string) {
	t.Helper()
	subcommands := []string{"run", "gateway", "worker", "lambda", "replay", "pcap", "send", "help"}
	switch {
	case len(args) == 0:
		t.Errorf("%s: no udpgate command", where)
	case !slices.Contains(subcommands, args[0]):
		t.Errorf("%s: %q is not a udpgate subcommand", where, args[0])
	case args[0] == "worker" && (len(args) != 2 || !slices.Contains(builtin.Names(), args[1])):
		t.Errorf("%s: %q: want worker NAME with NAME one of %v", where, args, builtin.Names())
	}
}

// listenerPorts parses a UDPGATE_LISTENERS value into its ports.
func listenerPorts(t *testing.T, where, value string) map[int]bool {
	t.Helper()
	ls, err := config.ParseListeners(value)
	if err != nil || len(ls) == 0 {
		t.Fatalf("%s: UDPGATE_LISTENERS %q: %v", where, value, err)
	}
	ports := map[int]bool{}
	for _, l := range ls {
		ports[int(l.Addr.Port())] = true
	}
	return ports
}

// subjectPorts checks that the request subjects in a comma-separated list
// are those of listeners.
func subjectPorts(t *testing.T, where, subjects string, ports map[int]bool) {
	t.Helper()
	for _, s := range config.SplitList(subjects) {
		tok := strings.Split(s, ".")
		p, err := strconv.Atoi(tok[min(2, len(tok)-1)])
		if len(tok) < 3 || tok[1] != "in" || err != nil || !ports[p] {
			t.Errorf("%s: subject %s is not one of a listener (ports %v)", where, s, ports)
		}
	}
}

// k8sObject is the part of a Kubernetes object the checks read.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct{ Name string }
	Data     map[string]string `yaml:"data"`
	Spec     struct {
		Type     string `yaml:"type"`
		Template struct {
			Spec struct {
				HostNetwork bool           `yaml:"hostNetwork"`
				Containers  []k8sContainer `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		Ports []struct {
			Port       int    `yaml:"port"`
			TargetPort int    `yaml:"targetPort"`
			Protocol   string `yaml:"protocol"`
		} `yaml:"ports"`
		ScaleTargetRef struct{ Kind, Name string } `yaml:"scaleTargetRef"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom any    `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
}

func TestKubernetesManifests(t *testing.T) {
	paths, err := filepath.Glob("deploy/kubernetes/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var objs []k8sObject
	where := map[int]string{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var o k8sObject
			if err := dec.Decode(&o); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Errorf("%s: %v", p, err)
				}
				break
			}
			where[len(objs)] = p + ": " + o.Kind + " " + o.Metadata.Name
			objs = append(objs, o)
		}
		f.Close()
	}
	known := config.KnownVariables()
	var cm *k8sObject
	for i := range objs {
		if objs[i].Kind == "ConfigMap" && objs[i].Metadata.Name == "udpgate" {
			cm = &objs[i]
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap udpgate")
	}
	for k := range cm.Data {
		if !slices.Contains(known, k) {
			t.Errorf("ConfigMap: %s is not a udpgate variable", k)
		}
	}
	if r := cm.Data["UDPGATE_STREAM_REPLICAS"]; r != "3" {
		t.Errorf("ConfigMap: UDPGATE_STREAM_REPLICAS %q, want 3", r)
	}
	ports := listenerPorts(t, "ConfigMap", cm.Data["UDPGATE_LISTENERS"])
	_, httpPort, _ := strings.Cut(cm.Data["UDPGATE_HTTP_LISTEN"], ":")
	kinds := map[string]int{}
	deployments := map[string]bool{}
	for i, o := range objs {
		kinds[o.Kind]++
		if o.Kind == "Deployment" {
			deployments[o.Metadata.Name] = true
		}
		for _, c := range o.Spec.Template.Spec.Containers {
			if !strings.Contains(c.Image, "udpgate") {
				continue
			}
			// The image's entrypoint is /udpgate: the subcommand is in args.
			if len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/udpgate"}) {
				t.Errorf("%s: command %q replaces the udpgate entrypoint", where[i], c.Command)
			}
			udpgateCommand(t, where[i], c.Args)
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, config.Prefix+"_") && !slices.Contains(known, e.Name) {
					t.Errorf("%s: %s is not a udpgate variable", where[i], e.Name)
				}
				if strings.HasPrefix(e.Name, "AWS_") && e.Name != "AWS_REGION" && e.ValueFrom == nil {
					t.Errorf("%s: %s is set in the file, not taken from a Secret", where[i], e.Name)
				}
				if e.Name == "UDPGATE_LAMBDA_SUBJECTS" {
					subjectPorts(t, where[i], e.Value, ports)
				}
			}
			udp := map[int]bool{}
			for _, p := range c.Ports {
				switch {
				case p.Protocol == "UDP":
					udp[p.ContainerPort] = true
				case strconv.Itoa(p.ContainerPort) != httpPort:
					t.Errorf("%s: TCP port %d is not UDPGATE_HTTP_LISTEN's", where[i], p.ContainerPort)
				}
			}
			if o.Kind == "DaemonSet" {
				if !o.Spec.Template.Spec.HostNetwork {
					t.Errorf("%s: the gateway is not on the host network", where[i])
				}
				if !slices.Equal(c.Args, []string{"gateway"}) {
					t.Errorf("%s: runs %q, want the gateway", where[i], c.Args)
				}
				if !mapsEqual(udp, ports) {
					t.Errorf("%s: UDP ports %v, listeners %v", where[i], keys(udp), keys(ports))
				}
			} else if len(udp) > 0 {
				t.Errorf("%s: only the gateway has UDP ports", where[i])
			}
		}
		if o.Kind == "Service" {
			for _, p := range o.Spec.Ports {
				if p.Protocol != "UDP" || !ports[p.TargetPort] || p.Port != p.TargetPort {
					t.Errorf("%s: port %d->%d/%s is not a listener", where[i], p.Port, p.TargetPort, p.Protocol)
				}
			}
		}
		if o.Kind == "HorizontalPodAutoscaler" && o.Spec.ScaleTargetRef.Kind != "Deployment" {
			t.Errorf("%s: scales a %s", where[i], o.Spec.ScaleTargetRef.Kind)
		}
	}
	for i, o := range objs {
		if o.Kind == "HorizontalPodAutoscaler" && !deployments[o.Spec.ScaleTargetRef.Name] {
			t.Errorf("%s: scales %s, which is not defined", where[i], o.Spec.ScaleTargetRef.Name)
		}
		if strings.Contains(strings.ToLower(o.Kind), "statefulset") || strings.Contains(o.Metadata.Name, "nats") {
			t.Errorf("%s: NATS is referenced (UDPGATE_NATS_URL), not defined here", where[i])
		}
	}
	if kinds["DaemonSet"] != 1 || kinds["HorizontalPodAutoscaler"] == 0 || kinds["Deployment"] == 0 {
		t.Errorf("manifests hold %v; want one gateway DaemonSet, worker Deployments and autoscalers", kinds)
	}
	if !strings.HasPrefix(cm.Data["UDPGATE_NATS_URL"], "nats://") {
		t.Errorf("ConfigMap: UDPGATE_NATS_URL %q", cm.Data["UDPGATE_NATS_URL"])
	}
}

func mapsEqual(a, b map[int]bool) bool { return slices.Equal(keys(a), keys(b)) }

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
