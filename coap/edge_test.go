package coap

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

// testEdge is an Edge on a real loopback socket and a client socket that
// receives what the edge sends.
type testEdge struct {
	*Edge
	client *net.UDPConn
	remote netip.AddrPort
	local  netip.AddrPort
}

func newTestEdge(t testing.TB, cfg Config) *testEdge {
	t.Helper()
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); cl.Close() })
	e := &Edge{Config: cfg, Socket: exchange.Exchange{Conn: srv}}
	e.Start()
	t.Cleanup(e.Close)
	return &testEdge{
		Edge:   e,
		client: cl,
		remote: cl.LocalAddr().(*net.UDPAddr).AddrPort(),
		local:  srv.LocalAddr().(*net.UDPAddr).AddrPort(),
	}
}

func (te *testEdge) receive(b []byte) *Request {
	return te.Receive(b, te.remote, te.local, 0, time.Now())
}

// answer returns what the edge sent to the client, or nil within wait.
func (te *testEdge) answer(wait time.Duration) []byte {
	buf := make([]byte, 4096)
	te.client.SetReadDeadline(time.Now().Add(wait))
	n, err := te.client.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// malformed are datagrams the edge must not publish, with what it answers.
var malformed = []struct {
	name   string
	in     string // hex
	answer string // hex; "" for no answer
}{
	{"empty datagram", "", ""},
	{"truncated header", "40 01 12", ""},
	{"bad version 0", "00 01 12 34", ""},
	{"bad version 2", "80 01 12 34", ""},
	{"bad version 3, CON", "c0 01 12 34", ""},
	{"token length 9", "49 01 12 34 01 02 03 04 05 06 07 08 09", "70 00 12 34"},
	{"token length 15", "4f 01 12 34 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f", "70 00 12 34"},
	{"token length 9, NON", "59 01 12 34 01 02 03 04 05 06 07 08 09", ""},
	{"token longer than the datagram", "48 01 12 34 01 02", "70 00 12 34"},
	{"option delta 15 (reserved)", "40 01 12 34 f1 61", "70 00 12 34"},
	{"option length 15 (reserved)", "40 01 12 34 bf 61", "70 00 12 34"},
	{"option delta 13 without its byte", "40 01 12 34 d0", "70 00 12 34"},
	{"option delta 14 without its bytes", "40 01 12 34 e0 01", "70 00 12 34"},
	{"option value truncated", "40 01 12 34 b5 61 62", "70 00 12 34"},
	{"payload marker with no payload", "40 01 12 34 ff", "70 00 12 34"},
	{"payload marker with no payload, NON", "50 01 12 34 ff", ""},
	{"empty CON with a token", "41 00 12 34 01", "70 00 12 34"},
	{"empty NON", "50 00 12 34", ""},
	{"response code in a CON", "40 45 12 34", "70 00 12 34"},
	{"reserved class 1", "40 20 12 34", "70 00 12 34"},
	{"request in an ACK", "60 01 12 34", ""},
	{"request in a RST", "70 01 12 34", ""},
	{"ping", "40 00 12 34", "70 00 12 34"},
	{"unknown method 0.08", "40 08 12 34", "60 85 12 34"},
	{"unknown critical option 9", "40 01 12 34 91 00", "60 82 12 34"},
	{"If-Match is not implemented", "40 01 12 34 11 00", "60 82 12 34"},
	{"Proxy-Uri", "40 01 12 34 d3 16 61 3a 2f", "60 a5 12 34"},
	{"Block1 with SZX 7", "40 02 12 34 d1 0e 07", "60 82 12 34"},
	// Four Uri-Path segments of 253 dots: 3 KB of escaped subject tokens.
	{"path too long for a subject", "40 01 12 34 bd f0" + strings.Repeat(" 2e", 253) + strings.Repeat(" 0d f0"+strings.Repeat(" 2e", 253), 3), "60 80 12 34"},
}

func TestMalformed(t *testing.T) {
	te := newTestEdge(t, Config{})
	for i, tt := range malformed {
		t.Run(tt.name, func(t *testing.T) {
			in := unhex(t, tt.in)
			if len(in) >= 4 {
				binary.BigEndian.PutUint16(in[2:], uint16(0x1000+i)) // a fresh message id
			}
			if r := te.receive(in); r != nil {
				t.Fatalf("published %+v", r)
			}
			want := unhex(t, tt.answer)
			if len(want) >= 4 {
				binary.BigEndian.PutUint16(want[2:], uint16(0x1000+i))
			}
			wait := time.Second
			if len(want) == 0 {
				wait = 50 * time.Millisecond
			}
			got := te.answer(wait)
			if !bytes.Equal(got, want) {
				t.Errorf("answered % x, want % x", got, want)
			}
			if len(got) > len(in) {
				t.Errorf("answer of %d bytes to a datagram of %d: amplification", len(got), len(in))
			}
		})
	}
}

func TestRequestFields(t *testing.T) {
	te := newTestEdge(t, Config{})
	// CON GET, token 0xbeef, Uri-Path "sensors", "a.b c", "", Uri-Query
	// "unit=°C", "x", Content-Format 50, Accept 60, payload "hi".
	b := []byte{0x42, 0x01, 0x00, 0x07, 0xbe, 0xef}
	b = append(b, 0xb7)
	b = append(b, "sensors"...)
	b = append(b, 0x05)
	b = append(b, "a.b c"...)
	b = append(b, 0x00)
	b = append(b, 0x11, 50) // Content-Format 50 (delta 1 → 12)
	b = append(b, 0x38)     // Uri-Query (delta 3 → 15), length 8 (° is 2 bytes)
	b = append(b, "unit=°C"...)
	b = append(b, 0x01, 'x')
	b = append(b, 0x21, 60) // Accept (delta 2 → 17)
	b = append(b, 0xff, 'h', 'i')
	r := te.receive(b)
	if r == nil {
		t.Fatalf("not published; answer % x", te.answer(100*time.Millisecond))
	}
	checks := []struct{ name, got, want string }{
		{"method", r.Method, "GET"},
		{"segments", strings.Join(r.Segments, "|"), "sensors|a.b c|"},
		{"path", r.Path, "/sensors/a.b%20c/"},
		{"query", r.Query, "unit=%C2%B0C&x"},
		{"token", hex.EncodeToString(r.Token), "beef"},
		{"payload", string(r.Payload), "hi"},
		{"head+payload", string(r.Head) + string(r.Payload), string(b)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if r.ContentFormat != 50 || r.Accept != 60 || !r.Confirmable || r.MessageID != 7 {
		t.Errorf("fields %+v", r)
	}
}

func TestBlock1TooLarge(t *testing.T) {
	te := newTestEdge(t, Config{MaxBody: 64})
	// POST /up, Block1 NUM 0..n, M=1, SZX 1 (32 bytes).
	block := func(mid uint16, num int, more bool) []byte {
		v := byte(num<<4 | 1)
		if more {
			v |= 8
		}
		b := []byte{0x40, 0x02, byte(mid >> 8), byte(mid), 0xb2, 'u', 'p', 0xd1, 27 - 11 - 13, v, 0xff}
		return append(b, bytes.Repeat([]byte{'x'}, 32)...)
	}
	for num := range 2 {
		if r := te.receive(block(uint16(10+num), num, true)); r != nil {
			t.Fatal("published a partial upload")
		}
		if a := te.answer(time.Second); len(a) < 4 || a[1] != 0x5f { // 2.31
			t.Fatalf("block %d: answer % x, want 2.31 Continue", num, a)
		}
	}
	te.receive(block(12, 2, true))
	a := te.answer(time.Second)
	if len(a) < 4 || a[1] != 0x8d { // 4.13
		t.Fatalf("answer % x, want 4.13", a)
	}
	if te.Stats().Rejected != 1 || te.Stats().BlockContinue != 2 {
		t.Errorf("stats %+v", te.Stats())
	}
}

func TestMessageIDsNotReused(t *testing.T) {
	e := &Edge{}
	e.Start()
	peer := netip.MustParseAddrPort("127.0.0.1:5683")
	now := time.Now()
	seen := map[uint16]bool{}
	for {
		mid, ok := e.newMID(peer, now)
		if !ok {
			break
		}
		if seen[mid] {
			t.Fatalf("id %d reused within EXCHANGE_LIFETIME", mid)
		}
		seen[mid] = true
	}
	if n := len(seen); n < 1<<16-1<<midBlockBits {
		t.Errorf("%d ids within EXCHANGE_LIFETIME, want at least %d", n, 1<<16-1<<midBlockBits)
	}
	if _, ok := e.newMID(peer, now.Add(exchangeLifetime-time.Millisecond)); ok {
		t.Error("an id reused just within EXCHANGE_LIFETIME")
	}
	if _, ok := e.newMID(peer, now.Add(exchangeLifetime)); !ok {
		t.Error("no id after EXCHANGE_LIFETIME")
	}
}

// TestMessageIDsNotReusedAtAnyPace issues ids at random paces, from a
// burst to a trickle, and checks each against the last time it was issued.
func TestMessageIDsNotReusedAtAnyPace(t *testing.T) {
	e := &Edge{}
	e.Start()
	peer := netip.MustParseAddrPort("127.0.0.1:5683")
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	last := map[uint16]time.Time{}
	var issued, refused int
	for range 600_000 {
		// Mostly bursts, sometimes a pause of up to a minute.
		if rng.IntN(50_000) == 0 {
			now = now.Add(time.Duration(rng.Int64N(int64(time.Minute))))
		} else {
			now = now.Add(time.Duration(rng.Int64N(int64(2 * time.Millisecond))))
		}
		mid, ok := e.newMID(peer, now)
		if !ok {
			refused++
			continue
		}
		if at, ok := last[mid]; ok && now.Sub(at) < exchangeLifetime {
			t.Fatalf("id %d issued again %s after its last issue", mid, now.Sub(at))
		}
		last[mid] = now
		issued++
	}
	if issued == 0 || refused == 0 {
		t.Errorf("issued %d, refused %d: the pace never reached the limit", issued, refused)
	}
}

func TestDuplicateMustBeIdentical(t *testing.T) {
	te := newTestEdge(t, Config{})
	big := []byte{0x48, 0x08, 0x00, 0x09, 1, 2, 3, 4, 5, 6, 7, 8} // unknown method, 8-byte token
	te.receive(big)
	first := te.answer(time.Second)
	if len(first) != 12 {
		t.Fatalf("answer % x, want a 4.05 with the token", first)
	}
	te.receive(big)
	if again := te.answer(time.Second); !bytes.Equal(again, first) {
		t.Errorf("retransmission answered % x, want % x", again, first)
	}
	te.receive([]byte{0x40, 0x08, 0x00, 0x09}) // same id, other bytes
	if a := te.answer(50 * time.Millisecond); a != nil {
		t.Errorf("a different message with the same id got % x", a)
	}
}

func TestParseCode(t *testing.T) {
	for _, s := range []string{"2.05", "4.04", "5.03", "2.31", "4.00"} {
		c, err := ParseCode(s)
		if err != nil || FormatCode(c) != s {
			t.Errorf("ParseCode(%q) = %v, %v", s, c, err)
		}
	}
	for _, s := range []string{"", "205", "0.01", "3.00", "6.00", "2.32", "2.5", "2.x5", "2.-1"} {
		if _, err := ParseCode(s); err == nil {
			t.Errorf("ParseCode(%q) accepted", s)
		}
	}
}

func TestParseMethod(t *testing.T) {
	for c := codes.GET; c <= codes.IPATCH; c++ {
		name := methodName(c)
		for _, s := range []string{name, strings.ToLower(name), strings.ToUpper(name)} {
			if got, ok := ParseMethod(s); !ok || got != c {
				t.Errorf("ParseMethod(%q) = %v, %v; want %v", s, got, ok, c)
			}
		}
	}
	for _, s := range []string{"", "HEAD", "GETS", "Empty"} {
		if c, ok := ParseMethod(s); ok {
			t.Errorf("ParseMethod(%q) = %v", s, c)
		}
	}
}

// FuzzReceive feeds arbitrary datagrams to the edge. It must never panic,
// and nothing it answers by itself may be larger than what it received.
func FuzzReceive(f *testing.F) {
	for _, m := range malformed {
		f.Add(unhex(f, m.in))
	}
	for _, name := range []string{"get-time", "post-block1", "get-block2"} {
		b, err := os.ReadFile(filepath.Join("testdata", name+".hex"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(unhex(f, strings.TrimSpace(string(b))))
	}
	te := newTestEdge(f, Config{MaxBody: 256})
	// With a guard, the Echo option is checked too; the gateway's own
	// answers stay no larger than what they answer.
	g, err := guard.New(guard.Config{Factor: 3})
	if err != nil {
		f.Fatal(err)
	}
	te.Guard = g
	f.Fuzz(func(t *testing.T, b []byte) {
		r := te.Receive(b, te.remote, te.local, 0, time.Now())
		if r != nil {
			if r.Head != nil && !bytes.Equal(append(append([]byte(nil), r.Head...), r.Payload...), b) {
				t.Fatalf("head+payload differs from the datagram")
			}
			r.done = true // never answered: not a request to a worker
		}
		// The edge answers a datagram before Receive returns: everything
		// it answered is queued on the client socket now. Reading without
		// a deadline keeps a stalled fuzzer from leaving an answer behind
		// for the next input.
		for _, a := range te.queued(t) {
			if len(a) > len(b) {
				t.Fatalf("answered % x (%d bytes) to % x (%d bytes)", a, len(a), b, len(b))
			}
		}
	})
}

// queued returns the datagrams queued on the client socket, without
// waiting for more.
func (te *testEdge) queued(t testing.TB) [][]byte {
	t.Helper()
	rc, err := te.client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	buf := make([]byte, 65536)
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rerr != nil {
			if rerr != syscall.EAGAIN {
				t.Fatal(rerr)
			}
			return out
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// guarded returns a test edge whose guard limits replies to three times
// what the client sent.
func guarded(t testing.TB) *testEdge {
	t.Helper()
	te := newTestEdge(t, Config{})
	g, err := guard.New(guard.Config{Factor: 3})
	if err != nil {
		t.Fatal(err)
	}
	te.Guard = g
	return te
}

func decodeAnswer(t testing.TB, b []byte) message.Message {
	t.Helper()
	if b == nil {
		t.Fatal("no answer")
	}
	var m message.Message
	var opts [maxOptions]message.Option
	m.Options = opts[:0]
	if err := decode(b, &m); err != nil {
		t.Fatalf("answer % x: %v", b, err)
	}
	return m
}

// get returns a CON GET /big with message id mid, token 0x77 and, if
// b2 is not nil, a Block2 option.
func get(mid uint16, b2 *block, extra ...byte) []byte {
	b := []byte{0x41, 0x01, byte(mid >> 8), byte(mid), 0x77, 0xb3, 'b', 'i', 'g'}
	if b2 != nil {
		v := encodeUint(b2.value())
		b = append(b, 0xc0|byte(len(v))) // delta 23-11
		b = append(b, v...)
	}
	return append(b, extra...)
}

func TestAmplificationCutsToBlocks(t *testing.T) {
	te := guarded(t)
	body := bytes.Repeat([]byte("0123456789"), 30) // 300 bytes
	req := get(1, nil)
	r := te.receive(req)
	if r == nil {
		t.Fatal("not published")
	}
	r.Started()
	if err := r.Reply(exchange.Exchange{}, "ok", nil, body); err != nil {
		t.Fatal(err)
	}
	in, out := guard.Wire(te.remote.Addr(), len(req)), 0
	var got []byte
	var szx uint8
	for mid := uint16(2); ; mid++ {
		a := te.answer(time.Second)
		out += guard.Wire(te.remote.Addr(), len(a))
		if out > 3*in {
			t.Fatalf("sent %d bytes (IP) for %d received", out, in)
		}
		m := decodeAnswer(t, a)
		v, err := m.Options.GetUint32(message.Block2)
		if err != nil || m.Code != codes.Content {
			t.Fatalf("answer %v without Block2 (%v)", m.Code, err)
		}
		blk, _ := parseBlock(v)
		if mid == 2 {
			if blk.size() >= len(body) {
				t.Fatalf("first block of %d bytes: not cut", blk.size())
			}
			szx = blk.szx
			if cut := te.Guard.Stats().Cut; cut != 1 {
				t.Errorf("cut %d, want 1", cut)
			}
		}
		if int(blk.num)*blk.size() != len(got) {
			t.Fatalf("block %d of size %d after %d bytes", blk.num, blk.size(), len(got))
		}
		got = append(got, m.Payload...)
		if !blk.more {
			break
		}
		if mid > 100 {
			t.Fatal("no end after 100 blocks")
		}
		next := get(mid, &block{num: blk.num + 1, szx: szx})
		in += guard.Wire(te.remote.Addr(), len(next))
		if r := te.receive(next); r != nil {
			t.Fatal("a further block was published")
		}
	}
	if !bytes.Equal(got, body) {
		t.Errorf("reassembled %q", got)
	}
}

func TestAmplificationEcho(t *testing.T) {
	te := guarded(t)
	// Location-Path options too long for any block to fit three times a
	// 9-byte request.
	header := map[string][]string{schemas.HeaderCoAPLocationPath: {"/" + strings.Repeat("x", 200)}}
	r := te.receive(get(1, nil))
	r.Started()
	r.Reply(exchange.Exchange{}, "ok", header, []byte("body"))
	m := decodeAnswer(t, te.answer(time.Second))
	echo, err := m.Options.GetBytes(message.Echo)
	if m.Code != codes.Unauthorized || err != nil || len(echo) != guard.EchoLen {
		t.Fatalf("answer %v, Echo %x (%v); want 4.01 with an Echo", m.Code, echo, err)
	}
	if te.Stats().EchoChallenges != 1 {
		t.Errorf("stats %+v", te.Stats())
	}
	// A forged Echo validates nothing; the issued one does.
	forged := append([]byte(nil), echo...)
	forged[7] ^= 1
	opt := func(v []byte) []byte { return append([]byte{0xd8, byte(int(message.Echo) - 11 - 13)}, v...) }
	r = te.receive(get(2, nil, opt(forged)...))
	r.done = true
	if !te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("a forged Echo validated the source")
	}
	r = te.receive(get(3, nil, opt(echo)...))
	if r == nil || te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("the Echo did not validate the source")
	}
	r.Started()
	r.Reply(exchange.Exchange{}, "ok", header, []byte("body"))
	if m := decodeAnswer(t, te.answer(time.Second)); m.Code != codes.Content || string(m.Payload) != "body" {
		t.Errorf("after the Echo: %v %q", m.Code, m.Payload)
	}
}

func TestTooManyRequests(t *testing.T) {
	te := newTestEdge(t, Config{})
	dst := te.Socket
	dst.Remote, dst.Local = te.remote, te.local
	te.TooManyRequests(get(0x1234, nil), dst, 1500*time.Millisecond)
	m := decodeAnswer(t, te.answer(time.Second))
	age, err := m.Options.GetUint32(message.MaxAge)
	if m.Type != typeACK || m.MessageID != 0x1234 || m.Code != codes.TooManyRequests || string(m.Token) != "\x77" || err != nil || age != 2 {
		t.Errorf("answer %v %v mid %x token %x Max-Age %d (%v)", m.Type, m.Code, m.MessageID, m.Token, age, err)
	}
	// Not for pings or responses.
	te.TooManyRequests([]byte{0x40, 0, 0, 1}, dst, time.Second)
	te.TooManyRequests([]byte{0x40, 0x45, 0, 1}, dst, time.Second)
	if a := te.answer(50 * time.Millisecond); a != nil {
		t.Errorf("answered % x", a)
	}
}

// TestAcknowledgedSeparateResponseValidates: a client that acknowledges a
// separate response, whose message id only it saw, is validated.
func TestAcknowledgedSeparateResponseValidates(t *testing.T) {
	te := guarded(t)
	te.Piggyback = time.Millisecond
	r := te.receive(get(1, nil))
	r.Started()
	if a := te.answer(time.Second); len(a) != 4 || a[0] != 0x60 {
		t.Fatalf("no empty ACK: % x", a)
	}
	r.Reply(exchange.Exchange{}, "ok", nil, []byte("later"))
	m := decodeAnswer(t, te.answer(time.Second))
	if m.Type != typeCON || string(m.Payload) != "later" {
		t.Fatalf("separate response %v %q", m.Type, m.Payload)
	}
	if !te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("validated before the ACK")
	}
	// A wrong message id proves nothing.
	te.receive([]byte{0x60, 0, byte(m.MessageID >> 8), byte(m.MessageID) + 1})
	if !te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("validated by the ACK of another message")
	}
	te.receive([]byte{0x60, 0, byte(m.MessageID >> 8), byte(m.MessageID)})
	if te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Error("not validated by the ACK")
	}
}

func TestRequestFieldsLarge(t *testing.T) {
	te := newTestEdge(t, Config{})
	// NON POST with an 8-byte token, six 40-byte segments (more than a
	// Request holds inline), one needing escapes, and a 500-byte payload.
	token := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	b := append([]byte{0x58, 0x02, 0x01, 0x02}, token...)
	var segs []string
	for i := range 6 {
		seg := strings.Repeat(string(rune('a'+i)), 40)
		if i == 3 {
			seg = strings.Repeat("ä/", 20)
		}
		segs = append(segs, seg)
		delta := byte(0)
		if i == 0 {
			delta = 11
		}
		b = append(b, delta<<4|13, byte(len(seg)-13))
		b = append(b, seg...)
	}
	payload := bytes.Repeat([]byte("p"), 500)
	b = append(b, 0xff)
	b = append(b, payload...)
	r := te.receive(b)
	if r == nil {
		t.Fatal("not published")
	}
	wantPath := "/" + strings.Join(segs[:3], "/") + "/" + url.PathEscape(segs[3]) + "/" + strings.Join(segs[4:], "/")
	checks := []struct{ name, got, want string }{
		{"segments", strings.Join(r.Segments, "|"), strings.Join(segs, "|")},
		{"path", r.Path, wantPath},
		{"query", r.Query, ""},
		{"token", hex.EncodeToString(r.Token), "0102030405060708"},
		{"payload", string(r.Payload), string(payload)},
		{"head+payload", string(r.Head) + string(r.Payload), string(b)},
		{"request line", r.RequestLine, "POST " + wantPath},
		{"op", r.op, "POST " + wantPath},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	r.done = true
}

func TestEscapesMatchURL(t *testing.T) {
	in := []string{"", "time", "a.b-c_d~e", "a b", "unit=°C", "x", "=", "a=b=c", "a&b", "/;,?", ":@&=+$", "%41", "\x00\xff", "é"}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		b := make([]byte, rnd.IntN(12))
		for i := range b {
			b[i] = byte(rnd.IntN(256))
		}
		in = append(in, string(b))
	}
	for _, s := range in {
		if got, want := string(appendPathEscaped(nil, []byte(s))), url.PathEscape(s); got != want {
			t.Errorf("path %q: %q, want %q", s, got, want)
		}
		want := url.QueryEscape(s)
		if k, v, ok := strings.Cut(s, "="); ok {
			want = url.QueryEscape(k) + "=" + url.QueryEscape(v)
		}
		if got := string(appendQueryEscaped(nil, []byte(s))); got != want {
			t.Errorf("query %q: %q, want %q", s, got, want)
		}
		if n := len(url.PathEscape(s)); n > escapedMax([]byte(s)) {
			t.Errorf("escapedMax(%q) = %d < %d", s, escapedMax([]byte(s)), n)
		}
	}
}

func TestAppendEncodedMatchesGoCoAP(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	lengths := []int{0, 1, 12, 13, 14, 268, 269, 270, 600}
	ids := []message.OptionID{1, 4, 11, 12, 14, 15, 23, 27, 28, 60, 258, 300, 2048, 65000}
	for i := range 500 {
		var opts message.Options
		for range rnd.IntN(6) {
			v := bytes.Repeat([]byte{byte(i)}, lengths[rnd.IntN(len(lengths))])
			opts = opts.Add(message.Option{ID: ids[rnd.IntN(len(ids))], Value: v})
		}
		m := message.Message{
			Token:     bytes.Repeat([]byte{0xab}, rnd.IntN(9)),
			Options:   opts,
			Code:      codes.Code(rnd.IntN(256)),
			Payload:   bytes.Repeat([]byte{'x'}, lengths[rnd.IntN(len(lengths))]),
			MessageID: int32(rnd.IntN(1 << 16)),
			Type:      message.Type(rnd.IntN(4)),
		}
		n, err := coder.DefaultCoder.Size(m)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, n)
		if _, err := coder.DefaultCoder.Encode(m, want); err != nil {
			t.Fatal(err)
		}
		got, err := appendEncoded([]byte("prefix"), m)
		if err != nil || !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("%+v: got % x (%v), want % x", m, got, err, want)
		}
	}
	if _, err := appendEncoded(nil, message.Message{Token: make([]byte, 9), Type: typeCON}); err == nil {
		t.Error("a 9-byte token encoded")
	}
	unsorted := message.Options{{ID: 28}, {ID: 27}}
	if _, err := appendEncoded(nil, message.Message{Options: unsorted, Type: typeCON}); err == nil {
		t.Error("options out of order encoded")
	}
}

