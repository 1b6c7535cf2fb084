package coap

import (
	"encoding/binary"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
)

// limit reports whether r's response is under the amplification limit,
// and the credit left for it.
func (r *Request) limit() (bool, int) {
	e := r.edge
	if !r.limited || !e.Guard.Limited(r.dst.Remote.Addr(), time.Now()) {
		return false, 0
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return true, r.credit
}

// encodedLen returns the size of the response respond would send.
func (r *Request) encodedLen(code codes.Code, opts message.Options, payload []byte) int {
	if r.block1 != nil {
		opts = append(opts[:len(opts):len(opts)], message.Option{ID: message.Block1, Value: encodeUint(r.block1.value())})
	}
	m := message.Message{Token: r.Token, Options: opts, Code: code, Payload: payload, Type: typeACK}
	n, err := coderSize(m)
	if err != nil {
		return 1 << 20
	}
	return n
}

// fitBlock returns the largest block size, at most want's, whose block of
// body fits in credit.
func (r *Request) fitBlock(code codes.Code, opts message.Options, body []byte, want block, credit int) (uint8, bool) {
	for szx := int(want.szx); szx >= 0; szx-- {
		w := scaleBlock(want, uint8(szx))
		chunk, o := blockOf(body, w, opts[:len(opts):len(opts)])
		if guard.Wire(r.dst.Remote.Addr(), r.encodedLen(code, o, chunk)) <= credit {
			return uint8(szx), true
		}
	}
	return 0, false
}

// challenge answers a request whose response does not fit the
// amplification limit even in a 16-byte block with 4.01 Unauthorized and
// an Echo option (RFC 9175 §2.4): a client that repeats the request with
// the Echo shows it receives at its address and gets the whole response.
// When not even that fits, the response is dropped.
func (r *Request) challenge(credit int) {
	e := r.edge
	v := e.Guard.Echo(r.dst.Remote.Addr(), time.Now())
	opts := message.Options{{ID: message.Echo, Value: v[:]}}
	if guard.Wire(r.dst.Remote.Addr(), r.encodedLen(codes.Unauthorized, opts, nil)) > credit {
		e.Guard.CountDropped()
		e.dropped.Add("remote", r.dst.Remote.Addr(), "request_bytes", r.dst.Size)
		r.drop()
		return
	}
	e.Guard.CountCut()
	e.stats.echoChallenges.Add(1)
	r.respond(codes.Unauthorized, opts, nil)
}

// drop ends r without an answer.
func (r *Request) drop() {
	r.edge.mu.Lock()
	defer r.edge.mu.Unlock()
	r.end()
}

// TooManyRequests answers request datagram b with 4.29 Too Many Requests
// and a Max-Age of the seconds in wait, rounded up (RFC 8516), as an ACK
// for a CON and a NON for a NON; anything but a request is ignored. Call
// it only for sources that are trusted or validated: the answer is a
// little larger than the smallest request. It does not keep b.
func (e *Edge) TooManyRequests(b []byte, dst exchange.Exchange, wait time.Duration) {
	h, err := peekHeader(b)
	if err != nil || h.code == codes.Empty || h.code>>5 != 0 || h.tkl > 8 || len(b) < 4+h.tkl {
		return
	}
	typ, mid := typeACK, h.mid
	switch h.typ {
	case typeCON:
	case typeNON:
		e.mu.Lock()
		m, ok := e.newMID(dst.Remote, time.Now())
		e.mu.Unlock()
		if !ok {
			return
		}
		typ, mid = typeNON, m
	default:
		return
	}
	secs := uint32(min((wait+time.Second-1)/time.Second, 1<<31))
	var out [4 + 8 + 2 + 4]byte
	out[0] = 1<<6 | byte(typ)<<4 | byte(h.tkl)
	out[1] = byte(codes.TooManyRequests)
	binary.BigEndian.PutUint16(out[2:], mid)
	n := 4 + copy(out[4:], b[4:4+h.tkl])
	vlen := 0 // Max-Age as a minimal uint
	for v := secs; v > 0; v >>= 8 {
		vlen++
	}
	out[n] = 13<<4 | byte(vlen) // Max-Age (14): delta 13 + 1
	out[n+1] = byte(message.MaxAge - 13)
	n += 2
	for i := vlen - 1; i >= 0; i-- {
		out[n] = byte(secs >> (8 * i))
		n++
	}
	e.stats.tooMany.Add(1)
	e.send(dst, out[:n])
}
