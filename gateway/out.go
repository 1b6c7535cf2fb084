package gateway

import (
	"encoding/binary"
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/schemas"
)

// Defaults of Push's zero fields.
const (
	DefaultPushWindow = 5 * time.Minute
	DefaultPushPeers  = 4096
)

// Push configures unsolicited datagrams: a worker sends a datagram to a
// client of a raw listener that has Listener.Push set, by publishing it
// to the listener's push subject (schemas.OutSubject) on the node that
// received from the client (schemas/README.md, "Unsolicited datagrams").
type Push struct {
	// Window is how long after its last datagram to a listener a source
	// remains a destination the listener may push to, and the period
	// over which the amplification limit counts bytes (DefaultPushWindow
	// if zero).
	Window time.Duration
	// Allow lists destinations that may be pushed to without having sent
	// to the listener; the rate and the amplification limit still apply
	// (a destination that never sent has no credit unless the listener's
	// guard trusts it).
	Allow []netip.Prefix
	// Rate is the datagrams per second pushed to one destination (ip and
	// port), in bursts of twice that; 0 means no limit.
	Rate float64
	// Peers is how many sources each push=on listener remembers
	// (DefaultPushPeers if zero, rounded up to a power of two times 4);
	// a new one takes the place of the one idle longest in its set.
	Peers int
}

// OutStats are a push=on listener's counts of unsolicited datagrams.
type OutStats struct {
	Sent uint64 // datagrams pushed
	// Refused counts the pushes refused, by reason (schemas.OutErr
	// values; every reason is present).
	Refused map[string]uint64
}

// out is the pushing side of one push=on raw listener: the peers that
// sent to it, and its push subject's subscription. It is safe for
// concurrent use: record runs on the read loop, handle on the
// subscription's goroutine.
type out struct {
	conn        *net.UDPConn
	bound       netip.AddrPort // the socket's address
	wildcard    bool           // bound to a wildcard address: set each datagram's source
	guard       *guard.Guard   // the listener's; nil limits nothing
	allow       []netip.Prefix
	maxDatagram int
	stop        <-chan struct{} // closed when the listener stops reading: no more pushes
	peers       *peers

	sent    atomic.Uint64
	refused [outReasons]atomic.Uint64 // indexed as schemas.OutErrors
}

const outReasons = 7 // len(schemas.OutErrors)

func newOut(conn *net.UDPConn, gd *guard.Guard, p Push, maxDatagram int, stop <-chan struct{}) *out {
	la := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if maxDatagram <= 0 {
		maxDatagram = ingress.DefaultMaxDatagram
	}
	window := p.Window
	if window <= 0 {
		window = DefaultPushWindow
	}
	return &out{
		conn:        conn,
		bound:       netip.AddrPortFrom(la.Addr().Unmap(), la.Port()),
		wildcard:    la.Addr().IsUnspecified(),
		guard:       gd,
		allow:       p.Allow,
		maxDatagram: maxDatagram,
		stop:        stop,
		peers:       newPeers(p.Peers, window, p.Rate),
	}
}

// tap records each datagram's source as a peer, then calls next if not
// nil: the listener's Tap.
func (o *out) tap(next ingress.Tap) ingress.Tap {
	if next == nil {
		return o.record
	}
	return func(remote, local netip.AddrPort, at time.Time, data []byte) {
		o.record(remote, local, at, data)
		next(remote, local, at, data)
	}
}

// record is an ingress.Tap: remote sent data to local at at.
func (o *out) record(remote, local netip.AddrPort, at time.Time, data []byte) {
	o.peers.record(remote, local, at.UnixNano(), guard.Wire(remote.Addr(), len(data)))
}

