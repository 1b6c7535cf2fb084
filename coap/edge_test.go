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
	"testing"
	"time"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
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

func TestEscapesRoundTrip(t *testing.T) {
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
		// A query option: RFC 3986 percent-encoding, name and value apart,
		// which url.PathUnescape reverses; never a '+' for a space.
		got := string(appendQueryEscaped(nil, []byte(s)))
		k, v, hasValue := strings.Cut(got, "=")
		dk, err1 := url.PathUnescape(k)
		dv, err2 := url.PathUnescape(v)
		back := dk
		if hasValue {
			back += "=" + dv
		}
		if err1 != nil || err2 != nil || back != s || strings.ContainsAny(got, "+ &") {
			t.Errorf("query %q: %q decodes to %q (%v, %v)", s, got, back, err1, err2)
		}
		if n := len(url.PathEscape(s)); n > escapedMax([]byte(s)) {
			t.Errorf("escapedMax(%q) = %d < %d", s, escapedMax([]byte(s)), n)
		}
	}
}
