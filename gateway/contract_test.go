package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/coap/linkformat"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestNodeWorker runs workers/examples/node/worker.mjs, a direct worker
// written in JavaScript from schemas/README.md alone with only
// @nats-io/transport-node (a queue subscription answering with
// msg.respond), against a real gateway with a raw and a coap listener. CI installs its
// dependencies (.ci/run: npm ci) and fails without them; elsewhere the test
// says how. The group announces itself by hand ("Announcing a group"): the
// gateway lists it and its CoAP resource, and so does the NATS CLI.
func TestNodeWorker(t *testing.T) {
	dir, node := nodeWorkerDeps(t)
	s := natstest.RunServer(t)
	g := &Gateway{}
	coapAddr := coapListener(t, g) // testGateway adds the raw one and serves both
	raw := testGateway(t, s, g, "127.0.0.1:0")[0]
	env := []string{
		"NATS_URL=" + s.ClientURL(),
		"RAW_PORT=" + strconv.Itoa(raw.Port),
		"COAP_PORT=" + strconv.Itoa(coapAddr.Port),
		"GROUP=node-example",
	}
	w1 := startNodeWorker(t, node, dir, "worker.mjs", env)

	t.Run("raw", func(t *testing.T) {
		for _, msg := range []string{"hello from udp", "żółw ąę"} {
			got, err := exchangeUDP(t, raw.String(), []byte(msg), 5*time.Second)
			if err != nil {
				t.Fatalf("%q: no reply: %v (worker stderr: %s)", msg, err, w1.stderr())
			}
			if want := strings.ToUpper(msg); string(got) != want {
				t.Errorf("reply %q, want %q", got, want)
			}
		}
	})
	t.Run("coap", func(t *testing.T) {
		co := dialCoAP(t, coapAddr.String())
		for _, name := range []string{"world", "żółw a.b"} { // escaped in the subject, percent-encoded in the header
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := co.Get(ctx, "/greeting/"+name)
			cancel()
			if err != nil {
				t.Fatalf("GET /greeting/%s: %v (worker stderr: %s)", name, err, w1.stderr())
			}
			body, _ := resp.ReadBody()
			cf, cfErr := resp.ContentFormat()
			if resp.Code() != codes.Content || string(body) != "Hello, "+name || cfErr != nil || cf != message.TextPlain {
				t.Errorf("GET /greeting/%s: %v %q, content-format %v (%v)", name, resp.Code(), body, cf, cfErr)
			}
		}
		// A Uri-Query option reaches the JavaScript worker percent-encoded
		// as RFC 3986 says, so decodeURIComponent gives it back: a space
		// stays a space and a plus a plus.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := co.Get(ctx, "/greeting/world", message.Option{ID: message.URIQuery, Value: []byte("greeting=a b+c=d&e")})
		cancel()
		if err != nil {
			t.Fatalf("GET /greeting/world?greeting=...: %v (worker stderr: %s)", err, w1.stderr())
		}
		if body, _ := resp.ReadBody(); string(body) != "a b+c=d&e, world" {
			t.Errorf("GET /greeting/world with the query option %q: %q, want %q", "greeting=a b+c=d&e", body, "a b+c=d&e, world")
		}
	})
	t.Run("announces", func(t *testing.T) { // "Announcing a group"
		nc := natstest.Connect(t, s)
		var info micro.Info
		var stats micro.Stats
		for _, q := range []struct {
			subject string
			into    any
		}{{"$SRV.INFO.node-example", &info}, {"$SRV.STATS.node-example", &stats}} {
			m, err := nc.Request(q.subject, nil, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v (worker stderr: %s)", q.subject, err, w1.stderr())
			}
			if err := json.Unmarshal(m.Data, q.into); err != nil {
				t.Fatalf("%s: %v: %s", q.subject, err, m.Data)
			}
		}
		rawSubject := schemas.InSubject(schemas.DefaultPrefix, uint16(raw.Port))
		if info.Name != "node-example" || info.Type != micro.InfoResponseType || len(info.Endpoints) != 2 ||
			info.Endpoints[0].Subject != rawSubject || info.Endpoints[0].QueueGroup != "node-example" ||
			info.Metadata["udpgate.delivery"] != "direct" || info.Metadata["udpgate.coap.links"] != nodeGreetingLink {
			t.Errorf("info %+v", info)
		}
		if len(stats.Endpoints) != 2 || stats.Endpoints[0].NumRequests != 2 || stats.Endpoints[1].NumRequests != 3 {
			t.Errorf("stats %+v, want 2 requests on the raw endpoint and 3 on the CoAP one", stats)
		}
		for _, e := range stats.Endpoints {
			if e.ProcessingTime <= 0 || e.AverageProcessingTime <= 0 || e.AverageProcessingTime > e.ProcessingTime {
				t.Errorf("endpoint %s: processing time %v, average %v; want nanoseconds spent", e.Name, e.ProcessingTime, e.AverageProcessingTime)
			}
		}
		if age := time.Since(stats.Started); age < 0 || age > time.Minute {
			t.Errorf("started %v, %v ago", stats.Started, age)
		}
	})
	t.Run("gateway status", func(t *testing.T) {
		gr := nodeGroupOn(t, g, coapAddr, "node-example", 1)
		greeting := schemas.InSubject(schemas.DefaultPrefix, uint16(coapAddr.Port)) + ".GET.greeting.*"
		if gr.Delivery != "direct" || !gr.Announced || !slices.Equal(gr.Subjects, []string{greeting}) ||
			!slices.Equal(gr.Resources, []string{nodeGreetingLink}) {
			t.Errorf("on the coap listener %+v, want delivery direct, subject %s, resource %s", gr, greeting, nodeGreetingLink)
		}
		if gr := nodeGroupOn(t, g, raw, "node-example", 1); len(gr.Resources) != 0 {
			t.Errorf("on the raw listener %+v, want no resources", gr)
		}
	})
	t.Run("well-known core", func(t *testing.T) { // RFC 6690, answered by the gateway
		nodeGroupOn(t, g, coapAddr, "node-example", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := dialCoAP(t, coapAddr.String()).Get(ctx, WellKnownCore)
		if err != nil {
			t.Fatalf("GET %s: %v", WellKnownCore, err)
		}
		body, _ := resp.ReadBody()
		cf, cfErr := resp.ContentFormat()
		if resp.Code() != codes.Content || cfErr != nil || cf != message.AppLinkFormat {
			t.Errorf("GET %s: %v, content-format %v (%v)", WellKnownCore, resp.Code(), cf, cfErr)
		}
		if !slices.Contains(linkformat.Parse(string(body)), linkformat.Parse(nodeGreetingLink)[0]) {
			t.Errorf("GET %s: %q, want the link %s", WellKnownCore, body, nodeGreetingLink)
		}
	})
	t.Run("nats micro", func(t *testing.T) { // the official NATS CLI lists the group
		cli := natsCLI(t)
		var infos []micro.Info
		runNatsCLI(t, cli, s.ClientURL(), &infos, "micro", "ls", "--json")
		i := slices.IndexFunc(infos, func(in micro.Info) bool { return in.Name == "node-example" })
		if i < 0 {
			t.Fatalf("nats micro ls: no node-example in %+v", infos)
		}
		var subjects []string
		for _, e := range infos[i].Endpoints {
			subjects = append(subjects, e.Subject)
		}
		want := []string{
			schemas.InSubject(schemas.DefaultPrefix, uint16(raw.Port)),
			schemas.InSubject(schemas.DefaultPrefix, uint16(coapAddr.Port)) + ".GET.greeting.*",
		}
		if !slices.Equal(subjects, want) || infos[i].Metadata["udpgate.coap.links"] != nodeGreetingLink {
			t.Errorf("nats micro ls: %+v, want endpoints %v and the greeting link", infos[i], want)
		}
		// nats micro stats validates the answers against the micro schema
		// and fails on one that does not conform.
		var stats []micro.Stats
		runNatsCLI(t, cli, s.ClientURL(), &stats, "micro", "stats", "node-example", "--json")
		if len(stats) != 1 || len(stats[0].Endpoints) != 2 || stats[0].Endpoints[0].NumRequests != 2 {
			t.Errorf("nats micro stats: %+v, want one instance with 2 endpoints", stats)
		}
	})
	t.Run("two instances share the group", func(t *testing.T) {
		w2 := startNodeWorker(t, node, dir, "worker.mjs", env) // joins w1's queue group
		if gr := nodeGroupOn(t, g, coapAddr, "node-example", 2); !slices.Equal(gr.Resources, []string{nodeGreetingLink}) {
			t.Errorf("two instances: %+v, want the resource %s once", gr, nodeGreetingLink)
		}
		before1, before2 := w1.replied(), w2.replied()
		const n = 20 // NATS picks a queue member at random for each: both get some, but for a chance of 2 in a million
		for i := range n {
			msg := "request " + strconv.Itoa(i)
			got, err := exchangeUDP(t, raw.String(), []byte(msg), 5*time.Second)
			if err != nil {
				t.Fatalf("%q: no reply: %v (worker stderr: %s / %s)", msg, err, w1.stderr(), w2.stderr())
			}
			if want := strings.ToUpper(msg); string(got) != want {
				t.Errorf("reply %q, want %q", got, want)
			}
		}
		// Each instance prints its line after its reply.
		waitFor(t, "both instances counting all replies", func() bool {
			return w1.replied()-before1+w2.replied()-before2 == n
		})
		d1, d2 := w1.replied()-before1, w2.replied()-before2
		t.Logf("instance 1 answered %d, instance 2 %d", d1, d2)
		if d1 == 0 || d2 == 0 {
			t.Errorf("the group did not share the work: %d and %d of %d requests", d1, d2, n)
		}
	})
}

// nodeGreetingLink is the CoAP resource worker.mjs announces.
const nodeGreetingLink = `</greeting/world>;rt="greeting";ct=0`

// nodeGroupOn has g discover the groups until the listener at addr lists
// group with instances instances, and returns the group as listed there.
func nodeGroupOn(t *testing.T, g *Gateway, addr *net.UDPAddr, group string, instances int) Group {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var listed []Group
	for {
		if err := g.Discover(ctx); err != nil {
			t.Fatalf("%s not listed with %d instances on %s: %v; last listed %+v", group, instances, addr, err, listed)
		}
		for _, l := range g.Status(ctx).Listeners {
			if l.Address != addr.String() {
				continue
			}
			listed = l.Groups
			for _, gr := range l.Groups {
				if gr.Name == group && gr.Instances == instances {
					return gr
				}
			}
		}
	}
}

// natsCLI returns the path of the NATS CLI, natscli's `nats`:
// $NATS_CLI_FOR_TESTS, which .ci/run sets, or `nats` on PATH. It fails
// in CI (CI set) and skips elsewhere when there is none.
// npmOnce runs npm ci at most once per test binary.
var npmOnce sync.Once

func natsCLI(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NATS_CLI_FOR_TESTS"); p != "" {
		return p
	}
	p, err := exec.LookPath("nats")
	if err != nil {
		const how = "NATS_CLI_FOR_TESTS unset and no nats on PATH; install it with `go install github.com/nats-io/natscli/nats@v0.5.0`"
		if os.Getenv("CI") != "" {
			t.Fatalf("missing in CI: %s (.ci/run installs it)", how)
		}
		t.Skip(how)
	}
	return p
}

