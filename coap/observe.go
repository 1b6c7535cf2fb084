package coap

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
)

// Observe (RFC 7641). A GET with Observe 0 whose worker accepts it (a 2.xx
// reply with the schemas.HeaderCoAPObserve header) registers its client
// as an observer of the resource: the peer, the token, the resource and
// the listener's socket. Notify sends each observer of a resource a
// notification; a GET with Observe 1 and the same token, a RST of a
// notification, a CON notification never acknowledged, or a 4.xx or 5.xx
// notification ends the registration.

// Defaults for the Observe fields of Config.
const (
	DefaultObserveCONEvery     = 20
	DefaultMaxObservers        = 10000
	DefaultMaxObserversPerPeer = 64
)

// conInterval is the longest an observer goes without a CON notification
// (RFC 7641 §4.5: at least every 24 hours).
const conInterval = 24 * time.Hour

// seqMask keeps sequence numbers to 24 bits (RFC 7641 §3.4).
const seqMask = 1<<24 - 1

// nextSeq returns the sequence number after s, modulo 2^24.
func nextSeq(s uint32) uint32 { return (s + 1) & seqMask }

// clockSeq returns the sequence number of a notification sent at now to
// an observer whose latest was last: the milliseconds since the epoch
// modulo 2^24 when that is fresher than last, else last+1. Sequence
// numbers follow the clock, so those of an edge restarted on the same
// address (Edge.Restore) are fresher for the client than those it had
// before, without persisting them: a restart within 128 seconds is less
// than 2^23 ms, and after 128 seconds any number is fresh (RFC 7641
// §3.4). Only an observer sent more than 1,000 notifications a second
// runs ahead of the clock.
func clockSeq(last uint32, now time.Time) uint32 {
	if c := uint32(now.UnixMilli()) & seqMask; fresher(last, c, 0) {
		return c
	}
	return nextSeq(last)
}

// seqBefore returns a sequence number just before the clock's at now,
// for an observer that has had none.
func seqBefore(now time.Time) uint32 { return uint32(now.UnixMilli()-1) & seqMask }

// fresher reports whether a notification with sequence number v2 is newer
// than one with v1, received t apart, as a client judges it (RFC 7641
// §3.4).
func fresher(v1, v2 uint32, t time.Duration) bool {
	return v1 < v2 && v2-v1 < 1<<23 || v1 > v2 && v1-v2 > 1<<23 || t > 128*time.Second
}

// recentMIDs is how many message ids of its latest notifications an
// observer remembers, to match a RST to a notification.
const recentMIDs = 8

// obsKey names a registration: the client's address and token (RFC 7641
// §4.1).
type obsKey struct {
	peer  netip.AddrPort
	token string
}

// observer is one registration. Its fields are guarded by Edge.mu.
type observer struct {
	key      obsKey
	resource string // the notify subject's path tokens, joined by "."
	op       string // the registration's request line: its Block2 follow-ups ask for it
	dst      exchange.Exchange
	szx      uint8  // the block size of its notifications
	seq      uint32 // the latest sequence number sent
	sinceCON int    // notifications sent since the latest CON
	lastCON  time.Time
	con      *retransmission // the CON notification awaiting its ACK, or nil
	mids     [recentMIDs]uint16
	nmids    int  // message ids sent, of which mids holds the latest
	gone     bool // deregistered
}

// remember records mid, the message id of a notification sent to o.
func (o *observer) remember(mid uint16) {
	o.mids[o.nmids%recentMIDs] = mid
	o.nmids++
}

// sent reports whether mid is the message id of one of o's recent
// notifications.
func (o *observer) sent(mid uint16) bool {
	for i := range min(o.nmids, recentMIDs) {
		if o.mids[i] == mid {
			return true
		}
	}
	return false
}

// Why registrations end, or are refused.
const (
	endObserve1    = iota // a GET with Observe 1
	endRST                // a RST of a notification
	endGaveUp             // a CON notification never acknowledged
	endErrorCode          // a 4.xx or 5.xx notification, or a re-registration answered so
	endRefusedFull        // a registration refused: too many observers
	endDeclined           // a re-registration the worker did not accept
	numEnds
)

