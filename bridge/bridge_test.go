package bridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestBindReceiveSend: a lease on port 0 takes a port of the range; a
// datagram to it arrives on its SSE stream, read by an SSE parser, and in
// the capture stream; a reply sent through the binding comes from the
// bound port, since a connected client accepts it.
func TestBindReceiveSend(t *testing.T) {
	e := newEnv(t, nil, true)
	in := e.bind(t, map[string]any{"port": 0})
	p := port(t, in)
	if p < e.ports.Low || p > e.ports.High {
		t.Fatalf("bound %s, outside %v", in.LocalAddr, e.ports)
	}
	if id, err := uuid.Parse(in.ID); err != nil || id.Version() != 7 {
		t.Errorf("id %q is not a UUIDv7 (%v)", in.ID, err)
	}
	if in.LeaseSecs != 300 || in.Node != "bridge-test" || in.Kind != KindHTTP || in.Subject != "udpgate.in."+strconv.Itoa(int(p)) ||
		!in.LastHeartbeat.Equal(in.CreatedAt) || !strings.HasPrefix(in.LocalAddr, "0.0.0.0:") {
		t.Errorf("bind answered %+v", in)
	}

	// The gateway serves it as a listener of its own, and says so.
	leased := false
	for _, l := range e.g.Status(context.Background()).Listeners {
		leased = leased || (l.Origin == "lease "+in.ID && l.Listener == schemas.Listener(p, schemas.ProtocolRaw))
	}
	if !leased {
		t.Errorf("the gateway's status lists no listener %d/raw of origin lease %s", p, in.ID)
	}

	sse := e.openSSE(t, "/v1/udp/recv/"+in.ID)
	waitFor(t, "the SSE reader", func() bool { return e.b.Status().Bindings[0].Readers == 1 })
	client := dial(t, p)
	if _, err := client.Write([]byte("hello\nbridge")); err != nil {
		t.Fatal(err)
	}
	ev := sse.next(t)
	if ev.Type != "datagram" {
		t.Fatalf("event %+v, want type datagram", ev)
	}
	var got Event
	if err := json.Unmarshal([]byte(ev.Data), &got); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	payload, err := base64.StdEncoding.DecodeString(got.Payload)
	if err != nil || string(payload) != "hello\nbridge" || got.BindingID != in.ID || got.Src != client.LocalAddr().String() {
		t.Errorf("event %+v (payload %q, %v), want hello from %s", got, payload, err, client.LocalAddr())
	}
	var raw map[string]any
	json.Unmarshal([]byte(ev.Data), &raw)
	if at, err := time.Parse(time.RFC3339, raw["received_at"].(string)); err != nil || at.IsZero() {
		t.Errorf("received_at %v is not RFC 3339: %v", raw["received_at"], err)
	}

	code, body := e.do(t, "POST", "/v1/udp/send/"+in.ID, testToken, map[string]string{
		"dest": client.LocalAddr().String(), "payload": base64.StdEncoding.EncodeToString([]byte("pong")),
	})
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"bytes_sent":4}` {
		t.Fatalf("send: %d %s", code, body)
	}
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64)
	n, err := client.Read(buf) // a connected socket: only from the bound port
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}

	// The datagram is in the capture, as any listener's.
	_, js := natstest.JetStream(t, e.srv)
	subject := schemas.InSubject(schemas.DefaultPrefix, p)
	waitFor(t, "the capture copy", func() bool {
		st, err := js.Stream(context.Background(), schemas.StreamIn)
		if err != nil {
			return false
		}
		m, err := st.GetLastMsgForSubject(context.Background(), subject)
		if err != nil {
			return false
		}
		if string(m.Data) != "hello\nbridge" || m.Header.Get(schemas.HeaderRemote) != client.LocalAddr().String() {
			t.Fatalf("captured %q from %s", m.Data, m.Header.Get(schemas.HeaderRemote))
		}
		return true
	})

	st := e.b.Status()
	if len(st.Bindings) != 1 || st.Node != "bridge-test" || st.Bindings[0].DatagramsIn != 1 || st.Bindings[0].DatagramsOut != 1 {
		t.Errorf("status %+v", st)
	}

	// Deleting it ends the stream with a closed event, and frees the port.
	code, body = e.do(t, "DELETE", "/v1/udp/bind/"+in.ID, testToken, nil)
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"status":"unbound"}` {
		t.Fatalf("delete: %d %s", code, body)
	}
	ev = sse.next(t)
	var closed Closed
	if json.Unmarshal([]byte(ev.Data), &closed); ev.Type != "closed" || closed.Reason != "deleted" || closed.BindingID != in.ID {
		t.Errorf("last event %+v, want closed (deleted)", ev)
	}
	if _, ok := <-sse.Events; ok {
		t.Error("the stream goes on after its closed event")
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: int(p)})
	if err != nil {
		t.Fatalf("port %d not free after delete: %v", p, err)
	}
	c.Close()
	if code, _ := e.do(t, "POST", "/v1/udp/heartbeat/"+in.ID, testToken, nil); code != http.StatusNotFound {
		t.Errorf("heartbeat after delete: %d, want 404", code)
	}
}