// runNatsCLI runs the NATS CLI at cli against the server at url, with no
// contexts of the user's, and decodes its JSON output into v.
func runNatsCLI(t *testing.T, cli, url string, v any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, append([]string{"--server", url}, args...)...)
	home := t.TempDir()
	cmd.Env = []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nats %s: %v (stderr: %s)", strings.Join(args, " "), err, stderr.Bytes())
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("nats %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestNodeSmallestWorker runs workers/examples/node/upper.mjs, the
// smallest direct worker, which schemas/README.md shows in full.
func TestNodeSmallestWorker(t *testing.T) {
	dir, node := nodeWorkerDeps(t)
	script, err := os.ReadFile(filepath.Join(dir, "upper.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../schemas/README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, append(append([]byte("```js\n"), script...), "```"...)) {
		t.Errorf("schemas/README.md does not show workers/examples/node/upper.mjs as it is")
	}
	s := natstest.RunServer(t)
	raw := testGateway(t, s, &Gateway{}, "127.0.0.1:0")[0]
	startNodeWorker(t, node, dir, "upper.mjs", []string{
		"NATS_URL=" + s.ClientURL(), "SUBJECT=" + schemas.InSubject(schemas.DefaultPrefix, uint16(raw.Port)),
	})
	got, err := exchangeUDP(t, raw.String(), []byte("hello"), 5*time.Second)
	if err != nil || string(got) != "HELLO" {
		t.Errorf("reply %q, %v; want HELLO", got, err)
	}
}

// nodeWorkerDeps returns the example's directory and the node binary. It
// fails in CI (CI set) and skips elsewhere when either is missing.
func nodeWorkerDeps(t *testing.T) (dir, node string) {
	t.Helper()
	dir, err := filepath.Abs("../workers/examples/node")
	if err != nil {
		t.Fatal(err)
	}
	node, err = exec.LookPath("node")
	var missing []string
	if err != nil {
		missing = append(missing, "node ("+err.Error()+")")
	}
	pkgs := []string{"@nats-io/transport-node"}
	installed := func() bool {
		for _, pkg := range pkgs {
			if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
				return false
			}
		}
		return true
	}
	if node != "" && !installed() {
		// The suite installs what it needs: npm ci, once per run.
		npmOnce.Do(func() {
			npm, err := exec.LookPath("npm")
			if err != nil {
				return
			}
			cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			t.Logf("npm ci in %s: %v\n%s", dir, err, out)
		})
	}
	if !installed() {
		missing = append(missing, strings.Join(pkgs, ", ")+" (npm ci failed or npm is missing)")
	}
	if len(missing) > 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("missing in CI: %s (.ci/run runs npm ci in %s)", strings.Join(missing, ", "), dir)
		}
		t.Skipf("missing %s: needs node, and `npm ci` in %s", strings.Join(missing, ", "), dir)
	}
	return dir, node
}

