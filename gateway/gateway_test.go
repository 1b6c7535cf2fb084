package gateway

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// testGateway runs a gateway node on the given listen addresses against s
// and returns it with its sockets' addresses. It stops with the test.
func testGateway(t testing.TB, s *server.Server, g *Gateway, addrs ...string) []*net.UDPAddr {
	t.Helper()
	g.NATS = natstest.Connect(t, s)
	if g.Node == "" {
		g.Node = "node-1"
	}
	var bound []*net.UDPAddr
	for _, a := range addrs {
		network := "udp4"
		if a[0] == '[' {
			network = "udp6"
		}
		c, err := ingress.Listen(context.Background(), network, a, 0)
		if err != nil {
			t.Fatal(err)
		}
		g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: schemas.ProtocolRaw})
		bound = append(bound, c.LocalAddr().(*net.UDPAddr))
	}
	serveGateway(t, g)
	return bound
}

// serveGateway serves g until the test ends and waits until it is ready.
func serveGateway(t testing.TB, g *Gateway) {
	t.Helper()
	if g.DrainTimeout == 0 {
		// A test that ends with exchanges open does not wait for them;
		// the graceful stop has tests of its own.
		g.DrainTimeout = -1
	}
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	done := make(chan struct{}) // closed once Serve has returned err
	go func() {
		err = g.Serve(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err != nil {
			t.Errorf("gateway Serve: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case <-done:
		t.Fatalf("gateway Serve stopped before it was ready")
	case <-time.After(30 * time.Second): // a 3-node cluster creating replicated streams on a loaded machine
		t.Fatal("gateway not ready after 30s")
	}
}

// contractWorker answers every request on subject through the wire
// contract alone (no SDK), as a worker in another language would: a plain
// queue subscription in group that answers with msg.Respond. reply returns
// the reply body, or nil for no reply.
func contractWorker(t testing.TB, s *server.Server, group, subject string, reply func(*nats.Msg) []byte) {
	t.Helper()
	nc := natstest.Connect(t, s)
	sub, err := nc.QueueSubscribe(subject, group, func(m *nats.Msg) {
		if body := reply(m); body != nil {
			if err := m.Respond(body); err != nil && !errors.Is(err, nats.ErrConnectionClosed) { // closed: the test is over
				t.Errorf("worker respond: %v", err)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
}

// durableContractWorker is contractWorker as a durable group: a JetStream
// consumer of the capture that publishes its reply to udpgate-reply, then
// acknowledges.
func durableContractWorker(t testing.TB, s *server.Server, group, subject string, reply func(*nats.Msg) []byte) {
	t.Helper()
	nc, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable: group, FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if body := reply(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}); body != nil {
			err := nc.Publish(m.Headers().Get(schemas.HeaderReply), body)
			if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				t.Errorf("worker publish: %v", err)
			}
		}
		m.Ack()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
}

// exchangeUDP sends payload from a connect()ed socket to addr and returns
// the reply, or an error if none comes within wait.
func exchangeUDP(t testing.TB, addr string, payload []byte, wait time.Duration) ([]byte, error) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func echo(m *nats.Msg) []byte { return append([]byte("echo:"), m.Data...) }

func TestReplyFromReceivingAddress(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0", "0.0.0.0:0", "[::]:0")
	for _, a := range addrs {
		contractWorker(t, s, "echo-"+itoa(a.Port), schemas.InSubject(schemas.DefaultPrefix, uint16(a.Port)), echo)
	}
	tests := []struct {
		name string
		dial string
	}{
		{"specific bind", net.JoinHostPort("127.0.0.1", itoa(addrs[0].Port))},
		// The kernel would answer 127.0.0.2 from 127.0.0.1 (the source it
		// picks for lo); the connected socket accepts only 127.0.0.2, so
		// this passes only if egress sets the source from IP_PKTINFO.
		{"wildcard bind, second loopback address", net.JoinHostPort("127.0.0.2", itoa(addrs[1].Port))},
		{"wildcard bind, first loopback address", net.JoinHostPort("127.0.0.1", itoa(addrs[1].Port))},
		{"IPv6 wildcard bind", net.JoinHostPort("::1", itoa(addrs[2].Port))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := exchangeUDP(t, tt.dial, []byte("hello "+tt.name), 5*time.Second)
			if err != nil {
				t.Fatalf("no reply from %s: %v", tt.dial, err)
			}
			if want := "echo:hello " + tt.name; string(got) != want {
				t.Errorf("reply %q, want %q", got, want)
			}
		})
	}
	// Egress counts a reply once written, so the count may trail the
	// datagram by a moment.
	waitFor(t, "every reply counted", func() bool { return g.Stats().Egress.Sent >= uint64(len(tests)) })
	if st := g.Stats(); st.Egress.Sent != uint64(len(tests)) {
		t.Errorf("egress sent %d, want %d", st.Egress.Sent, len(tests))
	}
}

func TestRequestMessage(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Node: "edge.1", Deadline: 3 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	port := uint16(addrs[0].Port)
	got := make(chan *nats.Msg, 1)
	contractWorker(t, s, "inspect", schemas.InSubject("udpgate", port), func(m *nats.Msg) []byte {
		got <- m
		return []byte("ok")
	})
	c, err := net.DialUDP("udp", nil, addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := time.Now()
	payload := []byte{0, 1, 2, 0xff, '.', '>'}
	c.Write(payload)
	var m *nats.Msg
	select {
	case m = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("worker saw no request")
	}
	after := time.Now()
	if !bytes.Equal(m.Data, payload) {
		t.Errorf("body %x, want %x", m.Data, payload)
	}
	h := m.Header
	id := h.Get(schemas.HeaderID)
	if id == "" || strings.ContainsAny(id, ".*> ") {
		t.Fatalf("correlation id %q", id)
	}
	want := map[string]string{
		schemas.HeaderSpecVersion: "1.0",
		schemas.HeaderID:          id,
		schemas.HeaderSource:      "udpgate://edge.1/" + itoa(int(port)) + "/raw",
		schemas.HeaderType:        schemas.TypeRaw,
		schemas.HeaderRemote:      c.LocalAddr().String(),
		schemas.HeaderLocal:       addrs[0].String(),
		schemas.HeaderReply:       "udpgate.reply.edge~2E1." + id,
	}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, h.Get(k), v)
		}
	}
	if len(h) != len(want)+1 {
		t.Errorf("%d headers, want %d: %v", len(h), len(want)+1, h)
	}
	if m.Reply != want[schemas.HeaderReply] {
		t.Errorf("reply subject %q, want %q", m.Reply, want[schemas.HeaderReply])
	}
	if dl := deadlineOf(t, m); dl.Before(before.Add(3*time.Second-time.Millisecond)) || dl.After(after.Add(3*time.Second)) {
		t.Errorf("deadline %s, want 3s after the datagram was read (between %s and %s)", dl, before, after)
	}
}

func TestLateAndDuplicateRepliesAreNotSent(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 300 * time.Millisecond}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	subject := schemas.InSubject("udpgate", uint16(addrs[0].Port))

	requests := make(chan *nats.Msg, 4)
	contractWorker(t, s, "slow", subject, func(m *nats.Msg) []byte {
		requests <- m
		return nil // replies are sent by the test below
	})
	nc := natstest.Connect(t, s)
	reply := func(m *nats.Msg, body string) {
		t.Helper()
		if err := nc.Publish(m.Reply, []byte(body)); err != nil {
			t.Fatal(err)
		}
		nc.Flush()
	}
	c, err := net.DialUDP("udp", nil, addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)

	// Twice: the first reply is sent, the second is dropped.
	c.Write([]byte("one"))
	m := <-requests
	reply(m, "first")
	reply(m, "second")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "first" {
		t.Fatalf("read %q, %v; want first", buf[:n], err)
	}
	waitFor(t, "duplicate counted", func() bool { return g.Stats().Egress.Duplicate == 1 })

	// Late: wait past the deadline, then reply.
	c.Write([]byte("two"))
	m = <-requests
	dl := deadlineOf(t, m)
	time.Sleep(time.Until(dl) + 20*time.Millisecond) // the point of the test: be late
	reply(m, "late")
	waitFor(t, "late counted", func() bool { return g.Stats().Egress.Late == 1 })
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(buf); !isTimeout(err) {
		t.Fatalf("late reply was sent: %q, %v", buf[:n], err)
	}
	if st := g.Stats().Egress; st.Sent != 1 {
		t.Errorf("sent %d replies, want 1", st.Sent)
	}

	// A correlation id the gateway never issued.
	nc.Publish(schemas.ReplySubject(schemas.DefaultPrefix, g.Node)+".bogus-1", []byte("?"))
	waitFor(t, "unknown counted", func() bool { return g.Stats().Egress.Unknown == 1 })
}

func TestDatagramLargerThanMaximumIsDropped(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{MaxDatagram: 100}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	contractWorker(t, s, "echo", schemas.InSubject("udpgate", uint16(addrs[0].Port)), echo)
	if _, err := exchangeUDP(t, addrs[0].String(), bytes.Repeat([]byte("x"), 101), 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("a 101-byte datagram was answered (err %v)", err)
	}
	got, err := exchangeUDP(t, addrs[0].String(), bytes.Repeat([]byte("x"), 100), 5*time.Second)
	if err != nil || len(got) != 105 {
		t.Fatalf("a 100-byte datagram: reply of %d bytes, %v", len(got), err)
	}
	st := g.Stats().Ingress[itoa(addrs[0].Port)+"/raw"]
	if st.TooLarge != 1 || st.Received != 2 {
		t.Errorf("stats %+v, want 1 too large of 2 received", st)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func deadlineOf(t testing.TB, m *nats.Msg) time.Time {
	t.Helper()
	ms, err := strconv.ParseInt(m.Header.Get(schemas.HeaderDeadline), 10, 64)
	if err != nil {
		t.Fatalf("deadline header: %v", err)
	}
	return time.UnixMilli(ms)
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestNATSDownKeepsReading: with NATS gone, the read loop goes on reading
// and counts each datagram it cannot publish.
func TestNATSDownKeepsReading(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	s.Shutdown()
	waitFor(t, "client disconnected", func() bool { return !g.NATS.IsConnected() })
	c, err := net.DialUDP("udp", nil, addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 20 {
		c.Write([]byte("lost"))
	}
	listener := itoa(addrs[0].Port) + "/raw"
	waitFor(t, "20 drops counted", func() bool {
		st := g.Stats().Ingress[listener]
		return st.Received == 20 && st.NATSDown == 20
	})
	if st := g.Stats(); st.Pending != 0 {
		t.Errorf("%d exchanges left open", st.Pending)
	}
}

// TestRepliesRecorded: with a replies stream configured, a worker's reply
// is kept and can be joined to its request: its subject ends with the
// request's ce-id.
func TestRepliesRecorded(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Replies: ingress.StreamConfig{Name: schemas.StreamReplies}}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	contractWorker(t, s, "echo", schemas.InSubject("udpgate", uint16(addrs[0].Port)), echo)
	if _, err := exchangeUDP(t, addrs[0].String(), []byte("keep me"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	get := func(stream string) *jetstream.RawStreamMsg {
		t.Helper()
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		var m *jetstream.RawStreamMsg
		waitFor(t, "a message in "+stream, func() bool {
			m, err = st.GetMsg(ctx, 1)
			return err == nil
		})
		return m
	}
	req, rep := get(schemas.StreamIn), get(schemas.StreamReplies)
	id, _ := schemas.ReplyID(rep.Subject)
	if req.Header.Get(schemas.HeaderID) != id || string(rep.Data) != "echo:keep me" {
		t.Errorf("recorded reply %q on %s for request id %s", rep.Data, rep.Subject, req.Header.Get(schemas.HeaderID))
	}
	if want := schemas.InSubject("udpgate", uint16(addrs[0].Port)); req.Subject != want {
		t.Errorf("request captured as %s, want %s", req.Subject, want)
	}
	if !strings.HasPrefix(rep.Subject, "udpgate.reply.node-1.") {
		t.Errorf("reply subject %s", rep.Subject)
	}
}

// memoryGateway runs a gateway whose streams are in memory, on a server it
// returns with its options, so that a test can restart it.
func memoryGateway(t *testing.T) (*server.Options, *server.Server, *Gateway, []*net.UDPAddr) {
	t.Helper()
	opts := natstest.Options(t)
	s := natstest.Start(t, opts)
	g := &Gateway{
		Stream:  ingress.StreamConfig{Name: schemas.StreamIn, Memory: true},
		Replies: ingress.StreamConfig{Name: schemas.StreamReplies, Memory: true},
	}
	return opts, s, g, testGateway(t, s, g, "127.0.0.1:0")
}

// TestStreamsRecreatedAfterRestart: a NATS server that comes back without
// its store (memory storage) has lost the capture and replies streams; the
// gateway makes them again on reconnecting, and requests are answered.
func TestStreamsRecreatedAfterRestart(t *testing.T) {
	opts, s, g, addrs := memoryGateway(t)

	s = natstest.Restart(t, s, opts)
	_, js := natstest.JetStream(t, s)
	waitFor(t, "both streams created again", func() bool { return g.Stats().StreamsRecreated == 2 })
	for _, name := range []string{schemas.StreamIn, schemas.StreamReplies} {
		if _, err := js.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s after the restart: %v", name, err)
		}
	}
	contractWorker(t, s, "echo", schemas.InSubject(schemas.DefaultPrefix, uint16(addrs[0].Port)), echo)
	got, err := exchangeUDP(t, addrs[0].String(), []byte("again"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "echo:again" {
		t.Errorf("reply %q, want echo:again", got)
	}
}

// TestNoReplyListener: a reply=off listener captures every datagram with
// the usual headers (for durable groups: it publishes nothing to direct
// ones), opens no exchange, and sends nothing back, even when a worker
// answers; the answer names no exchange and counts as unknown.
func TestNoReplyListener(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	g := &Gateway{NATS: nc, Node: "node-1", Listeners: []Listener{{Conn: c, Protocol: schemas.ProtocolRaw, NoReply: true}}}
	serveGateway(t, g)
	seen := make(chan *nats.Msg, 16)
	durableContractWorker(t, s, "answers-anyway", schemas.InSubject(schemas.DefaultPrefix, port), func(m *nats.Msg) []byte {
		seen <- m
		return echo(m)
	})
	direct := make(chan *nats.Msg, 16)
	contractWorker(t, s, "direct", schemas.InSubject(schemas.DefaultPrefix, port), func(m *nats.Msg) []byte {
		direct <- m
		return nil
	})

	const n = 5
	cl, err := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range n {
		cl.Write([]byte("reading " + itoa(i)))
	}
	ids := map[string]bool{}
	for range n {
		select {
		case m := <-seen:
			h := m.Header
			if h.Get(schemas.HeaderID) == "" || h.Get(schemas.HeaderRemote) != cl.LocalAddr().String() {
				t.Errorf("headers %v", h)
			}
			ids[h.Get(schemas.HeaderID)] = true
		case <-time.After(5 * time.Second):
			t.Fatal("the worker did not see every datagram")
		}
	}
	if len(ids) != n {
		t.Errorf("%d distinct ids for %d datagrams", len(ids), n)
	}
	waitFor(t, "the worker's answers counted unknown", func() bool { return g.Stats().Egress.Unknown == n })
	cl.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 64)
	if k, err := cl.Read(buf); !isTimeout(err) {
		t.Errorf("a reply=off listener sent %q (%v)", buf[:k], err)
	}
	if st := g.Stats(); st.Pending != 0 || st.Egress.Sent != 0 || st.Ingress[itoa(int(port))+"/raw"].Captured != n || st.Ingress[itoa(int(port))+"/raw"].Published != 0 {
		t.Errorf("pending %d, sent %d, ingress %+v; want 0, 0 and %d captured, none published", st.Pending, st.Egress.Sent, st.Ingress, n)
	}
	if len(direct) != 0 {
		t.Errorf("a direct group saw %d requests of a reply=off listener", len(direct))
	}
}

// TestStreamsCheckedAgainUntilJetStreamIsBack: a server that comes back
// with JetStream only later (here: started without it, then enabled) gets
// the streams made again by the retried check, with no further
// reconnection.
func TestStreamsCheckedAgainUntilJetStreamIsBack(t *testing.T) {
	opts, s, g, addrs := memoryGateway(t)

	without := *opts
	without.JetStream = false
	s = natstest.Restart(t, s, &without)
	waitFor(t, "a failed check retried", func() bool { return g.Stats().StreamRechecks > 0 })
	if err := s.EnableJetStream(&server.JetStreamConfig{StoreDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both streams created again", func() bool { return g.Stats().StreamsRecreated == 2 })
	contractWorker(t, s, "echo", schemas.InSubject(schemas.DefaultPrefix, uint16(addrs[0].Port)), echo)
	if got, err := exchangeUDP(t, addrs[0].String(), []byte("back"), 5*time.Second); err != nil || string(got) != "echo:back" {
		t.Errorf("reply %q, %v; want echo:back", got, err)
	}
}