// ObserveStats are the Observe counts of one coap listener.
type ObserveStats struct {
	Observers     int    // registrations now
	Registrations uint64 // registrations kept (a re-registration included)
	// Deregistrations by reason: a GET with Observe 1, a RST of a
	// notification, a CON notification never acknowledged, a 4.xx or
	// 5.xx notification, and registrations refused because the listener
	// or the peer had too many observers (answered without Observe),
	// and re-registrations the worker answered 2.xx without accepting
	// (ended: the response had no Observe option).
	Observe1, RST, GaveUp, ErrorCode, RefusedFull, Declined uint64
	// Notifications sent, by type.
	NON, CON uint64
	// Restored counts the registrations restored at start, held by an
	// edge on the same address before (Config.Restore).
	Restored uint64
}

// observeState is an Edge's registrations, guarded by Edge.mu.
type observeState struct {
	observers  map[obsKey]*observer
	byResource map[string]map[*observer]struct{}
	byPeer     map[netip.AddrPort][]*observer
}

// observeStats returns the Observe counters.
func (e *Edge) observeStats() ObserveStats {
	c := &e.stats
	return ObserveStats{
		Observers: int(c.observers.Load()), Registrations: c.registrations.Load(),
		Observe1: c.ends[endObserve1].Load(), RST: c.ends[endRST].Load(), GaveUp: c.ends[endGaveUp].Load(),
		ErrorCode: c.ends[endErrorCode].Load(), RefusedFull: c.ends[endRefusedFull].Load(),
		Declined: c.ends[endDeclined].Load(),
		NON:      c.notifyNON.Load(), CON: c.notifyCON.Load(), Restored: c.restored.Load(),
	}
}

// resourceOf returns the notify subject's path tokens of segments: each
// escaped as schemas.EscapeToken does, joined by ".".
func resourceOf(segments []string) string {
	var b []byte
	for i, s := range segments {
		if i > 0 {
			b = append(b, '.')
		}
		b = schemas.AppendEscapedToken(b, s)
	}
	return string(b)
}

// register keeps r's client as an observer of r's resource and returns
// the sequence number of the response, or false when the listener or the
// peer has too many observers. A registration with the token of one the
// peer has replaces it, and continues its sequence numbers.
func (r *Request) register(now time.Time) (uint32, bool) {
	e := r.edge
	key := obsKey{r.dst.Remote, string(r.Token)}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, false
	}
	o, again := e.obs.observers[key]
	var prev Registration
	if again {
		prev = o.registration(now)
		e.unlink(o)
		o.gone = false
	} else {
		if len(e.obs.observers) >= e.MaxObservers || len(e.obs.byPeer[key.peer]) >= e.MaxObserversPerPeer {
			e.stats.ends[endRefusedFull].Add(1)
			return 0, false
		}
		o = &observer{key: key, seq: seqBefore(now)}
		e.stats.observers.Add(1)
	}
	o.resource = resourceOf(r.Segments)
	o.op = strings.Clone(r.op)
	o.dst = r.dst
	o.szx = r.block2.szx
	o.lastCON = now
	o.sinceCON = 0
	if r.limited {
		// A source that had not shown it receives at its address gets
		// its first notification as a CON: a spoofed registration ends
		// when it is not acknowledged.
		o.sinceCON = e.ObserveCONEvery
	}
	e.link(o)
	o.seq = clockSeq(o.seq, now)
	e.stats.registrations.Add(1)
	if e.Registry != nil {
		if again && prev.Resource != o.resource {
			// The token moved to another resource: its key did too.
			e.Registry.Deregister(prev)
		}
		e.Registry.Register(o.registration(now))
	}
	return o.seq, true
}

