package coap

import (
	"hash/maphash"
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
	Token         []byte
	Confirmable   bool
	MessageID     uint16
	Payload       []byte // owned by the Request
	Head          []byte // the datagram before the payload; nil if reassembled
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
// and Nats-Msg-Id a Request holds without another allocation: a GET with
// a short path and an 8-byte token fits, from IPv4 or IPv6. It fills the
// Request's size class (640 bytes on 64-bit platforms); every byte of a
// Request is garbage collected per request.
const inlineSize = 144

// Receive handles one datagram from remote, sent to local on interface
// ifindex. It answers what the gateway answers itself and returns the
// request to publish, or nil. It does not keep b.
func (e *Edge) Receive(b []byte, remote, local netip.AddrPort, ifindex int, now time.Time) *Request {
	dst := e.Socket
	dst.Remote, dst.Local, dst.IfIndex = remote, local, ifindex
	h, err := peekHeader(b)
	if err != nil {
		e.stats.malformed.Add(1)
		return nil
	}
	class := h.code >> 5
	switch {
	case h.code == codes.Empty:
		e.receiveEmpty(h, b, dst)
		return nil
	case class != 0 || h.typ == typeACK || h.typ == typeRST:
		// A response, or a request in an ACK or RST: we are no client.
		if h.typ == typeCON {
			e.send(dst, empty(typeRST, h.mid))
		}
		e.stats.malformed.Add(1)
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

	key := peerMID{remote, h.mid}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	sum := maphash.Bytes(hashSeed, b)
	if c, ok := e.dedupe[key]; ok && now.Before(c.expires) {
		if c.sum != sum {
			// Same message id, other content: not a retransmission. It is
			// dropped, so that no one can fetch a cached response larger
			// than what they send.
			e.mu.Unlock()
			e.stats.malformed.Add(1)
			return nil
		}
		e.stats.duplicates.Add(1)
		var again []byte
		switch {
		case c.response != nil:
			again = c.response
		case c.separate:
			again = empty(typeACK, h.mid)
		}
		var retry *Request
		if c.response == nil && c.started != nil && !c.started.done {
			retry = c.started
		}
		e.mu.Unlock()
		if again != nil {
			e.send(dst, again)
		}
		if retry != nil && e.Retransmitted != nil {
			e.stats.retransmitted.Add(1)
			e.Retransmitted(retry)
		}
		return nil
	}
	c := e.remember(key, h.typ, now)
	c.sum = sum
	e.mu.Unlock()

	// Until the request is published, its Token aliases b: the answers
	// Receive sends itself are encoded before it returns.
	r := &Request{
		edge: e, dst: dst, cache: c, cacheSeq: c.seq,
		Confirmable: h.typ == typeCON, MessageID: h.mid,
		Token: m.Token[:len(m.Token):len(m.Token)], ContentFormat: -1, Accept: -1,
	}
	method := methodName(m.Code)
	if method == "" {
		e.stats.rejected.Add(1)
		r.respond(codes.MethodNotAllowed, nil, nil)
		return nil
	}
	r.Method = method
	var (
		b1, b2         block
		hasB1, hasB2   bool
		badOpt         bool
		proxying       bool
		nsegs          int
		pathLen        int // of the NATS subject's tokens
		segsLen        int // of the decoded segments
		pathEst, qyEst int // at most the escaped path and query
	)
	for _, o := range m.Options {
		switch o.ID {
		case message.URIPath:
			nsegs++
			segsLen += len(o.Value)
			pathLen += 1 + schemas.EscapedLen(bytesString(o.Value))
			pathEst += 1 + escapedMax(o.Value)
		case message.URIQuery:
			qyEst += 1 + escapedMax(o.Value)
		case message.ContentFormat:
			r.ContentFormat = int(decodeUint(o.Value))
		case message.Accept:
			r.Accept = int(decodeUint(o.Value))
		case message.Block1, message.Block2:
			blk, ok := parseBlock(decodeUint(o.Value))
			if !ok {
				badOpt = true
			}
			if o.ID == message.Block1 {
				b1, hasB1 = blk, true
			} else {
				b2, hasB2 = blk, true
			}
		case message.ProxyURI, message.ProxyScheme:
			proxying = true
		case message.Echo:
			// RFC 9175 §2.4: a valid Echo shows the source receives
			// what the gateway sends it.
			e.Guard.CheckEcho(remote.Addr(), o.Value, now)
		case message.URIHost, message.URIPort:
		default:
			if o.ID&1 == 1 { // critical, and not one we implement
				badOpt = true
			}
		}
	}
	if e.Guard != nil && e.Guard.Limited(remote.Addr(), now) {
		r.limited, r.credit = true, e.Guard.Credit(remote.Addr(), len(b))
	}
	switch {
	case proxying:
		e.stats.rejected.Add(1)
		r.respond(codes.ProxyingNotSupported, nil, nil)
		return nil
	case pathLen > schemas.MaxPathSubject:
		// Its subject would be too long for NATS, which would close the
		// gateway's connection over it.
		e.stats.rejected.Add(1)
		r.respond(codes.BadRequest, nil, nil)
		return nil
	case badOpt:
		e.stats.badOption.Add(1)
		r.respond(codes.BadOption, nil, nil)
		return nil
	}

	// What the request keeps of the datagram goes in one slab: first the
	// bytes (Token, Head, Payload), then the strings (Segments, then op,
	// the request line, which holds Path and Query), which are never
	// written again.
	head := b[:len(b)-len(m.Payload)]
	size := len(m.Token) + segsLen + len(method) + 1 + max(pathEst, 1) + 1 + qyEst
	if !hasB1 {
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
	if !hasB1 {
		slab = append(slab, head...)
		slab = append(slab, m.Payload...)
	}
	strStart := len(slab)
	for _, o := range m.Options {
		if o.ID == message.URIPath {
			slab = append(slab, o.Value...)
		}
	}
	opStart := len(slab)
	slab = append(slab, method...)
	slab = append(slab, ' ')
	pathStart := len(slab)
	slab = append(slab, '/')
	first := true
	for _, o := range m.Options {
		if o.ID == message.URIPath {
			if !first {
				slab = append(slab, '/')
			}
			first = false
			slab = appendPathEscaped(slab, o.Value)
		}
	}
	pathEnd := len(slab)
	first = true
	for _, o := range m.Options {
		if o.ID == message.URIQuery {
			if first {
				slab = append(slab, '?')
			} else {
				slab = append(slab, '&')
			}
			first = false
			slab = appendQueryEscaped(slab, o.Value)
		}
	}
	opEnd := len(slab)

	// slab is complete: its string part is never written again.
	str := unsafe.String(unsafe.SliceData(slab[strStart:]), len(slab)-strStart)
	sub := func(from, to int) string { return str[from-strStart : to-strStart] }
	r.Token = nil
	if tokenEnd > 0 {
		r.Token = slab[:tokenEnd:tokenEnd]
	}
	if nsegs <= len(r.segs) {
		r.Segments = r.segs[:nsegs:nsegs]
	} else {
		r.Segments = make([]string, nsegs)
	}
	at, i := strStart, 0
	for _, o := range m.Options {
		if o.ID == message.URIPath {
			r.Segments[i] = sub(at, at+len(o.Value))
			at += len(o.Value)
			i++
		}
	}
	r.op = sub(opStart, opEnd)
	r.RequestLine = r.op
	r.Path = sub(pathStart, pathEnd)
	if opEnd > pathEnd {
		r.Query = sub(pathEnd+1, opEnd)
	}
	if hasB2 {
		r.block2 = b2
	}
	r.block2.szx = min(r.block2.szx, szxFor(e.BlockSize))
	if !hasB2 {
		r.block2.szx = szxFor(e.BlockSize)
	}

	if hasB1 {
		body, done := e.receiveBlock1(r, b1, m.Payload, now)
		if !done {
			return nil
		}
		r.Payload = body
		if r.limited {
			// The exchange is the whole upload: the earlier blocks count.
			r.credit = e.Guard.Credit(remote.Addr(), len(b)-len(m.Payload)+len(body))
		}
	} else {
		if hasB2 && b2.num > 0 && e.serveBlock2(r, now) {
			return nil
		}
		headEnd := tokenEnd + len(head)
		r.Head = slab[tokenEnd:headEnd:headEnd]
		if len(m.Payload) > 0 {
			r.Payload = slab[headEnd:strStart:strStart]
		}
	}
	e.stats.requests.Add(1)
	return r
}
