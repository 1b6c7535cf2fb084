package coap

import (
	"encoding/hex"
	"strconv"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

// Reply implements exchange.Replier: it sends the worker's reply as the
// CoAP response.
func (r *Request) Reply(status string, header map[string][]string, body []byte) error {
	if status != schemas.StatusOK {
		r.declined(endErrorCode)
		r.respond(codes.InternalServerError, nil, nil)
		return nil
	}
	h := readReplyHeaders(header)
	code := codes.Content
	if h.code != "" {
		c, err := ParseCode(h.code)
		if err != nil {
			r.declined(endErrorCode)
			r.respond(codes.InternalServerError, nil, nil)
			return err
		}
		code = c
	}
	// The options and their values are scratch: respond encodes them
	// before Reply returns.
	sc := replyScratch.Get().(*scratch)
	defer replyScratch.Put(sc)
	opts, cf, etag := sc.options(&h)
	registered := false
	if r.Observe == schemas.CoAPObserveRegister && r.Method == "GET" && code>>5 == 2 && h.observe != "" {
		// The worker accepts the registration (RFC 7641 §4.1).
		var seq uint32
		if seq, registered = r.register(time.Now()); registered {
			opts = opts.Add(message.Option{ID: message.Observe, Value: encodeUint(seq)})
		}
	}
	switch {
	case registered:
	case code>>5 == 2:
		r.declined(endDeclined)
	default:
		r.declined(endErrorCode)
	}
	r.respondBody(code, opts, body, cf, etag)
	if registered {
		// A registered observer is a validated source; the response
		// itself was held to the amplification limit.
		r.edge.Guard.Validate(r.dst.Remote.Addr(), time.Now())
	}
	return nil
}

// replyHeaders are the first values of the CoAP headers of a worker's
// reply; "" for one that is absent.
type replyHeaders struct {
	code, contentFormat, maxAge, etag, locationPath, locationQuery, observe string
}

// readReplyHeaders returns the CoAP headers of a worker's reply.
func readReplyHeaders(header map[string][]string) replyHeaders {
	// One pass over the reply's few headers costs less than a lookup for
	// each header that could be there.
	var h replyHeaders
	for k, v := range header {
		if len(v) == 0 {
			continue
		}
		switch k {
		case schemas.HeaderCoAPCode:
			h.code = v[0]
		case schemas.HeaderCoAPContentFormat:
			h.contentFormat = v[0]
		case schemas.HeaderCoAPMaxAge:
			h.maxAge = v[0]
		case schemas.HeaderCoAPETag:
			h.etag = v[0]
		case schemas.HeaderCoAPLocationPath:
			h.locationPath = v[0]
		case schemas.HeaderCoAPLocationQuery:
			h.locationQuery = v[0]
		case schemas.HeaderCoAPObserve:
			h.observe = v[0]
		}
	}
	return h
}

// scratch is the room Reply builds a response's options in.
type scratch struct {
	opts [16]message.Option
	buf  [64]byte
}

var replyScratch = sync.Pool{New: func() any { return new(scratch) }}

// options returns the options of a reply with headers h, built in sc, and
// the reply's Content-Format (-1 if none) and ETag (nil if none), which a
// Block2 download keeps. Headers that do not parse are left out.
func (sc *scratch) options(h *replyHeaders) (opts message.Options, cf int, etag []byte) {
	o := optionBuilder{opts: sc.opts[:0], buf: sc.buf[:0]}
	cf = -1
	if s := h.contentFormat; s != "" {
		if n, err := strconv.ParseUint(s, 10, 16); err == nil {
			cf = int(n)
			o.addUint(message.ContentFormat, uint32(n))
		}
	}
	if s := h.maxAge; s != "" {
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			o.addUint(message.MaxAge, uint32(n))
		}
	}
	if s := h.etag; s != "" {
		if t, err := hex.DecodeString(s); err == nil && len(t) >= 1 && len(t) <= 8 {
			etag = t
			o.add(message.ETag, t)
		}
	}
	if s := h.locationPath; s != "" {
		for _, seg := range SplitPath(s) {
			o.add(message.LocationPath, []byte(seg))
		}
	}
	if s := h.locationQuery; s != "" {
		for _, q := range SplitQuery(s) {
			o.add(message.LocationQuery, []byte(q))
		}
	}
	return o.opts, cf, etag
}

// optionBuilder adds options to opts, in order, and their values to buf.
type optionBuilder struct {
	opts message.Options
	buf  []byte
}

func (o *optionBuilder) add(id message.OptionID, v []byte) {
	start := len(o.buf)
	o.buf = append(o.buf, v...)
	o.opts = o.opts.Add(message.Option{ID: id, Value: o.buf[start:len(o.buf):len(o.buf)]})
}

func (o *optionBuilder) addUint(id message.OptionID, n uint32) {
	start := len(o.buf)
	o.buf = appendUint(o.buf, n)
	o.opts = o.opts.Add(message.Option{ID: id, Value: o.buf[start:len(o.buf):len(o.buf)]})
}

