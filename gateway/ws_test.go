package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
	"github.com/udpgate/udpgate/ws"
)

// wsGateway runs a gateway with one ws listener, srv, whose GetRandom the
// built-in places worker serves (through the SDK), and returns the
// listener's URL and the NATS server.
func wsGateway(t *testing.T, g *Gateway, srv *ws.Server) (string, *server.Server) {
	t.Helper()
	s := natstest.RunServer(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	g.NATS = natstest.Connect(t, s)
	g.Node = "ws-node"
	g.WebSockets = append(g.WebSockets, srv)
	serveGateway(t, g)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	startWorker(t, s, workers.Direct, "places", schemas.RPCSubject("udpgate", port, builtin.PlacesService, builtin.PlacesMethod), workers.HandlerFunc(builtin.Places{}.Handle))
	return "ws://" + ln.Addr().String() + srv.Path, s
}

func dialWS(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// wsCall sends the envelope b on c, as a binary message or as base64 in a
// text message, and returns the Reply that comes back in the same form.
func wsCall(t *testing.T, c *websocket.Conn, b []byte, text bool) *rpcpb.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ := websocket.MessageBinary
	if text {
		typ, b = websocket.MessageText, []byte(base64.StdEncoding.EncodeToString(b))
	}
	if err := c.Write(ctx, typ, b); err != nil {
		t.Fatalf("write: %v", err)
	}
	return wsRead(t, ctx, c, text)
}

func wsRead(t *testing.T, ctx context.Context, c *websocket.Conn, text bool) *rpcpb.Reply {
	t.Helper()
	got, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if text {
		if got != websocket.MessageText {
			t.Fatalf("a reply to a text message came as %v", got)
		}
		if b, err = base64.StdEncoding.DecodeString(string(b)); err != nil {
			t.Fatalf("a text reply is not base64: %v", err)
		}
	} else if got != websocket.MessageBinary {
		t.Fatalf("a reply to a binary message came as %v", got)
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(b, &r); err != nil {
		t.Fatalf("reply % x is not an envelope: %v", b, err)
	}
	return &r
}

func TestWSGetRandom(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{})
	port := strings.TrimSuffix(url[strings.LastIndex(url, ":")+1:], "/")
	// A plain subscription sees the requests as every worker does (calls
	// only: PREFIX.in.PORT.> would take the connection events too).
	nc := natstest.Connect(t, s)
	seen, err := nc.SubscribeSync("udpgate.in." + port + ".*.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		text bool
	}{{"binary", false}, {"text", true}} {
		t.Run(mode.name, func(t *testing.T) {
			c := dialWS(t, url)
			var conn string
			for i := range 3 {
				id := uint64(100 + i)
				r := wsCall(t, c, envelope(t, id, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 2}), mode.text)
				if r.Id != id || r.Status != rpcpb.Status_STATUS_OK {
					t.Fatalf("reply id %d status %v (%s), want %d OK", r.Id, r.Status, r.Error, id)
				}
				var places placespb.GetRandomResponse
				if err := proto.Unmarshal(r.Body, &places); err != nil || len(places.Places) != 2 {
					t.Fatalf("body: %v places, %v", len(places.Places), err)
				}
				m, err := seen.NextMsg(5 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				h := m.Header
				if h.Get(schemas.HeaderType) != schemas.TypeRPC || h.Get(schemas.HeaderSource) != "udpgate://ws-node/"+port+"/ws" ||
					h.Get(schemas.HeaderRPCID) != strconv.FormatUint(id, 10) || !strings.HasPrefix(h.Get(schemas.HeaderRemote), "127.0.0.1:") ||
					h.Get(schemas.HeaderLocal) != "127.0.0.1:"+port {
					t.Fatalf("request headers %v", h)
				}
				c := h.Get(schemas.HeaderWSConnection)
				if tokens := strings.Split(c, "."); len(tokens) != 2 || conn != "" && c != conn || schemas.EscapeToken(tokens[0]) != tokens[0] || schemas.EscapeToken(tokens[1]) != tokens[1] {
					t.Fatalf("connection id %q, the connection's first %q", c, conn)
				}
				conn = c
			}
		})
	}
	name := "/ws"
	for n := range g.Stats().WS {
		name = n
	}
	// A reply is counted once written, so the client may read it first.
	waitFor(t, "the capture copies and the replies counted", func() bool {
		st := g.Stats()
		return st.Ingress[name].Captured == 6 && st.WS[name].MessagesOut == 6
	})
	st := g.Stats()
	if w := st.WS[name]; w.Accepted != 2 || w.MessagesIn != 6 || w.MessagesOut != 6 {
		t.Errorf("ws stats %+v", w)
	}
	if r := st.RPC[name]; r.Calls != 6 || r.Replies != 6 {
		t.Errorf("rpc stats %+v", r)
	}
}

func TestWSStatuses(t *testing.T) {
	g := &Gateway{Deadline: 500 * time.Millisecond}
	url, s := wsGateway(t, g, &ws.Server{Path: "/rpc", MaxInFlight: 1})
	port := strings.TrimSuffix(url[strings.LastIndex(url, ":")+1:], "/rpc")
	// A group that takes Slow/Wait and never answers.
	nc := natstest.Connect(t, s)
	if _, err := nc.QueueSubscribe("udpgate.in."+port+".Slow.Wait", "slow", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server has the subscription
		t.Fatal(err)
	}
	c := dialWS(t, url)
	start := time.Now()
	if r := wsCall(t, c, envelope(t, 1, "Nobody", "Serves", nil), false); r.Id != 1 || r.Status != rpcpb.Status_STATUS_UNIMPLEMENTED {
		t.Fatalf("unserved: id %d status %v", r.Id, r.Status)
	}
	if d := time.Since(start); d >= g.Deadline {
		t.Errorf("STATUS_UNIMPLEMENTED after %v, the deadline", d)
	}
	// One call in flight (MaxInFlight 1): the next is refused at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, envelope(t, 2, "Slow", "Wait", nil)); err != nil {
		t.Fatal(err)
	}
	if r := wsCall(t, c, envelope(t, 3, "Slow", "Wait", nil), true); r.Id != 3 || r.Status != rpcpb.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("beyond MaxInFlight: id %d status %v", r.Id, r.Status)
	}
	if r := wsRead(t, ctx, c, false); r.Id != 2 || r.Status != rpcpb.Status_STATUS_DEADLINE_EXCEEDED {
		t.Fatalf("unanswered: id %d status %v", r.Id, r.Status)
	}
	// The slot is free again.
	if r := wsCall(t, c, envelope(t, 4, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false); r.Id != 4 || r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("after the deadline: id %d status %v", r.Id, r.Status)
	}
	for _, w := range g.Stats().WS {
		if w.Busy != 1 {
			t.Errorf("busy %d, want 1", w.Busy)
		}
	}
}

