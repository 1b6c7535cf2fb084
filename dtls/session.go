package dtls

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pion "github.com/pion/dtls/v3"

	"github.com/udpgate/udpgate/exchange"
)

// Session is one peer's DTLS session on a listener: replies written to it
// are encrypted and sent to the peer's current address. It is the
// exchange.Session of the exchanges of the datagrams it delivered. It is
// safe for concurrent use.
type Session struct {
	l    *Listener
	conn *pion.Conn
	pc   *packetConn
	// remote is the peer's address, guarded by l.mu; at is the same,
	// for reading without the lock.
	remote netip.AddrPort
	at     atomic.Pointer[netip.AddrPort]
	// cid is the Connection ID the session gave its peer, "" if none;
	// guarded by l.mu.
	cid string
	// identity is set once, before the first delivery.
	identity    string
	established atomic.Bool
	last        atomic.Int64 // unix nanoseconds of the last datagram delivered, or of the start
	// What the handshake saw, for its outcome.
	unknown, pskUsed atomic.Bool
	// replaces is the established session of the same address this
	// handshake replaces once past its cookie exchange; guarded by l.mu.
	// replacing is whether it is still waiting for that.
	replaces  *Session
	replacing atomic.Bool
	// cookied: the handshake passed its cookie exchange (pion sent its
	// ServerHello); noCookie: the sweeper closed it for not passing it
	// within CookieWait.
	cookied, noCookie atomic.Bool
}

// errUnknownIdentity refuses a PSK identity the keys do not hold.
var errUnknownIdentity = errors.New("dtls: unknown PSK identity")

// Write encrypts b into one record and sends it to the peer.
func (s *Session) Write(b []byte) error {
	if _, err := s.conn.Write(b); err != nil {
		return fmt.Errorf("dtls: write: %w", err)
	}
	return nil
}

// Identity returns the peer's authenticated identity: its PSK identity,
// or the subject of its client certificate; "" for a peer that
// authenticated neither way (a certificate suite without ClientCAs).
func (s *Session) Identity() string { return s.identity }

func (s *Session) psk(id []byte) ([]byte, error) {
	key, ok := s.l.Config.Keys.Lookup(string(id))
	if !ok {
		s.unknown.Store(true)
		return nil, errUnknownIdentity
	}
	s.pskUsed.Store(true)
	return key, nil
}

// newCID makes the session's Connection ID and routes records that carry
// it to the session.
func (s *Session) newCID() []byte {
	cid := make([]byte, CIDLength)
	rand.Read(cid) // never fails (crypto/rand)
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.cid != "" && l.byCID[s.cid] == s {
		delete(l.byCID, s.cid)
	}
	s.cid = string(cid)
	l.byCID[s.cid] = s
	return cid
}

// run shakes hands, then delivers what the peer sends until the session
// is closed.
func (s *Session) run() {
	l := s.l
	defer l.forget(s)
	ctx, cancel := context.WithTimeout(context.Background(), l.Config.handshakeTimeout())
	err := s.conn.HandshakeContext(ctx)
	l.handshaking.Add(-1)
	if err != nil {
		select {
		case <-l.done: // closed with the listener: no outcome of the peer's
		default:
			l.stats.count(s.outcome(ctx, err))
		}
		cancel()
		s.conn.Close()
		return
	}
	cancel()
	if st, ok := s.conn.ConnectionState(); ok {
		s.identity = identityOf(&st)
	}
	if ids := l.Config.Identities; len(ids) > 0 && !slices.Contains(ids, s.identity) {
		l.stats.count(OutcomeNotAllowed)
		s.conn.Close()
		return
	}
	now := time.Now()
	s.last.Store(now.UnixNano())
	s.established.Store(true)
	l.stats.count(OutcomeOK)
	l.Guard.Validate(s.at.Load().Addr(), now)
	buf := make([]byte, 16384) // the largest record plaintext (RFC 6347 §4.1.1)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, pion.ErrConnClosed) ||
				errors.Is(err, context.Canceled) {
				return
			}
			var fatal *pion.FatalError
			if errors.As(err, &fatal) {
				s.conn.Close()
				return
			}
			continue // a non-fatal alert: the session goes on
		}
		now := time.Now()
		s.last.Store(now.UnixNano())
		remote := *s.at.Load()
		if to := addrPort(s.conn.RemoteAddr()); to.IsValid() && to != remote {
			// pion moved the session after a record with its
			// Connection ID from to (if the answer to it has not
			// already, see WriteTo).
			l.rebind(s, to)
			remote = to
		}
		l.stats.records.Add(1)
		l.deliver(buf[:n], remote, s)
	}
}

