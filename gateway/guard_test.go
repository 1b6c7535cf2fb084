package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// guardedListener binds a listener on 127.0.0.1 for protocol with guard
// c and appends it to g; it returns the listener's address and guard.
func guardedListener(t *testing.T, g *Gateway, protocol string, c guard.Config) (*net.UDPAddr, *guard.Guard) {
	t.Helper()
	gd, err := guard.New(c)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: conn, Protocol: protocol, Guard: gd})
	return conn.LocalAddr().(*net.UDPAddr), gd
}

// dialFrom returns a UDP socket bound to src (a loopback address) and
// connected to dst.
func dialFrom(t *testing.T, src string, dst *net.UDPAddr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// read returns the next datagram on c, or nil after wait.
func read(c *net.UDPConn, wait time.Duration) []byte {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// roundTrip sends payload on c until a reply comes, at most 20 times.
func roundTrip(t *testing.T, c *net.UDPConn, payload []byte) []byte {
	t.Helper()
	for range 20 {
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		if r := read(c, 500*time.Millisecond); r != nil {
			return r
		}
	}
	t.Fatalf("no reply to %q", payload)
	return nil
}

func deny(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	ps, err := guard.ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestGuardDeniedPrefixGetsNothing: a source in a denied prefix is never
// published nor answered, and the counter moves; its neighbour is served.
func TestGuardDeniedPrefixGetsNothing(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "guard"}
	addr, gd := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{Deny: deny(t, "127.0.0.2/32, 127.9.0.0/16")})
	serveGateway(t, g)
	contractWorker(t, s, "echo", schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port)), echo)

	denied := dialFrom(t, "127.0.0.2", addr)
	denied.Write([]byte("let me in"))
	waitFor(t, "the denied datagram counted", func() bool { return gd.Stats().Denied == 1 })
	if got := roundTrip(t, dialFrom(t, "127.0.0.3", addr), []byte("hello")); string(got) != "echo:hello" {
		t.Errorf("allowed source got %q", got)
	}
	if r := read(denied, 50*time.Millisecond); r != nil {
		t.Errorf("denied source got %q", r)
	}
	st := g.Stats()
	if gs := st.Guard[itoa(addr.Port)+"/raw"]; gs.Denied != 1 || gs.Admitted < 1 {
		t.Errorf("guard stats %+v", gs)
	}
	if in := st.Ingress[itoa(addr.Port)+"/raw"]; in.Published != gd.Stats().Admitted {
		t.Errorf("published %d, admitted %d: the denied datagram was published", in.Published, gd.Stats().Admitted)
	}
}

// TestGuardRateLimits: a raw source over its rate is dropped; a CoAP
// source over its rate gets 4.29 with Max-Age if it is trusted, nothing
// if it is not.
func TestGuardRateLimits(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "guard"}
	// One datagram per 1000 s after a burst of 3: the test cannot be slow
	// enough to earn another.
	slow := guard.Config{Rate: 0.001, Burst: 3, Trust: deny(t, "127.0.0.5")}
	raw, rawGuard := guardedListener(t, g, schemas.ProtocolRaw, slow)
	co, coGuard := guardedListener(t, g, schemas.ProtocolCoAP, slow)
	serveGateway(t, g)

	c := dialFrom(t, "127.0.0.4", raw)
	for range 10 {
		c.Write([]byte("x"))
	}
	waitFor(t, "10 decisions", func() bool { st := rawGuard.Stats(); return st.Admitted+st.RateLimited == 10 })
	if st := rawGuard.Stats(); st.Admitted != 3 || st.RateLimited != 7 {
		t.Errorf("raw: %+v", st)
	}

	for _, src := range []string{"127.0.0.5", "127.0.0.6"} {
		c := dialFrom(t, src, co)
		before := coGuard.Stats().RateLimited
		for i := range 4 {
			// CON GET /nowhere, token 0x01, a fresh message id each.
			req := []byte{0x41, 0x01, 0x10, byte(i), 0x01, 0xb7, 'n', 'o', 'w', 'h', 'e', 'r', 'e'}
			c.Write(req)
		}
		waitFor(t, "the fourth request limited", func() bool { return coGuard.Stats().RateLimited == before+1 })
		var tooMany []byte
		for {
			r := read(c, 100*time.Millisecond)
			if r == nil {
				break
			}
			if r[1] == byte(codes.TooManyRequests) {
				tooMany = r
			}
		}
		switch {
		case src == "127.0.0.5" && tooMany == nil:
			t.Errorf("trusted source: no 4.29")
		case src == "127.0.0.5" && (tooMany[0] != 0x61 || tooMany[3] != 3 || !bytes.HasSuffix(tooMany, []byte{0xd2, 0x01, 0x03, 0xe8})):
			t.Errorf("trusted source: 4.29 % x is not the ACK of message 3 with Max-Age 1000", tooMany)
		case src == "127.0.0.6" && tooMany != nil:
			t.Errorf("untrusted source got 4.29 % x", tooMany)
		}
	}
}