// coapListener adds a coap listener on 127.0.0.1 to g, before testGateway.
func coapListener(t *testing.T, g *Gateway) *net.UDPAddr {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: schemas.ProtocolCoAP})
	return c.LocalAddr().(*net.UDPAddr)
}

// nodeWorker is one running `node worker.mjs`.
type nodeWorker struct {
	cmd   *exec.Cmd
	ready chan struct{}

	mu      sync.Mutex
	line    []byte // stdout after the last newline
	sawUp   bool
	replies int
	errOut  bytes.Buffer
}

// startNodeWorker starts worker.mjs with env and waits for its "ready". At
// the end of the test it gets SIGTERM and must exit cleanly.
func startNodeWorker(t *testing.T, node, dir, script string, env []string) *nodeWorker {
	t.Helper()
	w := &nodeWorker{ready: make(chan struct{})}
	w.cmd = exec.Command(node, script)
	w.cmd.Dir = dir
	w.cmd.Env = append(os.Environ(), env...)
	w.cmd.Stdout = stdoutLines{w}
	w.cmd.Stderr = stderrWriter{w}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- w.cmd.Wait() }()
	t.Cleanup(func() {
		w.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%s on SIGTERM: %v (stderr: %s)", script, err, w.stderr())
			}
		case <-time.After(10 * time.Second):
			w.cmd.Process.Kill()
			<-exited
			t.Errorf("%s still running 10s after SIGTERM (stderr: %s)", script, w.stderr())
		}
	})
	select {
	case <-w.ready:
	case err := <-exited:
		exited <- err // for the cleanup
		t.Fatalf("%s exited: %v (stderr: %s)", script, err, w.stderr())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready after 30s (stderr: %s)", script, w.stderr())
	}
	return w
}

// replied is the number of requests the worker has answered so far.
func (w *nodeWorker) replied() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.replies
}

func (w *nodeWorker) stderr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errOut.String()
}

// stdoutLines reads the worker's stdout: "ready", then "replied SUBJECT"
// per request.
type stdoutLines struct{ w *nodeWorker }

func (o stdoutLines) Write(p []byte) (int, error) {
	w := o.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			return len(p), nil
		}
		switch l := string(w.line[:i]); {
		case l == "ready" && !w.sawUp:
			w.sawUp = true
			close(w.ready)
		case strings.HasPrefix(l, "replied "):
			w.replies++
		}
		w.line = w.line[i+1:]
	}
}

type stderrWriter struct{ w *nodeWorker }

func (e stderrWriter) Write(p []byte) (int, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	return e.w.errOut.Write(p)
}
