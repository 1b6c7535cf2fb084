package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// pushListener binds a raw listener on addr with push=on and guard c
// (nil: none) and appends it to g; it returns the listener's address.
func pushListener(t *testing.T, g *Gateway, addr string, c *guard.Config) *net.UDPAddr {
	t.Helper()
	var gd *guard.Guard
	if c != nil {
		var err error
		if gd, err = guard.New(*c); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := ingress.Listen(context.Background(), "udp4", addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: conn, Protocol: schemas.ProtocolRaw, Guard: gd, Push: true})
	return conn.LocalAddr().(*net.UDPAddr)
}

// udpClient returns an unconnected UDP socket on ip, which reads from
// anyone.
func udpClient(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrPort(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// readFrom returns the next datagram on c and its source, or nil after
// wait.
func readFrom(c *net.UDPConn, wait time.Duration) ([]byte, netip.AddrPort) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// send pushes b to dest through the listener on port, as a worker on
// its own connection would, and waits (while the listener subscribes)
// for a responder.
func send(t *testing.T, nc *nats.Conn, node string, port int, dest netip.AddrPort, b []byte) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := workers.SendDatagram(ctx, nc, "", node, uint16(port), dest, b)
		cancel()
		if !errors.Is(err, workers.ErrNoPushListener) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond) // the listener subscribes as it starts
	}
}

func reason(err error) string {
	var oe *workers.OutError
	if errors.As(err, &oe) {
		return oe.Reason
	}
	return ""
}

// A client that sent to a push=on listener receives a pushed datagram
// from the address it sent to, on a wildcard listener too; a destination
// that never sent is refused, unless it is in the allow-list.
func TestPushToPeer(t *testing.T) {
	s := natstest.RunServer(t)
	allowed := udpClient(t, "127.0.0.3")
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "push.node", Push: Push{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}}}
	wild := pushListener(t, g, "0.0.0.0:0", nil)
	serveGateway(t, g)
	nc := natstest.Connect(t, s)
	name := schemas.Listener(uint16(wild.Port), schemas.ProtocolRaw)

	stranger := udpClient(t, "127.0.0.2")
	if err := send(t, nc, g.Node, wild.Port, addrPort(stranger), []byte("hello")); reason(err) != schemas.OutErrNotPeer {
		t.Fatalf("push to a destination that never sent: %v, want %s", err, schemas.OutErrNotPeer)
	}

	c := udpClient(t, "127.0.0.1")
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), uint16(wild.Port)) // an address of the wildcard listener
	if _, err := c.WriteToUDPAddrPort([]byte("hi"), to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the datagram read", func() bool { return g.Stats().Ingress[name].Received == 1 })
	if err := send(t, nc, g.Node, wild.Port, addrPort(c), []byte("pushed")); err != nil {
		t.Fatalf("push to a peer: %v", err)
	}
	got, from := readFrom(c, 5*time.Second)
	if string(got) != "pushed" || from != to {
		t.Errorf("got %q from %v, want %q from %v", got, from, "pushed", to)
	}

	if err := send(t, nc, g.Node, wild.Port, addrPort(allowed), []byte("allowed")); err != nil {
		t.Fatalf("push to an allow-listed destination: %v", err)
	}
	if got, _ := readFrom(allowed, 5*time.Second); string(got) != "allowed" {
		t.Errorf("allow-listed destination got %q", got)
	}
	if got, _ := readFrom(stranger, 50*time.Millisecond); got != nil {
		t.Errorf("a refused destination got %q", got)
	}

	if err := send(t, nc, g.Node, wild.Port, netip.MustParseAddrPort("224.0.0.1:9"), []byte("x")); reason(err) != schemas.OutErrBadDestination {
		t.Errorf("push to a multicast group: %v", err)
	}
	big := make([]byte, ingress.DefaultMaxDatagram+1)
	if err := send(t, nc, g.Node, wild.Port, addrPort(c), big); reason(err) != schemas.OutErrTooLarge {
		t.Errorf("push larger than the largest datagram: %v", err)
	}
	// A plain publish, not a request: sent, answered to no one.
	if err := nc.PublishMsg(&nats.Msg{Subject: schemas.OutSubject(schemas.DefaultPrefix, g.Node, uint16(wild.Port)), Header: nats.Header{schemas.HeaderRemote: {addrPort(c).String()}}, Data: []byte("published")}); err != nil {
		t.Fatal(err)
	}
	if got, _ := readFrom(c, 5*time.Second); string(got) != "published" {
		t.Errorf("published push: got %q", got)
	}
	waitFor(t, "the published push counted", func() bool { return g.Stats().Out[name].Sent == 3 })
	st := g.Stats().Out[name]
	if st.Sent != 3 || st.Refused[schemas.OutErrNotPeer] != 1 || st.Refused[schemas.OutErrBadDestination] != 1 || st.Refused[schemas.OutErrTooLarge] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Pushes to one destination beyond its rate are refused.
func TestPushRate(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "push-rate", Push: Push{Rate: 1}} // bursts of 2
	addr := pushListener(t, g, "127.0.0.1:0", nil)
	serveGateway(t, g)
	nc := natstest.Connect(t, s)
	c := udpClient(t, "127.0.0.1")
	if _, err := c.WriteToUDP([]byte("hi"), addr); err != nil {
		t.Fatal(err)
	}
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolRaw)
	waitFor(t, "the datagram read", func() bool { return g.Stats().Ingress[name].Received == 1 })
	sent, limited := 0, 0
	start := time.Now()
	for range 10 {
		switch err := send(t, nc, g.Node, addr.Port, addrPort(c), []byte("tick")); {
		case err == nil:
			sent++
		case reason(err) == schemas.OutErrRate:
			limited++
		default:
			t.Fatal(err)
		}
	}
	// The burst of 2, and one a second after.
	if most := 2 + int(time.Since(start).Seconds()) + 1; sent < 2 || sent > most || limited != 10-sent {
		t.Errorf("sent %d, refused for the rate %d", sent, limited)
	}
	if st := g.Stats().Out[name]; st.Refused[schemas.OutErrRate] != uint64(limited) || st.Sent != uint64(sent) {
		t.Errorf("stats %+v", st)
	}
}

