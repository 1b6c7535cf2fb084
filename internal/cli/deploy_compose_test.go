package cli

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/workers/builtin"
)

// loadCompose loads a compose file as docker compose does, with compose-go:
// the Compose Specification's schema, interpolation, YAML merge keys,
// every profile. env is the environment of `docker compose`.
func loadCompose(content []byte, env map[string]string) (*types.Project, error) {
	return loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  ".",
		ConfigFiles: []types.ConfigFile{{Filename: "docker-compose.yml", Content: content}},
		Environment: env,
	}, func(o *loader.Options) {
		o.SetProjectName("udpgate", true)
		o.Profiles = []string{"*"}
	})
}

// embeddedNATSMinor returns the major.minor of the NATS server udpgate
// embeds and is tested with, from go.mod.
func embeddedNATSMinor(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod requires no github.com/nats-io/nats-server/v2")
	}
	return string(m[1])
}

// imageProblem says what is wrong with an image reference: no tag, or a
// moving one.
func imageProblem(image string) string {
	name, tag := image, ""
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		name, tag = image[:i], image[i+1:]
	}
	switch {
	case strings.Contains(image, "@sha256:"):
		return ""
	case tag == "":
		return "image " + image + " has no tag (it means latest)"
	case tag == "latest" || tag == "stable" || tag == "alpine":
		return "image " + name + ":" + tag + " is not pinned"
	}
	return ""
}

// natsImageMinor returns the major.minor of a nats image's tag
// (nats:2.15.2-alpine has 2.15).
func natsImageMinor(image string) string {
	_, tag, _ := strings.Cut(image, ":")
	m := regexp.MustCompile(`^(\d+\.\d+)(\.\d+)?(-.*)?$`).FindStringSubmatch(tag)
	if m == nil {
		return "(" + tag + ")"
	}
	return m[1]
}

// composeFacts are what the compose file is checked against besides
// itself.
type composeFacts struct {
	natsMinor string              // the embedded NATS server's major.minor
	natsConf  *server.Options     // deploy/nats/cluster.conf, as nats-server reads it
	bytes     func(string) int64  // a size as udpgate reads it; -1 if invalid
	known     []string            // udpgate's variables
	args      func([]string) bool // whether args are a udpgate command line
}

