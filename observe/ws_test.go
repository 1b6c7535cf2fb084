package observe_test

import (
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
	"github.com/udpgate/udpgate/ws"
)

// wsRig serves a gateway whose listeners are the ws servers srvs, each on
// a fresh TCP socket, with its metrics over HTTP, and returns the
// metrics URL and the listeners' addresses.
func wsRig(t *testing.T, g *gateway.Gateway, srvs ...*ws.Server) (string, []string) {
	t.Helper()
	var addrs []string
	for _, srv := range srvs {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener = ln
		addrs = append(addrs, ln.Addr().String())
		g.WebSockets = append(g.WebSockets, srv)
	}
	obs := &observe.Server{Registry: observe.NewRegistry()}
	if err := observe.RegisterGateway(obs.Registry, g); err != nil {
		t.Fatal(err)
	}
	ln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- obs.Serve(ctx, ln) }()
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	}
	return observe.URL(ln), addrs
}

// wsSend writes the Call (id, service, method, params) on c as a binary
// message, or as its base64 in a text message.
func wsSend(t *testing.T, c *websocket.Conn, text bool, id uint64, service, method string, params proto.Message) {
	t.Helper()
	var p []byte
	if params != nil {
		p, _ = proto.Marshal(params)
	}
	b, err := proto.Marshal(&rpcpb.Call{Id: id, Service: service, Method: method, Params: p})
	if err != nil {
		t.Fatal(err)
	}
	typ := websocket.MessageBinary
	if text {
		typ, b = websocket.MessageText, []byte(base64.StdEncoding.EncodeToString(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, typ, b); err != nil {
		t.Fatal(err)
	}
}

// wsReply reads the next Reply on c, in either form.
func wsReply(t *testing.T, c *websocket.Conn) *rpcpb.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ == websocket.MessageText {
		if b, err = base64.StdEncoding.DecodeString(string(b)); err != nil {
			t.Fatal(err)
		}
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func wsDial(t *testing.T, url string, h http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if c != nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// TestMetricsWS drives a ws listener through each of its outcomes, with
// the built-in places worker, and reads them on /metrics; a second
// listener closes silent connections.
func TestMetricsWS(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	g := &gateway.Gateway{NATS: nc, Node: "n1", Deadline: 300 * time.Millisecond, MaxDatagram: 512, DrainTimeout: -1}
	url, addrs := wsRig(t, g, &ws.Server{MaxInFlight: 1, MaxConnections: 2}, &ws.Server{Ping: 100 * time.Millisecond, Idle: time.Second})
	_, p, _ := net.SplitHostPort(addrs[0])
	_, quiet, _ := net.SplitHostPort(addrs[1])
	n, _ := strconv.Atoi(p)

	// The places worker, and a group that takes Slow/Wait and never
	// answers.
	_, js := natstest.JetStream(t, s)
	w := &workers.Server{
		JetStream: js, Delivery: workers.Direct, Group: "places",
		Subjects: []string{schemas.RPCSubject(schemas.DefaultPrefix, uint16(n), builtin.PlacesService, builtin.PlacesMethod)},
		Handler:  workers.HandlerFunc(builtin.Places{}.Handle),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker: %v", err)
	}
	if _, err := nc.QueueSubscribe(schemas.RPCSubject(schemas.DefaultPrefix, uint16(n), "Slow", "Wait"), "slow", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	type sample struct {
		name   string
		labels []string
		want   float64
	}
	check := func(t *testing.T, port string, samples []sample) {
		t.Helper()
		eventually(t, url, "the ws metrics of "+port, func(m map[string]*dto.MetricFamily) bool {
			for _, s := range samples {
				if value(m, s.name, append([]string{"port", port, "protocol", "ws"}, s.labels...)...) != s.want {
					return false
				}
			}
			return true
		})
	}
	all := func(connections, accepted, origin, full, notWS, in, out, tooLarge, badBase64, malformed, busy float64) []sample {
		return []sample{
			{"udpgate_ws_connections", nil, connections},
			{"udpgate_ws_connections_accepted_total", nil, accepted},
			{"udpgate_ws_upgrades_refused_total", []string{"reason", "origin"}, origin},
			{"udpgate_ws_upgrades_refused_total", []string{"reason", "full"}, full},
			{"udpgate_ws_upgrades_refused_total", []string{"reason", "not_websocket"}, notWS},
			{"udpgate_ws_messages_received_total", nil, in},
			{"udpgate_ws_messages_sent_total", nil, out},
			{"udpgate_ws_messages_rejected_total", []string{"reason", "too_large"}, tooLarge},
			{"udpgate_ws_messages_rejected_total", []string{"reason", "bad_base64"}, badBase64},
			{"udpgate_ws_messages_rejected_total", []string{"reason", "malformed"}, malformed},
			{"udpgate_ws_calls_busy_total", nil, busy},
			{"udpgate_ws_connections_closed_total", []string{"reason", "idle"}, 0},
			{"udpgate_ws_connections_closed_total", []string{"reason", "no_pong"}, 0},
			{"udpgate_ws_replies_dropped_total", nil, 0},
		}
	}
	// Every series exists from the start.
	check(t, p, all(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))

	// Two connections, the cap; a third is refused, and so is another
	// site's page.
	a, _, err := wsDial(t, "ws://"+addrs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := wsDial(t, "ws://"+addrs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		url    string
		origin string
		status int
	}{
		{"ws://" + addrs[0], "", http.StatusServiceUnavailable},
		{"ws://" + addrs[0], "https://evil.example.net", http.StatusForbidden},
	} {
		h := http.Header{}
		if r.origin != "" {
			h.Set("Origin", r.origin)
		}
		if _, resp, err := wsDial(t, r.url, h); err == nil || resp == nil || resp.StatusCode != r.status {
			t.Fatalf("dial with origin %q: %v, %v; want %d", r.origin, resp, err, r.status)
		}
	}

	// A call answered; one left unanswered, so that the next finds the
	// connection's one slot taken; the deadline answers the first.
	wsSend(t, a, true, 1, builtin.PlacesService, builtin.PlacesMethod, &placespb.GetRandomRequest{Limit: 2})
	if r := wsReply(t, a); r.Id != 1 || r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("GetRandom: id %d status %v", r.Id, r.Status)
	}
	wsSend(t, a, false, 2, "Slow", "Wait", nil)
	wsSend(t, a, false, 3, builtin.PlacesService, builtin.PlacesMethod, nil)
	if r := wsReply(t, a); r.Id != 3 || r.Status != rpcpb.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("beyond MaxInFlight: id %d status %v", r.Id, r.Status)
	}
	if r := wsReply(t, a); r.Id != 2 || r.Status != rpcpb.Status_STATUS_DEADLINE_EXCEEDED {
		t.Fatalf("unanswered: id %d status %v", r.Id, r.Status)
	}
	check(t, p, all(2, 2, 1, 1, 0, 3, 3, 0, 0, 0, 1))
	a.Close(websocket.StatusNormalClosure, "")
	b.Close(websocket.StatusNormalClosure, "")
	check(t, p, all(0, 2, 1, 1, 0, 3, 3, 0, 0, 0, 1))

	// Requests that are no upgrade, with room for a connection.
	for _, u := range []string{"http://" + addrs[0] + "/", "http://" + addrs[0] + "/elsewhere"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("GET %s: %s", u, resp.Status)
		}
	}

	// Messages that are no call close their connection.
	big, _ := proto.Marshal(&rpcpb.Call{Id: 1, Service: "S", Method: "M", Params: make([]byte, 600)})
	for i, m := range []struct {
		typ websocket.MessageType
		msg []byte
	}{
		{websocket.MessageBinary, big},
		{websocket.MessageText, []byte("not base64!")},
		{websocket.MessageBinary, []byte{0xff, 0xff, 0xff}},
	} {
		c, _, err := wsDial(t, "ws://"+addrs[0], nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.Write(ctx, m.typ, m.msg); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); websocket.CloseStatus(err) == -1 {
			t.Fatalf("message %d: not closed: %v", i, err)
		}
		cancel()
		check(t, p, []sample{{"udpgate_ws_connections", nil, 0}})
	}
	check(t, p, all(0, 5, 1, 1, 2, 6, 3, 1, 1, 1, 1))

	// On the second listener, a client that does not answer pings, and
	// one that does but sends nothing.
	if _, _, err := wsDial(t, "ws://"+addrs[1], nil); err != nil {
		t.Fatal(err)
	}
	c, _, err := wsDial(t, "ws://"+addrs[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if _, _, err := c.Read(rctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("an idle connection: %v", err)
	}
	check(t, quiet, []sample{
		{"udpgate_ws_connections", nil, 0},
		{"udpgate_ws_connections_accepted_total", nil, 2},
		{"udpgate_ws_connections_closed_total", []string{"reason", "idle"}, 1},
		{"udpgate_ws_connections_closed_total", []string{"reason", "no_pong"}, 1},
	})
}
