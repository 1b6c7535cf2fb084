package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/pcap"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
	"github.com/udpgate/udpgate/ws"
)

// TestPcapExportSkipsWS: a gateway with a raw listener and a ws listener
// captures datagrams and WebSocket calls, with their replies; `udpgate
// pcap export --replies` writes the datagrams and their replies only, and
// counts what the ws listener received (its calls and its connection
// events) and the replies to it.
func TestPcapExportSkipsWS(t *testing.T) {
	defaults(t)
	s := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", s.ClientURL())
	raw, wsURL, wsPort := wsTestGateway(t, s, schemas.ProtocolRaw)
	_, js := natstest.JetStream(t, s)
	serveTestWorker(t, &workers.Server{NATS: natstest.Connect(t, s), Group: "upper",
		Subjects: []string{schemas.InSubject("udpgate", raw.Port())},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		})})
	serveTestWorker(t, &workers.Server{NATS: natstest.Connect(t, s), Group: "places",
		Subjects: []string{schemas.InSubject("udpgate", wsPort) + "." + builtin.PlacesService + ".*"},
		Handler:  workers.HandlerFunc(builtin.Places{}.Handle)})

	// Datagrams and calls, interleaved, each answered.
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	c := dialTestWS(t, wsURL)
	buf := make([]byte, 2048)
	for i := range 3 {
		msg := "hello-" + strconv.Itoa(i)
		if _, err := udp.WriteToUDPAddrPort([]byte(msg), raw); err != nil {
			t.Fatal(err)
		}
		udp.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, _, err := udp.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != strings.ToUpper(msg) {
			t.Fatalf("reply to %s: %q, %v", msg, buf[:n], err)
		}
		if i < 2 {
			if r := callWS(t, c, uint64(i+1), builtin.PlacesService, builtin.PlacesMethod, &placespb.GetRandomRequest{Limit: 1}, i == 1); r.Status != rpcpb.Status_STATUS_OK {
				t.Fatalf("ws call %d: %v %s", i+1, r.Status, r.Error)
			}
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	// The capture holds the 3 datagrams, the 2 calls and the connection's
	// $connect and $disconnect events; the replies stream the 5 replies.
	waitMsgs(t, js, schemas.StreamIn, schemas.InSubject("udpgate", raw.Port()), 3)
	waitMsgs(t, js, schemas.StreamIn, schemas.InSubject("udpgate", wsPort)+".*.*", 2)
	waitMsgs(t, js, schemas.StreamIn, schemas.WSEventSubject("udpgate", wsPort, schemas.WSConnect), 1)
	waitMsgs(t, js, schemas.StreamIn, schemas.WSEventSubject("udpgate", wsPort, schemas.WSDisconnect), 1)
	waitMsgs(t, js, schemas.StreamReplies, "", 5)

	out := filepath.Join(t.TempDir(), "capture.pcap")
	var stdout, stderr bytes.Buffer
	if err := Run(context.Background(), []string{"pcap", "export", "--replies", "-o", out}, &stdout, &stderr); err != nil {
		t.Fatalf("export: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{
		"6 packets (3 requests, 3 replies)",
		"4 from ws listeners and 2 replies to them (not UDP)",
		"0 undecodable, ", "0 replies unmatched",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("export summary lacks %q: %s", want, stdout.String())
		}
	}

	// The file holds the datagrams and their replies, nothing else.
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcap.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		data, _, link, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		u, ok := gopacket.NewPacket(data, link, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			t.Fatalf("a frame without UDP: % x", data)
		}
		dir := ">"
		if uint16(u.SrcPort) == raw.Port() {
			dir = "<"
		} else if uint16(u.DstPort) != raw.Port() {
			t.Errorf("a datagram from %d to %d, not to or from the raw listener %d", u.SrcPort, u.DstPort, raw.Port())
		}
		got = append(got, dir+string(u.Payload))
	}
	// Each reply comes after its request, at its stream time, which may
	// be after the next request's.
	var reqs, reps []string
	for i, p := range got {
		if p[0] == '>' {
			reqs = append(reqs, p)
		} else if !slices.Contains(got[:i], ">"+strings.ToLower(p[1:])) {
			t.Errorf("%s before its request: %q", p, got)
		} else {
			reps = append(reps, p)
		}
	}
	if strings.Join(reqs, " ") != ">hello-0 >hello-1 >hello-2" || strings.Join(reps, " ") != "<HELLO-0 <HELLO-1 <HELLO-2" {
		t.Errorf("the pcap holds %q, want the 3 datagrams and their replies", got)
	}
}