// composeProblems checks a loaded compose project: the production shape
// (3 NATS nodes, a gateway whose ports are its listeners', every built-in
// worker, two echo instances), pinned images, a health check and a fixed
// metrics port on every udpgate container, and streams that fit the NATS
// nodes' storage.
func composeProblems(p *types.Project, f composeFacts) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	env := func(svc types.ServiceConfig, k string) string {
		if v := svc.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	gw, ok := p.Services["gateway"]
	if !ok {
		return []string{"no gateway service"}
	}
	ls, err := config.ParseListeners(env(gw, "UDPGATE_LISTENERS"))
	if err != nil || len(ls) == 0 {
		return []string{fmt.Sprintf("gateway: UDPGATE_LISTENERS: %v", err)}
	}
	listenerPorts := map[int]bool{}
	for _, l := range ls {
		listenerPorts[int(l.Addr.Port())] = true
	}
	var nats, workers []string
	groups := map[string]int{}
	hostPorts := map[string]string{} // published metrics port -> service
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		svc := p.Services[name]
		where := name
		if msg := imageProblem(svc.Image); msg != "" {
			bad("%s: %s", where, msg)
		}
		for k := range svc.Environment {
			if strings.HasPrefix(k, config.Prefix+"_") && !slices.Contains(f.known, k) {
				bad("%s: %s is not a udpgate variable", where, k)
			}
		}
		for dep, d := range svc.DependsOn {
			if d.Condition == types.ServiceConditionHealthy && p.Services[dep].HealthCheck == nil {
				bad("%s: waits for %s to be healthy, which has no health check", where, dep)
			}
		}
		if strings.HasPrefix(svc.Image, "nats:") {
			nats = append(nats, name)
			if m := natsImageMinor(svc.Image); m != f.natsMinor {
				bad("%s: image %s is NATS %s; udpgate embeds and is tested with %s (go.mod)", where, svc.Image, m, f.natsMinor)
			}
			if !slices.Contains(svc.Command, "/etc/nats/cluster.conf") {
				bad("%s: not started with deploy/nats/cluster.conf", where)
			}
			continue
		}
		if svc.Build == nil || svc.Build.Dockerfile != "deploy/Dockerfile" {
			bad("%s: not built from deploy/Dockerfile", where)
		}
		if len(svc.Command) == 0 || !f.args(svc.Command) {
			bad("%s: %q is not a udpgate command line", where, svc.Command)
			continue
		}
		if svc.Command[0] == "worker" {
			workers = append(workers, svc.Command[1])
			groups[svc.Command[1]] += svc.GetScale()
		}
		if svc.Command[0] == "lambda" {
			if !slices.Contains(svc.Profiles, "lambda") {
				bad("%s: the Lambda bridge is not behind the lambda profile", where)
			}
			for _, s := range config.SplitList(env(svc, "UDPGATE_LAMBDA_SUBJECTS")) {
				tok := strings.Split(s, ".")
				if port, err := strconv.Atoi(tok[min(2, len(tok)-1)]); len(tok) < 3 || err != nil || !listenerPorts[port] {
					bad("%s: subject %s is not one of a listener", where, s)
				}
			}
		}
		if u := env(svc, "UDPGATE_NATS_URL"); len(config.SplitList(u)) != 3 {
			bad("%s: UDPGATE_NATS_URL %q does not name the 3 NATS nodes", where, u)
		}

		// Metrics and health on a fixed port that the health check, the
		// host and other containers reach.
		httpListen := env(svc, "UDPGATE_HTTP_LISTEN")
		host, httpPort, err := net.SplitHostPort(httpListen)
		if ip := net.ParseIP(host); err != nil || httpPort == "0" || (host != "" && (ip == nil || !ip.IsUnspecified())) {
			bad("%s: UDPGATE_HTTP_LISTEN %q is not a fixed port on every address (like 0.0.0.0:9780)", where, httpListen)
		}
		if hc := svc.HealthCheck; hc == nil || len(hc.Test) < 3 || hc.Test[0] != "CMD" || hc.Test[1] != "/udpgate" || hc.Test[2] != "healthcheck" || !f.args(hc.Test[2:]) {
			bad("%s: health check %v is not [CMD /udpgate healthcheck ...] (the image has no shell)", where, svc.HealthCheck)
		}
		var published []string
		for _, port := range svc.Ports {
			if port.Protocol == "udp" {
				if name != "gateway" {
					bad("%s: only the gateway has UDP ports", where)
				} else if !listenerPorts[int(port.Target)] || port.Published != strconv.Itoa(int(port.Target)) {
					bad("%s: UDP port %s:%d is not a listener's, on the same port", where, port.Published, port.Target)
				}
				continue
			}
			if strconv.Itoa(int(port.Target)) != httpPort {
				bad("%s: TCP port %d is not UDPGATE_HTTP_LISTEN's (%s)", where, port.Target, httpListen)
			}
			if port.HostIP != "127.0.0.1" {
				bad("%s: metrics port %s published on %q, not the host's loopback", where, port.Published, port.HostIP)
			}
			published = append(published, port.Published)
		}
		if len(published) != 1 {
			bad("%s: metrics published on %q, want one host port", where, published)
			continue
		}
		// A fixed host port for one instance (the gateway's, where
		// `udpgate status` asks), or any free one, which scales.
		if published[0] == "" {
			continue
		}
		if svc.GetScale() > 1 || strings.Contains(published[0], "-") {
			bad("%s: metrics on host port %s for %d instances: leave it to Docker (127.0.0.1::%s)", where, published[0], svc.GetScale(), httpPort)
		}
		if other, dup := hostPorts[published[0]]; dup {
			bad("%s: metrics host port %s is %s's too", where, published[0], other)
		}
		hostPorts[published[0]] = name
	}
	gwPorts := map[int]bool{}
	for _, port := range gw.Ports {
		if port.Protocol == "udp" {
			gwPorts[int(port.Target)] = true
		}
	}
	if !mapsEqual(gwPorts, listenerPorts) {
		bad("gateway: UDP ports published %v, listeners %v", keys(gwPorts), keys(listenerPorts))
	}
	if want := []string{"nats-1", "nats-2", "nats-3"}; !slices.Equal(nats, want) {
		bad("NATS services %v, want %v", nats, want)
	}
	if groups["echo"] != 2 {
		bad("the echo worker group has %d instances, want 2", groups["echo"])
	}
	slices.Sort(workers)
	if !slices.Equal(workers, builtin.Names()) {
		bad("workers %v, want every built-in worker %v", workers, builtin.Names())
	}
	if r := env(gw, "UDPGATE_STREAM_REPLICAS"); r != "3" {
		bad("gateway: UDPGATE_STREAM_REPLICAS %q, want 3 on a 3-node cluster", r)
	}

	// The NATS nodes: JetStream on /data (the volume), routes to each
	// other, and room for the two streams' reservations.
	o := f.natsConf
	if !o.JetStream || o.StoreDir != "/data" {
		bad("deploy/nats/cluster.conf: JetStream %v in %q, want on, in /data", o.JetStream, o.StoreDir)
	}
	var routes []string
	for _, r := range o.Routes {
		routes = append(routes, r.Hostname())
	}
	slices.Sort(routes)
	if !slices.Equal(routes, nats) {
		bad("deploy/nats/cluster.conf: routes to %v, NATS services %v", routes, nats)
	}
	if problem := storageProblem(f.bytes(env(gw, "UDPGATE_STREAM_MAX_BYTES")), o.JetStreamMaxStore); problem != "" {
		bad("gateway and deploy/nats/cluster.conf: %s", problem)
	}
	return problems
}

