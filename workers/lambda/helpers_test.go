package lambda

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// waitFor is how long a test waits for something that must happen.
const waitFor = 10 * time.Second

// node is a real gateway with one listener on 127.0.0.1, on a real
// embedded JetStream.
type node struct {
	s    *server.Server
	g    *gateway.Gateway
	addr *net.UDPAddr // the listener's
	port uint16
}

// startGateway runs a gateway with one listener speaking protocol until
// the test ends.
func startGateway(t *testing.T, protocol string) *node {
	t.Helper()
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway.Gateway{
		NATS:      natstest.Connect(t, s),
		Node:      "lambda-node",
		Listeners: []gateway.Listener{{Conn: c, Protocol: protocol}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	case <-time.After(waitFor):
		t.Fatal("gateway not ready")
	}
	addr := c.LocalAddr().(*net.UDPAddr)
	return &node{s: s, g: g, addr: addr, port: uint16(addr.Port)}
}

// subject is the filter subject that takes every request of the listener.
func (n *node) subject(protocol string) string {
	if protocol == schemas.ProtocolRaw {
		return schemas.InSubject(schemas.DefaultPrefix, n.port)
	}
	return schemas.InSubject(schemas.DefaultPrefix, n.port) + ".>"
}

// deliveries are the workers.Server deliveries, for tests that run in
// each.
var deliveries = []workers.Delivery{workers.Direct, workers.Durable}

// serve runs b behind a workers.Server of group on subject, with delivery,
// until the test ends, then closes b. concurrency zero means
// b.Concurrency().
func (n *node) serve(t *testing.T, delivery workers.Delivery, group, subject string, b *Bridge, concurrency int) *workers.Server {
	t.Helper()
	if concurrency == 0 {
		concurrency = b.Concurrency()
	}
	srv := &workers.Server{
		Delivery:    delivery,
		Group:       group,
		Subjects:    []string{subject},
		Handler:     b,
		Concurrency: concurrency,
	}
	if delivery == workers.Durable {
		_, srv.JetStream = natstest.JetStream(t, n.s)
		srv.AckWait = 500 * time.Millisecond
	} else {
		srv.NATS = natstest.Connect(t, n.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", group, err)
		}
		b.Close()
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("worker %s: %v", group, err)
	case <-time.After(waitFor):
		t.Fatalf("worker %s not ready", group)
	}
	return srv
}

// exchange sends payload from a new connected socket (so that only a
// reply from the listener's address is read) and returns the reply. It
// may be called from any goroutine.
func exchange(t testing.TB, addr *net.UDPAddr, payload []byte) ([]byte, *net.UDPConn, error) {
	t.Helper()
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(payload); err != nil {
		return nil, c, err
	}
	c.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil, c, err
	}
	return buf[:n], c, nil
}

// eventually waits until cond holds, polling.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, waitFor)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// schema compiles schemas/lambda/name, asserting formats (date-time) and
// content encodings (base64).
func schema(t testing.TB, name string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	c.AssertContent()
	sch, err := c.Compile(filepath.Join("..", "..", "schemas", "lambda", name))
	if err != nil {
		t.Fatalf("compile %s: %v", name, err)
	}
	return sch
}

// valid reports why doc does not match sch, or nil.
func valid(sch *jsonschema.Schema, doc []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return err
	}
	return sch.Validate(v)
}

// logBuffer collects log output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