// TestGuardFlood: 100,000 datagrams from 100,000 source addresses in
// 127.0.0.0/8 (spoofed with a raw socket when the test runs as root, else
// from sockets bound to 1,000 addresses) leave the source table at its
// capacity and the heap bounded, and a legitimate client sending at a
// modest rate meanwhile gets its answers.
func TestGuardFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the loopback interface")
	}
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "guard", Deadline: time.Second}
	// Without a raw socket the flood comes from 1,000 addresses: a
	// smaller table still overflows.
	capacity := 4096
	if !canSpoof() {
		capacity = 256
	}
	addr, gd := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{
		Rate: 50, Burst: 20, Sources: capacity, ListenerRate: 1000, ListenerBurst: 100,
	})
	if err := g.Listeners[0].Conn.SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	serveGateway(t, g)
	contractWorker(t, s, "legit", schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port)), func(m *nats.Msg) []byte {
		if bytes.HasPrefix(m.Data, []byte("legit")) {
			return echo(m)
		}
		return nil // the flood is not answered
	})
	send := spoofer(t, addr)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	decisions := func() uint64 {
		st := gd.Stats()
		return st.Admitted + st.RateLimited + st.GlobalLimited
	}
	kernelDrops := func() uint64 { return g.Stats().Ingress[itoa(addr.Port)+"/raw"].KernelDrops }
	start := decisions()
	var wg sync.WaitGroup
	answered := 0
	wg.Go(func() {
		legit := dialFrom(t, "127.0.0.1", addr)
		for i := 0; i < 500 && answered < 5; i++ {
			payload := []byte("legit-" + itoa(i))
			legit.Write(payload)
			// Modest: one request per 20 ms at most.
			// A late answer to an earlier request counts too.
			if r := read(legit, 20*time.Millisecond); r != nil && strings.HasPrefix(string(r), "echo:legit-") {
				answered++
			}
		}
	})
	const flood = 100_000
	payload := []byte("flood")
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < flood; i++ {
		send(i, payload)
		// Stay close to what the gateway reads, so that the kernel drops
		// little and the guard sees (nearly) every source.
		for i%50 == 49 && decisions()-start+kernelDrops()+100 < uint64(i) {
			if time.Now().After(deadline) {
				t.Fatalf("the gateway read %d of %d datagrams in 60s", decisions()-start, i)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	// The legitimate client's datagrams are decisions too; the kernel's
	// count arrives with the next datagram read, which the legitimate
	// client sends.
	waitFor(t, "the flood read", func() bool { return decisions()-start+kernelDrops() >= flood })
	wg.Wait()

	st := gd.Stats()
	if st.Sources > st.SourceCapacity || st.SourceCapacity != capacity {
		t.Errorf("%d sources in a table of %d", st.Sources, st.SourceCapacity)
	}
	if drops := kernelDrops(); drops > flood/10 {
		t.Errorf("the kernel dropped %d datagrams: the flood did not reach the guard", drops)
	}
	if st.Evictions < uint64(flood*9/10-capacity) {
		t.Errorf("%d evictions for %d sources in a table of %d", st.Evictions, flood, st.SourceCapacity)
	}
	if st.GlobalLimited == 0 {
		t.Error("the listener's limit never applied")
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Errorf("heap grew by %d MB during the flood", grew>>20)
	}
	if answered < 5 {
		t.Errorf("legitimate client answered %d times of 5", answered)
	}
	t.Logf("guard %+v; kernel drops %d", st, g.Stats().Ingress[itoa(addr.Port)+"/raw"].KernelDrops)
}

// canSpoof reports whether the test may open a raw IP socket.
func canSpoof() bool {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return false
	}
	syscall.Close(fd)
	return true
}

// spoofer returns a function that sends payload to dst from the i-th of
// 100,000 source addresses in 127.100.0.0/15, with varying ports: spoofed
// with a raw socket if the test may open one, else from sockets bound to
// 1,000 addresses in turn.
func spoofer(t *testing.T, dst *net.UDPAddr) func(i int, payload []byte) {
	src := func(i int) [4]byte { return [4]byte{127, byte(100 + i>>16), byte(i >> 8), byte(i)} }
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err == nil {
		t.Cleanup(func() { syscall.Close(fd) })
		to := &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		pkt := make([]byte, 0, 64)
		return func(i int, payload []byte) {
			s := src(i)
			pkt = pkt[:28]
			// IPv4 header; the kernel fills in the checksum and ID.
			copy(pkt, []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, syscall.IPPROTO_UDP, 0, 0})
			binary.BigEndian.PutUint16(pkt[2:], uint16(28+len(payload)))
			copy(pkt[12:16], s[:])
			copy(pkt[16:20], []byte{127, 0, 0, 1})
			// UDP header, no checksum (allowed over IPv4).
			binary.BigEndian.PutUint16(pkt[20:], uint16(1024+i%60000))
			binary.BigEndian.PutUint16(pkt[22:], uint16(dst.Port))
			binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
			binary.BigEndian.PutUint16(pkt[26:], 0)
			pkt = append(pkt, payload...)
			if err := syscall.Sendto(fd, pkt, 0, to); err != nil {
				t.Fatalf("raw send: %v", err)
			}
		}
	}
	if os.Getenv("CI") == "" {
		t.Logf("no raw socket (%v): 1,000 bound source addresses instead of 100,000", err)
	}
	var socks []*net.UDPConn
	t.Cleanup(func() {
		for _, c := range socks {
			c.Close()
		}
	})
	return func(i int, payload []byte) {
		k := i % 1000
		if k == len(socks) {
			s := src(k)
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(s[:])}, dst)
			if err != nil {
				t.Fatal(err)
			}
			socks = append(socks, c)
		}
		socks[k].Write(payload)
	}
}