// respondBody sends body with code and opts (whose Content-Format and
// ETag, cf and etag, a download keeps). A body larger than the block the
// client asked for goes block-wise: respondBody sends the block asked for
// and keeps the whole to serve the others. Under the amplification limit,
// a body that does not fit in the credit left goes in smaller blocks, or
// as an Echo challenge when not even a 16-byte block fits.
func (r *Request) respondBody(code codes.Code, opts message.Options, body []byte, cf int, etag []byte) {
	e := r.edge
	want := r.block2
	limited, credit := r.limit()
	if limited {
		n := r.encodedLen(code, opts, body)
		if len(body) <= want.size() && want.num == 0 && guard.Wire(r.dst.Remote.Addr(), n) <= credit {
			r.respond(code, opts, body)
			return
		}
		szx, ok := r.fitBlock(code, opts, body, want, credit)
		if !ok {
			r.challenge(credit)
			return
		}
		if szx < want.szx || len(body) <= want.size() {
			e.Guard.CountCut()
		}
		want = scaleBlock(want, szx)
	}
	if len(body) > want.size() || want.num > 0 {
		d := &download{
			body: body, code: code, cf: cf, etag: etag, szx: want.szx, expires: time.Now().Add(exchangeLifetime),
		}
		body, opts = blockOf(body, want, opts)
		if limited {
			d.limited = true
			d.credit = credit - guard.Wire(r.dst.Remote.Addr(), r.encodedLen(code, opts, body))
		}
		e.mu.Lock()
		e.storeDownload(transferKey{r.dst.Remote, r.op}, d)
		e.mu.Unlock()
	}
	r.respond(code, opts, body)
}

// Fail implements exchange.Replier: 5.04 when no worker answered in time,
// 5.03 when the request could not be published, 4.04 when no group serves
// the resource.
func (r *Request) Fail(why exchange.Failure) {
	r.declined(endErrorCode)
	code, sent := codes.ServiceUnavailable, &r.edge.stats.unavailable
	switch why {
	case exchange.NoAnswer:
		code, sent = codes.GatewayTimeout, &r.edge.stats.timeouts
	case exchange.Unserved:
		code, sent = codes.NotFound, &r.edge.stats.notFound
	}
	if !r.Group.IsValid() { // a multicast request's error is not sent
		sent.Add(1)
	}
	r.respond(code, nil, nil)
}

// respond sends the response to r: in the ACK while the piggyback window
// is open, as a separate CON after an empty ACK, or as a NON.
func (r *Request) respond(code codes.Code, opts message.Options, payload []byte) {
	e := r.edge
	if r.block1 != nil {
		b := *r.block1
		opts = opts.Add(message.Option{ID: message.Block1, Value: encodeUint(b.value())})
	}
	e.mu.Lock()
	if r.done || e.closed {
		e.mu.Unlock()
		return
	}
	r.end()
	if r.Group.IsValid() && code>>5 >= 4 {
		// RFC 7252 §8.2: a group's members do not answer with errors.
		e.mu.Unlock()
		e.stats.multicastSuppressed.Add(1)
		return
	}
	m := message.Message{Token: r.Token, Options: opts, Code: code, Payload: payload}
	if !r.address(&m) {
		e.mu.Unlock()
		e.stats.sendErrors.Add(1)
		return
	}
	b, err := appendEncoded(nil, m)
	if err != nil {
		e.mu.Unlock()
		e.stats.sendErrors.Add(1)
		e.Log.Debug("coap: encode response", "err", err)
		return
	}
	if r.limited {
		r.credit -= guard.Wire(r.dst.Remote.Addr(), len(b))
	}
	if m.Type == typeCON {
		r.expect(b, uint16(m.MessageID))
	} else if c := r.cached(); c != nil {
		c.response = b
	}
	e.mu.Unlock()
	if r.Group.IsValid() {
		e.sendLater(r.dst, b)
		return
	}
	e.send(r.dst, b)
}

// end marks r answered: it takes r's piggyback window off the queue, and
// r is no longer its dedupe cache entry's started request. e.mu must be
// held.
func (r *Request) end() {
	r.done = true
	r.edge.closeWindow(r)
	if c := r.cached(); c != nil {
		c.started = nil
	}
}

// address sets the type and message id of m, the response to r: the ACK
// of a CON whose piggyback window is open, else a CON (a separate
// response) or a NON with a new message id of the gateway's. It reports
// false when no message id is free. e.mu must be held.
func (r *Request) address(m *message.Message) bool {
	e := r.edge
	if r.Confirmable && !r.acked {
		m.Type, m.MessageID = typeACK, int32(r.MessageID)
		e.stats.piggybacked.Add(1)
		return true
	}
	mid, ok := e.newMID(r.dst.Remote, time.Now())
	if !ok {
		return false
	}
	m.Type, m.MessageID = typeNON, int32(mid)
	if r.Confirmable {
		m.Type = typeCON
		e.stats.separate.Add(1)
	}
	return true
}
