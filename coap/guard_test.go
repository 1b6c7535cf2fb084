package coap

import (
	"bytes"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

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
	if err := r.Reply("ok", nil, body); err != nil {
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
	r.Reply("ok", header, []byte("body"))
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
	r.Reply("ok", header, []byte("body"))
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
	r.Reply("ok", nil, []byte("later"))
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
