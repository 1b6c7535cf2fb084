package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// leader-crash's cluster: NATS servers in child processes, so that one can
// be killed as kill -9 kills, with no word to its routes or clients and
// no leadership handed over.

// NodeFlag is the hidden flag with which `udpgate bench faults` runs one
// NATS server of leader-crash's cluster, as a child of the run that needs
// it:
//
//	udpgate bench faults --faults-nats-node '{"name":"n1",...}'
//
// It is not in the usage. The child is this program (os.Executable), so
// the installed binary needs nothing else; under `go test` it is the test
// binary, whose TestMain runs RunNode for these arguments (NodeSpec).
const NodeFlag = "faults-nats-node"

// NodeSpec returns the spec of a child NATS server if args, without the
// program's name, run one.
func NodeSpec(args []string) (string, bool) {
	if len(args) == 4 && args[0] == "bench" && args[1] == "faults" && args[2] == "--"+NodeFlag {
		return args[3], true
	}
	return "", false
}

// faultNodeSpec is what a child NATS server is told, as JSON.
type faultNodeSpec struct {
	Name        string   `json:"name"`
	Store       string   `json:"store"`        // removed when the child stops
	Cluster     string   `json:"cluster"`      // the cluster's name
	ClusterPort int      `json:"cluster_port"` // on 127.0.0.1
	Routes      []string `json:"routes"`       // every server's, its own included
}

// faultNodeReady is the line a child writes on its standard output once
// it serves: JetStream current and healthy.
type faultNodeReady struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

// RunNode runs the NATS server that spec describes (JSON, a
// faultNodeSpec), on 127.0.0.1 with a random client port and JetStream,
// until ctx ends, SIGTERM comes (the parent died: faultNodeProcAttr) or
// stdin reaches its end (the parent closed it, or died), then shuts it
// down and removes its store.
func RunNode(ctx context.Context, spec string, stdin io.Reader, stdout io.Writer) error {
	var sp faultNodeSpec
	if err := json.Unmarshal([]byte(spec), &sp); err != nil {
		return fmt.Errorf("bench faults: node: %w", err)
	}
	// Caught until the store is removed: a second SIGTERM must not end
	// the process half way.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	defer signal.Stop(term)
	routes := make([]*url.URL, len(sp.Routes))
	for i, r := range sp.Routes {
		u, err := url.Parse(r)
		if err != nil {
			return fmt.Errorf("bench faults: node %s: route: %w", sp.Name, err)
		}
		routes[i] = u
	}
	defer removeStore(sp.Store)
	s, err := server.NewServer(&server.Options{
		ServerName: sp.Name, Host: "127.0.0.1", Port: server.RANDOM_PORT,
		JetStream: true, StoreDir: sp.Store,
		Cluster: server.ClusterOpts{Name: sp.Cluster, Host: "127.0.0.1", Port: sp.ClusterPort},
		Routes:  routes, NoLog: true, NoSigs: true,
	})
	if err != nil {
		return fmt.Errorf("bench faults: node %s: %w", sp.Name, err)
	}
	go s.Start()
	defer func() {
		s.Shutdown()
		s.WaitForShutdown()
	}()
	if !s.ReadyForConnections(30 * time.Second) {
		return fmt.Errorf("bench faults: node %s: not ready for connections after 30s", sp.Name)
	}
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, stdin)
		close(gone)
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !s.JetStreamIsCurrent() || s.Healthz(nil).Status != "ok" {
		select {
		case <-ctx.Done():
			return nil
		case <-gone:
			return nil
		case <-term:
			return nil
		case <-tick.C:
		}
	}
	if err := json.NewEncoder(stdout).Encode(faultNodeReady{Name: sp.Name, URL: s.ClientURL()}); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-gone:
	case <-term:
	}
	return nil
}

// removeStore removes a stopped server's store, again while it is found
// again: the server's last Raft snapshots may still be written after it
// has shut down. It gives up after 2 s. The last store to go takes the
// directory that held them (a parent that died cannot).
func removeStore(dir string) {
	defer os.Remove(filepath.Dir(dir)) // only if empty
	for end := time.Now().Add(2 * time.Second); ; {
		err := os.RemoveAll(dir)
		time.Sleep(100 * time.Millisecond)
		if _, serr := os.Stat(dir); err == nil && errors.Is(serr, fs.ErrNotExist) || time.Now().After(end) {
			return
		}
	}
}