func TestWSOrigin(t *testing.T) {
	g := &Gateway{}
	url, _ := wsGateway(t, g, &ws.Server{Origins: []string{"*.example.com", "https://app.example.org"}})
	tests := []struct {
		origin string
		ok     bool
	}{
		{"", true}, // not a browser
		{"http://" + strings.TrimPrefix(strings.TrimSuffix(url, "/"), "ws://"), true}, // same origin
		{"https://www.example.com", true},
		{"https://app.example.org", true},
		{"http://app.example.org", false},
		{"https://evil.example.net", false},
		{"null", false},
	}
	refused := 0
	for _, tt := range tests {
		t.Run(tt.origin, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			h := http.Header{}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c.Close(websocket.StatusNormalClosure, "")
				return
			}
			refused++
			if err == nil {
				c.CloseNow()
				t.Fatal("accepted")
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("refused with %v, want 403", resp)
			}
		})
	}
	for _, w := range g.Stats().WS {
		if w.RefusedOrigin != uint64(refused) {
			t.Errorf("refused origins %d, want %d", w.RefusedOrigin, refused)
		}
	}
}

// TestWSBadMessages sends what is not a call: each closes its connection
// with its status, is counted, and the listener serves the next
// connection.
func TestWSBadMessages(t *testing.T) {
	g := &Gateway{MaxDatagram: 512}
	url, _ := wsGateway(t, g, &ws.Server{})
	big := envelope(t, 1, "InterestingPlaces", "GetRandom", nil)
	big = append(big, make([]byte, 600)...)
	tests := []struct {
		name string
		typ  websocket.MessageType
		msg  []byte
		want websocket.StatusCode
	}{
		{"oversize binary", websocket.MessageBinary, big, websocket.StatusMessageTooBig},
		{"oversize text", websocket.MessageText, []byte(base64.StdEncoding.EncodeToString(big)), websocket.StatusMessageTooBig},
		{"bad base64", websocket.MessageText, []byte("not base64!"), websocket.StatusInvalidFramePayloadData},
		{"bad envelope", websocket.MessageBinary, []byte{0xff, 0xff, 0xff}, websocket.StatusInvalidFramePayloadData},
		{"no method", websocket.MessageText, []byte(base64.StdEncoding.EncodeToString(envelope(t, 1, "S", "", nil))), websocket.StatusInvalidFramePayloadData},
		{"empty", websocket.MessageBinary, nil, websocket.StatusInvalidFramePayloadData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialWS(t, url)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Write(ctx, tt.typ, tt.msg); err != nil {
				t.Fatal(err)
			}
			_, _, err := c.Read(ctx)
			if got := websocket.CloseStatus(err); got != tt.want {
				t.Fatalf("closed with %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	c := dialWS(t, url)
	if r := wsCall(t, c, envelope(t, 9, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), true); r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("after the bad messages: status %v", r.Status)
	}
	for _, w := range g.Stats().WS {
		if w.TooLarge != 2 || w.BadBase64 != 1 || w.Malformed != 3 {
			t.Errorf("ws stats %+v", w)
		}
	}
}

func TestWSMaxConnections(t *testing.T) {
	g := &Gateway{}
	url, _ := wsGateway(t, g, &ws.Server{MaxConnections: 2})
	var name string
	for n := range g.Stats().WS {
		name = n
	}
	for round := range 3 {
		a, b := dialWS(t, url), dialWS(t, url)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, resp, err := websocket.Dial(ctx, url, nil)
		cancel()
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("round %d: a third connection: %v, %v; want 503", round, resp, err)
		}
		for _, c := range []*websocket.Conn{a, b} {
			if r := wsCall(t, c, envelope(t, 1, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false); r.Status != rpcpb.Status_STATUS_OK {
				t.Fatalf("status %v", r.Status)
			}
			c.Close(websocket.StatusNormalClosure, "")
		}
		waitFor(t, "the connections closed", func() bool { return g.Stats().WS[name].Connections == 0 })
	}
	if w := g.Stats().WS[name]; w.RefusedFull != 3 || w.Accepted != 6 {
		t.Errorf("ws stats %+v", w)
	}
}

// TestWSIdle: a connection that sends nothing is closed after Idle; one
// that answers pings but sends nothing too (pongs are not messages).
func TestWSIdle(t *testing.T) {
	g := &Gateway{}
	url, _ := wsGateway(t, g, &ws.Server{Idle: 300 * time.Millisecond, Ping: 100 * time.Millisecond})
	c := dialWS(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := c.Read(ctx) // answers pings meanwhile
	if got := websocket.CloseStatus(err); got != websocket.StatusPolicyViolation {
		t.Fatalf("closed with %v (%v), want policy violation", got, err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("not closed")
	}
	for _, w := range g.Stats().WS {
		if w.IdleClose != 1 {
			t.Errorf("ws stats %+v", w)
		}
	}
}
