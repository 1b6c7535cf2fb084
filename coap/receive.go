package coap

import (
	"net/netip"
	"time"
	"unsafe"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
)

// Request is a CoAP request to publish, and the exchange's Replier.
type Request struct {
	Method        string
	Segments      []string // decoded Uri-Path segments
	Path          string   // "/" + percent-encoded segments joined by "/"
	Query         string   // Uri-Query options, percent-encoded, joined by "&"
	RequestLine   string   // Method, " ", Path, and "?" Query if there is one
	ContentFormat int      // -1 if absent
	Accept        int      // -1 if absent
	// Observe is the value of the request's Observe option (RFC 7641),
	// in decimal: "0" registers, "1" deregisters; "" if it has none.
	Observe     string
	Token       []byte
	Confirmable bool
	MessageID   uint16
	Payload     []byte // owned by the Request
	Head        []byte // the datagram before the payload; nil if reassembled
	// Group is the multicast group or broadcast address the request was
	// sent to (ReceiveGroup); the zero Addr for one sent to the node.
	Group netip.Addr
	// Seq is the owner's: ingress keeps the request's exchange here, to
	// publish it again when the client retransmits it.
	Seq uint64

	edge     *Edge
	dst      exchange.Exchange
	cache    *cached // its dedupe cache entry, while cache.seq is cacheSeq
	cacheSeq uint64
	acked    bool   // an empty ACK was sent (separate response)
	done     bool   // answered
	block1   *block // the final Block1 of a reassembled upload, echoed in the response
	block2   block  // the block the client asked for
	op       string // method and URI, for Block2 follow-ups
	win      uint64 // 1 + the number of its piggyback window while queued, else 0
	// The amplification limit: limited when the guard limits the
	// source; credit is what may still be sent in this exchange, in
	// bytes of IP packets (guard.Wire).
	limited bool
	credit  int

	// Room for Segments and for the bytes and strings Receive copies out
	// of the datagram, so that a small request takes one allocation.
	segs   [4]string
	inline [inlineSize]byte
}

// inlineSize is how many bytes of a request's token, head, payload, path
// and request line a Request holds without another allocation: a GET with
// a short path and an 8-byte token fits, from IPv4 or IPv6. It fills the
// Request's size class (640 bytes on 64-bit platforms); every byte of a
// Request is garbage collected per request.
const inlineSize = 144

// Receive handles one datagram from remote, sent to local on interface
// ifindex. It answers what the gateway answers itself and returns the
// request to publish, or nil. It does not keep b.
func (e *Edge) Receive(b []byte, remote, local netip.AddrPort, ifindex int, now time.Time) *Request {
	return e.ReceiveSession(b, remote, local, ifindex, nil, now)
}

// ReceiveSession is Receive for a datagram that came through session (a
// DTLS session of a coaps listener), or Receive's socket if session is
// nil: every answer to it, the request's reply, its retransmissions and
// an observer's notifications go through session too.
func (e *Edge) ReceiveSession(b []byte, remote, local netip.AddrPort, ifindex int, session exchange.Session, now time.Time) *Request {
	dst := e.Socket
	dst.Remote, dst.Local, dst.IfIndex, dst.Session = remote, local, ifindex, session
	return e.receive(b, dst, netip.Addr{}, now)
}

// ReceiveGroup is Receive for a datagram from remote sent to group, a
// multicast group the listener joined or a broadcast address, that
// arrived on interface ifindex; local is the node's unicast address to
// answer from (exchange.Exchange.Local). It follows RFC 7252 §8: only a
// NON request is taken; anything else (a CON, which a group must not
// be sent, an empty message, a response) is dropped unanswered, counted
// as malformed, since no RST answers a group's message. The request's
// response is a NON sent after a random delay within Leisure, and an
// error response (4.xx, 5.xx) is not sent at all (MulticastSuppressed).
func (e *Edge) ReceiveGroup(b []byte, remote, local netip.AddrPort, group netip.Addr, ifindex int, now time.Time) *Request {
	h, err := peekHeader(b)
	if err != nil || h.typ != typeNON || h.code == codes.Empty || h.code>>5 != 0 {
		e.stats.malformed.Add(1)
		return nil
	}
	dst := e.Socket
	dst.Remote, dst.Local, dst.IfIndex = remote, local, ifindex
	return e.receive(b, dst, group, now)
}

