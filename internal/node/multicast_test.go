package node

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/netnstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// startNetnsNode starts a node in the gateway namespace of p, with the
// listeners of entries (UDPGATE_LISTENERS) and the variables vars: its
// sockets and its embedded NATS server are that namespace's.
func startNetnsNode(t *testing.T, p *netnstest.Pair, entries string, vars map[string]string) *Node {
	t.Helper()
	cfg := nodeConfig(t, vars)
	ls, err := config.ParseListeners(entries)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var n *Node
	if err := netnstest.Do(p.Gateway.Namespace, func() error {
		n, err = Start(ctx, cfg, discard, Options{Listeners: ls})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// serve answers the requests on subject with what answer makes of them,
// and returns the requests' count.
func serve(t *testing.T, n *Node, subject string, answer func(m *nats.Msg) []byte) *atomic.Int64 {
	t.Helper()
	calls := new(atomic.Int64)
	sub, err := n.Conn.QueueSubscribe(subject, "multicast-test", func(m *nats.Msg) {
		calls.Add(1)
		m.Respond(answer(m))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := n.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return calls
}

// ingressStats waits, a bounded number of times, for the listener's
// counts to satisfy cond, and returns them.
func ingressStats(t *testing.T, n *Node, name, what string, cond func(ingress.Stats) bool) ingress.Stats {
	t.Helper()
	var st ingress.Stats
	for range 500 {
		if st = n.Gateway.Stats().Ingress[name]; cond(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never: %+v", what, st)
	return st
}

// clientSocket returns a UDP socket bound in the client namespace of p to
// addr.
func clientSocket(t *testing.T, p *netnstest.Pair, network string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := netnstest.Do(p.Client.Namespace, func() error {
		var err error
		c, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readFrom reads one datagram on c within wait.
func readFrom(c *net.UDPConn, wait time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return buf[:n], from, err
}

// TestNodeRawBroadcastAndMulticast: a raw listener on the wildcard
// address joined to 224.0.1.187 on its link answers a datagram sent to
// the link's broadcast address and one sent to the group, each from its
// own unicast address (a client's connected socket would accept
// nothing else, and the kernel sends nothing from a group's address);
// the worker sees where each was sent.
func TestNodeRawBroadcastAndMulticast(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{})
	const port = 9000
	n := startNetnsNode(t, p, fmt.Sprintf("%d/raw;group=224.0.1.187%%%s", port, p.Gateway.Name), map[string]string{})
	serve(t, n, schemas.InSubject(schemas.DefaultPrefix, port), func(m *nats.Msg) []byte {
		return fmt.Appendf(nil, "local=%s multicast=%s broadcast=%s", m.Header.Get(schemas.HeaderLocal),
			m.Header.Get(schemas.HeaderMulticast), m.Header.Get(schemas.HeaderBroadcast))
	})
	c := clientSocket(t, p, "udp4", netip.AddrPortFrom(p.Client.IP4, 0))
	want := netip.AddrPortFrom(p.Gateway.IP4, port)
	for _, tc := range []struct {
		to    netip.Addr
		reply string
	}{
		{p.Broadcast, "local=10.77.0.255:9000 multicast= broadcast=10.77.0.255"},
		{netip.MustParseAddr("224.0.1.187"), "local=224.0.1.187:9000 multicast=224.0.1.187 broadcast="},
		{p.Gateway.IP4, "local=10.77.0.1:9000 multicast= broadcast="},
	} {
		if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(tc.to, port)); err != nil {
			t.Fatal(err)
		}
		b, from, err := readFrom(c, 10*time.Second)
		if err != nil || string(b) != tc.reply || from != want {
			t.Errorf("to %s: %q from %s (%v), want %q from %s", tc.to, b, from, err, tc.reply, want)
		}
	}
	st := ingressStats(t, n, schemas.Listener(port, schemas.ProtocolRaw), "counted", func(st ingress.Stats) bool { return st.Broadcast == 1 && st.Multicast == 1 })
	if st.Received != 3 {
		t.Errorf("received %d, want 3", st.Received)
	}
}

// TestNodeRawBroadcastPython: the broadcast client of Foundations of
// Python Network Programming (chapter 2's udp_broadcast.py, with SO_BROADCAST,
// to the subnet's broadcast address), run by Python in the client
// namespace, reaches a raw listener on the wildcard address; the worker
// sees a broadcast, and the answer comes back from the gateway's unicast
// address.
func TestNodeRawBroadcastPython(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is missing")
		}
		t.Skip("python3 is missing")
	}
	p := netnstest.New(t, netnstest.Options{})
	const port = 1060
	n := startNetnsNode(t, p, fmt.Sprintf("%d/raw", port), map[string]string{})
	calls := serve(t, n, schemas.InSubject(schemas.DefaultPrefix, port), func(m *nats.Msg) []byte {
		return fmt.Appendf(nil, "%s (broadcast to %s)", m.Data, m.Header.Get(schemas.HeaderBroadcast))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script, err := filepath.Abs(filepath.Join("testdata", "udp_broadcast.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := netnstest.Command(ctx, p.Client.Namespace, python, script, p.Broadcast.String(), "-p", fmt.Sprint(port))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	want := fmt.Sprintf("The server at %s:%d replied 'Broadcast datagram! (broadcast to %s)'\n", p.Gateway.IP4, port, p.Broadcast)
	if err != nil || string(out) != want {
		t.Fatalf("udp_broadcast.py: %v\n%s\nwant %q", err, out, want)
	}
	if calls.Load() != 1 {
		t.Errorf("the worker saw %d requests, want 1", calls.Load())
	}
	ingressStats(t, n, schemas.Listener(port, schemas.ProtocolRaw), "the broadcast counted", func(st ingress.Stats) bool { return st.Broadcast == 1 })
}

// TestNodeRawMulticastIPv6: a raw listener on [::] joined to ff02::fd on
// its link answers a datagram sent to the group from a unicast address
// of the link, the kernel's pick among the interface's.
func TestNodeRawMulticastIPv6(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{})
	const port = 9000
	n := startNetnsNode(t, p, fmt.Sprintf("[::]:%d/raw;group=ff02::fd%%%s", port, p.Gateway.Name), map[string]string{})
	serve(t, n, schemas.InSubject(schemas.DefaultPrefix, port), func(m *nats.Msg) []byte {
		return []byte(m.Header.Get(schemas.HeaderMulticast))
	})
	c := clientSocket(t, p, "udp6", netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
	to := netip.AddrPortFrom(netip.MustParseAddr("ff02::fd").WithZone(p.Client.Name), port)
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), to); err != nil {
		t.Fatal(err)
	}
	b, from, err := readFrom(c, 10*time.Second)
	if err != nil || string(b) != "ff02::fd" {
		t.Fatalf("%q from %s (%v), want ff02::fd", b, from, err)
	}
	if a := from.Addr(); a.IsMulticast() || !(a.IsLinkLocalUnicast() || a.WithZone("") == p.Gateway.IP6) || from.Port() != port {
		t.Errorf("reply from %s, want a unicast address of the gateway's link, port %d", from, port)
	}
}

// TestNodeCoAPMulticast: libcoap's coap-client sends NON GETs to the
// All-CoAP-Nodes group 224.0.1.187: the coap listener joined to it
// answers the served resource with a NON from its unicast address,
// after its (short) Leisure, the worker sees the group, and the 4.04 for
// a resource nobody serves is suppressed.
func TestNodeCoAPMulticast(t *testing.T) {
	client, err := exec.LookPath("coap-client-notls")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("libcoap's coap-client-notls is not installed: .ci/run installs it")
		}
		t.Skip("libcoap's coap-client-notls is not installed")
	}
	p := netnstest.New(t, netnstest.Options{})
	const port = 5683
	n := startNetnsNode(t, p, fmt.Sprintf("%d/coap;group=224.0.1.187%%%s", port, p.Gateway.Name),
		map[string]string{"COAP_LEISURE": "200ms"})
	calls := serve(t, n, schemas.CoAPSubject(schemas.DefaultPrefix, port, "GET", []string{"time"}), func(m *nats.Msg) []byte {
		return []byte("noon via " + m.Header.Get(schemas.HeaderMulticast))
	})
	coap := func(path string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := netnstest.Command(ctx, p.Client.Namespace, client, "-N", "-B", "2", "-m", "get",
			fmt.Sprintf("coap://224.0.1.187:%d/%s", port, path)).CombinedOutput()
		if err != nil && ctx.Err() != nil {
			t.Fatalf("coap-client: %v: %s", err, out)
		}
		return string(bytes.TrimSpace(out))
	}
	if out := coap("time"); !strings.Contains(out, "noon via 224.0.1.187") {
		t.Errorf("coap-client printed %q, want the worker's answer", out)
	}
	if out := coap("nothing"); strings.Contains(out, "4.04") {
		t.Errorf("coap-client printed %q: the 4.04 was sent to a multicast request", out)
	}
	// The response, seen on the wire: a NON, from the gateway's unicast
	// address, after a random delay within the Leisure.
	c := clientSocket(t, p, "udp4", netip.AddrPortFrom(p.Client.IP4, 0))
	get := []byte{0x51, 0x01, 0x12, 0x34, 0xAB, 0xB4, 't', 'i', 'm', 'e'} // NON GET /time, token AB
	sent := time.Now()
	if _, err := c.WriteToUDPAddrPort(get, netip.AddrPortFrom(netip.MustParseAddr("224.0.1.187"), port)); err != nil {
		t.Fatal(err)
	}
	b, from, err := readFrom(c, 10*time.Second)
	if err != nil || len(b) < 5 || b[0]>>4&3 != 1 || b[1] != 0x45 || b[4] != 0xAB || from != netip.AddrPortFrom(p.Gateway.IP4, port) {
		t.Fatalf("response % x from %s (%v), want a NON 2.05 with token AB from %s", b, from, err, netip.AddrPortFrom(p.Gateway.IP4, port))
	}
	t.Logf("the response came %v after the request (Leisure 200ms)", time.Since(sent))
	if calls.Load() != 2 {
		t.Errorf("%d requests for /time, want 2", calls.Load())
	}
	name := schemas.Listener(port, schemas.ProtocolCoAP)
	ingressStats(t, n, name, "3 multicast requests", func(st ingress.Stats) bool { return st.Multicast == 3 })
	for range 500 {
		if n.Gateway.Stats().CoAP[name].MulticastSuppressed == 1 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("suppressed %d, want the 4.04", n.Gateway.Stats().CoAP[name].MulticastSuppressed)
}

// TestNodeDontFragment: on a link of MTU 1280, a reply of 1400 bytes
// reaches the client in fragments from a plain listener, and is not sent,
// counted, from a df=on listener.
func TestNodeDontFragment(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{MTU: 1280})
	n := startNetnsNode(t, p, "9000/raw,9001/raw;df=on", map[string]string{"AMPLIFICATION": "0"}) // replies larger than the requests
	for _, port := range []uint16{9000, 9001} {
		serve(t, n, schemas.InSubject(schemas.DefaultPrefix, port), func(*nats.Msg) []byte { return bytes.Repeat([]byte("x"), 1400) })
	}
	c := clientSocket(t, p, "udp4", netip.AddrPortFrom(p.Client.IP4, 0))
	if _, err := c.WriteToUDPAddrPort([]byte("big?"), netip.AddrPortFrom(p.Gateway.IP4, 9000)); err != nil {
		t.Fatal(err)
	}
	if b, _, err := readFrom(c, 10*time.Second); err != nil || len(b) != 1400 {
		t.Errorf("plain listener: %d bytes (%v), want 1400 in fragments", len(b), err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("big?"), netip.AddrPortFrom(p.Gateway.IP4, 9001)); err != nil {
		t.Fatal(err)
	}
	ingressStats(t, n, schemas.Listener(9001, schemas.ProtocolRaw), "the reply counted too big", func(st ingress.Stats) bool { return st.TooBig == 1 })
	if b, from, err := readFrom(c, 200*time.Millisecond); err == nil {
		t.Errorf("df=on listener sent %d bytes from %s", len(b), from)
	}
	if st := n.Gateway.Stats().Ingress[schemas.Listener(9000, schemas.ProtocolRaw)]; st.TooBig != 0 {
		t.Errorf("plain listener counted %d too big", st.TooBig)
	}
}

// TestNodeCoAPMulticastIPv6: libcoap's coap-client sends a NON GET to the
// link-local All-CoAP-Nodes group ff02::fd: the coap listener on [::]
// joined to it answers from a unicast address of its link.
func TestNodeCoAPMulticastIPv6(t *testing.T) {
	client, err := exec.LookPath("coap-client-notls")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("libcoap's coap-client-notls is not installed: .ci/run installs it")
		}
		t.Skip("libcoap's coap-client-notls is not installed")
	}
	p := netnstest.New(t, netnstest.Options{})
	const port = 5683
	n := startNetnsNode(t, p, fmt.Sprintf("[::]:%d/coap;group=ff02::fd%%%s", port, p.Gateway.Name),
		map[string]string{"COAP_LEISURE": "200ms"})
	serve(t, n, schemas.CoAPSubject(schemas.DefaultPrefix, port, "GET", []string{"time"}), func(m *nats.Msg) []byte {
		return []byte("noon via " + m.Header.Get(schemas.HeaderMulticast) + " to " + m.Header.Get(schemas.HeaderLocal))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := netnstest.Command(ctx, p.Client.Namespace, client, "-N", "-B", "2", "-m", "get",
		fmt.Sprintf("coap://[ff02::fd%%%s]:%d/time", p.Client.Name, port)).CombinedOutput()
	if err != nil && ctx.Err() != nil {
		t.Fatalf("coap-client: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "noon via ff02::fd to [ff02::fd]:5683") {
		t.Errorf("coap-client printed %q, want the worker's answer", out)
	}
	ingressStats(t, n, schemas.Listener(port, schemas.ProtocolCoAP), "1 multicast request", func(st ingress.Stats) bool { return st.Multicast == 1 })
}

// TestNodePushAfterBroadcast: a push=on raw listener pushes to a client
// whose only datagram went to the link's broadcast address from the
// listener's unicast address, the address a reply would come from, not
// from the broadcast address (which the kernel refuses as a source).
func TestNodePushAfterBroadcast(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{})
	const port = 9000
	n := startNetnsNode(t, p, fmt.Sprintf("%d/raw;push=on;reply=off", port), map[string]string{})
	c := clientSocket(t, p, "udp4", netip.AddrPortFrom(p.Client.IP4, 0))
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(p.Broadcast, port)); err != nil {
		t.Fatal(err)
	}
	ingressStats(t, n, schemas.Listener(port, schemas.ProtocolRaw), "the broadcast read", func(st ingress.Stats) bool { return st.Broadcast == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dest := c.LocalAddr().(*net.UDPAddr).AddrPort()
	const node = "trace-test" // nodeConfig's name for every test node
	if err := workers.SendDatagram(ctx, n.Conn, schemas.DefaultPrefix, node, port, dest, []byte("pushed")); err != nil {
		t.Fatalf("push: %v", err)
	}
	b, from, err := readFrom(c, 10*time.Second)
	if want := netip.AddrPortFrom(p.Gateway.IP4, port); err != nil || string(b) != "pushed" || from != want {
		t.Errorf("got %q from %s (%v), want %q from %s", b, from, err, "pushed", want)
	}
}

// TestNodeDTLSIgnoresBroadcast: a dtls listener on the wildcard address
// gives a datagram sent to the link's broadcast address to no DTLS
// session, nor counts it as one's: a session is with one peer, at the
// node's own address. The same datagram sent to that address is.
func TestNodeDTLSIgnoresBroadcast(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{})
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("alice:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const port = 9443
	n := startNetnsNode(t, p, fmt.Sprintf("%d/dtls", port), map[string]string{"DTLS_PSK_FILE": psk})
	c := clientSocket(t, p, "udp4", netip.AddrPortFrom(p.Client.IP4, 0))
	name := schemas.Listener(port, schemas.ProtocolRaw)
	if _, err := c.WriteToUDPAddrPort([]byte("not a record"), netip.AddrPortFrom(p.Broadcast, port)); err != nil {
		t.Fatal(err)
	}
	ingressStats(t, n, name, "the broadcast read", func(st ingress.Stats) bool { return st.Broadcast == 1 })
	if _, err := c.WriteToUDPAddrPort([]byte("not a record"), netip.AddrPortFrom(p.Gateway.IP4, port)); err != nil {
		t.Fatal(err)
	}
	ingressStats(t, n, name, "the unicast datagram read", func(st ingress.Stats) bool { return st.Received == 2 })
	for range 500 {
		if n.Gateway.Stats().DTLS[name].NoSession > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := n.Gateway.Stats().DTLS[name]; st.NoSession != 1 {
		t.Errorf("datagrams given to DTLS and dropped: %d, want only the unicast one", st.NoSession)
	}
}
