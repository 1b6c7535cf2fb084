package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestNodeWorker runs workers/examples/node/worker.mjs, a direct worker
// written in JavaScript from schemas/README.md alone with only
// @nats-io/transport-node (a queue subscription answering with
// msg.respond), against a real gateway with a raw and a coap listener. CI installs its
// dependencies (.ci/run: npm ci) and fails without them; elsewhere the test
// says how.
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
			info.Endpoints[0].Subject != rawSubject || info.Endpoints[0].QueueGroup != "node-example" {
			t.Errorf("info %+v", info)
		}
		if len(stats.Endpoints) != 2 || stats.Endpoints[0].NumRequests != 2 || stats.Endpoints[1].NumRequests != 2 {
			t.Errorf("stats %+v, want 2 requests on each endpoint", stats)
		}
	})
	t.Run("two instances share the group", func(t *testing.T) {
		w2 := startNodeWorker(t, node, dir, "worker.mjs", env) // joins w1's queue group
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
	for _, pkg := range []string{"@nats-io/transport-node"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			missing = append(missing, pkg)
		}
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