// receive is Receive for a datagram from dst.Remote, answered through
// dst, sent to group if that is valid.
func (e *Edge) receive(b []byte, dst exchange.Exchange, group netip.Addr, now time.Time) *Request {
	remote := dst.Remote
	h, ok := e.checkHeader(b, dst)
	if !ok {
		return nil
	}
	// The decoded message aliases b and e.opts, which Receive owns until
	// it returns: what the request keeps is copied out below.
	e.rx.Lock()
	defer e.rx.Unlock()
	m := message.Message{Options: e.opts[:0]}
	if err := decode(b, &m); err != nil {
		e.stats.malformed.Add(1)
		if h.typ == typeCON {
			e.send(dst, empty(typeRST, h.mid))
		}
		return nil
	}
	c := e.deduplicate(b, h, dst, now)
	if c == nil {
		return nil
	}

	// Until the request is published, its Token aliases b: the answers
	// Receive sends itself are encoded before it returns.
	r := &Request{
		edge: e, dst: dst, cache: c, cacheSeq: c.seq,
		Confirmable: h.typ == typeCON, MessageID: h.mid, Group: group,
		Token: m.Token[:len(m.Token):len(m.Token)], ContentFormat: -1, Accept: -1,
	}
	if r.Method = methodName(m.Code); r.Method == "" {
		e.stats.rejected.Add(1)
		r.respond(codes.MethodNotAllowed, nil, nil)
		return nil
	}
	o := r.readOptions(m.Options, now)
	if e.Guard != nil && e.Guard.Limited(remote.Addr(), now) {
		r.limited, r.credit = true, e.Guard.Credit(remote.Addr(), len(b))
	}
	if r.reject(o) {
		return nil
	}
	r.keep(b, &m, o)
	r.block2 = block{szx: szxFor(e.BlockSize)}
	if o.hasB2 {
		r.block2 = o.b2
		r.block2.szx = min(o.b2.szx, szxFor(e.BlockSize))
	}

	switch {
	case o.hasB1:
		body, done := e.receiveBlock1(r, o.b1, m.Payload, now)
		if !done {
			return nil
		}
		r.Payload = body
		if r.limited {
			// The exchange is the whole upload: the earlier blocks count.
			r.credit = e.Guard.Credit(remote.Addr(), len(b)-len(m.Payload)+len(body))
		}
	case o.hasB2 && o.b2.num > 0 && e.serveBlock2(r, now):
		return nil
	}
	if r.Observe == schemas.CoAPObserveDeregister && r.Method == "GET" {
		// RFC 7641 §3.6: the GET is served as any other, and ends the
		// registration with its token.
		e.cancel(remote, r.Token)
	}
	e.stats.requests.Add(1)
	return r
}

// checkHeader checks the fixed header of datagram b from dst.Remote
// before a full decode, and reports whether b may be a request. It
// handles empty messages (pings, and the client's ACKs and RSTs of
// separate responses), and counts as malformed, answering a CON with a
// RST, what does not parse and what is not a request: a response, or a
// request in an ACK or RST.
func (e *Edge) checkHeader(b []byte, dst exchange.Exchange) (header, bool) {
	h, err := peekHeader(b)
	if err != nil {
		e.stats.malformed.Add(1)
		return h, false
	}
	switch {
	case h.code == codes.Empty:
		e.receiveEmpty(h, b, dst)
		return h, false
	case h.code>>5 != 0 || h.typ == typeACK || h.typ == typeRST:
		// A response, or a request in an ACK or RST: we are no client.
		if h.typ == typeCON {
			e.send(dst, empty(typeRST, h.mid))
		}
		e.stats.malformed.Add(1)
		return h, false
	}
	return h, true
}

// requestOptions is what Receive learns of a request's options in one
// pass, before it copies out what the request keeps.
type requestOptions struct {
	b1, b2         block
	hasB1, hasB2   bool
	badOpt         bool // a Block option that does not parse, or an unrecognised critical option
	proxying       bool // Proxy-Uri or Proxy-Scheme
	nsegs          int
	pathLen        int // of the NATS subject's tokens
	segsLen        int // of the decoded segments
	pathEst, qyEst int // at most the escaped path and query
}

// readOptions reads a request's options: it sets r's Content-Format and
// Accept, checks an Echo option with the guard and returns what else it
// learnt.
func (r *Request) readOptions(opts message.Options, now time.Time) requestOptions {
	var ro requestOptions
	for _, o := range opts {
		switch o.ID {
		case message.URIPath:
			ro.nsegs++
			ro.segsLen += len(o.Value)
			ro.pathLen += 1 + schemas.EscapedLen(bytesString(o.Value))
			ro.pathEst += 1 + escapedMax(o.Value)
		case message.URIQuery:
			ro.qyEst += 1 + escapedMax(o.Value)
		case message.ContentFormat:
			r.ContentFormat = int(decodeUint(o.Value))
		case message.Accept:
			r.Accept = int(decodeUint(o.Value))
		case message.Observe:
			r.Observe = observeValue(decodeUint(o.Value))
		case message.Block1, message.Block2:
			blk, ok := parseBlock(decodeUint(o.Value))
			if !ok {
				ro.badOpt = true
			}
			if o.ID == message.Block1 {
				ro.b1, ro.hasB1 = blk, true
			} else {
				ro.b2, ro.hasB2 = blk, true
			}
		case message.ProxyURI, message.ProxyScheme:
			ro.proxying = true
		case message.Echo:
			// RFC 9175 §2.4: a valid Echo shows the source receives
			// what the gateway sends it.
			r.edge.Guard.CheckEcho(r.dst.Remote.Addr(), o.Value, now)
		case message.URIHost, message.URIPort:
		default:
			if o.ID&1 == 1 { // critical, and not one we implement
				ro.badOpt = true
			}
		}
	}
	return ro
}