// To an unvalidated peer, the bytes pushed stay within the amplification
// factor times the bytes it sent; a trusted peer has no such limit.
func TestPushAmplification(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "push-amp"}
	addr := pushListener(t, g, "127.0.0.1:0", &guard.Config{Factor: 3, Trust: []netip.Prefix{netip.MustParsePrefix("127.0.0.8/32")}})
	serveGateway(t, g)
	nc := natstest.Connect(t, s)
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolRaw)

	// 20 bytes in is 48 on the wire: 144 may be pushed, two 40-byte
	// datagrams (68 each) and not a third.
	c := udpClient(t, "127.0.0.9")
	trusted := udpClient(t, "127.0.0.8")
	for _, from := range []*net.UDPConn{c, trusted} {
		if _, err := from.WriteToUDP([]byte("0123456789abcdefghij"), addr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the datagrams read", func() bool { return g.Stats().Ingress[name].Received == 2 })
	payload := make([]byte, 40)
	for i := range 2 {
		if err := send(t, nc, g.Node, addr.Port, addrPort(c), payload); err != nil {
			t.Fatalf("push %d within the budget: %v", i, err)
		}
	}
	if err := send(t, nc, g.Node, addr.Port, addrPort(c), payload); reason(err) != schemas.OutErrAmplification {
		t.Fatalf("push beyond the budget: %v, want %s", err, schemas.OutErrAmplification)
	}
	for range 2 {
		if got, _ := readFrom(c, 5*time.Second); len(got) != 40 {
			t.Fatalf("got %d bytes", len(got))
		}
	}
	if got, _ := readFrom(c, 50*time.Millisecond); got != nil {
		t.Errorf("a push beyond the budget arrived")
	}
	for i := range 5 {
		if err := send(t, nc, g.Node, addr.Port, addrPort(trusted), payload); err != nil {
			t.Fatalf("push %d to a trusted peer: %v", i, err)
		}
	}
	// A new datagram from the peer is new credit.
	if _, err := c.WriteToUDP([]byte("0123456789abcdefghij"), addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the datagram read", func() bool { return g.Stats().Ingress[name].Received == 3 })
	if err := send(t, nc, g.Node, addr.Port, addrPort(c), payload); err != nil {
		t.Errorf("push after more credit: %v", err)
	}
	if st := g.Stats().Out[name]; st.Refused[schemas.OutErrAmplification] != 1 || st.Sent != 8 {
		t.Errorf("stats %+v", st)
	}
}

// A push to a port whose listener has no push=on gets NATS's
// no-responders answer, as does a push to another node.
func TestPushWithoutPushListener(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	nc := natstest.Connect(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dest := netip.MustParseAddrPort("127.0.0.1:9")
	if err := workers.SendDatagram(ctx, nc, "", g.Node, uint16(addrs[0].Port), dest, []byte("x")); !errors.Is(err, workers.ErrNoPushListener) {
		t.Errorf("push to a listener without push=on: %v", err)
	}
	if err := workers.SendDatagram(ctx, nc, "", "elsewhere", uint16(addrs[0].Port), dest, []byte("x")); !errors.Is(err, workers.ErrNoPushListener) {
		t.Errorf("push to another node: %v", err)
	}
}

// The reasons' indexes match schemas.OutErrors.
func TestOutReasons(t *testing.T) {
	if len(schemas.OutErrors) != outReasons {
		t.Fatalf("%d reasons, %d in schemas", outReasons, len(schemas.OutErrors))
	}
	for i, want := range map[int]string{outNotPeer: schemas.OutErrNotPeer, outRate: schemas.OutErrRate, outAmplification: schemas.OutErrAmplification,
		outTooLarge: schemas.OutErrTooLarge, outNoListener: schemas.OutErrNoListener, outBadDestination: schemas.OutErrBadDestination, outSend: schemas.OutErrSend} {
		if schemas.OutErrors[i] != want {
			t.Errorf("reason %d is %s, want %s", i, schemas.OutErrors[i], want)
		}
	}
}

// A listener being removed refuses pushes (no_listener) while it answers
// its open exchanges, and subscribes to nothing once it is gone.
func TestPushToStoppingListener(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "push-stop", Deadline: 3 * time.Second}
	serveGateway(t, g)
	conn, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr)
	name, err := g.AddListener(Listener{Conn: conn, Protocol: schemas.ProtocolRaw, Push: true})
	if err != nil {
		t.Fatal(err)
	}
	// A worker that never answers keeps the exchange open until the
	// deadline: the listener drains that long.
	contractWorker(t, s, "silent", schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port)), func(*nats.Msg) []byte { return nil })
	c := udpClient(t, "127.0.0.1")
	if _, err := c.WriteToUDP([]byte("hi"), addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the exchange open", func() bool { return g.Stats().Ingress[name].Pending == 1 })
	nc := natstest.Connect(t, s)
	if err := send(t, nc, g.Node, addr.Port, addrPort(c), []byte("before")); err != nil {
		t.Fatalf("push before the removal: %v", err)
	}
	removed, err := g.RemoveListener(name)
	if err != nil {
		t.Fatal(err)
	}
	// A push that came before the stop began is sent: as many "during"
	// datagrams arrive as were accepted, and no refused one.
	accepted := 0
	waitFor(t, "a push refused as the listener stops", func() bool {
		err := send(t, nc, g.Node, addr.Port, addrPort(c), []byte("during"))
		if err == nil {
			accepted++
		}
		return reason(err) == schemas.OutErrNoListener
	})
	<-removed
	// NATS learns of the unsubscription asynchronously: a push on its
	// way meanwhile gets no answer.
	waitFor(t, "no responders once the listener is gone", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		return errors.Is(workers.SendDatagram(ctx, nc, "", g.Node, uint16(addr.Port), addrPort(c), []byte("after")), workers.ErrNoPushListener)
	})
	if got, _ := readFrom(c, 5*time.Second); string(got) != "before" {
		t.Errorf("got %q", got)
	}
	for range accepted {
		if got, _ := readFrom(c, 5*time.Second); string(got) != "during" {
			t.Errorf("got %q, want an accepted push", got)
		}
	}
	if got, _ := readFrom(c, 50*time.Millisecond); got != nil {
		t.Errorf("a refused push arrived: %q", got)
	}
}
