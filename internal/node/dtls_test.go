package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	pion "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/internal/certtest"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// startDTLSNode starts a node with the DTLS listener entry (port 0 on
// 127.0.0.1) and the PSK file keys, and a worker on subject (a format
// with the listener's port) that answers "hello " and the client's
// identity header, then the request's body; calls counts its requests.
func startDTLSNode(t *testing.T, entry, keys, subject string) (n *Node, calls *atomic.Int64) {
	t.Helper()
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	return startDTLSNodeWith(t, entry, map[string]string{"DTLS_PSK_FILE": psk}, subject)
}

// startDTLSNodeWith is startDTLSNode with the UDPGATE_DTLS_* variables
// vars.
func startDTLSNodeWith(t *testing.T, entry string, vars map[string]string, subject string) (n *Node, calls *atomic.Int64) {
	t.Helper()
	vars["DTLS_HANDSHAKE_TIMEOUT"] = "2s"
	cfg := nodeConfig(t, vars)
	ls, err := config.ParseListeners(entry)
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	n, err = Start(ctx, cfg, discard, Options{Listeners: ls})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	calls = new(atomic.Int64)
	sub, err := n.Conn.QueueSubscribe(strings.ReplaceAll(subject, "PORT", strconv.Itoa(int(n.Ports[0].Port()))), "whoami", func(m *nats.Msg) {
		calls.Add(1)
		m.Respond(append([]byte("hello "+m.Header.Get(schemas.HeaderDTLSIdentity)+" "), m.Data...))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := n.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return n, calls
}

// dtlsStats waits, a bounded number of times, for the listener's DTLS
// counts to satisfy cond, and returns them.
func dtlsStats(t *testing.T, n *Node, name string, what string, cond func(dtls.Stats) bool) dtls.Stats {
	t.Helper()
	var st dtls.Stats
	for range 500 {
		if st = n.Gateway.Stats().DTLS[name]; cond(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never: %+v", what, st)
	return st
}

// libcoapPSK runs libcoap's coap-client-openssl: a GET of uri over DTLS
// with the pre-shared key of identity; it returns what it printed.
func libcoapPSK(t *testing.T, uri, identity, key string) string {
	t.Helper()
	client, err := exec.LookPath("coap-client-openssl")
	if err != nil {
		t.Fatal("coap-client-openssl (libcoap3-bin) is not installed: .ci/run installs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, client, "-B", "5", "-m", "get", "-u", identity, "-k", key, uri).CombinedOutput()
	return string(out)
}

// TestNodeCoAPSWithLibcoap: libcoap's coap-client, over DTLS with a
// pre-shared key, gets a worker's answer from a coaps listener, and the
// worker sees the client's identity; a wrong key and an unknown identity
// are refused, counted, and never reach the worker.
func TestNodeCoAPSWithLibcoap(t *testing.T) {
	n, calls := startDTLSNode(t, "127.0.0.1:1/coaps", "# devices\nsensor-7:0x0102030405060708\nalice:s3cret\n", "udpgate.in.PORT.GET.whoami")
	uri := "coaps://" + n.Ports[0].String() + "/whoami"
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolCoAP)
	run := func(identity, key string) string { return libcoapPSK(t, uri, identity, key) }
	if out := run("alice", "s3cret"); !strings.Contains(out, "hello alice") {
		t.Fatalf("coap-client: %q, want the worker's answer for alice", out)
	}
	st := dtlsStats(t, n, name, "one handshake", func(st dtls.Stats) bool { return st.Handshakes[dtls.OutcomeOK] == 1 })
	if st.Records < 1 {
		t.Errorf("stats %+v", st)
	}
	before := calls.Load()
	for _, tc := range []struct{ name, identity, key, outcome string }{
		{"wrong key", "alice", "guess", dtls.OutcomeBadKey},
		{"unknown identity", "mallory", "s3cret", dtls.OutcomeUnknownIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out := run(tc.identity, tc.key); strings.Contains(out, "hello") {
				t.Errorf("coap-client got an answer: %q", out)
			}
			dtlsStats(t, n, name, tc.outcome+" counted", func(st dtls.Stats) bool { return st.Handshakes[tc.outcome] >= 1 })
		})
	}
	if got := calls.Load(); got != before {
		t.Errorf("the worker was called %d times for refused clients", got-before)
	}
}

// TestNodeCoAPSIdentities: a coaps listener with identity= serves only
// the identities it lists: libcoap's client with another key of the file
// finishes its handshake, is refused (not_allowed), and never reaches
// the worker.
func TestNodeCoAPSIdentities(t *testing.T) {
	n, calls := startDTLSNode(t, "127.0.0.1:1/coaps;identity=alice sensor-7", "sensor-7:0x0102030405060708\nalice:s3cret\nbob:hunter2\n", "udpgate.in.PORT.GET.whoami")
	uri := "coaps://" + n.Ports[0].String() + "/whoami"
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolCoAP)
	run := func(identity, key string) string { return libcoapPSK(t, uri, identity, key) }
	if out := run("alice", "s3cret"); !strings.Contains(out, "hello alice") {
		t.Fatalf("coap-client as alice: %q, want the worker's answer", out)
	}
	before := calls.Load()
	if out := run("bob", "hunter2"); strings.Contains(out, "hello") {
		t.Errorf("coap-client as bob got an answer: %q", out)
	}
	dtlsStats(t, n, name, "bob refused", func(st dtls.Stats) bool { return st.Handshakes[dtls.OutcomeNotAllowed] == 1 })
	if got := calls.Load(); got != before {
		t.Errorf("the worker was called %d times for bob", got-before)
	}
}

// TestNodeDTLSRaw: a dtls listener's datagrams, through pion's DTLS
// client, reach a raw worker with the client's identity, and its answer
// comes back through the session.
func TestNodeDTLSRaw(t *testing.T) {
	n, calls := startDTLSNode(t, "127.0.0.1:1/dtls", "sensor-7:0x0102030405060708\n", "udpgate.in.PORT")
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := pion.ClientWithOptions(pc, net.UDPAddrFromAddrPort(n.Ports[0]),
		pion.WithPSK(func([]byte) ([]byte, error) { return []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil }),
		pion.WithPSKIdentityHint([]byte("sensor-7")),
		pion.WithCipherSuites(pion.TLS_PSK_WITH_AES_128_CCM_8))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("21.5C")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	k, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf[:k]), "hello sensor-7 21.5C"; got != want {
		t.Errorf("reply %q, want %q", got, want)
	}
	if calls.Load() != 1 {
		t.Errorf("%d worker calls", calls.Load())
	}
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolRaw)
	if st := n.Gateway.Stats().DTLS[name]; st.Handshakes[dtls.OutcomeOK] != 1 || st.Sessions != 1 {
		t.Errorf("stats %+v", st)
	}
	if ls := n.Gateway.Status(ctx).Listeners; len(ls) != 1 || ls[0].Listener != name || !ls[0].DTLS {
		t.Errorf("status %+v, want %s with dtls", ls, name)
	}

	// udpgate's own client (udpgate send dtls://).
	cc, err := client.Dial(ctx, "dtls://"+n.Ports[0].String(), client.Options{PSKIdentity: "sensor-7", PSK: []byte{1, 2, 3, 4, 5, 6, 7, 8}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	res, err := cc.Do(ctx, []byte("22.0C"))
	if err != nil || string(res.Body) != "hello sensor-7 22.0C" {
		t.Errorf("dtls:// reply %q, %v", res.Body, err)
	}
}

// TestNodeCoAPSCertificates: with UDPGATE_DTLS_CLIENT_CA, libcoap's
// client presenting a certificate the CA file holds is answered, and the
// worker sees the certificate's subject; a client without one is refused
// and never reaches the worker.
func TestNodeCoAPSCertificates(t *testing.T) {
	client, err := exec.LookPath("coap-client-openssl")
	if err != nil {
		t.Fatal("coap-client-openssl (libcoap3-bin) is not installed: .ci/run installs it")
	}
	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	certtest.WriteSelfSigned(t, file("server.pem"), file("server.key"), "udpgate-test")
	certtest.WriteClient(t, file("client.pem"), file("client.key"), "device-12")
	// The client CAs: device-12's certificate and an expired one's; a
	// third client certificate is trusted by nobody.
	certtest.WriteExpiredClient(t, file("expired.pem"), file("expired.key"), "device-old")
	certtest.WriteClient(t, file("stranger.pem"), file("stranger.key"), "device-stranger")
	var cas []byte
	for _, f := range []string{"client.pem", "expired.pem"} {
		b, err := os.ReadFile(file(f))
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, b...)
	}
	if err := os.WriteFile(file("cas.pem"), cas, 0o644); err != nil {
		t.Fatal(err)
	}
	n, calls := startDTLSNodeWith(t, "127.0.0.1:1/coaps", map[string]string{
		"DTLS_CERT_FILE": file("server.pem"), "DTLS_KEY_FILE": file("server.key"), "DTLS_CLIENT_CA": file("cas.pem"),
	}, "udpgate.in.PORT.GET.whoami")
	uri := "coaps://" + n.Ports[0].String() + "/whoami"
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolCoAP)
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, client, append(append([]string{"-B", "5", "-m", "get"}, args...), uri)...).CombinedOutput()
		return string(out)
	}
	if out := run("-c", file("client.pem"), "-j", file("client.key")); !strings.Contains(out, "hello CN=device-12") {
		t.Fatalf("coap-client with a client certificate: %q", out)
	}
	dtlsStats(t, n, name, "one handshake", func(st dtls.Stats) bool { return st.Handshakes[dtls.OutcomeOK] == 1 })
	before := calls.Load()
	if out := run(); strings.Contains(out, "hello") {
		t.Errorf("coap-client without a certificate got an answer: %q", out)
	}
	dtlsStats(t, n, name, "bad_certificate counted", func(st dtls.Stats) bool { return st.Handshakes[dtls.OutcomeBadCertificate] >= 1 })
	if calls.Load() != before {
		t.Error("the worker was called for a client without a certificate")
	}
	for i, who := range []string{"expired", "stranger"} {
		if out := run("-c", file(who+".pem"), "-j", file(who+".key")); strings.Contains(out, "hello") {
			t.Errorf("coap-client with the %s certificate got an answer: %q", who, out)
		}
		dtlsStats(t, n, name, who+"'s handshake refused", func(st dtls.Stats) bool { return st.Handshakes[dtls.OutcomeBadCertificate] >= uint64(i+2) })
		if calls.Load() != before {
			t.Errorf("the worker was called for the %s certificate", who)
		}
	}
}

