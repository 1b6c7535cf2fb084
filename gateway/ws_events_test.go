package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/ws"
)

// wsPort returns the port of a ws listener's URL.
func wsPort(t *testing.T, url string) uint16 {
	t.Helper()
	rest := url[strings.LastIndex(url, ":")+1:]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	p, err := strconv.ParseUint(rest, 10, 16)
	if err != nil {
		t.Fatalf("port of %s: %v", url, err)
	}
	return uint16(p)
}

func dialWSWith(t *testing.T, url string, h http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// wsEvent decodes an event message, checking the headers that every
// event has against its body.
func wsEvent(t *testing.T, m *nats.Msg, typ string) schemas.WSEvent {
	t.Helper()
	var ev schemas.WSEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("event body %q: %v", m.Data, err)
	}
	h := m.Header
	if h.Get(schemas.HeaderType) != typ || h.Get(schemas.HeaderWSConnection) != ev.Connection ||
		h.Get(schemas.HeaderRemote) != ev.Remote || h.Get(schemas.HeaderLocal) != ev.Local ||
		!strings.HasSuffix(h.Get(schemas.HeaderSource), "/ws") || h.Get(schemas.HeaderSpecVersion) != schemas.SpecVersion {
		t.Fatalf("event headers %v, body %+v, want type %s", h, ev, typ)
	}
	if strings.Count(ev.Connection, ".") != 1 || schemas.EscapeToken(strings.ReplaceAll(ev.Connection, ".", "")) != strings.ReplaceAll(ev.Connection, ".", "") {
		t.Fatalf("connection id %q is not two subject tokens", ev.Connection)
	}
	return ev
}

// connectionOf makes a call on c and returns the connection id its
// request message carried, as a worker sees it.
func connectionOf(t *testing.T, c *websocket.Conn, seen *nats.Subscription) string {
	t.Helper()
	r := wsCall(t, c, envelope(t, 7, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false)
	if r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("call: %v %s", r.Status, r.Error)
	}
	m, err := seen.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get(schemas.HeaderWSConnection)
}