// TestPiggybackWindows: requests answered within the window get the
// response in the ACK and nothing else; the others get an empty ACK no
// sooner than the window ends, then their response as a separate CON.
// More requests than the ring's first size are in flight at once.
func TestPiggybackWindows(t *testing.T) {
	const window = 100 * time.Millisecond
	te := newTestEdge(t, Config{Piggyback: window})
	const n = 150
	reqs := make([]*Request, n)
	started := time.Now()
	for i := range n {
		r := te.receive(get(uint16(i), nil))
		if r == nil {
			t.Fatalf("request %d not published", i)
		}
		r.Started()
		reqs[i] = r
	}
	for i := 0; i < n; i += 2 {
		reqs[i].Reply(exchange.Exchange{}, schemas.StatusOK, nil, []byte("now"))
	}
	piggybacked, emptyACKs := 0, 0
	for piggybacked+emptyACKs < n {
		a := te.answer(10 * time.Second)
		m := decodeAnswer(t, a)
		switch {
		case m.Type == typeACK && m.Code == codes.Content:
			if m.MessageID%2 != 0 || string(m.Payload) != "now" {
				t.Fatalf("piggybacked %d %q", m.MessageID, m.Payload)
			}
			piggybacked++
		case m.Type == typeACK && m.Code == codes.Empty:
			if m.MessageID%2 != 1 {
				t.Fatalf("empty ACK for answered request %d", m.MessageID)
			}
			if d := time.Since(started); d < window {
				t.Fatalf("empty ACK after %v, before the window of %v ended", d, window)
			}
			emptyACKs++
		default:
			t.Fatalf("answer %v %v", m.Type, m.Code)
		}
	}
	if a := te.answer(2 * window); a != nil {
		t.Fatalf("more answers: % x", a)
	}
	reqs[1].Reply(exchange.Exchange{}, schemas.StatusOK, nil, []byte("later"))
	m := decodeAnswer(t, te.answer(10*time.Second))
	if m.Type != typeCON || string(m.Payload) != "later" {
		t.Fatalf("separate response %v %q", m.Type, m.Payload)
	}
	s := te.Stats()
	if s.Piggybacked != n/2 || s.Separate != 1 {
		t.Errorf("stats %+v", s)
	}
	// A duplicate of an acknowledged request gets the empty ACK again.
	te.receive(get(3, nil))
	if a := te.answer(10 * time.Second); !bytes.Equal(a, []byte{0x60, 0, 0, 3}) {
		t.Errorf("duplicate answered % x", a)
	}
}