// wsTestGateway serves a gateway (node "n1", replies recorded) with a UDP
// listener of protocol udp and a ws listener on 127.0.0.1, and returns the
// UDP listener's address, the ws listener's URL and its port.
func wsTestGateway(t testing.TB, s *server.Server, udp string) (netip.AddrPort, string, uint16) {
	t.Helper()
	conn, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	g := &gateway.Gateway{
		NATS: natstest.Connect(t, s), Node: "n1", Replies: ingress.StreamConfig{Name: schemas.StreamReplies},
		Listeners:    []gateway.Listener{{Conn: conn, Protocol: udp}},
		WebSockets:   []*ws.Server{{Listener: ln}},
		DrainTimeout: -1,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway Serve: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready after 30s")
	}
	return conn.LocalAddr().(*net.UDPAddr).AddrPort(), "ws://" + ln.Addr().String() + ws.DefaultPath, uint16(ln.Addr().(*net.TCPAddr).Port)
}

// serveTestWorker serves w until the test ends, and returns once it takes
// requests.
func serveTestWorker(t testing.TB, w *workers.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", w.Group, err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker %s: %v", w.Group, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("worker %s not ready after 10s", w.Group)
	}
}

func dialTestWS(t testing.TB, url string) *websocket.Conn {
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

// callWS sends a Call on c, binary or as base64 text, and returns its
// Reply.
func callWS(t testing.TB, c *websocket.Conn, id uint64, service, method string, params proto.Message, text bool) *rpcpb.Reply {
	t.Helper()
	p, err := proto.Marshal(params)
	if err != nil {
		t.Fatal(err)
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
	got, b, err := c.Read(ctx)
	if err != nil || got != typ {
		t.Fatalf("read: %v, %v", got, err)
	}
	if text {
		if b, err = base64.StdEncoding.DecodeString(string(b)); err != nil {
			t.Fatal(err)
		}
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(b, &r); err != nil || r.Id != id {
		t.Fatalf("reply % x (id %d): %v", b, r.Id, err)
	}
	return &r
}

// streamMsgs returns how many messages stream holds on subject (all if
// empty).
func streamMsgs(t testing.TB, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	var opts []jetstream.StreamInfoOpt
	if subject != "" {
		opts = append(opts, jetstream.WithSubjectFilter(subject))
	}
	info, err := st.Info(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if subject == "" {
		return info.State.Msgs
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitMsgs waits until stream holds at least n messages on subject.
func waitMsgs(t testing.TB, js jetstream.JetStream, stream, subject string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for streamMsgs(t, js, stream, subject) < n {
		if time.Now().After(deadline) {
			t.Fatalf("stream %s holds fewer than %d messages on %q after 10s", stream, n, subject)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPcapImportLeavesOutWS: `udpgate pcap import` with the listeners of
// UDPGATE_LISTENERS leaves a ws listener out (it takes no datagrams: a
// datagram to its port is another port's); named with --listener, it is
// an error.
func TestPcapImportLeavesOutWS(t *testing.T) {
	defaults(t)
	s := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", s.ClientURL())
	t.Setenv("UDPGATE_LISTENERS", "9000/raw,8080/ws;path=/rpc")
	var capture bytes.Buffer
	w := pcapgo.NewWriter(&capture)
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, port := range []layers.UDPPort{9000, 8080} {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
		u := &layers.UDP{SrcPort: 40000, DstPort: port}
		u.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, u, gopacket.Payload("hello")); err != nil {
			t.Fatal(err)
		}
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	in := filepath.Join(t.TempDir(), "in.pcap")
	if err := os.WriteFile(in, capture.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := Run(context.Background(), []string{"pcap", "import", in}, &stdout, &stderr); err != nil {
		t.Fatalf("import: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"requests published 1", "other port 1"} {
		if !strings.Contains(strings.Join(strings.Fields(stdout.String()), " "), want) {
			t.Errorf("import summary lacks %q:\n%s", want, stdout.String())
		}
	}
	err := Run(context.Background(), []string{"pcap", "import", in, "--listener", "8080/ws"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "8080/ws: a ws listener takes WebSocket messages over TCP") {
		t.Errorf("import --listener 8080/ws: %v", err)
	}
}
