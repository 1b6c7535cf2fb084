package node

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	pion "github.com/pion/dtls/v3"

	"github.com/udpgate/udpgate/dtls"
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
	cfg := nodeConfig(t, map[string]string{"DTLS_PSK_FILE": psk, "DTLS_HANDSHAKE_TIMEOUT": "2s"})
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

// TestNodeCoAPSWithLibcoap: libcoap's coap-client, over DTLS with a
// pre-shared key, gets a worker's answer from a coaps listener, and the
// worker sees the client's identity; a wrong key and an unknown identity
// are refused, counted, and never reach the worker.
func TestNodeCoAPSWithLibcoap(t *testing.T) {
	client, err := exec.LookPath("coap-client-openssl")
	if err != nil {
		t.Fatal("coap-client-openssl (libcoap3-bin) is not installed: .ci/run installs it")
	}
	n, calls := startDTLSNode(t, "127.0.0.1:1/coaps", "# devices\nsensor-7:0x0102030405060708\nalice:s3cret\n", "udpgate.in.PORT.GET.whoami")
	uri := "coaps://" + n.Ports[0].String() + "/whoami"
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolCoAP)
	run := func(identity, key string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, client, "-B", "5", "-m", "get", "-u", identity, "-k", key, uri).CombinedOutput()
		return string(out)
	}
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
}