// TestAmplificationRawAndRPC: a worker reply ten times larger than the
// request is dropped and counted for an unvalidated source, on raw and
// rpc listeners, and sent to a trusted one; a reply within the limit is
// sent.
func TestAmplificationRawAndRPC(t *testing.T) {
	s := natstest.RunServer(t)
	var logs syncLog
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "guard", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	raw, rawGuard := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{Factor: 3})
	trusted, _ := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{Factor: 3, Trust: deny(t, "127.0.0.0/8")})
	rpcAddr, rpcGuard := guardedListener(t, g, schemas.ProtocolRPC, guard.Config{Factor: 3})
	serveGateway(t, g)
	tenfold := func(m *nats.Msg) []byte {
		if bytes.HasPrefix(m.Data, []byte("small")) {
			return m.Data
		}
		return bytes.Repeat(m.Data, 10)
	}
	for _, a := range []*net.UDPAddr{raw, trusted} {
		contractWorker(t, s, "tenfold-"+itoa(a.Port), schemas.InSubject(schemas.DefaultPrefix, uint16(a.Port)), tenfold)
	}
	contractWorker(t, s, "tenfold-rpc", schemas.InSubject(schemas.DefaultPrefix, uint16(rpcAddr.Port))+".>", tenfold)

	request := []byte("0123456789abcdefghij") // 20 bytes; a 200-byte reply is more than 3 * (20+28) - 28
	c := dialFrom(t, "127.0.0.7", raw)
	c.Write(request)
	waitFor(t, "the raw reply dropped", func() bool { return rawGuard.Stats().Dropped == 1 })
	if r := read(c, 50*time.Millisecond); r != nil {
		t.Errorf("unvalidated source got %d bytes", len(r))
	}
	if out := logs.String(); !strings.Contains(out, "replies dropped by the amplification limit") || !strings.Contains(out, "remote=127.0.0.7") {
		t.Errorf("the dropped reply is not in the log:\n%s", out)
	}
	if r := roundTrip(t, c, []byte("small reply")); string(r) != "small reply" {
		t.Errorf("reply within the limit: %q", r)
	}
	if r := roundTrip(t, dialFrom(t, "127.0.0.7", trusted), request); len(r) != 10*len(request) {
		t.Errorf("trusted source got %d bytes", len(r))
	}

	call, _ := proto.Marshal(&rpcpb.Call{Id: 7, Service: "S", Method: "M", Params: request})
	rc := dialFrom(t, "127.0.0.7", rpcAddr)
	rc.Write(call)
	waitFor(t, "the rpc reply dropped", func() bool { return rpcGuard.Stats().Dropped == 1 })
	if r := read(rc, 50*time.Millisecond); r != nil {
		t.Errorf("unvalidated rpc source got %d bytes", len(r))
	}
	call, _ = proto.Marshal(&rpcpb.Call{Id: 8, Service: "S", Method: "M", Params: []byte("small")})
	var reply rpcpb.Reply
	if err := proto.Unmarshal(roundTrip(t, rc, call), &reply); err != nil || reply.Id != 8 || string(reply.Body) != "small" {
		t.Errorf("rpc reply within the limit: %v %v", &reply, err)
	}
}