// TestSSEReaders: several streams of one binding each get every
// datagram, and an idle stream gets keepalive comments.
func TestSSEReaders(t *testing.T) {
	e := newEnv(t, func(b *Bridge) { b.KeepAlive = 10 * time.Millisecond }, true)
	in := e.bind(t, map[string]any{"addr": "127.0.0.1"})
	s1 := e.openSSE(t, "/v1/udp/recv/"+in.ID)
	s2 := e.openSSE(t, "/v1/udp/recv/"+in.ID)
	waitFor(t, "two readers", func() bool { return e.b.Status().Bindings[0].Readers == 2 })
	waitFor(t, "keepalive comments", func() bool { return s1.commentCount() >= 3 })
	client := dial(t, port(t, in))
	for _, m := range []string{"one", "two", "three"} {
		client.Write([]byte(m))
	}
	for i, s := range []*sseStream{s1, s2} {
		for _, want := range []string{"one", "two", "three"} {
			var ev Event
			json.Unmarshal([]byte(s.next(t).Data), &ev)
			if got, _ := base64.StdEncoding.DecodeString(ev.Payload); string(got) != want {
				t.Errorf("reader %d: %q, want %q", i, got, want)
			}
		}
	}
}

// TestLease: a heartbeat keeps the lease for its length from then; a
// lease without one is reaped, its stream told why, its port freed.
func TestLease(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	e := newEnv(t, func(b *Bridge) { b.now = clock.Now }, true)
	in := e.bind(t, map[string]any{"lease_secs": 10})
	if in.LeaseSecs != 10 || !in.ExpiresAt.Equal(in.CreatedAt.Add(10*time.Second)) {
		t.Fatalf("bind %+v", in)
	}
	sse := e.openSSE(t, "/v1/udp/recv/"+in.ID)
	for range 3 { // 24 s with heartbeats, more than twice the lease
		clock.Add(8 * time.Second)
		e.b.reap()
		code, body := e.do(t, "POST", "/v1/udp/heartbeat/"+in.ID, testToken, nil)
		var hb heartbeatReply
		if json.Unmarshal(body, &hb); code != http.StatusOK || hb.Status != "ok" || !hb.LastHeartbeat.Equal(clock.Now()) {
			t.Fatalf("heartbeat: %d %s", code, body)
		}
	}
	clock.Add(10 * time.Second) // exactly the lease: still alive
	e.b.reap()
	if st := e.b.Status(); len(st.Bindings) != 1 {
		t.Fatalf("reaped with its heartbeat a lease ago: %+v", st)
	}
	clock.Add(time.Millisecond)
	e.b.reap()
	ev := sse.next(t)
	var closed Closed
	if json.Unmarshal([]byte(ev.Data), &closed); ev.Type != "closed" || closed.Reason != "expired" {
		t.Errorf("event %+v, want closed (expired)", ev)
	}
	if st := e.b.Status(); len(st.Bindings) != 0 || e.b.reaped.Load() != 1 {
		t.Errorf("after the lease: %+v, %d reaped", st, e.b.reaped.Load())
	}
	p := port(t, in)
	waitFor(t, "the port freed", func() bool {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: int(p)})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if code, body := e.do(t, "POST", "/v1/udp/heartbeat/"+in.ID, testToken, nil); code != http.StatusNotFound {
		t.Errorf("heartbeat after the reaper: %d %s", code, body)
	}
}