// subscribe subscribes to the listener's push subject and returns a
// function that unsubscribes.
func (o *out) subscribe(nc *nats.Conn, subject string) (stop func(), err error) {
	sub, err := nc.Subscribe(subject, o.handle)
	if err != nil {
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}

// handle sends one pushed datagram, or refuses it; a push sent as a NATS
// request is answered either way.
func (o *out) handle(m *nats.Msg) {
	reason := o.push(m.Header.Get(schemas.HeaderRemote), m.Data, time.Now())
	if reason < 0 {
		o.sent.Add(1)
		if m.Reply != "" {
			m.Respond(nil)
		}
		return
	}
	o.refused[reason].Add(1)
	if m.Reply != "" {
		r := &nats.Msg{Subject: m.Reply, Header: nats.Header{}, Data: []byte(outSentences[reason])}
		r.Header.Set(schemas.HeaderStatus, schemas.StatusError)
		r.Header.Set(schemas.HeaderOutError, schemas.OutErrors[reason])
		m.RespondMsg(r)
	}
}

// Indexes of schemas.OutErrors.
const (
	outNotPeer = iota
	outRate
	outAmplification
	outTooLarge
	outNoListener
	outBadDestination
	outSend
)

var outSentences = [outReasons]string{
	"the destination has not sent to this listener within the push window, and is not in UDPGATE_PUSH_ALLOW",
	"the destination has had its pushes per second (UDPGATE_PUSH_RATE)",
	"the destination is not validated, and the bytes pushed to it would exceed the amplification limit of what it sent",
	"the datagram is larger than UDPGATE_MAX_DATAGRAM",
	"the listener is stopping",
	"udpgate-remote is not the ip:port of a unicast destination",
	"the socket refused the datagram",
}

// push sends b to dest (the udpgate-remote header) from the listener at
// now, and returns -1, or the index of the reason it did not.
func (o *out) push(dest string, b []byte, now time.Time) int {
	select {
	case <-o.stop:
		return outNoListener
	default:
	}
	dst, err := netip.ParseAddrPort(dest)
	if err != nil || dst.Port() == 0 || !unicast(dst.Addr()) {
		return outBadDestination
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if len(b) > o.maxDatagram {
		return outTooLarge
	}
	factor := 0
	if o.guard.Limited(dst.Addr(), now) {
		factor = o.guard.Factor()
	}
	allowed := false
	for _, p := range o.allow {
		if p.Contains(dst.Addr()) {
			allowed = true
			break
		}
	}
	local, reason := o.peers.push(dst, now.UnixNano(), guard.Wire(dst.Addr(), len(b)), allowed, factor)
	if reason >= 0 {
		return reason
	}
	ex := exchange.Exchange{Conn: o.conn, Remote: dst, Local: o.bound}
	if o.wildcard && local.IsValid() && !local.Addr().IsUnspecified() {
		ex.Local, ex.SetSource = local, true
	}
	if err := ex.Write(b); err != nil {
		return outSend
	}
	return -1
}

// unicast reports whether a is an address a datagram may be pushed to
// (a link-local one with its zone, as the peer's was read).
func unicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a.Unmap() != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// stats returns a snapshot of the counters.
func (o *out) stats() OutStats {
	st := OutStats{Sent: o.sent.Load(), Refused: make(map[string]uint64, outReasons)}
	for i, r := range schemas.OutErrors {
		st.Refused[r] = o.refused[i].Load()
	}
	return st
}

// peerWays is the associativity of the peer table.
const peerWays = 4

// peers is a listener's table of the sources that sent to it, of fixed
// size: a hashed array of sets of peerWays entries. The hash is keyed with
// a random seed, so spoofed sources cannot be aimed at one set. A new
// source takes an empty way, or the way used longest ago.
type peers struct {
	sets   []peerSet
	mask   uint64
	seed   maphash.Seed
	window int64 // ns
	t, tau int64 // the push rate's GCRA interval and tolerance, ns; t 0: no limit
}

type peerSet struct {
	mu sync.Mutex // guards e
	e  [peerWays]peer
}

// peer is one source. Bytes are counted as IP packets (guard.Wire) in
// two windows: the current one, which began at since, and the one
// before; the amplification limit counts both.
type peer struct {
	addr  netip.AddrPort
	local netip.AddrPort // the address it sent to
	last  int64          // Unix ns of its last datagram; 0: never sent (an allow-listed destination)
	used  int64          // Unix ns of its last datagram or push; 0: an empty way
	since int64          // Unix ns: the start of the current window
	recv  [2]int64       // bytes received: current window, previous one
	sent  [2]int64       // bytes pushed: current window, previous one
	tat   int64          // the push rate's theoretical arrival time, Unix ns
}

func newPeers(size int, window time.Duration, rate float64) *peers {
	if size <= 0 {
		size = DefaultPushPeers
	}
	n := 1
	for n*peerWays < size {
		n <<= 1
	}
	p := &peers{sets: make([]peerSet, n), mask: uint64(n - 1), seed: maphash.MakeSeed(), window: int64(window)}
	if rate > 0 {
		p.t = int64(min(max(1, float64(time.Second)/rate), 1e15))
		p.tau = p.t * int64(max(1, int(min(2*rate, 1<<30)))-1)
	}
	return p
}

// set returns the set of addr.
func (pt *peers) set(addr netip.AddrPort) *peerSet {
	var b [18]byte
	a := addr.Addr().As16()
	copy(b[:16], a[:])
	binary.BigEndian.PutUint16(b[16:], addr.Port())
	return &pt.sets[maphash.Bytes(pt.seed, b[:])&pt.mask]
}

// find returns addr's entry in s, or the way it would take (add true).
// s.mu must be held.
func (s *peerSet) find(addr netip.AddrPort) (e *peer, add bool) {
	victim := 0
	for i := range s.e {
		if s.e[i].used != 0 && s.e[i].addr == addr {
			return &s.e[i], false
		}
		if s.e[i].used < s.e[victim].used {
			victim = i
		}
	}
	return &s.e[victim], true
}

// roll moves e's windows forward to now.
func (pt *peers) roll(e *peer, now int64) {
	d := now - e.since
	if d < pt.window {
		return
	}
	if d < 2*pt.window {
		e.recv[1], e.sent[1] = e.recv[0], e.sent[0]
		e.since += pt.window
	} else {
		e.recv[1], e.sent[1] = 0, 0
		e.since = now
	}
	e.recv[0], e.sent[0] = 0, 0
}

// record counts n bytes from remote to local at now. It does not
// allocate.
func (pt *peers) record(remote, local netip.AddrPort, now int64, n int) {
	s := pt.set(remote)
	s.mu.Lock()
	e, add := s.find(remote)
	if add {
		*e = peer{addr: remote, since: now}
	}
	pt.roll(e, now)
	e.local, e.last, e.used = local, now, now
	e.recv[0] += int64(n)
	s.mu.Unlock()
}

// push decides on a datagram of n bytes (as an IP packet) to dst at now:
// it returns the address dst last sent to and -1, having counted it, or
// the index of the reason it is refused. allowed says dst is in the
// allow-list; factor is the amplification limit to dst (0: none).
func (pt *peers) push(dst netip.AddrPort, now int64, n int, allowed bool, factor int) (local netip.AddrPort, reason int) {
	s := pt.set(dst)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, add := s.find(dst)
	if add || e.last == 0 || now-e.last >= pt.window {
		if !allowed {
			return netip.AddrPort{}, outNotPeer
		}
		if add {
			*e = peer{addr: dst, since: now}
		}
	}
	pt.roll(e, now)
	e.used = now
	if pt.t > 0 {
		tat := max(e.tat, now)
		if tat-now > pt.tau {
			return netip.AddrPort{}, outRate
		}
		e.tat = tat + pt.t
	}
	if factor > 0 && e.sent[0]+e.sent[1]+int64(n) > int64(factor)*(e.recv[0]+e.recv[1]) {
		return netip.AddrPort{}, outAmplification
	}
	e.sent[0] += int64(n)
	return e.local, -1
}

// pushes subscribes a push=on listener to its push subject,
// PREFIX.out.NODE.PORT, and returns a function that unsubscribes. Other
// listeners subscribe to nothing: a push to them gets NATS's no-responders
// answer.
func (lv *live) pushes() (stop func()) {
	in := lv.in
	if lv.out == nil || in.NATS == nil {
		return func() {}
	}
	subject := schemas.OutSubject(in.Prefix, in.Node, lv.port)
	stop, err := lv.out.subscribe(in.NATS, subject)
	if err != nil {
		in.Log.Error("gateway: subscribe to pushes; this listener sends none", "subject", subject, "err", err)
		return func() {}
	}
	return stop
}