// link adds o to the indexes. e.mu must be held.
func (e *Edge) link(o *observer) {
	e.obs.observers[o.key] = o
	set := e.obs.byResource[o.resource]
	if set == nil {
		set = make(map[*observer]struct{})
		e.obs.byResource[o.resource] = set
	}
	set[o] = struct{}{}
	e.obs.byPeer[o.key.peer] = append(e.obs.byPeer[o.key.peer], o)
}

// unlink takes o out of the indexes. e.mu must be held.
func (e *Edge) unlink(o *observer) {
	delete(e.obs.observers, o.key)
	if set := e.obs.byResource[o.resource]; set != nil {
		delete(set, o)
		if len(set) == 0 {
			delete(e.obs.byResource, o.resource)
		}
	}
	list := e.obs.byPeer[o.key.peer]
	for i, p := range list {
		if p == o {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(e.obs.byPeer, o.key.peer)
	} else {
		e.obs.byPeer[o.key.peer] = list
	}
}

// deregister ends o's registration for reason why, and stops its CON
// notification's retransmissions. e.mu must be held.
func (e *Edge) deregister(o *observer, why int) {
	if o.gone {
		return
	}
	o.gone = true
	e.unlink(o)
	if rt := o.con; rt != nil {
		o.con = nil
		if e.outgoing[rt.key] == rt {
			rt.timer.Stop()
			delete(e.outgoing, rt.key)
		}
	}
	e.stats.observers.Add(-1)
	e.stats.ends[why].Add(1)
	if e.Registry != nil {
		e.Registry.Deregister(o.registration(time.Time{}))
	}
}

// declined ends the registration that r, a GET with Observe 0 answered
// without the Observe option, would have replaced, if there is one: the
// client takes the response for the end of its observation (RFC 7641
// §3.1), so it gets no more notifications. why is endErrorCode for a
// 4.xx or 5.xx response, endDeclined for a 2.xx one.
func (r *Request) declined(why int) {
	if r.Observe != schemas.CoAPObserveRegister || r.Method != "GET" {
		return
	}
	e := r.edge
	e.mu.Lock()
	defer e.mu.Unlock()
	if o, ok := e.obs.observers[obsKey{r.dst.Remote, string(r.Token)}]; ok {
		e.deregister(o, why)
	}
}

// cancel ends the registration of token from peer, if there is one: a
// GET with Observe 1.
func (e *Edge) cancel(peer netip.AddrPort, token []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o, ok := e.obs.observers[obsKey{peer, string(token)}]; ok {
		e.deregister(o, endObserve1)
	}
}

// resetNotification ends the registration one of whose recent
// notifications to peer had message id mid, and reports whether there
// was one. e.mu must be held.
func (e *Edge) resetNotification(peer netip.AddrPort, mid uint16) bool {
	for _, o := range e.obs.byPeer[peer] {
		if o.sent(mid) {
			e.deregister(o, endRST)
			return true
		}
	}
	return false
}

// Observers returns how many observers resource has: the notify
// subject's path tokens after PREFIX.notify.PORT, joined by "." ("" for
// "/").
func (e *Edge) Observers(resource string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.obs.byResource[resource])
}

// Notify sends every observer of resource (see Observers) a notification
// of the representation body, with the response code and options of
// header, read as a worker's reply headers are (schemas/README.md, "CoAP
// Observe"). It returns how many observers it notified. A 4.xx or 5.xx
// notification ends the registrations it goes to. Notify does not keep
// header; it keeps body to serve the further blocks of a representation
// larger than a block. It is safe to call from any goroutine.
func (e *Edge) Notify(resource string, header map[string][]string, body []byte) (int, error) {
	h := readReplyHeaders(header)
	code := codes.Content
	if h.code != "" {
		c, err := ParseCode(h.code)
		if err != nil {
			return 0, err
		}
		code = c
	}
	var sc scratch
	opts, cf, etag := sc.options(&h)
	e.mu.Lock()
	set := e.obs.byResource[resource]
	list := make([]*observer, 0, len(set))
	for o := range set {
		list = append(list, o)
	}
	e.mu.Unlock()
	now := time.Now()
	n := 0
	for _, o := range list {
		if e.notify(o, code, opts, cf, etag, body, now) {
			n++
		}
	}
	return n, nil
}