// TestReaperOnItsOwn: with the real clock, the reaper closes a lease of
// one second nobody renews, as after its holder died.
func TestReaperOnItsOwn(t *testing.T) {
	e := newEnv(t, nil, true)
	in := e.bind(t, map[string]any{"lease_secs": 1, "addr": "127.0.0.1"})
	waitFor(t, "the reaper", func() bool { return len(e.b.Status().Bindings) == 0 })
	if e.b.reaped.Load() != 1 {
		t.Errorf("%d reaped, want 1", e.b.reaped.Load())
	}
	waitFor(t, "the port freed", func() bool {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port(t, in))})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// TestPortRange: explicit ports inside the range are bound as asked,
// port 0 takes ports of the range only, and when all are taken the
// next bind is refused.
func TestPortRange(t *testing.T) {
	r := freeRange(t, 3)
	e := newEnv(t, func(b *Bridge) { b.Config.Ports = []config.PortRange{r} }, true)
	in := e.bind(t, map[string]any{"port": r.Low + 1, "addr": "127.0.0.1"})
	if port(t, in) != r.Low+1 {
		t.Fatalf("asked for %d, bound %s", r.Low+1, in.LocalAddr)
	}
	seen := map[uint16]bool{r.Low + 1: true}
	for range 2 {
		p := port(t, e.bind(t, map[string]any{"addr": "127.0.0.1"}))
		if p < r.Low || p > r.High || seen[p] {
			t.Fatalf("port 0 bound %d (range %v, taken %v)", p, r, seen)
		}
		seen[p] = true
	}
	code, body := e.do(t, "POST", "/v1/udp/bind", testToken, map[string]any{"addr": "127.0.0.1"})
	checkRefusal(t, code, body, http.StatusConflict, "port_in_use")
	code, body = e.do(t, "POST", "/v1/udp/bind", testToken, map[string]any{"port": r.High + 1})
	checkRefusal(t, code, body, http.StatusForbidden, "port_range")
}

// checkRefusal checks an error answer: its status, its reason and a
// message.
func checkRefusal(t testing.TB, code int, body []byte, status int, reason string) {
	t.Helper()
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil || code != status || eb.Reason != reason || eb.Status != status || eb.Error == "" {
		t.Errorf("answer %d %s, want %d with reason %s", code, body, status, reason)
	}
}

