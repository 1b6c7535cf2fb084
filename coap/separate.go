package coap

import (
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
)

// window is the piggyback window of one CON request: when it ends, the
// request, if still unanswered, gets an empty ACK. r is nil once the
// request was answered.
type window struct {
	r   *Request
	end time.Duration // since Edge.epoch
}

// Started is called by ingress once the request is on its way to NATS: a
// CON starts its piggyback window.
func (r *Request) Started() {
	if !r.Confirmable {
		return
	}
	e := r.edge
	e.mu.Lock()
	defer e.mu.Unlock()
	if r.done || r.acked || r.win != 0 || e.closed {
		return
	}
	if c := r.cached(); c != nil {
		c.started = r
	}
	if e.winTail-e.winHead == uint64(len(e.windows)) {
		e.growWindows()
	}
	e.windows[e.winTail&uint64(len(e.windows)-1)] = window{r: r, end: time.Since(e.epoch) + e.Piggyback}
	e.winTail++
	r.win = e.winTail
	if !e.winArmed {
		e.winArmed = true
		e.winTimer.Reset(e.Piggyback)
	}
}

// growWindows doubles the ring of piggyback windows. e.mu must be held.
func (e *Edge) growWindows() {
	old := e.windows
	e.windows = make([]window, max(64, 2*len(old)))
	for n := e.winHead; n < e.winTail; n++ {
		e.windows[n&uint64(len(e.windows)-1)] = old[n&uint64(len(old)-1)]
	}
}

// closeWindow takes r's piggyback window off the queue, if it is there.
// e.mu must be held.
func (e *Edge) closeWindow(r *Request) {
	if r.win == 0 {
		return
	}
	if n := r.win - 1; n >= e.winHead {
		e.windows[n&uint64(len(e.windows)-1)].r = nil
	}
	r.win = 0
}

// ackDue runs on winTimer's goroutine when the oldest piggyback window
// ends. It acknowledges, with an empty ACK, each CON whose window has
// ended and whose worker has not answered; the response will follow as a
// separate CON. It then sets the timer for the oldest window still open,
// but no sooner than a twentieth of the window (at most 5 ms) ahead, so
// that a window ends at most that late and the timer fires at most a few
// hundred times a second under any load.
func (e *Edge) ackDue() {
	for {
		var due [32]*Request
		n := 0
		e.mu.Lock()
		if e.closed {
			e.winArmed = false
			e.mu.Unlock()
			return
		}
		now := time.Since(e.epoch)
		mask := uint64(len(e.windows) - 1)
		for ; e.winHead < e.winTail && n < len(due); e.winHead++ {
			w := &e.windows[e.winHead&mask]
			r := w.r
			if r != nil && w.end > now {
				break
			}
			*w = window{}
			if r == nil {
				continue // answered
			}
			r.win = 0
			r.acked = true
			if c := r.cached(); c != nil {
				c.separate = true
			}
			if r.limited {
				r.credit -= guard.Wire(r.dst.Remote.Addr(), 4)
			}
			due[n] = r
			n++
		}
		more := n == len(due)
		if !more {
			if e.winHead < e.winTail {
				grain := min(e.Piggyback/20, 5*time.Millisecond)
				e.winTimer.Reset(max(e.windows[e.winHead&mask].end-now, grain))
			} else {
				e.winArmed = false
			}
		}
		e.mu.Unlock()
		for _, r := range due[:n] {
			e.send(r.dst, empty(typeACK, r.MessageID))
		}
		if !more {
			return
		}
	}
}

// retransmission is a separate CON response waiting for the client's ACK,
// sent again with RFC 7252's backoff until it comes.
type retransmission struct {
	key      peerMID
	dst      exchange.Exchange
	msg      []byte
	attempts int
	timeout  time.Duration
	timer    *time.Timer
	limited  bool // under the amplification limit, with credit bytes left
	credit   int
	obs      *observer // a CON notification's registration, or nil
}

// expect keeps b, r's separate response with message id mid, and sends
// it again until the client acknowledges or resets it. e.mu must be held.
func (r *Request) expect(b []byte, mid uint16) {
	e := r.edge
	rt := &retransmission{
		key: peerMID{r.dst.Remote, mid}, dst: r.dst, msg: b, timeout: initialTimeout(e.ACKTimeout),
		limited: r.limited, credit: r.credit,
	}
	rt.timer = time.AfterFunc(rt.timeout, func() { e.retransmit(rt) })
	e.outgoing[rt.key] = rt
}

