package gateway

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// observeGateway runs a gateway with one coap listener on 127.0.0.1 and
// the worker of observeWorker. It returns the listener's address and
// port, the server, what the worker saw, and the gateway.
func observeGateway(t *testing.T, cfg coap.Config) (addr string, port uint16, s *server.Server, registrations chan string, g *Gateway) {
	t.Helper()
	s = natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port = uint16(c.LocalAddr().(*net.UDPAddr).Port)
	g = observeNode(t, s, c, "observe-node", cfg)
	return c.LocalAddr().String(), port, s, observeWorker(t, s, port), g
}

// observeNode runs a gateway node with the coap listener c.
func observeNode(t *testing.T, s *server.Server, c *net.UDPConn, node string, cfg coap.Config) *Gateway {
	t.Helper()
	g := &Gateway{NATS: natstest.Connect(t, s), Node: node, CoAP: cfg,
		Listeners: []Listener{{Conn: c, Protocol: schemas.ProtocolCoAP}}}
	serveGateway(t, g)
	return g
}

// observeWorker runs, on a NATS connection of its own, a worker written
// against the contract that accepts every registration of GET /sensors/1
// on port and answers "registered". The channel returned receives the
// udpgate-coap-observe header of each request the worker saw.
func observeWorker(t *testing.T, s *server.Server, port uint16) chan string {
	t.Helper()
	registrations := make(chan string, 100)
	nc := natstest.Connect(t, s)
	sub, err := nc.QueueSubscribe(schemas.CoAPSubject(schemas.DefaultPrefix, port, "GET", []string{"sensors", "1"}), "sensors", func(m *nats.Msg) {
		obs := m.Header.Get(schemas.HeaderCoAPObserve)
		select {
		case registrations <- obs:
		default:
		}
		reply := nats.NewMsg("")
		reply.Header.Set(schemas.HeaderCoAPContentFormat, "0")
		if obs == schemas.CoAPObserveRegister {
			reply.Header.Set(schemas.HeaderCoAPObserve, "1")
		}
		reply.Data = []byte("registered")
		m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	t.Cleanup(func() { sub.Unsubscribe() })
	return registrations
}

// notifier publishes notifications of /sensors/1 on port as a worker on
// its own NATS connection does.
type notifier struct {
	t       testing.TB
	nc      *nats.Conn
	subject string
}

func newNotifier(t testing.TB, s *server.Server, port uint16) *notifier {
	return &notifier{t, natstest.Connect(t, s), schemas.NotifySubject(schemas.DefaultPrefix, port, []string{"sensors", "1"})}
}

// notify publishes body with header h as a NATS request and returns how
// many observers the gateway notified.
func (n *notifier) notify(body []byte, h nats.Header) int {
	n.t.Helper()
	m := nats.NewMsg(n.subject)
	for k, v := range h {
		m.Header[k] = v
	}
	m.Data = body
	r, err := n.nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		n.t.Fatalf("notify: %v", err)
	}
	c, err := strconv.Atoi(r.Header.Get(schemas.HeaderCoAPObservers))
	if err != nil {
		n.t.Fatalf("notify: %s %q", schemas.HeaderCoAPObservers, r.Header.Get(schemas.HeaderCoAPObservers))
	}
	return c
}

// observeStats returns the Observe counters of the gateway's only coap
// listener, read through its edge.
func observeStats(g *Gateway) coap.ObserveStats {
	for _, st := range g.Stats().CoAP {
		return st.Observe
	}
	return coap.ObserveStats{}
}

func TestObserveGoCoAPClient(t *testing.T) {
	addr, port, s, regs, g := observeGateway(t, coap.Config{ObserveCONEvery: 2, ACKTimeout: 200 * time.Millisecond})
	n := newNotifier(t, s, port)
	co := dialCoAP(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan string, 16)
	obs, err := co.Observe(ctx, "/sensors/1", func(req *pool.Message) {
		body, _ := req.ReadBody()
		got <- string(body)
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := <-regs; h != "0" {
		t.Fatalf("the worker saw %s %q, want 0", schemas.HeaderCoAPObserve, h)
	}
	if first := <-got; first != "registered" {
		t.Fatalf("registration response %q", first)
	}
	for i := range 5 {
		want := "value " + strconv.Itoa(i)
		if c := n.notify([]byte(want), nil); c != 1 {
			t.Fatalf("notified %d observers, want 1", c)
		}
		select {
		case v := <-got:
			if v != want {
				t.Fatalf("notification %q, want %q", v, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("notification %d not received", i)
		}
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if h := <-regs; h != "1" {
		t.Fatalf("the worker saw %s %q on cancel, want 1", schemas.HeaderCoAPObserve, h)
	}
	if c := n.notify([]byte("after"), nil); c != 0 {
		t.Fatalf("notified %d observers after Observe=1", c)
	}
	if st := observeStats(g); st.Registrations != 1 || st.Observe1 != 1 || st.Observers != 0 || st.NON+st.CON != 5 || st.CON < 2 {
		t.Fatalf("stats %+v", st)
	}
}

// rawObserver registers from a socket of its own with hand-made datagrams.
type rawObserver struct {
	*rawCoAP
	mid uint16
}

func (r *rawObserver) msg(m message.Message) {
	r.t.Helper()
	r.mid++
	if m.MessageID == 0 {
		m.MessageID = int32(r.mid)
	}
	buf := make([]byte, 1500)
	n, err := coder.DefaultCoder.Encode(m, buf)
	if err != nil {
		r.t.Fatal(err)
	}
	r.send(buf[:n])
}

// next returns the next message received, decoded.
func (r *rawObserver) next(wait time.Duration) (message.Message, bool) {
	r.t.Helper()
	b := r.read(wait)
	if b == nil {
		return message.Message{}, false
	}
	m := message.Message{Options: make(message.Options, 0, 16)}
	if _, err := coder.DefaultCoder.Decode(b, &m); err != nil {
		r.t.Fatalf("% x: %v", b, err)
	}
	return m, true
}

// register sends a CON GET /sensors/1 with Observe 0 and token tok and
// returns the response.
func (r *rawObserver) register(tok string, extra ...message.Option) message.Message {
	r.t.Helper()
	opts := message.Options{{ID: message.Observe}, {ID: message.URIPath, Value: []byte("sensors")}, {ID: message.URIPath, Value: []byte("1")}}
	opts = append(opts, extra...)
	r.msg(message.Message{Type: message.Confirmable, Code: codes.GET, Token: []byte(tok), Options: opts})
	m, ok := r.next(10 * time.Second)
	if !ok {
		r.t.Fatal("no response to the registration")
	}
	return m
}

func hasObserve(m message.Message) bool {
	_, _, err := m.Options.Find(message.Observe)
	return err == nil
}

func TestObserveRSTEndsRegistration(t *testing.T) {
	cfg := coap.Config{ACKTimeout: 200 * time.Millisecond}
	addr, port, s, _, g := observeGateway(t, cfg)
	n := newNotifier(t, s, port)
	r := &rawObserver{rawCoAP: dialRaw(t, addr)}
	if m := r.register("t1"); !hasObserve(m) {
		t.Fatal("registration response without Observe")
	}
	n.notify([]byte("one"), nil)
	m, ok := r.next(10 * time.Second)
	if !ok || string(m.Payload) != "one" || m.Type != message.NonConfirmable {
		t.Fatalf("notification: %v %v %q", ok, m.Type, m.Payload)
	}
	r.msg(message.Message{Type: message.Reset, MessageID: m.MessageID})
	waitFor(t, "the RST ends the registration", func() bool { return n.notify([]byte("two"), nil) == 0 })
	if st := observeStats(g); st.RST != 1 || st.Observers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestObserveUnacknowledgedObserverDropped(t *testing.T) {
	addr, port, s, _, g := observeGateway(t, coap.Config{ObserveCONEvery: 1, ACKTimeout: 20 * time.Millisecond})
	n := newNotifier(t, s, port)
	r := &rawObserver{rawCoAP: dialRaw(t, addr)}
	r.register("t1")
	if c := n.notify([]byte("one"), nil); c != 1 {
		t.Fatalf("notified %d", c)
	}
	// The client reads the CON and its retransmissions, never acknowledging.
	cons := 0
	for {
		m, ok := r.next(5 * time.Second)
		if !ok {
			break
		}
		if m.Type == message.Confirmable && string(m.Payload) == "one" {
			cons++
		}
		if cons == 5 { // the notification and MAX_RETRANSMIT retransmissions
			break
		}
	}
	if cons != 5 {
		t.Fatalf("%d transmissions of the CON notification, want 5", cons)
	}
	waitFor(t, "the observer dropped", func() bool { return n.notify([]byte("two"), nil) == 0 })
	if st := observeStats(g); st.GaveUp != 1 || st.Observers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestObserveBlockwiseNotification(t *testing.T) {
	addr, port, s, _, _ := observeGateway(t, coap.Config{BlockSize: 64})
	n := newNotifier(t, s, port)
	r := &rawObserver{rawCoAP: dialRaw(t, addr)}
	r.register("t1")
	body := bytes.Repeat([]byte("0123456789abcdef"), 10) // 160 bytes: 3 blocks of 64
	n.notify(body, nats.Header{schemas.HeaderCoAPContentFormat: {"42"}})
	m, ok := r.next(10 * time.Second)
	if !ok || !hasObserve(m) {
		t.Fatal("no notification")
	}
	got := append([]byte(nil), m.Payload...)
	for num := uint32(1); ; num++ {
		v, err := m.Options.GetUint32(message.Block2)
		if err != nil {
			t.Fatalf("block %d: no Block2 option", num-1)
		}
		if v&8 == 0 { // no more
			break
		}
		// Fetch the next block as for any block-wise response.
		r.msg(message.Message{Type: message.Confirmable, Code: codes.GET, Token: []byte("b"), Options: message.Options{
			{ID: message.URIPath, Value: []byte("sensors")}, {ID: message.URIPath, Value: []byte("1")},
			{ID: message.Block2, Value: []byte{byte(num<<4 | 2)}},
		}})
		if m, ok = r.next(10 * time.Second); !ok {
			t.Fatalf("block %d not served", num)
		}
		got = append(got, m.Payload...)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("reassembled %q", got)
	}
}

func TestObserveBlockwiseGoCoAP(t *testing.T) {
	addr, port, s, _, g := observeGateway(t, coap.Config{BlockSize: 64})
	n := newNotifier(t, s, port)
	co, err := coapudp.Dial(addr, options.WithBlockwise(true, blockwise.SZX64, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan string, 16)
	if _, err := co.Observe(ctx, "/sensors/1", func(req *pool.Message) {
		body, _ := req.ReadBody()
		got <- string(body)
	}); err != nil {
		t.Fatal(err)
	}
	<-got // the registration's response
	body := bytes.Repeat([]byte("0123456789abcdef"), 10)
	n.notify(body, nil)
	select {
	case v := <-got:
		if v != string(body) {
			t.Fatalf("notification of %d bytes: %q", len(v), v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	if st := observeStats(g); st.NON != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestObserveBounds(t *testing.T) {
	addr, port, s, _, g := observeGateway(t, coap.Config{MaxObserversPerPeer: 2, MaxObservers: 3})
	n := newNotifier(t, s, port)
	r1 := &rawObserver{rawCoAP: dialRaw(t, addr)}
	r2 := &rawObserver{rawCoAP: dialRaw(t, addr)}
	for i, want := range []bool{true, true, false} {
		if m := r1.register("a" + strconv.Itoa(i)); hasObserve(m) != want || m.Code != codes.Content {
			t.Fatalf("registration %d of one peer: Observe %v, code %v", i, hasObserve(m), m.Code)
		}
	}
	for i, want := range []bool{true, false} {
		if m := r2.register("b" + strconv.Itoa(i)); hasObserve(m) != want {
			t.Fatalf("registration %d of another peer: Observe %v", i, hasObserve(m))
		}
	}
	if c := n.notify([]byte("x"), nil); c != 3 {
		t.Fatalf("notified %d, want 3", c)
	}
	if st := observeStats(g); st.RefusedFull != 2 || st.Observers != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestObserveLibcoap(t *testing.T) {
	bin := coapClient(t)
	addr, port, s, _, _ := observeGateway(t, coap.Config{})
	n := newNotifier(t, s, port)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				m := nats.NewMsg(n.subject)
				m.Data = []byte("tick-" + strconv.Itoa(i) + "\n")
				n.nc.PublishMsg(m)
			}
		}
	})
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-s", "3", "-B", "10", "-o", out, "-m", "get", "coap://"+addr+"/sensors/1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("coap-client: %v\n%s", err, stderr.String())
	}
	b, _ := os.ReadFile(out)
	ticks := strings.Count(string(b), "tick-")
	if !strings.HasPrefix(string(b), "registered") || ticks < 3 {
		t.Fatalf("coap-client received %d notifications:\n%s\n%s", ticks, b, stderr.String())
	}
}

func TestObserveEveryNodeNotifies(t *testing.T) {
	// Two nodes with a coap listener on the same port, on two loopback
	// addresses: one notification reaches the observers of both.
	s := natstest.RunServer(t)
	c1, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c1.LocalAddr().(*net.UDPAddr).Port
	c2, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port})
	if err != nil {
		c1.Close()
		t.Skipf("no second loopback address with port %d: %v", port, err)
	}
	observeNode(t, s, c1, "node-1", coap.Config{})
	observeNode(t, s, c2, "node-2", coap.Config{})
	observeWorker(t, s, uint16(port))
	var clients []*rawObserver
	for _, c := range []*net.UDPConn{c1, c2} {
		r := &rawObserver{rawCoAP: dialRaw(t, c.LocalAddr().String())}
		if m := r.register("t"); !hasObserve(m) {
			t.Fatalf("registration at %s refused", c.LocalAddr())
		}
		clients = append(clients, r)
	}
	n := newNotifier(t, s, uint16(port))
	if err := n.nc.Publish(n.subject, []byte("both")); err != nil {
		t.Fatal(err)
	}
	for i, r := range clients {
		if m, ok := r.next(10 * time.Second); !ok || string(m.Payload) != "both" {
			t.Fatalf("observer %d: %v %q", i, ok, m.Payload)
		}
	}
}