// coapBig serves a guarded coap listener whose worker answers GET /big
// with a body ten times the request, GET /time, POST /echo, and GET
// /located with a response whose options alone exceed the limit.
func coapBig(t *testing.T, s *server.Server, c guard.Config) (string, *Gateway, *guard.Guard, []byte) {
	t.Helper()
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "guard", CoAP: coapConfig(300 * time.Millisecond)}
	addr, gd := guardedListener(t, g, schemas.ProtocolCoAP, c)
	serveGateway(t, g)
	big := bytes.Repeat([]byte("big-body "), 30) // 270 bytes, ten times a GET /big
	contractWorker(t, s, "big", schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port))+".>", func(m *nats.Msg) []byte {
		reply := &nats.Msg{Header: nats.Header{}}
		switch m.Header.Get(schemas.HeaderCoAPRequest) {
		case "GET /big":
			reply.Data = big
		case "GET /time":
			reply.Data = []byte("2026-11-23T00:00:00Z")
		case "POST /echo":
			reply.Data = m.Data
		case "GET /located":
			reply.Header.Set(schemas.HeaderCoAPLocationPath, "/"+strings.Repeat("x", 200))
			reply.Data = []byte("located")
		default:
			reply.Header.Set(schemas.HeaderCoAPCode, "4.04")
		}
		m.RespondMsg(reply)
		return nil
	})
	return addr.String(), g, gd, big
}

// TestAmplificationCoAP: a response ten times the request goes to an
// unvalidated source in Block2 blocks small enough for the limit, and
// go-coap's and libcoap's clients fetch the rest; GET /time and a 5 KB
// block-wise POST are not cut; a response that no block can carry gets
// 4.01 with an Echo, and libcoap's repeat with the Echo gets it.
func TestAmplificationCoAP(t *testing.T) {
	s := natstest.RunServer(t)
	addr, g, gd, big := coapBig(t, s, guard.Config{Factor: 3})

	co := dialCoAP(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := co.Get(ctx, "/big")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := resp.ReadBody()
	if resp.Code() != codes.Content || !bytes.Equal(body, big) {
		t.Fatalf("go-coap GET /big: %v, %d bytes", resp.Code(), len(body))
	}
	if st := gd.Stats(); st.Cut == 0 || st.Dropped != 0 {
		t.Errorf("guard %+v: the response was not cut, or dropped", st)
	}
	for k, c := range g.Stats().CoAP {
		if c.BlocksServed < 3 {
			t.Errorf("%s: %d blocks served for a cut 270-byte body", k, c.BlocksServed)
		}
	}
	cut := gd.Stats().Cut
	payload := bytes.Repeat([]byte("udpgate-"), 640) // 5120 bytes
	resp, err = co.Post(ctx, "/echo", message.TextPlain, bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := resp.ReadBody(); !bytes.Equal(body, payload) {
		t.Errorf("go-coap POST /echo 5 KB: %d bytes back", len(body))
	}
	if gd.Stats().Cut != cut {
		t.Error("go-coap's 5 KB POST was cut")
	}

	coapClient(t) // the rest needs libcoap
	url := "coap://" + addr
	before := gd.Stats().Cut
	if got := libcoap(t, url+"/big"); !bytes.Equal(got, big) {
		t.Errorf("libcoap GET /big: %d bytes", len(got))
	}
	if gd.Stats().Cut == before {
		t.Error("libcoap's GET /big was not cut")
	}
	before = gd.Stats().Cut
	if got := libcoap(t, url+"/time"); string(got) != "2026-11-23T00:00:00Z" {
		t.Errorf("GET /time: %q", got)
	}
	in := t.TempDir() + "/in"
	os.WriteFile(in, payload, 0o600)
	if got := libcoap(t, "-m", "post", "-b", "1024", "-f", in, url+"/echo"); !bytes.Equal(got, payload) {
		t.Errorf("POST /echo 5 KB: %d bytes back", len(got))
	}
	if gd.Stats().Cut != before {
		t.Errorf("GET /time or the 5 KB POST was cut: %+v", gd.Stats())
	}
	if got := libcoap(t, url+"/located"); string(got) != "located" {
		t.Errorf("GET /located: %q", got)
	}
	var echoes uint64
	for _, c := range g.Stats().CoAP {
		echoes += c.EchoChallenges
	}
	if echoes != 1 || gd.Stats().Validations == 0 {
		t.Errorf("%d Echo challenges, guard %+v; want 1 challenge and a validation", echoes, gd.Stats())
	}
}

// syncLog collects log output; safe for concurrent use.
type syncLog struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