// outcome names why a handshake failed.
func (s *Session) outcome(ctx context.Context, err error) string {
	var unknownAuthority x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case s.noCookie.Load():
		return OutcomeNoCookie
	case s.unknown.Load():
		return OutcomeUnknownIdentity
	case s.pskUsed.Load():
		// The identity was known: a Finished that does not verify is
		// the wrong key (and a record that does not decrypt is dropped
		// silently, so that handshake ends in a timeout).
		return OutcomeBadKey
	case errors.As(err, &unknownAuthority), errors.As(err, &invalid),
		strings.Contains(err.Error(), "certificate"), strings.Contains(err.Error(), "client verification"):
		return OutcomeBadCertificate
	case timedOut(ctx, err):
		return OutcomeTimeout
	}
	return OutcomeFailed
}

// close closes the session, with a close_notify alert if it is
// established.
func (s *Session) close() { s.conn.Close() }

// addrPort returns a's address, unmapped, or the zero AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// packet is a datagram routed to a session.
type packet struct {
	b    []byte
	from netip.AddrPort
}

// sessionQueue is how many datagrams a session holds before its
// goroutine decrypts them.
const sessionQueue = 32

// packetConn is a session's view of the listener socket, as pion reads
// and writes it: reads take the datagrams Receive routed to the session,
// writes go through the socket from the address the peer sent to.
type packetConn struct {
	l       *Listener
	s       *Session
	local   netip.AddrPort
	ifindex int
	in      chan packet
	closed  chan struct{}
	once    sync.Once
	rd      deadline

	// The address of the latest datagram read, as pion compares it:
	// the same pointer while the peer does not move. Reader only.
	lastFrom netip.AddrPort
	lastAddr *net.UDPAddr
}

func newPacketConn(l *Listener, s *Session, local netip.AddrPort, ifindex int) *packetConn {
	return &packetConn{l: l, s: s, local: local, ifindex: ifindex, in: make(chan packet, sessionQueue), closed: make(chan struct{})}
}

// queue hands the session a copy of b from from, without waiting.
func (pc *packetConn) queue(b []byte, from netip.AddrPort) {
	select {
	case pc.in <- packet{bytes.Clone(b), from}:
	default:
		pc.l.stats.backlog.Add(1)
	}
}

func (pc *packetConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case <-pc.closed:
		return 0, nil, net.ErrClosed
	case <-pc.rd.done():
		return 0, nil, os.ErrDeadlineExceeded
	case pk := <-pc.in:
		if pk.from != pc.lastFrom || pc.lastAddr == nil {
			pc.lastFrom, pc.lastAddr = pk.from, net.UDPAddrFromAddrPort(pk.from)
		}
		return copy(p, pk.b), pc.lastAddr, nil
	}
}

func (pc *packetConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	to := addrPort(addr)
	if !to.IsValid() {
		return 0, fmt.Errorf("dtls: write to %v: not a UDP address", addr)
	}
	if cur := pc.s.at.Load(); *cur != to {
		// pion writes to where its peer's latest record with the
		// session's Connection ID came from: the session moved.
		pc.l.rebind(pc.s, to)
	}
	if !pc.s.cookied.Load() && len(p) > recordHeader && p[0] == contentHandshake && p[recordHeader] == serverHello {
		// pion answers a ClientHello with its ServerHello only once
		// the client has echoed its cookie: the client is at its
		// address.
		pc.s.cookied.Store(true)
		if pc.s.replacing.Load() {
			pc.l.promote(pc.s)
		}
	}
	ex := exchange.Exchange{Conn: pc.l.Conn, Remote: to, Local: pc.local, SetSource: pc.l.SetSource, IfIndex: pc.ifindex}
	if err := ex.Write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (pc *packetConn) Close() error {
	pc.once.Do(func() { close(pc.closed) })
	return nil
}

func (pc *packetConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(pc.local) }

func (pc *packetConn) SetDeadline(t time.Time) error {
	pc.rd.set(t)
	return nil
}

func (pc *packetConn) SetReadDeadline(t time.Time) error {
	pc.rd.set(t)
	return nil
}

// SetWriteDeadline does nothing: a write to a UDP socket does not wait.
func (pc *packetConn) SetWriteDeadline(time.Time) error { return nil }

// deadline is a read deadline as a channel closed when it passes.
type deadline struct {
	mu    sync.Mutex // guards ch and timer
	ch    chan struct{}
	timer *time.Timer
}

// done returns a channel closed once the deadline has passed.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// set moves the deadline to t; the zero t means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.ch == nil || isClosed(d.ch) {
		d.ch = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	ch := d.ch
	wait := time.Until(t)
	if wait <= 0 {
		close(ch)
		return
	}
	d.timer = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.ch == ch && !isClosed(ch) {
			close(ch)
		}
	})
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
