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

// scratch is the room Reply builds a response's options in.
type scratch struct {
	opts [16]message.Option
	buf  [64]byte
}

var replyScratch = sync.Pool{New: func() any { return new(scratch) }}

// Reply implements exchange.Replier: it sends the worker's reply as the
// CoAP response.
func (r *Request) Reply(_ exchange.Exchange, status string, header map[string][]string, body []byte) error {
	if status != schemas.StatusOK {
		r.respond(codes.InternalServerError, nil, nil)
		return nil
	}
	// One pass over the reply's few headers costs less than a lookup for
	// each header that could be there.
	var hCode, hContentFormat, hMaxAge, hETag, hLocationPath, hLocationQuery string
	for k, v := range header {
		if len(v) == 0 {
			continue
		}
		switch k {
		case schemas.HeaderCoAPCode:
			hCode = v[0]
		case schemas.HeaderCoAPContentFormat:
			hContentFormat = v[0]
		case schemas.HeaderCoAPMaxAge:
			hMaxAge = v[0]
		case schemas.HeaderCoAPETag:
			hETag = v[0]
		case schemas.HeaderCoAPLocationPath:
			hLocationPath = v[0]
		case schemas.HeaderCoAPLocationQuery:
			hLocationQuery = v[0]
		}
	}
	code := codes.Content
	if s := hCode; s != "" {
		c, err := ParseCode(s)
		if err != nil {
			r.respond(codes.InternalServerError, nil, nil)
			return err
		}
		code = c
	}
	// The options and their values are scratch: respond encodes them
	// before Reply returns.
	sc := replyScratch.Get().(*scratch)
	defer replyScratch.Put(sc)
	opts := message.Options(sc.opts[:0])
	buf := sc.buf[:0]
	add := func(id message.OptionID, v []byte) {
		start := len(buf)
		buf = append(buf, v...)
		opts = opts.Add(message.Option{ID: id, Value: buf[start:len(buf):len(buf)]})
	}
	addUint := func(id message.OptionID, n uint32) {
		start := len(buf)
		buf = appendUint(buf, n)
		opts = opts.Add(message.Option{ID: id, Value: buf[start:len(buf):len(buf)]})
	}
	cf := -1
	if s := hContentFormat; s != "" {
		if n, err := strconv.ParseUint(s, 10, 16); err == nil {
			cf = int(n)
			addUint(message.ContentFormat, uint32(n))
		}
	}
	if s := hMaxAge; s != "" {
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			addUint(message.MaxAge, uint32(n))
		}
	}
	var etag []byte
	if s := hETag; s != "" {
		if t, err := hex.DecodeString(s); err == nil && len(t) >= 1 && len(t) <= 8 {
			etag = t
			add(message.ETag, t)
		}
	}
	if s := hLocationPath; s != "" {
		for _, seg := range splitPath(s) {
			add(message.LocationPath, []byte(seg))
		}
	}
	if s := hLocationQuery; s != "" {
		for _, q := range splitQuery(s) {
			add(message.LocationQuery, []byte(q))
		}
	}
	e := r.edge
	want := r.block2
	limited, credit := r.limit()
	if limited {
		n := r.encodedLen(code, opts, body)
		if len(body) <= want.size() && want.num == 0 && guard.Wire(r.dst.Remote.Addr(), n) <= credit {
			r.respond(code, opts, body)
			return nil
		}
		szx, ok := r.fitBlock(code, opts, body, want, credit)
		if !ok {
			r.challenge(credit)
			return nil
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
		var chunk []byte
		chunk, opts = blockOf(body, want, opts)
		body = chunk
		if limited {
			d.limited = true
			d.credit = credit - guard.Wire(r.dst.Remote.Addr(), r.encodedLen(code, opts, body))
		}
		e.mu.Lock()
		e.storeDownload(transferKey{r.dst.Remote, r.op}, d)
		e.mu.Unlock()
	}
	r.respond(code, opts, body)
	return nil
}

// Fail implements exchange.Replier: 5.04 when no worker answered in time,
// 5.03 when the request could not be published, 4.04 when no group serves
// the resource.
func (r *Request) Fail(_ exchange.Exchange, why exchange.Failure) {
	switch why {
	case exchange.NoAnswer:
		r.edge.stats.timeouts.Add(1)
		r.respond(codes.GatewayTimeout, nil, nil)
	case exchange.Unserved:
		r.edge.stats.notFound.Add(1)
		r.respond(codes.NotFound, nil, nil)
	default:
		r.edge.stats.unavailable.Add(1)
		r.respond(codes.ServiceUnavailable, nil, nil)
	}
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
	r.done = true
	e.closeWindow(r)
	if c := r.cached(); c != nil {
		c.started = nil
	}
	m := message.Message{Token: r.Token, Options: opts, Code: code, Payload: payload}
	var rt *retransmission
	switch {
	case r.Confirmable && !r.acked:
		m.Type, m.MessageID = typeACK, int32(r.MessageID)
		e.stats.piggybacked.Add(1)
	case r.Confirmable:
		mid, ok := e.newMID(r.dst.Remote, time.Now())
		if !ok {
			e.mu.Unlock()
			e.stats.sendErrors.Add(1)
			return
		}
		m.Type, m.MessageID = typeCON, int32(mid)
		e.stats.separate.Add(1)
		rt = &retransmission{dst: r.dst, timeout: initialTimeout(e.ACKTimeout)}
	default:
		mid, ok := e.newMID(r.dst.Remote, time.Now())
		if !ok {
			e.mu.Unlock()
			e.stats.sendErrors.Add(1)
			return
		}
		m.Type, m.MessageID = typeNON, int32(mid)
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
	if rt == nil {
		if c := r.cached(); c != nil {
			c.response = b
		}
	} else {
		rt.limited, rt.credit = r.limited, r.credit
		rt.msg = b
		key := peerMID{r.dst.Remote, uint16(m.MessageID)}
		rt.timer = time.AfterFunc(rt.timeout, func() { e.retransmit(key) })
		e.outgoing[key] = rt
	}
	e.mu.Unlock()
	e.send(r.dst, b)
}