// retransmit resends a separate CON response, or a CON notification,
// that has not been acknowledged, doubling the timeout, up to
// MAX_RETRANSMIT times. A notification never acknowledged ends its
// registration.
func (e *Edge) retransmit(rt *retransmission) {
	e.mu.Lock()
	if e.outgoing[rt.key] != rt || e.closed {
		e.mu.Unlock()
		return
	}
	over := rt.limited && rt.credit < guard.Wire(rt.dst.Remote.Addr(), len(rt.msg)) && e.Guard.Limited(rt.dst.Remote.Addr(), time.Now())
	if rt.attempts >= maxRetransmit || over {
		// An unvalidated source gets retransmissions only within the
		// amplification limit: it may never have sent the request.
		delete(e.outgoing, rt.key)
		if o := rt.obs; o != nil {
			o.con = nil
			e.deregister(o, endGaveUp)
		}
		e.mu.Unlock()
		e.stats.gaveUp.Add(1)
		return
	}
	if rt.limited {
		rt.credit -= guard.Wire(rt.dst.Remote.Addr(), len(rt.msg))
	}
	rt.attempts++
	rt.timeout *= 2
	rt.timer = time.AfterFunc(rt.timeout, func() { e.retransmit(rt) })
	// A newer notification may replace msg once e.mu is released.
	dst, msg := rt.dst, rt.msg
	e.mu.Unlock()
	e.stats.retransmissions.Add(1)
	e.send(dst, msg)
}

// initialTimeout returns the first wait for an ACK: at random between
// ack and ACK_RANDOM_FACTOR times ack (RFC 7252 §4.2).
func initialTimeout(ack time.Duration) time.Duration {
	return ack + time.Duration(rand.Int64N(int64(float64(ack)*(ackRandomFactor-1))+1))
}

// receiveEmpty handles an empty message: a ping, or the client's ACK or
// RST of a separate response or a notification. A RST of a notification
// ends its registration.
func (e *Edge) receiveEmpty(h header, b []byte, dst exchange.Exchange) {
	if len(b) != 4 {
		// An empty message with a token, options or payload is a format
		// error (RFC 7252 §4.1).
		e.stats.malformed.Add(1)
		if h.typ == typeCON {
			e.send(dst, empty(typeRST, h.mid))
		}
		return
	}
	switch h.typ {
	case typeCON:
		e.stats.pings.Add(1)
		e.send(dst, empty(typeRST, h.mid))
	case typeACK, typeRST:
		key := peerMID{dst.Remote, h.mid}
		e.mu.Lock()
		rt, ok := e.outgoing[key]
		if ok {
			rt.timer.Stop()
			delete(e.outgoing, key)
			o := rt.obs
			if o != nil {
				o.con = nil
			}
			switch {
			case h.typ == typeRST && o != nil:
				e.deregister(o, endRST)
			case h.typ == typeRST:
				e.stats.resets.Add(1)
			}
		} else if h.typ == typeRST {
			e.resetNotification(dst.Remote, h.mid)
		}
		e.mu.Unlock()
		if ok && h.typ == typeACK {
			// Acknowledging a separate response, whose random message
			// id only the receiver saw, shows the source receives what
			// is sent to it.
			e.Guard.Validate(dst.Remote.Addr(), time.Now())
		}
	default:
		e.stats.malformed.Add(1)
	}
}

// midBlockBits splits a peer's 65,536 message ids into blocks of
// 1<<midBlockBits ids, each remembering when one of its ids was last
// issued (see newMID).
const midBlockBits = 12

// midState is what the gateway knows of the message ids it issued to one
// peer.
type midState struct {
	next uint16
	// used holds, per block of ids, when one of its ids was last issued,
	// as a duration since Edge.epoch (monotonic); 0: never.
	used     [1 << (16 - midBlockBits)]time.Duration
	lastUsed time.Time
}

// newMID returns a message id for a message the gateway originates to
// peer, or false if every id it may issue now was issued within
// EXCHANGE_LIFETIME. Each peer's ids start at a random value and count
// up. Entering a block of ids at its first id needs the block's latest
// issue to be at least EXCHANGE_LIFETIME ago, so no id is reused within
// it, and a peer may be sent at least 65,536 - 4,096 ids in any such
// window. e.mu must be held.
func (e *Edge) newMID(peer netip.AddrPort, now time.Time) (uint16, bool) {
	m, ok := e.peers[peer]
	if !ok {
		m = &midState{next: uint16(rand.Uint32())}
		e.peers[peer] = m
	}
	at := max(now.Sub(e.epoch), 1)
	mid := m.next
	b := mid >> midBlockBits
	if mid&(1<<midBlockBits-1) == 0 && m.used[b] != 0 && at-m.used[b] < exchangeLifetime {
		return 0, false
	}
	m.used[b] = at
	m.next++
	m.lastUsed = now
	return mid, true
}