// TestWSEvents: $connect carries the upgrade request and the id the
// connection's calls carry; $disconnect the client's close code and
// reason, or the gateway's; both are captured.
func TestWSEvents(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{Path: "/rpc"})
	port := wsPort(t, url)
	nc := natstest.Connect(t, s)
	connects, err := nc.SubscribeSync(schemas.WSEventSubject("udpgate", port, schemas.WSConnect))
	if err != nil {
		t.Fatal(err)
	}
	disconnects, err := nc.SubscribeSync(schemas.WSEventSubject("udpgate", port, schemas.WSDisconnect))
	if err != nil {
		t.Fatal(err)
	}
	calls, err := nc.SubscribeSync(schemas.InSubject("udpgate", port) + ".*.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	h := http.Header{"X-Client": {"test 1"}}
	c, _, err := dialWSWith(t, url+"?token=abc&v=2", h)
	if err != nil {
		t.Fatal(err)
	}
	m, err := connects.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ev := wsEvent(t, m, schemas.TypeWSConnect)
	if ev.Path != "/rpc" || ev.Query != "token=abc&v=2" || ev.Headers["X-Client"][0] != "test 1" || ev.Headers["Sec-Websocket-Key"] != nil ||
		!strings.HasPrefix(ev.Remote, "127.0.0.1:") || ev.Local != "127.0.0.1:"+strconv.Itoa(int(port)) {
		t.Fatalf("$connect %+v", ev)
	}
	if id := connectionOf(t, c, calls); id != ev.Connection {
		t.Fatalf("a call carries connection %q, $connect %q", id, ev.Connection)
	}
	if err := c.Close(4000, "bye now"); err != nil {
		t.Fatal(err)
	}
	m, err = disconnects.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dev := wsEvent(t, m, schemas.TypeWSDisconnect)
	if dev.Connection != ev.Connection || dev.Code != 4000 || dev.Reason != "bye now" || dev.ClosedBy != "client" ||
		m.Header.Get(schemas.HeaderWSCloseCode) != "4000" || m.Header.Get(schemas.HeaderWSClosedBy) != "client" {
		t.Fatalf("$disconnect %+v, headers %v", dev, m.Header)
	}

	// A connection the gateway closes: too large a message.
	c2, _, err := dialWSWith(t, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c2.Write(ctx, websocket.MessageBinary, make([]byte, 20000))
	c2.Read(ctx)
	m, err = disconnects.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if dev := wsEvent(t, m, schemas.TypeWSDisconnect); dev.Code != int(websocket.StatusMessageTooBig) || dev.ClosedBy != "gateway" {
		t.Fatalf("$disconnect of a message too big %+v", dev)
	}

	// Both connections' events are in the capture stream, under the
	// events' subjects.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	waitFor(t, "4 events captured", func() bool { return g.Stats().Ingress[name].EventsCaptured == 4 })
	for _, route := range []string{schemas.WSConnect, schemas.WSDisconnect} {
		m, err := js.Stream(ctx, schemas.StreamIn)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := m.GetLastMsgForSubject(ctx, schemas.WSEventSubject("udpgate", port, route))
		if err != nil {
			t.Fatalf("captured %s: %v", route, err)
		}
		if msg.Header.Get(schemas.HeaderWSConnection) == "" || msg.Header.Get(schemas.HeaderID) == "" {
			t.Fatalf("captured %s headers %v", route, msg.Header)
		}
	}
	if st := g.Stats().Ingress[name]; st.Events != 4 || st.EventCaptureFailed != 0 {
		t.Errorf("events %d, capture failed %d", st.Events, st.EventCaptureFailed)
	}
}

// TestWSConnectRefused: a $connect handler, any NATS client's plain
// Respond, refuses connections without a token: the client gets the
// handler's close code and reason, and no call is read from it.
func TestWSConnectRefused(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{ConnectWait: 5 * time.Second})
	port := wsPort(t, url)
	nc := natstest.Connect(t, s)
	if _, err := nc.Subscribe(schemas.WSEventSubject("udpgate", port, schemas.WSConnect), func(m *nats.Msg) {
		var ev schemas.WSEvent
		json.Unmarshal(m.Data, &ev)
		if strings.Contains(ev.Query, "token=good") {
			m.Respond(nil) // any reply without a close code accepts
			return
		}
		r := nats.NewMsg(m.Reply)
		r.Header.Set(schemas.HeaderWSCloseCode, "4401")
		r.Data = []byte("a token is required")
		m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	disconnects, err := nc.SubscribeSync(schemas.WSEventSubject("udpgate", port, schemas.WSDisconnect))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	bad, _, err := dialWSWith(t, url+"?token=bad", nil)
	if err != nil {
		t.Fatal(err)
	}
	bad.Write(ctx, websocket.MessageBinary, envelope(t, 1, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}))
	_, _, err = bad.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4401 || ce.Reason != "a token is required" {
		t.Fatalf("refused connection's read: %v, want close 4401", err)
	}

	good, _, err := dialWSWith(t, url+"?token=good", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := wsCall(t, good, envelope(t, 2, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false); r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("accepted connection's call: %v", r.Status)
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	st := g.Stats()
	if w := st.WS[name]; w.RefusedConnect != 1 || w.Accepted != 2 || w.MessagesIn != 1 {
		t.Errorf("ws stats %+v", w)
	}
	if r := st.RPC[name]; r.Calls != 1 {
		t.Errorf("calls %d: the refused connection's call was read", r.Calls)
	}
	// A refused connection has no $disconnect (as in API Gateway).
	if m, err := disconnects.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("$disconnect of a refused connection: %v", m.Header)
	}
}

// TestWSPush: a worker pushes to one connection among several and closes
// another; pushes to what is not open are answered with an error.
func TestWSPush(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{})
	port := wsPort(t, url)
	nc := natstest.Connect(t, s)
	calls, err := nc.SubscribeSync(schemas.InSubject("udpgate", port) + ".*.*")
	if err != nil {
		t.Fatal(err)
	}
	disconnects, err := nc.SubscribeSync(schemas.WSEventSubject("udpgate", port, schemas.WSDisconnect))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var conns [3]*websocket.Conn
	var ids [3]string
	for i := range conns {
		c, _, err := dialWSWith(t, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		conns[i], ids[i] = c, connectionOf(t, c, calls)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	read := func(c *websocket.Conn) chan string {
		got := make(chan string, 1)
		go func() {
			typ, b, err := c.Read(ctx)
			if err != nil {
				got <- err.Error()
				return
			}
			got <- typ.String() + " " + string(b)
		}()
		return got
	}
	got := [3]chan string{read(conns[0]), read(conns[1]), read(conns[2])}

	// A binary push to the second, a text push to the third.
	push := func(id, body string, text bool) *nats.Msg {
		m := nats.NewMsg(schemas.WSPushSubject("udpgate", id, schemas.WSPush))
		m.Data = []byte(body)
		if text {
			m.Header.Set(schemas.HeaderWSMessage, "text")
		}
		r, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("push to %s: %v", id, err)
		}
		return r
	}
	if r := push(ids[1], "hello second", false); r.Header.Get(schemas.HeaderStatus) == schemas.StatusError {
		t.Fatalf("push refused: %v %s", r.Header, r.Data)
	}
	if g := <-got[1]; g != "MessageBinary hello second" {
		t.Fatalf("second connection got %q", g)
	}
	push(ids[2], "hello third", true)
	if g := <-got[2]; g != "MessageText hello third" {
		t.Fatalf("third connection got %q", g)
	}
	select {
	case g := <-got[0]:
		t.Fatalf("the first connection got %q", g)
	case <-time.After(100 * time.Millisecond):
	}

	// A worker closes the second connection.
	m := nats.NewMsg(schemas.WSPushSubject("udpgate", ids[1], schemas.WSClose))
	m.Header.Set(schemas.HeaderWSCloseCode, "4002")
	m.Data = []byte("session over")
	if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var ce websocket.CloseError
	if _, _, err := conns[1].Read(ctx); !errors.As(err, &ce) || ce.Code != 4002 || ce.Reason != "session over" {
		t.Fatalf("closed connection's read: %v", err)
	}
	dm, err := disconnects.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev := wsEvent(t, dm, schemas.TypeWSDisconnect); ev.Connection != ids[1] || ev.Code != 4002 || ev.ClosedBy != "gateway" {
		t.Fatalf("$disconnect %+v", ev)
	}

	// What cannot be pushed.
	for _, tt := range []struct {
		name, id, body string
		text           bool
		want           string
	}{
		{"closed", ids[1], "x", false, schemas.WSErrUnknown},
		{"not text", ids[2], "\xff\xfe", true, schemas.WSErrNotText},
		{"too large", ids[2], strings.Repeat("x", ws.MaxPushBytes+1), false, schemas.WSErrTooLarge},
	} {
		if r := push(tt.id, tt.body, tt.text); r.Header.Get(schemas.HeaderStatus) != schemas.StatusError || r.Header.Get(schemas.HeaderWSError) != tt.want {
			t.Errorf("%s: answer %v %q, want %s", tt.name, r.Header, r.Data, tt.want)
		}
	}
	// An id no node holds: no responders.
	m = nats.NewMsg(schemas.WSPushSubject("udpgate", "000000000000.1", schemas.WSPush))
	if _, err := nc.RequestMsg(m, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("push to an unknown node's connection: %v, want no responders", err)
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	if w := g.Stats().WS[name]; w.Pushes != 2 || w.PushRefused != 3 || w.WorkerClose != 1 {
		t.Errorf("ws stats %+v", w)
	}
}

// TestWSSlowClient: a client that does not read its pushes is closed
// once MaxPush wait, and the push that did not fit is refused.
func TestWSSlowClient(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{MaxPush: 2})
	port := wsPort(t, url)
	nc := natstest.Connect(t, s)
	connects, err := nc.SubscribeSync(schemas.WSEventSubject("udpgate", port, schemas.WSConnect))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := dialWSWith(t, url, nil); err != nil { // never reads
		t.Fatal(err)
	}
	m, err := connects.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := wsEvent(t, m, schemas.TypeWSConnect).Connection
	body := make([]byte, ws.MaxPushBytes)
	slow := false
	// The socket's buffers take a few megabytes; then the writer waits,
	// and the queue fills.
	for i := 0; i < 2000 && !slow; i++ {
		m := nats.NewMsg(schemas.WSPushSubject("udpgate", id, schemas.WSPush))
		m.Data = body
		r, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch r.Header.Get(schemas.HeaderWSError) {
		case "":
		case schemas.WSErrSlow, schemas.WSErrUnknown:
			slow = true
		default:
			t.Fatalf("push %d: %v %s", i, r.Header, r.Data)
		}
	}
	if !slow {
		t.Fatal("2000 pushes of 64 KiB to a client that does not read were all taken")
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	waitFor(t, "the slow connection closed", func() bool {
		w := g.Stats().WS[name]
		return w.SlowClose == 1 && w.Connections == 0
	})
}

// TestWSGuard: the guard refuses upgrades from sources it does not allow
// (403) and over their rate (429), and answers calls over the source's
// or the connection's rate STATUS_RESOURCE_EXHAUSTED, unpublished.
func TestWSGuard(t *testing.T) {
	newGuard := func(c guard.Config) *guard.Guard {
		gd, err := guard.New(c)
		if err != nil {
			t.Fatal(err)
		}
		return gd
	}
	call := func(t *testing.T, c *websocket.Conn, id uint64) *rpcpb.Reply {
		return wsCall(t, c, envelope(t, id, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false)
	}
	t.Run("source", func(t *testing.T) {
		g := &Gateway{}
		url, _ := wsGateway(t, g, &ws.Server{Guard: newGuard(guard.Config{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})})
		_, resp, err := dialWSWith(t, url, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("upgrade from a source not allowed: %v, %v", resp, err)
		}
		if w := g.Stats().WS[schemas.Listener(wsPort(t, url), schemas.ProtocolWS)]; w.RefusedSource != 1 || w.Accepted != 0 {
			t.Errorf("ws stats %+v", w)
		}
	})
	t.Run("rate", func(t *testing.T) {
		g := &Gateway{}
		// 4 at once, then one every 100 s: the upgrade and 3 calls.
		url, _ := wsGateway(t, g, &ws.Server{Guard: newGuard(guard.Config{Rate: 0.01, Burst: 4})})
		c, _, err := dialWSWith(t, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range uint64(5) {
			r := call(t, c, i+1)
			if want := rpcpb.Status_STATUS_OK; i >= 3 {
				want = rpcpb.Status_STATUS_RESOURCE_EXHAUSTED
				if r.Status != want || !strings.Contains(r.Error, "source") {
					t.Fatalf("call %d: %v %q, want %v", i+1, r.Status, r.Error, want)
				}
			} else if r.Status != want {
				t.Fatalf("call %d: %v %q", i+1, r.Status, r.Error)
			}
		}
		_, resp, err := dialWSWith(t, url, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("upgrade over the rate: %v, %v", resp, err)
		}
		name := schemas.Listener(wsPort(t, url), schemas.ProtocolWS)
		st := g.Stats()
		if w := st.WS[name]; w.RateLimited != 2 || w.RefusedRate != 1 {
			t.Errorf("ws stats %+v", w)
		}
		if r := st.RPC[name]; r.Calls != 5 {
			t.Errorf("calls %d", r.Calls)
		}
		if gs := st.Guard[name]; gs.RateLimited != 3 {
			t.Errorf("guard stats %+v", gs)
		}
	})
	t.Run("connection", func(t *testing.T) {
		g := &Gateway{}
		url, _ := wsGateway(t, g, &ws.Server{ConnRate: 0.01}) // 1 at once, then one every 100 s
		for range 2 {                                         // each connection has its own bucket
			c, _, err := dialWSWith(t, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r := call(t, c, 1); r.Status != rpcpb.Status_STATUS_OK {
				t.Fatalf("first call: %v", r.Status)
			}
			if r := call(t, c, 2); r.Status != rpcpb.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(r.Error, "connection") {
				t.Fatalf("second call: %v %q", r.Status, r.Error)
			}
		}
		if w := g.Stats().WS[schemas.Listener(wsPort(t, url), schemas.ProtocolWS)]; w.RateLimited != 2 {
			t.Errorf("ws stats %+v", w)
		}
	})
}

// TestWSTrace: a traced ws call's egress span names the listener and the
// TCP peer, as a UDP listener's names its socket.
func TestWSTrace(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	g := &Gateway{TracerProvider: tp, TraceSample: 1}
	url, _ := wsGateway(t, g, &ws.Server{})
	c, _, err := dialWSWith(t, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := wsCall(t, c, envelope(t, 1, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1}), false); r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("call: %v", r.Status)
	}
	name := schemas.Listener(wsPort(t, url), schemas.ProtocolWS)
	var egress sdktrace.ReadOnlySpan
	waitFor(t, "the egress span", func() bool {
		for _, s := range spans.Ended() {
			if strings.HasPrefix(s.Name(), "egress") {
				egress = s
				return true
			}
		}
		return false
	})
	attrs := map[string]string{}
	for _, a := range egress.Attributes() {
		attrs[string(a.Key)] = a.Value.String()
	}
	if egress.Name() != "egress "+name || attrs["udpgate.listener"] != name || attrs["network.transport"] != "tcp" ||
		!strings.HasPrefix(attrs["network.peer.address"], "127.0.0.1") {
		t.Errorf("egress span %q, attributes %v", egress.Name(), attrs)
	}
}

// TestWSPushFromSDK: a worker of the Go SDK pushes to the connection of
// the call it serves (RPCRequest.Connection), and learns when a
// connection is gone or a push is refused.
func TestWSPushFromSDK(t *testing.T) {
	g := &Gateway{}
	url, s := wsGateway(t, g, &ws.Server{})
	port := wsPort(t, url)
	pusher := natstest.Connect(t, s)
	conns := make(chan string, 4)
	startWorker(t, s, workers.Direct, "greeter", schemas.RPCSubject("udpgate", port, "Greeter", "Hello"),
		func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			conns <- r.RPC.Connection
			if err := workers.Push(ctx, pusher, "", r.RPC.Connection, []byte("welcome")); err != nil {
				return err
			}
			w.Write([]byte("hello"))
			return nil
		})
	c, _, err := dialWSWith(t, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, envelope(t, 1, "Greeter", "Hello", nil)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 2 { // the push and the reply, in the order the writer took them
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var r rpcpb.Reply
		if proto.Unmarshal(b, &r) == nil && r.Id == 1 {
			got = append(got, "reply "+string(r.Body))
		} else {
			got = append(got, "push "+string(b))
		}
	}
	slices.Sort(got)
	if strings.Join(got, ",") != "push welcome,reply hello" {
		t.Fatalf("the client read %q", got)
	}
	conn := <-conns
	if err := workers.PushText(ctx, pusher, "udpgate", conn, "\xff"); !errors.As(err, new(*workers.PushError)) {
		t.Errorf("a text push that is not UTF-8: %v", err)
	}
	if err := workers.CloseConnection(ctx, pusher, "", conn, 4000, "done"); err != nil {
		t.Fatal(err)
	}
	c.Read(ctx) // the close frame
	waitFor(t, "the connection closed", func() bool { return g.Stats().WS[schemas.Listener(port, schemas.ProtocolWS)].Connections == 0 })
	if err := workers.Push(ctx, pusher, "", conn, []byte("late")); !errors.Is(err, workers.ErrNoConnection) {
		t.Errorf("a push to a closed connection: %v", err)
	}
	if err := workers.Push(ctx, pusher, "", "000000000000.1", []byte("lost")); !errors.Is(err, workers.ErrNoConnection) {
		t.Errorf("a push to no node's connection: %v", err)
	}
}