// TestNodeCoAPSGoCoAP: go-coap's DTLS client (on pion) is answered by a
// coaps listener, with a body larger than a block, in Block2 blocks.
func TestNodeCoAPSGoCoAP(t *testing.T) {
	n, calls := startDTLSNode(t, "127.0.0.1:1/coaps", "sensor-7:0x0102030405060708\n", "udpgate.in.PORT.POST.whoami")
	co, err := coapdtls.Dial(n.Ports[0].String(), coapdtls.NewDTLSClientOptions(
		pion.WithPSK(func([]byte) ([]byte, error) { return []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil }),
		pion.WithPSKIdentityHint([]byte("sensor-7")),
		pion.WithCipherSuites(pion.TLS_PSK_WITH_AES_128_CCM_8)))
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	body := strings.Repeat("0123456789", 300) // 3,000 bytes: Block2 blocks of 1,024
	resp, err := co.Post(ctx, "/whoami", message.TextPlain, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, err := resp.ReadBody()
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello sensor-7 " + body; string(got) != want || resp.Code() != codes.Content {
		t.Errorf("%v, %d bytes, want 2.05 and %d bytes", resp.Code(), len(got), len(want))
	}
	if calls.Load() != 1 {
		t.Errorf("%d worker calls", calls.Load())
	}
}