// faultNodes is a NATS cluster with JetStream on loopback whose servers
// are child processes. close kills them all and removes their stores.
type faultNodes struct {
	dir   string
	nodes []*faultNode // n1, n2, ...
}

// faultNode is one child NATS server.
type faultNode struct {
	name   string
	url    string // for clients
	cmd    *exec.Cmd
	stdin  io.WriteCloser // closing it stops the child
	out    *faultNodeOutput
	exited chan struct{} // closed when the process has been waited for
}

// startFaultNodes starts n clustered NATS servers with JetStream, each a
// child process with its own store under a temporary directory, waits
// until each one serves, then until the cluster places a stream on all
// n (its meta leader knows every peer). If ctx ends, or anything fails,
// the children are killed.
func startFaultNodes(ctx context.Context, n int) (_ *faultNodes, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	dir, err := os.MkdirTemp("", "udpgate-faults-crash-")
	if err != nil {
		return nil, err
	}
	c := &faultNodes{dir: dir}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	// Every server lists every route: reserve the cluster ports first.
	routes := make([]string, n)
	ports := make([]int, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		routes[i] = "nats-route://" + l.Addr().String()
		l.Close()
	}
	for i := range n {
		spec, _ := json.Marshal(faultNodeSpec{
			Name: "n" + strconv.Itoa(i+1), Store: filepath.Join(dir, strconv.Itoa(i+1)),
			Cluster: "faults", ClusterPort: ports[i], Routes: routes,
		})
		nd := &faultNode{name: "n" + strconv.Itoa(i+1), out: &faultNodeOutput{ready: make(chan struct{})}, exited: make(chan struct{})}
		nd.cmd = exec.Command(exe, "bench", "faults", "--"+NodeFlag, string(spec))
		nd.cmd.Stdout = nd.out
		nd.cmd.Stderr = &nd.out.stderr
		nd.cmd.SysProcAttr = faultNodeProcAttr()
		if nd.stdin, err = nd.cmd.StdinPipe(); err != nil {
			return nil, err
		}
		if err := nd.cmd.Start(); err != nil {
			return nil, fmt.Errorf("cluster: start %s: %w", nd.name, err)
		}
		go func() {
			nd.cmd.Wait()
			close(nd.exited)
		}()
		c.nodes = append(c.nodes, nd)
	}
	limit := time.NewTimer(60 * time.Second)
	defer limit.Stop()
	for _, nd := range c.nodes {
		select {
		case <-nd.out.ready:
		case <-nd.exited:
			return nil, fmt.Errorf("cluster: %s exited before it served: %s; %s", nd.name, nd.cmd.ProcessState, nd.out.tail())
		case <-limit.C:
			return nil, fmt.Errorf("cluster: %s not serving after 60s: %s", nd.name, nd.out.tail())
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var r faultNodeReady
		if err := json.Unmarshal(nd.out.line(), &r); err != nil || r.URL == "" {
			return nil, fmt.Errorf("cluster: %s: not a ready line: %q", nd.name, nd.out.line())
		}
		nd.url = r.URL
	}
	return c, c.waitPlaced(ctx)
}

// waitPlaced waits until the cluster places a stream on every server: a
// stream created earlier may find the meta leader not knowing them all.
func (c *faultNodes) waitPlaced(ctx context.Context) error {
	nc, err := c.connect("udpgate bench faults probe", c.nodes...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.CreateStream(actx, jetstream.StreamConfig{
			Name: "FAULTS_PROBE", Subjects: []string{"faults.probe"}, Replicas: len(c.nodes), Storage: jetstream.MemoryStorage,
		})
		if err == nil {
			err = js.DeleteStream(actx, "FAULTS_PROBE")
		}
		acancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: no stream placed on %d servers after 30s: %w", len(c.nodes), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// connect connects to the servers given, in that order, reconnecting
// forever and at once.
func (c *faultNodes) connect(name string, to ...*faultNode) (*nats.Conn, error) {
	urls := make([]string, len(to))
	for i, nd := range to {
		urls[i] = nd.url
	}
	return nats.Connect(strings.Join(urls, ","), nats.Name(name), nats.DontRandomize(),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
}

// kill ends nd's process at once (SIGKILL on Unix), and waits until it has.
func (c *faultNodes) kill(nd *faultNode) {
	nd.cmd.Process.Kill()
	<-nd.exited
}

// close kills every child, waits for them, and removes their stores.
func (c *faultNodes) close() {
	for _, nd := range c.nodes {
		nd.stdin.Close()
		nd.cmd.Process.Kill()
	}
	for _, nd := range c.nodes {
		<-nd.exited
	}
	os.RemoveAll(c.dir)
}

// faultNodeOutput keeps a child's first line of standard output, closing
// ready when it is complete, and the end of its standard error. Safe for
// concurrent use.
type faultNodeOutput struct {
	mu     sync.Mutex // guards out, done and stderr's buffer
	out    []byte
	done   bool
	ready  chan struct{}
	stderr faultTail
}

func (o *faultNodeOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done || len(o.out) > 4096 {
		return len(p), nil
	}
	o.out = append(o.out, p...)
	if i := bytes.IndexByte(o.out, '\n'); i >= 0 {
		o.out, o.done = o.out[:i], true
		close(o.ready)
	}
	return len(p), nil
}

// line returns the first line, once ready is closed.
func (o *faultNodeOutput) line() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.out
}

// tail returns the end of the child's standard error, for a message.
func (o *faultNodeOutput) tail() string {
	s := strings.TrimSpace(o.stderr.String())
	if s == "" {
		return "no output on stderr"
	}
	return "stderr: " + s
}

// faultTail keeps the last 4 KiB written to it. Safe for concurrent use.
type faultTail struct {
	mu  sync.Mutex // guards buf
	buf []byte
}

func (t *faultTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if n := len(t.buf); n > 4096 {
		t.buf = append(t.buf[:0], t.buf[n-4096:]...)
	}
	return len(p), nil
}

func (t *faultTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// The JetStream API, asked from outside the servers.

// jsLeader asks the JetStream API behind info (a stream's or a
// consumer's INFO subject) which server leads it: "" while none does.
func jsLeader(nc *nats.Conn, info string, timeout time.Duration) (string, error) {
	msg, err := nc.Request(info, nil, timeout)
	if err != nil {
		return "", fmt.Errorf("%s: %w", info, err)
	}
	var resp struct {
		Cluster *struct {
			Leader string `json:"leader"`
		} `json:"cluster"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return "", fmt.Errorf("%s: %w", info, err)
	}
	if resp.Error != nil {
		return "", fmt.Errorf("%s: %s", info, resp.Error.Description)
	}
	if resp.Cluster == nil {
		return "", nil
	}
	return resp.Cluster.Leader, nil
}

// waitLeader asks info until its leader is one that ok accepts, limit at
// most, and returns it.
func waitLeader(ctx context.Context, nc *nats.Conn, info string, ok func(string) bool, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	var last error
	for {
		l, err := jsLeader(nc, info, 250*time.Millisecond)
		if err == nil && ok(l) {
			return l, nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("cluster: no leader as wanted after %s (last: %q, %v)", limit, l, last)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// moveLeader asks the leader behind stepdown (a LEADER.STEPDOWN subject)
// to hand over to the server called preferred, and waits until info says
// preferred leads; an election may pick another server, so it asks up to
// four times.
func moveLeader(ctx context.Context, nc *nats.Conn, stepdown, info, preferred string) error {
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred}})
	for try := 0; ; try++ {
		msg, err := nc.Request(stepdown, req, 10*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", stepdown, err)
		}
		var resp struct {
			Success bool `json:"success"`
		}
		if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Success {
			return fmt.Errorf("%s: %s", stepdown, msg.Data)
		}
		_, err = waitLeader(ctx, nc, info, func(l string) bool { return l == preferred }, 5*time.Second)
		if err == nil || try == 3 || errors.Is(err, ctx.Err()) {
			return err
		}
	}
}