// notify sends o one notification and reports whether it did. It goes as
// a CON when a CON of o's is still unacknowledged (it replaces it, RFC
// 7641 §4.5.2), when o has had ObserveCONEvery-1 NONs since its latest
// CON or none for 24 hours, or when the guard limits o's source (its
// validation lapsed: the ACK shows again that it receives); else as a
// NON.
func (e *Edge) notify(o *observer, code codes.Code, opts message.Options, cf int, etag []byte, body []byte, now time.Time) bool {
	final := code>>5 != 2
	e.mu.Lock()
	if o.gone || e.closed {
		e.mu.Unlock()
		return false
	}
	mid, ok := e.newMID(o.key.peer, now)
	if !ok {
		e.mu.Unlock()
		e.stats.sendErrors.Add(1)
		return false
	}
	con := o.con != nil || o.sinceCON+1 >= e.ObserveCONEvery || now.Sub(o.lastCON) >= conInterval ||
		e.Guard.Limited(o.key.peer.Addr(), now)
	opts = append(make(message.Options, 0, len(opts)+3), opts...)
	if !final {
		// RFC 7641 §4.2: an error notification has no Observe option:
		// it ends the observation.
		o.seq = clockSeq(o.seq, now)
		opts = opts.Add(message.Option{ID: message.Observe, Value: encodeUint(o.seq)})
	}
	payload := body
	if want := (block{szx: o.szx}); len(body) > want.size() {
		d := &download{body: body, code: code, cf: cf, etag: etag, szx: o.szx, expires: now.Add(exchangeLifetime)}
		payload, opts = blockOf(body, want, opts)
		e.storeDownload(transferKey{o.key.peer, o.op}, d)
	}
	typ := typeNON
	if con {
		typ = typeCON
	}
	b, err := appendEncoded(nil, message.Message{
		Token: []byte(o.key.token), Type: typ, MessageID: int32(mid), Code: code, Options: opts, Payload: payload,
	})
	if err != nil {
		e.mu.Unlock()
		e.stats.sendErrors.Add(1)
		e.Log.Debug("coap: encode notification", "err", err)
		return false
	}
	o.remember(mid)
	if con {
		e.expectNotification(o, b, mid, now)
		e.stats.notifyCON.Add(1)
	} else {
		o.sinceCON++
		e.stats.notifyNON.Add(1)
	}
	if final {
		if o.con != nil {
			o.con.obs = nil // retransmitted all the same, to nobody's registration
			o.con = nil
		}
		e.deregister(o, endErrorCode)
	}
	dst := o.dst
	e.mu.Unlock()
	e.send(dst, b)
	return true
}

// expectNotification keeps b, o's CON notification with message id mid,
// and sends it again until the client acknowledges or resets it. A CON of
// o's still unacknowledged is replaced: b takes over its retransmission
// count and timeout (RFC 7641 §4.5.2). e.mu must be held.
func (e *Edge) expectNotification(o *observer, b []byte, mid uint16, now time.Time) {
	key := peerMID{o.key.peer, mid}
	o.sinceCON, o.lastCON = 0, now
	if rt := o.con; rt != nil && e.outgoing[rt.key] == rt {
		delete(e.outgoing, rt.key)
		rt.key, rt.msg, rt.dst = key, b, o.dst
		e.outgoing[key] = rt
		return
	}
	rt := &retransmission{key: key, dst: o.dst, msg: b, timeout: initialTimeout(e.ACKTimeout), obs: o}
	rt.timer = time.AfterFunc(rt.timeout, func() { e.retransmit(rt) })
	e.outgoing[key] = rt
	o.con = rt
}

// observeValue returns the value of a request's Observe option in
// decimal, as Request.Observe holds it.
func observeValue(v uint32) string {
	switch v {
	case 0:
		return schemas.CoAPObserveRegister
	case 1:
		return schemas.CoAPObserveDeregister
	}
	return strconv.FormatUint(uint64(v), 10)
}
