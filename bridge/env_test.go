package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
)

const testToken = "s3cret-test-token"

// testEnv is a gateway on an embedded NATS server with a bridge whose
// HTTP API is served by a real HTTP server, as a node serves it.
type testEnv struct {
	b     *Bridge
	g     *gateway.Gateway
	srv   *server.Server
	obs   *observe.Server
	url   string // the HTTP server's base URL
	ports config.PortRange
}

// freeRange returns a range of n ports above 20000 that were free a
// moment ago (other processes may take some; the bridge skips those).
func freeRange(t testing.TB, n int) config.PortRange {
	t.Helper()
	for range 100 {
		low := 20000 + rand.IntN(30000)
		free := true
		for p := low; p < low+n && free; p++ {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: p})
			if err != nil {
				free = false
				break
			}
			c.Close()
		}
		if free {
			return config.PortRange{Low: uint16(low), High: uint16(low + n - 1)}
		}
	}
	t.Fatalf("no %d free ports in a row", n)
	return config.PortRange{}
}

// newEnv starts a gateway and a bridge on a range of 50 ports (the
// token testToken), changed by setup before it serves; serve false leaves
// the bridge not serving. Everything stops with the test.
func newEnv(t testing.TB, setup func(*Bridge), serve bool) *testEnv {
	t.Helper()
	e := &testEnv{srv: natstest.RunServer(t)}
	e.g = &gateway.Gateway{
		NATS:         natstest.Connect(t, e.srv),
		Node:         "bridge-test",
		Stream:       ingress.StreamConfig{Name: schemas.StreamIn, Memory: true},
		DrainTimeout: -1,
		Deadline:     2 * time.Second,
	}
	// A listener that is no lease, so that the gateway has one to start.
	c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	e.g.Listeners = []gateway.Listener{{Conn: c, Protocol: schemas.ProtocolRaw}}
	gctx, gcancel := context.WithCancel(context.Background())
	gdone := make(chan error, 1)
	go func() { gdone <- e.g.Serve(gctx) }()
	t.Cleanup(func() {
		gcancel()
		if err := <-gdone; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	select {
	case <-e.g.Ready():
	case err := <-gdone:
		t.Fatalf("gateway stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready after 30s")
	}

	e.ports = freeRange(t, 50)
	e.b = &Bridge{
		Gateway: e.g,
		NATS:    e.g.NATS,
		Node:    e.g.Node,
		Config: config.Bridge{
			Ports:       []config.PortRange{e.ports},
			Token:       testToken,
			MaxBindings: 16,
		},
		Reap: 20 * time.Millisecond,
	}
	if setup != nil {
		setup(e.b)
	}
	e.obs = &observe.Server{Registry: prometheus.NewRegistry()}
	if err := e.b.Register(e.obs.Registry); err != nil {
		t.Fatal(err)
	}
	e.obs.Handle("/v1/udp/", e.b.Handler())
	hs := httptest.NewServer(e.obs.Handler())
	t.Cleanup(hs.Close)
	e.url = hs.URL
	if serve {
		bctx, bcancel := context.WithCancel(context.Background())
		bdone := make(chan error, 1)
		go func() { bdone <- e.b.Serve(bctx) }()
		t.Cleanup(func() {
			bcancel()
			if err := <-bdone; err != nil {
				t.Errorf("bridge: %v", err)
			}
		})
		waitFor(t, "the bridge serving", func() bool {
			if !e.b.Config.On() {
				return true // it only waits
			}
			e.b.mu.Lock()
			defer e.b.mu.Unlock()
			return e.b.serving
		})
	}
	return e
}

// waitFor waits until cond holds, failing the test after 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// do sends an HTTP request with the test token (token "" sends none)
// and returns the status and body.
func (e *testEnv) do(t testing.TB, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return resp.StatusCode, b
}

// bind leases a port over HTTP and returns its description.
func (e *testEnv) bind(t testing.TB, req any) Info {
	t.Helper()
	code, body := e.do(t, "POST", "/v1/udp/bind", testToken, req)
	if code != http.StatusOK {
		t.Fatalf("bind: %d %s", code, body)
	}
	var in Info
	if err := json.Unmarshal(body, &in); err != nil {
		t.Fatalf("bind: %v: %s", err, body)
	}
	return in
}

func port(t testing.TB, in Info) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(in.LocalAddr)
	if err != nil {
		t.Fatalf("local_addr %q: %v", in.LocalAddr, err)
	}
	return ap.Port()
}

// dial returns a UDP socket connected to the binding's port on loopback.
func dial(t testing.TB, p uint16) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(p)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sseEvent is one event of a Server-Sent Events stream.
type sseEvent struct {
	Type, Data, ID string
}

// sseStream reads a Server-Sent Events stream as the HTML standard's
// "event stream interpretation" says: lines end in CRLF, LF or CR; a
// line starting with a colon is a comment; a field's value follows the
// first colon, less one leading space; data lines accumulate with LFs;
// a blank line dispatches the event (none if its data is empty), of
// type "message" unless an event field named one.
type sseStream struct {
	Events   chan sseEvent // closed when the stream ends
	resp     *http.Response
	mu       sync.Mutex
	comments int
	err      error
}

// openSSE opens the SSE stream of path with a bearer token.
func (e *testEnv) openSSE(t testing.TB, path string) *sseStream {
	t.Helper()
	req, err := http.NewRequest("GET", e.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &sseStream{Events: make(chan sseEvent, 1024), resp: resp}
	t.Cleanup(func() { resp.Body.Close() })
	go s.read(resp.Body)
	return s
}

func (s *sseStream) read(r io.Reader) {
	defer close(s.Events)
	br := bufio.NewReader(r)
	var typ, id, lastID string
	var data strings.Builder
	for {
		line, err := readLine(br)
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		if line == "" { // dispatch
			lastID = id
			if data.Len() > 0 {
				d := strings.TrimSuffix(data.String(), "\n")
				s.Events <- sseEvent{Type: cmpOr(typ, "message"), Data: d, ID: lastID}
			}
			typ = ""
			data.Reset()
			continue
		}
		if line[0] == ':' {
			s.mu.Lock()
			s.comments++
			s.mu.Unlock()
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			typ = value
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
		case "id":
			if !strings.Contains(value, "\x00") {
				id = value
			}
		case "retry": // reconnection time: nothing to do here
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readLine reads one line ending in CRLF, LF or CR, without its end.
func readLine(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		c, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		switch c {
		case '\n':
			return sb.String(), nil
		case '\r':
			if next, err := br.Peek(1); err == nil && next[0] == '\n' {
				br.ReadByte()
			}
			return sb.String(), nil
		}
		sb.WriteByte(c)
	}
}

func (s *sseStream) commentCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.comments
}

// next returns the next event, failing the test if none comes in 30 s
// or the stream ends.
func (s *sseStream) next(t testing.TB) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-s.Events:
		if !ok {
			t.Fatalf("the SSE stream ended: %v", s.err)
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no SSE event in 30s")
	}
	return sseEvent{}
}

// natsRequest sends a request to the bridge's NATS service.
func natsRequest(t testing.TB, nc *nats.Conn, node, op string, body any) []byte {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	m, err := nc.Request(Subject("", node, op), b, 10*time.Second)
	if err != nil {
		t.Fatalf("NATS %s: %v", op, err)
	}
	return m.Data
}

// fakeClock is a clock that moves when the test says.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