func TestCloseStopsWindows(t *testing.T) {
	te := newTestEdge(t, Config{Piggyback: 10 * time.Millisecond})
	r := te.receive(get(1, nil))
	r.Started()
	te.Close()
	if a := te.answer(100 * time.Millisecond); a != nil {
		t.Errorf("answered % x after Close", a)
	}
}

func TestDedupeCacheEvicts(t *testing.T) {
	te := newTestEdge(t, Config{CacheSize: 1500}) // two chunks, the last partial
	for i := range 4000 {
		if r := te.receive(get(uint16(i), nil)); r == nil {
			t.Fatalf("request %d not published", i)
		} else {
			r.done = true
		}
	}
	if s := te.Stats(); s.Evicted != 4000-1500 {
		t.Errorf("evicted %d", s.Evicted)
	}
	// The newest are remembered, the oldest forgotten.
	if r := te.receive(get(3999, nil)); r != nil {
		t.Error("a recent duplicate was published")
	}
	if r := te.receive(get(0, nil)); r == nil {
		t.Error("an evicted message id was not published again")
	}
	te.Sweep(time.Now().Add(exchangeLifetime + time.Second))
	te.mu.Lock()
	defer te.mu.Unlock()
	if len(te.dedupe) != 0 || te.recentLen != 0 {
		t.Errorf("after Sweep: %d keys, %d entries", len(te.dedupe), te.recentLen)
	}
}