// TestListenersFileCoAPS: a coaps listener the listener file adds serves
// libcoap's client over DTLS with the node's UDPGATE_DTLS_PSK_FILE, and
// goes when the file drops it.
func TestListenersFileCoAPS(t *testing.T) {
	client, err := exec.LookPath("coap-client-openssl")
	if err != nil {
		t.Fatal("coap-client-openssl (libcoap3-bin) is not installed: .ci/run installs it")
	}
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("alice:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	n := startFileNode(t, fmt.Sprintf("listeners:\n  - {port: %d, address: 127.0.0.1, protocol: coaps}\n", port), map[string]string{"DTLS_PSK_FILE": psk})
	trigger := make(chan struct{})
	n.watch(t, trigger, time.Hour)
	sub, err := n.conn.QueueSubscribe(fmt.Sprintf("udpgate.in.%d.GET.whoami", port), "whoami", func(m *nats.Msg) {
		m.Respond([]byte("hello " + m.Header.Get(schemas.HeaderDTLSIdentity)))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := n.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, client, "-B", "5", "-m", "get", "-u", "alice", "-k", "s3cret", fmt.Sprintf("coaps://127.0.0.1:%d/whoami", port)).CombinedOutput()
	if !strings.Contains(string(out), "hello alice") {
		t.Fatalf("coap-client: %q", out)
	}
	name := schemas.Listener(port, schemas.ProtocolCoAP)
	if st := n.Gateway.Stats().DTLS[name]; st.Handshakes[dtls.OutcomeOK] != 1 {
		t.Errorf("stats %+v", st)
	}
	writeFile(t, n.path, "listeners: []\n")
	trigger <- struct{}{}
	waitUntil(t, "the coaps listener removed", func() bool { _, ok := n.Gateway.Stats().DTLS[name]; return !ok })
}

// movingConn is a DTLS client's packet connection whose source port
// changes when told to (a NAT rebinding): it reads from both of its
// sockets and writes from the current one.
type movingConn struct {
	socks [2]*net.UDPConn
	cur   atomic.Int32
	in    chan movingPacket
	done  chan struct{}
	once  sync.Once
	mu    sync.Mutex // guards wake
	wake  chan struct{}
}

type movingPacket struct {
	b    []byte
	from net.Addr
}

func newMovingConn(t *testing.T) *movingConn {
	m := &movingConn{in: make(chan movingPacket, 64), done: make(chan struct{}), wake: make(chan struct{})}
	for i := range m.socks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		m.socks[i] = c
		go func() {
			for {
				buf := make([]byte, 65536)
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				select {
				case m.in <- movingPacket{buf[:n], from}:
				case <-m.done:
					return
				}
			}
		}()
	}
	return m
}

func (m *movingConn) ReadFrom(p []byte) (int, net.Addr, error) {
	m.mu.Lock()
	wake := m.wake
	m.mu.Unlock()
	select {
	case pk := <-m.in:
		return copy(p, pk.b), pk.from, nil
	case <-wake:
		return 0, nil, os.ErrDeadlineExceeded
	case <-m.done:
		return 0, nil, net.ErrClosed
	}
}

func (m *movingConn) WriteTo(p []byte, a net.Addr) (int, error) {
	return m.socks[m.cur.Load()].WriteTo(p, a)
}
func (m *movingConn) Close() error                     { m.once.Do(func() { close(m.done) }); return nil }
func (m *movingConn) LocalAddr() net.Addr              { return m.socks[m.cur.Load()].LocalAddr() }
func (m *movingConn) SetDeadline(t time.Time) error    { return m.SetReadDeadline(t) }
func (m *movingConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadDeadline wakes a blocked read for a deadline in the past, as
// pion sets it to stop reading; later deadlines are not needed here.
func (m *movingConn) SetReadDeadline(t time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	woken := false
	select {
	case <-m.wake:
		woken = true
	default:
	}
	switch past := !t.IsZero() && !t.After(time.Now()); {
	case past && !woken:
		close(m.wake)
	case !past && woken:
		m.wake = make(chan struct{})
	}
	return nil
}

// TestNodeDTLSConnectionID: a client whose source port changes keeps its
// DTLS session through its Connection ID, and the worker's answer to its
// next datagram reaches it at its new port.
func TestNodeDTLSConnectionID(t *testing.T) {
	n, _ := startDTLSNode(t, "127.0.0.1:1/dtls", "sensor-7:0x0102030405060708\n", "udpgate.in.PORT")
	m := newMovingConn(t)
	c, err := pion.ClientWithOptions(m, net.UDPAddrFromAddrPort(n.Ports[0]),
		pion.WithPSK(func([]byte) ([]byte, error) { return []byte{1, 2, 3, 4, 5, 6, 7, 8}, nil }),
		pion.WithPSKIdentityHint([]byte("sensor-7")),
		pion.WithCipherSuites(pion.TLS_PSK_WITH_AES_128_CCM_8),
		pion.WithConnectionIDGenerator(pion.OnlySendCIDGenerator()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	ask := func(body string) string {
		t.Helper()
		if _, err := c.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1500)
		k, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:k])
	}
	if got := ask("one"); got != "hello sensor-7 one" {
		t.Fatalf("reply %q", got)
	}
	m.cur.Store(1) // the client's source port changes
	if got := ask("two"); got != "hello sensor-7 two" {
		t.Fatalf("reply after the rebinding %q", got)
	}
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolRaw)
	if st := n.Gateway.Stats().DTLS[name]; st.Rebinds != 1 || st.Sessions != 1 || st.Handshakes[dtls.OutcomeOK] != 1 {
		t.Errorf("stats %+v, want 1 rebind, 1 session, 1 handshake", st)
	}
}

// TestNodeCoAPSClient: udpgate's own client (udpgate send) asks a coaps
// listener over DTLS with a pre-shared key.
func TestNodeCoAPSClient(t *testing.T) {
	n, _ := startDTLSNode(t, "127.0.0.1:1/coaps", "alice:s3cret\n", "udpgate.in.PORT.GET.whoami")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	url := "coaps://" + n.Ports[0].String() + "/whoami"
	if _, err := client.Dial(ctx, url, client.Options{}); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("coaps:// without a key: %v, want ErrInvalid", err)
	}
	c, err := client.Dial(ctx, url, client.Options{PSKIdentity: "alice", PSK: []byte("s3cret"), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Do(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Body) != "hello alice " || res.Code != uint8(codes.Content) {
		t.Errorf("%s %q", client.CodeString(res.Code), res.Body)
	}
	if _, err := client.Dial(ctx, url, client.Options{PSKIdentity: "alice", PSK: []byte("guess"), Timeout: time.Second}); err == nil {
		t.Error("a wrong key shook hands")
	}
}