// storageProblem applies the storage sizing rule of docs/operations.md:
// each server holding a replica reserves the stream's maximum for the
// capture and again for the replies, and that must fit in its
// max_file_store with a fifth left over (replay streams, consumers,
// the Raft logs).
func storageProblem(maxBytes, maxStore int64) string {
	switch {
	case maxBytes <= 0:
		return "UDPGATE_STREAM_MAX_BYTES is unlimited or invalid: each replica reserves it"
	case maxStore <= 0:
		return "the NATS nodes' max_file_store is not set"
	case 2*maxBytes > maxStore*4/5:
		return fmt.Sprintf("two streams of UDPGATE_STREAM_MAX_BYTES (%d bytes) reserve %d of a node's %d bytes, more than four fifths", maxBytes, 2*maxBytes, maxStore)
	}
	return ""
}

// udpgateBytes returns a size as udpgate reads UDPGATE_STREAM_MAX_BYTES,
// or -1 if it does not.
func udpgateBytes(t *testing.T) func(string) int64 {
	return func(s string) int64 {
		t.Setenv("UDPGATE_STREAM_MAX_BYTES", s)
		cfg, err := config.Load()
		if err != nil {
			return -1
		}
		return cfg.StreamMaxBytes
	}
}

// isCommandLine reports whether args are a udpgate command line whose
// flags parse: a command that runs, a worker that is built in.
func isCommandLine(args []string) bool {
	root := newRoot(nil, nil)
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root || !cmd.Runnable() || cmd.ParseFlags(rest) != nil {
		return false
	}
	if cmd.Name() == "worker" {
		pos := cmd.Flags().Args()
		return len(pos) == 1 && slices.Contains(builtin.Names(), pos[0])
	}
	return cmd.ValidateArgs(cmd.Flags().Args()) == nil
}