// A retransmission of a CON request that was started and is unanswered is
// handed to Retransmitted, once per retransmission; once answered, a
// retransmission gets the cached response and is not handed on; a NON is
// never handed on.
func TestRetransmitted(t *testing.T) {
	te := newTestEdge(t, Config{Piggyback: time.Minute})
	var got []*Request
	te.Retransmitted = func(r *Request) { got = append(got, r) }
	con := []byte{0x41, 0x01, 0x00, 0x07, 0xaa, 0xb4, 't', 'i', 'm', 'e'} // CON GET /time, token aa
	r := te.receive(con)
	if r == nil {
		t.Fatal("not published")
	}
	if te.receive(con) != nil || len(got) != 0 {
		t.Fatalf("a retransmission before Started: %d handed on", len(got))
	}
	r.Started()
	for i := range 2 {
		if te.receive(con) != nil {
			t.Fatal("a retransmission was returned as a new request")
		}
		if len(got) != i+1 || got[i] != r {
			t.Fatalf("after %d retransmissions, %d handed on", i+1, len(got))
		}
	}
	if a := te.answer(50 * time.Millisecond); a != nil {
		t.Errorf("an unanswered retransmission got % x", a)
	}
	if err := r.Reply(exchange.Exchange{}, "ok", nil, []byte("12:00")); err != nil {
		t.Fatal(err)
	}
	first := te.answer(time.Second)
	te.receive(con)
	if again := te.answer(time.Second); !bytes.Equal(again, first) || len(got) != 2 {
		t.Errorf("after the answer: % x (want % x), %d handed on", again, first, len(got))
	}
	non := []byte{0x51, 0x01, 0x00, 0x08, 0xbb, 0xb4, 't', 'i', 'm', 'e'}
	rn := te.receive(non)
	rn.Started()
	te.receive(non)
	if len(got) != 2 {
		t.Errorf("a NON retransmission was handed on")
	}
	if n := te.Stats().Retransmitted; n != 2 {
		t.Errorf("Stats.Retransmitted = %d, want 2", n)
	}
}