// reject answers a request the gateway does not pass on, and reports
// whether it did: 5.05 for a proxy, 4.00 for a path too long for a NATS
// subject, 4.02 for a bad or unrecognised critical option.
func (r *Request) reject(o requestOptions) bool {
	e := r.edge
	switch {
	case o.proxying:
		e.stats.rejected.Add(1)
		r.respond(codes.ProxyingNotSupported, nil, nil)
	case o.pathLen > schemas.MaxPathSubject:
		// Its subject would be too long for NATS, which would close the
		// gateway's connection over it.
		e.stats.rejected.Add(1)
		r.respond(codes.BadRequest, nil, nil)
	case o.badOpt:
		e.stats.badOption.Add(1)
		r.respond(codes.BadOption, nil, nil)
	default:
		return false
	}
	return true
}

// keep copies what r keeps of datagram b, decoded in m, into one slab:
// first the bytes (Token, and Head and Payload unless a Block1 upload
// reassembles the payload), then the strings (Segments, then op, the
// request line, which holds Path and Query), which are never written
// again. The slab is r's inline room when it fits.
func (r *Request) keep(b []byte, m *message.Message, o requestOptions) {
	head := b[:len(b)-len(m.Payload)]
	size := len(m.Token) + o.segsLen + len(r.Method) + 1 + max(o.pathEst, 1) + 1 + o.qyEst
	if !o.hasB1 {
		size += len(head) + len(m.Payload)
	}
	var slab []byte
	if size <= len(r.inline) {
		slab = r.inline[:0]
	} else {
		slab = make([]byte, 0, size)
	}
	slab = append(slab, m.Token...)
	tokenEnd := len(slab)
	if !o.hasB1 {
		slab = append(slab, head...)
		slab = append(slab, m.Payload...)
	}
	strStart := len(slab)
	for _, opt := range m.Options {
		if opt.ID == message.URIPath {
			slab = append(slab, opt.Value...)
		}
	}
	opStart := len(slab)
	slab, pathEnd := appendRequestLine(slab, r.Method, m.Options)

	// slab is complete: its string part is never written again.
	str := unsafe.String(unsafe.SliceData(slab[strStart:]), len(slab)-strStart)
	r.Token = nil
	if tokenEnd > 0 {
		r.Token = slab[:tokenEnd:tokenEnd]
	}
	if !o.hasB1 {
		headEnd := tokenEnd + len(head)
		r.Head = slab[tokenEnd:headEnd:headEnd]
		if len(m.Payload) > 0 {
			r.Payload = slab[headEnd:strStart:strStart]
		}
	}
	r.setSegments(str, o.nsegs, m.Options)
	r.op = str[opStart-strStart:]
	r.RequestLine = r.op
	r.Path = str[opStart-strStart+len(r.Method)+1 : pathEnd-strStart]
	if len(slab) > pathEnd {
		r.Query = str[pathEnd+1-strStart:]
	}
}

// appendRequestLine appends the request line of a request with method
// and options opts: the method, a space, the Uri-Path segments
// percent-encoded, each after a "/", and the Uri-Query options
// percent-encoded, after a "?" and joined by "&". It also returns where
// the path ends in dst.
func appendRequestLine(dst []byte, method string, opts message.Options) ([]byte, int) {
	dst = append(dst, method...)
	dst = append(dst, ' ', '/')
	first := true
	for _, o := range opts {
		if o.ID == message.URIPath {
			if !first {
				dst = append(dst, '/')
			}
			first = false
			dst = appendPathEscaped(dst, o.Value)
		}
	}
	pathEnd := len(dst)
	sep := byte('?')
	for _, o := range opts {
		if o.ID == message.URIQuery {
			dst = append(dst, sep)
			sep = '&'
			dst = appendQueryEscaped(dst, o.Value)
		}
	}
	return dst, pathEnd
}

// setSegments sets r.Segments to the n Uri-Path options' values, which
// str begins with.
func (r *Request) setSegments(str string, n int, opts message.Options) {
	if n <= len(r.segs) {
		r.Segments = r.segs[:n:n]
	} else {
		r.Segments = make([]string, n)
	}
	at, i := 0, 0
	for _, o := range opts {
		if o.ID == message.URIPath {
			r.Segments[i] = str[at : at+len(o.Value)]
			at += len(o.Value)
			i++
		}
	}
}