// TestComposeFile loads docker-compose.yml with compose-go, the library
// docker compose is built on (CI has no Docker engine), and checks what it
// describes; deliberately broken variants must be refused.
func TestComposeFile(t *testing.T) {
	content, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	natsConf, err := server.ProcessConfigFile("deploy/nats/cluster.conf")
	if err != nil {
		t.Fatalf("deploy/nats/cluster.conf: %v", err)
	}
	defaults(t)
	facts := composeFacts{
		natsMinor: embeddedNATSMinor(t),
		natsConf:  natsConf,
		bytes:     udpgateBytes(t),
		known:     config.KnownVariables(),
		args:      isCommandLine,
	}
	env := map[string]string{"AWS_REGION": "eu-west-1"}
	edit := func(svc string, change func(*types.ServiceConfig)) func(*types.Project) {
		return func(p *types.Project) {
			s := p.Services[svc]
			change(&s)
			p.Services[svc] = s
		}
	}
	setEnv := func(svc, k, v string) func(*types.Project) {
		return edit(svc, func(s *types.ServiceConfig) {
			s.Environment = maps.Clone(s.Environment) // the case's change stays its own
			s.Environment[k] = &v
		})
	}
	for _, tc := range []struct {
		name    string
		yaml    func(string) string    // a change to the file
		project func(p *types.Project) // a change to the loaded project
		want    string                 // a problem reported; "" for none
	}{
		{name: "as written"},
		{name: "a key compose does not know", yaml: func(s string) string {
			return strings.Replace(s, "    start_period: 30s", "    start_period: 30s\n    start_periode: 30s", 1)
		}, want: "start_periode"},
		{name: "NATS image unpinned", project: edit("nats-2", func(s *types.ServiceConfig) { s.Image = "nats:latest" }), want: "nats:latest is not pinned"},
		{name: "NATS image untagged", project: edit("nats-2", func(s *types.ServiceConfig) { s.Image = "nats" }), want: "has no tag"},
		{name: "NATS of another minor version", project: edit("nats-3", func(s *types.ServiceConfig) { s.Image = "nats:2.10.29-alpine" }), want: "is NATS 2.10"},
		{name: "no health check", project: edit("worker-time", func(s *types.ServiceConfig) { s.HealthCheck = nil }), want: "worker-time: health check"},
		{name: "a shell health check", project: edit("gateway", func(s *types.ServiceConfig) {
			s.HealthCheck = &types.HealthCheckConfig{Test: types.HealthCheckTest{"CMD-SHELL", "wget -q http://127.0.0.1:9780/readyz"}}
		}), want: "gateway: health check"},
		{name: "a health check flag udpgate lacks", project: edit("gateway", func(s *types.ServiceConfig) {
			s.HealthCheck = &types.HealthCheckConfig{Test: types.HealthCheckTest{"CMD", "/udpgate", "healthcheck", "--uri", "x"}}
		}), want: "gateway: health check"},
		{name: "waits for a service without health check", project: edit("gateway", func(s *types.ServiceConfig) { s.HealthCheck = nil }), want: "waits for gateway to be healthy"},
		{name: "metrics on a free port", project: setEnv("worker-coap", "UDPGATE_HTTP_LISTEN", "auto"), want: "worker-coap: UDPGATE_HTTP_LISTEN"},
		{name: "metrics on loopback only", project: setEnv("worker-coap", "UDPGATE_HTTP_LISTEN", "127.0.0.1:9780"), want: "worker-coap: UDPGATE_HTTP_LISTEN"},
		{name: "metrics port published to the world", yaml: func(s string) string {
			return strings.Replace(s, `"127.0.0.1::9780"`, `"9780"`, 1)
		}, want: "not the host's loopback"},
		{name: "two services on one host port", yaml: func(s string) string {
			return strings.Replace(s, `"127.0.0.1::9780"`, `"127.0.0.1:9780:9780"`, 2)
		}, want: "metrics host port 9780 is"},
		{name: "replicas on one host port", yaml: func(s string) string {
			return strings.Replace(s, `"127.0.0.1::9780"`, `"127.0.0.1:9781:9780"`, 1)
		}, want: "metrics on host port 9781 for 2 instances"},
		{name: "an unknown variable", project: setEnv("worker-places", "UDPGATE_HTTP_LISTENER", ":9780"), want: "UDPGATE_HTTP_LISTENER is not a udpgate variable"},
		{name: "not a built-in worker", project: edit("worker-places", func(s *types.ServiceConfig) { s.Command = types.ShellCommand{"worker", "place"} }), want: `"place"] is not a udpgate command line`},
		{name: "one echo instance", yaml: func(s string) string {
			return strings.Replace(s, "replicas: 2", "replicas: 1", 1)
		}, want: "echo worker group has 1 instances"},
		{name: "a listener not published", project: setEnv("gateway", "UDPGATE_LISTENERS", "9000/raw,9001/raw,5683/coap,7000/rpc,9002/raw,9003/raw"), want: "UDP ports published"},
		{name: "streams too large for the nodes", project: setEnv("gateway", "UDPGATE_STREAM_MAX_BYTES", "5GiB"), want: "more than four fifths"},
		{name: "streams unlimited", project: setEnv("gateway", "UDPGATE_STREAM_MAX_BYTES", "0"), want: "unlimited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := string(content)
			if tc.yaml != nil {
				s = tc.yaml(s)
			}
			p, err := loadCompose([]byte(s), env)
			var problems []string
			if err != nil {
				problems = []string{err.Error()}
			} else {
				if tc.project != nil {
					tc.project(p)
				}
				problems = composeProblems(p, facts)
			}
			switch {
			case tc.want == "" && len(problems) > 0:
				t.Errorf("docker-compose.yml:\n%s", strings.Join(problems, "\n"))
			case tc.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }):
				t.Errorf("not refused: want %q among %q", tc.want, problems)
			}
		})
	}
}