// TestRefusals: every refusal is a JSON error with its status and a
// counter.
func TestRefusals(t *testing.T) {
	clock := &fakeClock{now: time.Now().Add(time.Hour)} // after the guards' start
	e := newEnv(t, func(b *Bridge) {
		b.now = clock.Now
		b.Config.MaxBindings = 3
		b.Config.SendRate = 1 // a burst of 2
		b.Config.SendAllow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		b.MaxReaders = 1
	}, true)
	in := e.bind(t, map[string]any{"addr": "127.0.0.1"})
	p := port(t, in)
	// A port of the range that a socket of the test holds.
	var held *net.UDPConn
	for q := e.ports.Low; q <= e.ports.High && held == nil; q++ {
		if q != p {
			held, _ = net.ListenUDP("udp4", &net.UDPAddr{Port: int(q)})
		}
	}
	if held == nil {
		t.Fatal("no port of the range to hold")
	}
	defer held.Close()
	heldPort := held.LocalAddr().(*net.UDPAddr).Port
	client := dial(t, p)
	client.Write([]byte("hi")) // client may be sent to from now on
	waitFor(t, "the client's datagram", func() bool { return e.b.Status().Bindings[0].DatagramsIn == 1 })
	send := func(dest, payload string) map[string]string {
		return map[string]string{"dest": dest, "payload": payload}
	}
	ok64 := base64.StdEncoding.EncodeToString([]byte("x"))
	unknown := "/v1/udp/heartbeat/0190b8c2-7f00-7000-8000-000000000000"
	sse := e.openSSE(t, "/v1/udp/recv/"+in.ID) // its only reader
	_ = sse

	tests := []struct {
		name, method, path, token string
		body                      any
		status                    int
		reason                    string
	}{
		{"no token", "POST", "/v1/udp/bind", "", nil, 401, "unauthorized"},
		{"wrong token", "GET", "/v1/udp/status", "not-" + testToken, nil, 401, "unauthorized"},
		{"token of another length", "GET", "/v1/udp/status", "x", nil, 401, "unauthorized"},
		{"bad JSON", "POST", "/v1/udp/bind", testToken, `{"port":`, 400, "bad_request"},
		{"two JSON values", "POST", "/v1/udp/bind", testToken, `{} {}`, 400, "bad_request"},
		{"port a string", "POST", "/v1/udp/bind", testToken, `{"port":"80"}`, 400, "bad_request"},
		{"port too large", "POST", "/v1/udp/bind", testToken, map[string]any{"port": 70000}, 400, "bad_request"},
		{"bad address", "POST", "/v1/udp/bind", testToken, map[string]any{"addr": "localhost"}, 400, "bad_request"},
		{"address not local", "POST", "/v1/udp/bind", testToken, map[string]any{"addr": "192.0.2.1"}, 400, "bind_failed"},
		{"lease zero", "POST", "/v1/udp/bind", testToken, map[string]any{"lease_secs": 0}, 400, "bad_request"},
		{"lease negative", "POST", "/v1/udp/bind", testToken, map[string]any{"lease_secs": -3}, 400, "bad_request"},
		{"port outside the range", "POST", "/v1/udp/bind", testToken, map[string]any{"port": int(e.ports.High) + 1}, 403, "port_range"},
		{"port below the range", "POST", "/v1/udp/bind", testToken, map[string]any{"port": int(e.ports.Low) - 1}, 403, "port_range"},
		{"port in use", "POST", "/v1/udp/bind", testToken, map[string]any{"port": heldPort}, 409, "port_in_use"},
		{"unknown id: heartbeat", "POST", unknown, testToken, nil, 404, "not_found"},
		{"unknown id: delete", "DELETE", "/v1/udp/bind/nope", testToken, nil, 404, "not_found"},
		{"unknown id: send", "POST", "/v1/udp/send/nope", testToken, send(client.LocalAddr().String(), ok64), 404, "not_found"},
		{"unknown id: recv", "GET", "/v1/udp/recv/nope", testToken, nil, 404, "not_found"},
		{"unknown operation", "GET", "/v1/udp/nope", testToken, nil, 404, "not_found"},
		{"bad base64", "POST", "/v1/udp/send/" + in.ID, testToken, send(client.LocalAddr().String(), "not base64!"), 400, "bad_request"},
		{"bad dest", "POST", "/v1/udp/send/" + in.ID, testToken, send("example.com:53", ok64), 400, "bad_request"},
		{"dest without port", "POST", "/v1/udp/send/" + in.ID, testToken, send("127.0.0.1", ok64), 400, "bad_request"},
		{"dest port 0", "POST", "/v1/udp/send/" + in.ID, testToken, send("127.0.0.1:0", ok64), 400, "bad_request"},
		{"dest of the other family", "POST", "/v1/udp/send/" + in.ID, testToken, send("[2001:db8::1]:53", ok64), 400, "bad_request"},
		{"payload too large", "POST", "/v1/udp/send/" + in.ID, testToken, send(client.LocalAddr().String(), base64.StdEncoding.EncodeToString(make([]byte, MaxPayload+1))), 400, "bad_request"},
		{"dest not allowed", "POST", "/v1/udp/send/" + in.ID, testToken, send("127.0.0.1:9", ok64), 403, "send_dest"},
		{"another port of the sender", "POST", "/v1/udp/send/" + in.ID, testToken, send(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(client.LocalAddr().(*net.UDPAddr).Port+1)).String(), ok64), 403, "send_dest"},
		{"a second reader", "GET", "/v1/udp/recv/" + in.ID, testToken, nil, 429, "reader_cap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.b.refused[0][reasonIndex(tt.reason)].Load()
			code, body := e.do(t, tt.method, tt.path, tt.token, tt.body)
			checkRefusal(t, code, body, tt.status, tt.reason)
			if got := e.b.refused[0][reasonIndex(tt.reason)].Load(); got != before+1 {
				t.Errorf("refused{kind=http,reason=%s} went from %d to %d", tt.reason, before, got)
			}
		})
	}

	t.Run("send rate", func(t *testing.T) {
		// The clock stands still: a burst of two, then refusals.
		dest := client.LocalAddr().String()
		for i := range 2 {
			if code, body := e.do(t, "POST", "/v1/udp/send/"+in.ID, testToken, send(dest, ok64)); code != 200 {
				t.Fatalf("send %d: %d %s", i, code, body)
			}
		}
		code, body := e.do(t, "POST", "/v1/udp/send/"+in.ID, testToken, send(dest, ok64))
		checkRefusal(t, code, body, 429, "send_rate")
		clock.Add(time.Second)
		if code, body := e.do(t, "POST", "/v1/udp/send/"+in.ID, testToken, send(dest, ok64)); code != 200 {
			t.Fatalf("send a second later: %d %s", code, body)
		}
	})

	t.Run("binding cap", func(t *testing.T) {
		for len(e.b.Status().Bindings) < 3 {
			e.bind(t, map[string]any{"addr": "127.0.0.1"})
		}
		code, body := e.do(t, "POST", "/v1/udp/bind", testToken, map[string]any{"addr": "127.0.0.1"})
		checkRefusal(t, code, body, 429, "binding_cap")
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get(e.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, want := range []string{
			`udpgate_bridge_bindings{kind="http"} 3`,
			`udpgate_bridge_bindings_max 3`,
			`udpgate_bridge_refused_total{kind="http",reason="send_dest"} 2`,
			`udpgate_bridge_refused_total{kind="http",reason="binding_cap"} 1`,
			`udpgate_bridge_datagrams_total{direction="out",kind="http"} 3`,
			`udpgate_bridge_datagrams_total{direction="in",kind="http"} 1`,
			`udpgate_bridge_sse_clients 1`,
		} {
			if !strings.Contains(string(b), want+"\n") {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

// TestSendAllow: a destination in UDPGATE_BRIDGE_SEND_ALLOW may be sent
// to before it sent anything.
func TestSendAllow(t *testing.T) {
	e := newEnv(t, func(b *Bridge) { b.Config.SendAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }, true)
	in := e.bind(t, map[string]any{"addr": "127.0.0.1"})
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	code, body := e.do(t, "POST", "/v1/udp/send/"+in.ID, testToken, map[string]string{
		"dest": peer.LocalAddr().String(), "payload": base64.StdEncoding.EncodeToString([]byte("first")),
	})
	if code != 200 {
		t.Fatalf("send: %d %s", code, body)
	}
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "first" || from.String() != in.LocalAddr {
		t.Fatalf("peer read %q from %s, %v; want first from %s", buf[:n], from, err, in.LocalAddr)
	}
}

// TestOff: without ports nothing may be leased; without a token nothing
// over HTTP; before the bridge serves, 503.
func TestOff(t *testing.T) {
	t.Run("no ports", func(t *testing.T) {
		e := newEnv(t, func(b *Bridge) { b.Config.Ports = nil }, true)
		code, body := e.do(t, "POST", "/v1/udp/bind", testToken, nil)
		checkRefusal(t, code, body, 403, "off")
		// Nor over NATS: nobody answers.
		nc := natstest.Connect(t, e.srv)
		if _, err := nc.Request(Subject("", "bridge-test", OpStatus), nil, time.Second); err == nil {
			t.Error("a NATS status answered with the bridge off")
		}
	})
	t.Run("no token", func(t *testing.T) {
		e := newEnv(t, func(b *Bridge) { b.Config.Token = "" }, true)
		code, body := e.do(t, "POST", "/v1/udp/bind", testToken, nil)
		checkRefusal(t, code, body, 403, "off")
		code, body = e.do(t, "GET", "/v1/udp/status", "", nil)
		checkRefusal(t, code, body, 403, "off")
	})
	t.Run("not serving", func(t *testing.T) {
		e := newEnv(t, nil, false)
		code, body := e.do(t, "POST", "/v1/udp/bind", testToken, nil)
		checkRefusal(t, code, body, 503, "not_serving")
	})
}

// TestStopEndsStreams: when the bridge stops, its streams end with
// closed events and its ports are free.
func TestStopEndsStreams(t *testing.T) {
	e := newEnv(t, nil, false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.b.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	var in Info
	waitFor(t, "the bridge serving", func() bool {
		code, body := e.do(t, "POST", "/v1/udp/bind", testToken, map[string]any{"addr": "127.0.0.1"})
		json.Unmarshal(body, &in)
		return code == 200
	})
	sse := e.openSSE(t, "/v1/udp/recv/"+in.ID)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	ev := sse.next(t)
	var closed Closed
	if json.Unmarshal([]byte(ev.Data), &closed); ev.Type != "closed" || closed.Reason != "stopped" {
		t.Errorf("event %+v, want closed (stopped)", ev)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port(t, in))})
	if err != nil {
		t.Fatalf("port not free once Serve returned: %v", err)
	}
	c.Close()
	code, body := e.do(t, "POST", "/v1/udp/bind", testToken, nil)
	checkRefusal(t, code, body, 503, "not_serving")
}

// TestNATS: a NATS client leases a port, receives its datagrams on
// PREFIX.in.PORT with a plain subscription, sends through it, renews,
// lists and deletes it, with the HTTP API's bodies.
func TestNATS(t *testing.T) {
	e := newEnv(t, nil, true)
	nc := natstest.Connect(t, e.srv)
	var in Info
	if err := json.Unmarshal(natsRequest(t, nc, "bridge-test", OpBind, map[string]any{"lease_secs": 60, "addr": "127.0.0.1"}), &in); err != nil || in.ID == "" {
		t.Fatalf("bind: %+v %v", in, err)
	}
	p := port(t, in)
	if in.Kind != KindNATS || in.Subject != schemas.InSubject(schemas.DefaultPrefix, p) || p < e.ports.Low || p > e.ports.High {
		t.Errorf("bind answered %+v", in)
	}
	sub, err := nc.SubscribeSync(in.Subject)
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	client := dial(t, p)
	client.Write([]byte("over nats"))
	m, err := sub.NextMsg(30 * time.Second)
	if err != nil || string(m.Data) != "over nats" || m.Header.Get(schemas.HeaderRemote) != client.LocalAddr().String() {
		t.Fatalf("subscription got %v, %v", m, err)
	}

	var sent map[string]int
	json.Unmarshal(natsRequest(t, nc, "bridge-test", OpSend, SendRequest{
		ID: in.ID, Dest: client.LocalAddr().String(), Payload: base64.StdEncoding.EncodeToString([]byte("back")),
	}), &sent)
	if sent["bytes_sent"] != 4 {
		t.Fatalf("send answered %v", sent)
	}
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64)
	if n, err := client.Read(buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}

	var hb heartbeatReply
	if json.Unmarshal(natsRequest(t, nc, "bridge-test", OpHeartbeat, map[string]string{"id": in.ID}), &hb); hb.Status != "ok" {
		t.Errorf("heartbeat answered %+v", hb)
	}
	var st Status
	json.Unmarshal(natsRequest(t, nc, "bridge-test", OpStatus, nil), &st)
	if st.Node != "bridge-test" || len(st.Bindings) != 1 || st.Bindings[0].ID != in.ID || st.Bindings[0].Kind != KindNATS {
		t.Errorf("status %+v", st)
	}
	// The HTTP API sees it too.
	if code, body := e.do(t, "GET", "/v1/udp/status", testToken, nil); code != 200 || !strings.Contains(string(body), in.ID) {
		t.Errorf("HTTP status: %d %s", code, body)
	}

	var eb errorBody
	json.Unmarshal(natsRequest(t, nc, "bridge-test", OpSend, SendRequest{ID: in.ID, Dest: "127.0.0.1:9", Payload: "eA=="}), &eb)
	if eb.Status != 403 || eb.Reason != "send_dest" {
		t.Errorf("send to a stranger answered %+v", eb)
	}
	json.Unmarshal(natsRequest(t, nc, "bridge-test", OpBind, map[string]any{"port": int(e.ports.High) + 1}), &eb)
	if eb.Status != 403 || eb.Reason != "port_range" {
		t.Errorf("bind outside the range answered %+v", eb)
	}
	json.Unmarshal(natsRequest(t, nc, "bridge-test", "nope", nil), &eb)
	if eb.Status != 404 {
		t.Errorf("an unknown operation answered %+v", eb)
	}
	if got := e.b.refused[1][reasonIndex("send_dest")].Load(); got != 1 {
		t.Errorf("refused{kind=nats,reason=send_dest} = %d", got)
	}

	var del map[string]string
	if json.Unmarshal(natsRequest(t, nc, "bridge-test", OpDelete, map[string]string{"id": in.ID}), &del); del["status"] != "unbound" {
		t.Errorf("delete answered %v", del)
	}
	json.Unmarshal(natsRequest(t, nc, "bridge-test", OpHeartbeat, map[string]string{"id": in.ID}), &eb)
	if eb.Status != 404 || eb.Reason != "not_found" {
		t.Errorf("heartbeat after delete answered %+v", eb)
	}
}
