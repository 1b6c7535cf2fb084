// Package dtls is the DTLS 1.2 side of a listener (RFC 6347, on
// github.com/pion/dtls/v3): coaps listeners (CoAP over DTLS) and dtls
// listeners (raw datagrams over DTLS). Everything after decryption is the
// plain listener's: ingress hands each datagram it reads from the socket
// to Listener.Receive, which routes it to its session (by the peer's
// address, or by the Connection ID of RFC 9146 the session was given, so
// that a client whose address changes keeps its session) or starts a
// session for a ClientHello; each session decrypts on a goroutine of its
// own and calls Deliver with the plaintext, which ingress treats as a
// datagram of a plain listener. Replies go back through the session
// (exchange.Exchange.Session), encrypted.
//
// Sessions are bounded: at most MaxSessions per listener, of which at
// most MaxHandshakes still shaking hands, at most HandshakeRate new
// handshakes per second from one source, a handshake gives up after
// HandshakeTimeout, and a session that delivers nothing for Idle is
// closed. The HelloVerifyRequest cookie exchange of DTLS 1.2 is pion's
// default and stays on: a source must receive at its address before the
// server does any public-key work for it. A client that restarts and
// shakes hands again from its session's address gets a new session,
// which replaces the old one once past the cookie exchange (RFC 6347
// §4.2.8).
package dtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pion "github.com/pion/dtls/v3"
	"github.com/pion/logging"

	"github.com/udpgate/udpgate/guard"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultMaxSessions      = 2048
	DefaultMaxHandshakes    = 1024
	DefaultHandshakeRate    = 4
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdle             = 5 * time.Minute
)

// CIDLength is the length of the Connection IDs a listener gives its
// sessions.
const CIDLength = 8

// CookieWait is how long a handshake may wait for its client to echo the
// HelloVerifyRequest's cookie. pion keeps a connection per ClientHello
// meanwhile (its cookie is not stateless): a spoofed ClientHello holds a
// handshake slot this long at most, not HandshakeTimeout.
const CookieWait = 2 * time.Second

// Config is what the DTLS listeners of a node share: how peers
// authenticate, and the bounds of each listener's sessions. A Config
// needs Keys, Certificate or both. It must not change once a listener
// uses it.
type Config struct {
	// Keys, if not nil, are the pre-shared keys peers may authenticate
	// with (PSK cipher suites); the peer's identity is its PSK identity.
	Keys *Keys
	// Certificate, if not nil, returns the server's certificate chain and
	// key (certificate cipher suites); it is called on each handshake.
	Certificate func() (*tls.Certificate, error)
	// ClientCAs, if not nil, makes a peer that uses a certificate suite
	// present a client certificate that verifies against it; the peer's
	// identity is its certificate's subject. A PSK peer authenticates by
	// its key.
	ClientCAs *x509.CertPool
	// MaxSessions bounds a listener's sessions, handshakes included
	// (DefaultMaxSessions if zero). A ClientHello beyond is dropped and
	// counted (table_full).
	MaxSessions int
	// MaxHandshakes bounds a listener's sessions still shaking hands
	// (DefaultMaxHandshakes if zero).
	MaxHandshakes int
	// HandshakeRate is the new handshakes per second one source address
	// may start, in bursts of twice that (DefaultHandshakeRate if zero;
	// negative: no limit).
	HandshakeRate float64
	// HandshakeTimeout is how long a handshake may take
	// (DefaultHandshakeTimeout if zero).
	HandshakeTimeout time.Duration
	// Idle is how long a session may deliver nothing before it is closed
	// (DefaultIdle if zero).
	Idle time.Duration
	// Identities, if not empty, are the only peer identities (PSK
	// identities, or client certificate subjects as
	// udpgate-dtls-identity carries them) whose sessions are served: any
	// other peer's handshake, even one that succeeds, is ended and
	// counted (not_allowed), and nothing of it reaches a worker.
	Identities []string
}

// Check reports what is wrong with c.
func (c *Config) Check() error {
	if c == nil || c.Keys == nil && c.Certificate == nil {
		return errors.New("dtls: a listener needs pre-shared keys or a certificate")
	}
	return nil
}

// Handshake outcomes, the label values of Stats.Handshakes.
const (
	OutcomeOK              = "ok"
	OutcomeUnknownIdentity = "unknown_identity" // a PSK identity the keys do not hold
	OutcomeBadKey          = "bad_key"          // a known identity that failed: the wrong key
	OutcomeBadCertificate  = "bad_certificate"  // a client certificate that does not verify
	OutcomeTimeout         = "timeout"          // not finished within HandshakeTimeout
	OutcomeNoCookie        = "no_cookie"        // the cookie not echoed within CookieWait: a spoofed source, or a client gone
	OutcomeFailed          = "failed"           // any other failure (no common cipher suite, …)
	OutcomeRateLimited     = "rate_limited"     // not started: the source's HandshakeRate
	OutcomeTableFull       = "table_full"       // not started: MaxSessions or MaxHandshakes
	OutcomeNotAllowed      = "not_allowed"      // authenticated, but an identity Config.Identities does not list
)

// Outcomes lists the handshake outcomes, in a stable order.
var Outcomes = []string{OutcomeOK, OutcomeUnknownIdentity, OutcomeBadKey, OutcomeBadCertificate, OutcomeTimeout, OutcomeNoCookie, OutcomeFailed, OutcomeRateLimited, OutcomeTableFull, OutcomeNotAllowed}

// Stats are one listener's counts.
type Stats struct {
	// Handshakes counts handshakes by outcome (Outcomes).
	Handshakes map[string]uint64
	// Sessions is the number of sessions now, handshakes included (a
	// gauge); Handshaking those still shaking hands.
	Sessions, Handshaking int
	// Rebinds counts sessions that moved to a new peer address, found by
	// their Connection ID.
	Rebinds uint64
	// Expired counts sessions closed for being idle.
	Expired uint64
	// Replaced counts sessions closed because their client shook hands
	// again from the same address (it restarted) and passed the cookie
	// exchange.
	Replaced uint64
	// Records counts datagrams decrypted and handed to Deliver.
	Records uint64
	// NoSession counts datagrams that belong to no session and do not
	// start one (not a ClientHello), dropped.
	NoSession uint64
	// Backlog counts datagrams dropped because their session's queue was
	// full.
	Backlog uint64
	// KeyReloads and KeyReloadFailed count the PSK file read again after
	// a change, and the looks that failed (the keys in use stayed): the
	// node's file, the same on each of its DTLS listeners.
	KeyReloads, KeyReloadFailed uint64
}

type counters struct {
	outcomes                                      [10]atomic.Uint64 // by index in Outcomes
	rebinds, expired, records, noSession, backlog atomic.Uint64
	replaced                                      atomic.Uint64
}

func (c *counters) count(outcome string) {
	for i, o := range Outcomes {
		if o == outcome {
			c.outcomes[i].Add(1)
			return
		}
	}
}

// A Deliver hands on a decrypted datagram b that remote sent to local
// (on interface ifindex) through s. It is called on the session's
// goroutine, one datagram at a time per session, from as many goroutines
// as there are sessions; it must not block, and must not keep b.
type Deliver func(b []byte, remote, local netip.AddrPort, ifindex int, s *Session)

// Listener is the DTLS side of one listener socket. Set its fields, call
// Start, then Receive for each datagram read from Conn. It is safe for
// concurrent use.
type Listener struct {
	// Conn is the listener's socket; sessions write through it. The
	// caller reads it and owns it.
	Conn *net.UDPConn
	// SetSource: Conn is bound to a wildcard address, and each session
	// sets its source address (see exchange.Exchange.SetSource).
	SetSource bool
	// Port is the listener's port.
	Port   uint16
	Config *Config
	// Guard, if not nil, is the listener's guard: a source that completes
	// a handshake is validated in it (it received the cookie at its
	// address), so replies to it are not cut by the amplification limit.
	Guard *guard.Guard
	// Deliver receives the decrypted datagrams. Required.
	Deliver Deliver
	Log     *slog.Logger

	mu     sync.Mutex // guards byAddr, byCID, replacing and closed
	byAddr map[netip.AddrPort]*Session
	byCID  map[string]*Session
	// replacing holds the handshakes from the address of an established
	// session, until they pass their cookie exchange (promote).
	replacing  map[netip.AddrPort]*Session
	handshakes *guard.Guard // each source's handshake rate; nil: no limit
	closed     bool

	deliverMu  sync.RWMutex // guards delivering: Deliver is not called once StopDelivering returns
	delivering bool

	handshaking atomic.Int64
	wg          sync.WaitGroup // the sessions' goroutines and the sweeper
	done        chan struct{}  // closed by Close
	closeOnce   sync.Once
	logger      logging.LoggerFactory
	stats       counters
}

// Start checks the listener and starts its sweeper, which closes idle
// sessions.
func (l *Listener) Start() error {
	if err := l.Config.Check(); err != nil {
		return err
	}
	if l.Conn == nil || l.Deliver == nil {
		return errors.New("dtls: Conn and Deliver are required")
	}
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	l.byAddr = map[netip.AddrPort]*Session{}
	l.byCID = map[string]*Session{}
	l.replacing = map[netip.AddrPort]*Session{}
	l.done = make(chan struct{})
	l.delivering = true
	l.logger = quietLogger{}
	if r := l.Config.handshakeRate(); r > 0 {
		g, err := guard.New(guard.Config{Rate: r, Burst: int(2 * r)})
		if err != nil {
			return fmt.Errorf("dtls: handshake rate: %w", err)
		}
		l.handshakes = g
	}
	l.wg.Go(l.sweep)
	return nil
}

// suites returns the cipher suites the listener offers: AEAD suites
// only, the ones CoAP makes mandatory (RFC 7252 §9.1.3: PSK and
// ECDSA certificates with AES-128-CCM-8) first.
func (c *Config) suites() []pion.CipherSuiteID {
	var s []pion.CipherSuiteID
	if c.Keys != nil {
		s = append(s, pion.TLS_PSK_WITH_AES_128_CCM_8, pion.TLS_PSK_WITH_AES_128_CCM,
			pion.TLS_PSK_WITH_AES_128_GCM_SHA256, pion.TLS_PSK_WITH_AES_256_CCM_8,
			pion.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, pion.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256)
	}
	if c.Certificate != nil {
		s = append(s, pion.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, pion.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			pion.TLS_ECDHE_ECDSA_WITH_AES_128_CCM, pion.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			pion.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, pion.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			pion.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, pion.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
	}
	return s
}

func (c *Config) maxSessions() int {
	if c.MaxSessions > 0 {
		return c.MaxSessions
	}
	return DefaultMaxSessions
}

func (c *Config) maxHandshakes() int {
	if c.MaxHandshakes > 0 {
		return c.MaxHandshakes
	}
	return DefaultMaxHandshakes
}

func (c *Config) handshakeRate() float64 {
	if c.HandshakeRate == 0 {
		return DefaultHandshakeRate
	}
	return c.HandshakeRate
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

func (c *Config) idle() time.Duration {
	if c.Idle > 0 {
		return c.Idle
	}
	return DefaultIdle
}

// Record layer (RFC 6347 §4.1, RFC 9146 §4): content type, version,
// epoch, sequence number, [connection id,] length.
const (
	recordHeader     = 13
	contentHandshake = 22
	contentCID       = 25
	clientHello      = 1
	serverHello      = 2
)

// Receive routes datagram b, which remote sent to local on interface
// ifindex, to its session, or starts a session for a ClientHello. It
// copies b and never blocks: a session whose queue is full loses the
// datagram (counted). It is called on the listener's read loop.
func (l *Listener) Receive(b []byte, remote, local netip.AddrPort, ifindex int, now time.Time) {
	if len(b) <= recordHeader {
		l.stats.noSession.Add(1)
		return
	}
	var s *Session
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	if b[0] == contentCID && len(b) >= recordHeader+CIDLength {
		s = l.byCID[string(b[11:11+CIDLength])]
	}
	epoch0 := b[3] == 0 && b[4] == 0
	hello := b[0] == contentHandshake && epoch0 && b[recordHeader] == clientHello
	if s == nil {
		if r := l.replacing[remote]; r != nil && epoch0 {
			s = r // the new handshake's records
		} else {
			s = l.byAddr[remote]
		}
	}
	var replaces *Session
	switch {
	case s == nil && !hello:
		l.mu.Unlock()
		l.stats.noSession.Add(1)
		return
	case s != nil && hello && s.established.Load() && l.byAddr[remote] == s && l.replacing[remote] == nil:
		// RFC 6347 §4.2.8: a client that lost its session (it
		// restarted) shakes hands again from the same address. The
		// session it had stays until the new handshake has passed its
		// cookie exchange (promote): a spoofed ClientHello ends nothing.
		replaces = s
		s = nil
	}
	if s == nil {
		var outcome string
		if s, outcome = l.startLocked(remote, local, ifindex, now, replaces); s == nil {
			l.mu.Unlock()
			l.stats.count(outcome)
			return
		}
	}
	l.mu.Unlock()
	s.pc.queue(b, remote)
}

// promote makes s, a handshake from the address of an established
// session that has just passed its cookie exchange (it sends its
// ServerHello), the session of that address, and closes the one it
// replaces.
func (l *Listener) promote(s *Session) {
	l.mu.Lock()
	old := s.replaces
	s.replaces = nil
	s.replacing.Store(false)
	if l.replacing[s.remote] == s {
		delete(l.replacing, s.remote)
	}
	if cur, ok := l.byAddr[s.remote]; !ok || cur == old {
		l.byAddr[s.remote] = s
	}
	l.mu.Unlock()
	if old != nil {
		l.stats.replaced.Add(1)
		l.wg.Go(old.close)
	}
}

// startLocked makes a session for remote's ClientHello, or says why not.
// l.mu must be held.
func (l *Listener) startLocked(remote, local netip.AddrPort, ifindex int, now time.Time, replaces *Session) (*Session, string) {
	if len(l.byAddr)+len(l.replacing) >= l.Config.maxSessions() || l.handshaking.Load() >= int64(l.Config.maxHandshakes()) {
		return nil, OutcomeTableFull
	}
	if l.handshakes != nil {
		if v, _ := l.handshakes.Admit(remote.Addr(), now); v != guard.Admitted {
			return nil, OutcomeRateLimited
		}
	}
	s := &Session{l: l, remote: remote, replaces: replaces}
	s.at.Store(&remote)
	s.replacing.Store(replaces != nil)
	s.pc = newPacketConn(l, s, local, ifindex)
	s.last.Store(now.UnixNano())
	opts := []pion.ServerOption{
		pion.WithLoggerFactory(l.logger),
		pion.WithConnectionIDGenerator(s.newCID),
	}
	opts = append(opts, pion.WithCipherSuites(l.Config.suites()...))
	if l.Config.Keys != nil {
		opts = append(opts, pion.WithPSK(s.psk))
	}
	if get := l.Config.Certificate; get != nil {
		opts = append(opts, pion.WithGetCertificate(func(*pion.ClientHelloInfo) (*tls.Certificate, error) { return get() }))
	}
	if cas := l.Config.ClientCAs; cas != nil {
		opts = append(opts, pion.WithClientAuth(pion.RequireAndVerifyClientCert), pion.WithClientCAs(cas))
	}
	conn, err := pion.ServerWithOptions(s.pc, net.UDPAddrFromAddrPort(remote), opts...)
	if err != nil {
		l.Log.Warn("dtls: a session does not start", "err", err)
		return nil, OutcomeFailed
	}
	s.conn = conn
	if replaces != nil {
		l.replacing[remote] = s
	} else {
		l.byAddr[remote] = s
	}
	l.handshaking.Add(1)
	l.wg.Go(s.run)
	return s, ""
}

// StopDelivering stops the calls of Deliver: once it returns, Deliver is
// not called again. Sessions stay open, so replies still go out.
func (l *Listener) StopDelivering() {
	l.deliverMu.Lock()
	l.delivering = false
	l.deliverMu.Unlock()
}

// deliver calls Deliver unless StopDelivering was called.
func (l *Listener) deliver(b []byte, remote netip.AddrPort, s *Session) {
	l.deliverMu.RLock()
	defer l.deliverMu.RUnlock()
	if l.delivering {
		l.Deliver(b, remote, s.pc.local, s.pc.ifindex, s)
	}
}

// Close closes every session (with a close_notify alert) and waits for
// their goroutines. It is idempotent.
func (l *Listener) Close() {
	l.closeOnce.Do(func() {
		l.StopDelivering()
		l.mu.Lock()
		l.closed = true
		sessions := make([]*Session, 0, len(l.byAddr)+len(l.replacing))
		for _, s := range l.byAddr {
			sessions = append(sessions, s)
		}
		for _, s := range l.replacing {
			sessions = append(sessions, s)
		}
		l.mu.Unlock()
		close(l.done)
		for _, s := range sessions {
			s.close()
		}
		l.wg.Wait()
	})
}

// Stats returns a snapshot of the listener's counts.
func (l *Listener) Stats() Stats {
	st := Stats{Handshakes: make(map[string]uint64, len(Outcomes))}
	for i, o := range Outcomes {
		st.Handshakes[o] = l.stats.outcomes[i].Load()
	}
	l.mu.Lock()
	st.Sessions = len(l.byAddr) + len(l.replacing)
	l.mu.Unlock()
	st.Handshaking = int(l.handshaking.Load())
	st.Rebinds, st.Expired, st.Records = l.stats.rebinds.Load(), l.stats.expired.Load(), l.stats.records.Load()
	st.Replaced = l.stats.replaced.Load()
	st.NoSession, st.Backlog = l.stats.noSession.Load(), l.stats.backlog.Load()
	if k := l.Config.Keys; k != nil {
		st.KeyReloads, st.KeyReloadFailed = k.Reloads()
	}
	return st
}

// sweep closes idle sessions until Close.
func (l *Listener) sweep() {
	idle := l.Config.idle()
	t := time.NewTicker(min(idle/4, CookieWait/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case now := <-t.C:
			var stale, uncookied []*Session
			l.mu.Lock()
			for _, s := range l.byAddr {
				switch quiet := now.Sub(time.Unix(0, s.last.Load())); {
				case s.established.Load() && quiet >= idle:
					stale = append(stale, s)
				case !s.established.Load() && !s.cookied.Load() && quiet >= CookieWait:
					uncookied = append(uncookied, s)
				}
			}
			for _, s := range l.replacing {
				if !s.cookied.Load() && now.Sub(time.Unix(0, s.last.Load())) >= CookieWait {
					uncookied = append(uncookied, s)
				}
			}
			l.mu.Unlock()
			for _, s := range stale {
				l.stats.expired.Add(1)
				s.close()
			}
			for _, s := range uncookied {
				s.noCookie.Store(true)
				s.close()
			}
		}
	}
}

// forget removes s from the tables.
func (l *Listener) forget(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byAddr[s.remote] == s {
		delete(l.byAddr, s.remote)
	}
	if s.cid != "" && l.byCID[s.cid] == s {
		delete(l.byCID, s.cid)
	}
	if l.replacing[s.remote] == s {
		delete(l.replacing, s.remote)
	}
}

// rebind moves s to its new address to, once pion has authenticated a
// record from there with s's Connection ID (pion then reads from, and
// writes to, to).
func (l *Listener) rebind(s *Session, to netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || s.remote == to {
		return
	}
	if l.byAddr[s.remote] == s {
		delete(l.byAddr, s.remote)
	}
	if old, ok := l.byAddr[to]; ok && old != s {
		// A stale session of the address s moved to: s is the one its
		// peer uses now.
		l.wg.Go(old.close)
	}
	s.remote = to
	s.at.Store(&to)
	l.byAddr[to] = s
	l.stats.rebinds.Add(1)
	l.Guard.Validate(to.Addr(), time.Now())
}

// identityOf returns the identity of a peer authenticated by st: its PSK
// identity, or its certificate's subject, with control characters
// replaced by '?' (it travels in a NATS header).
func identityOf(st *pion.State) string {
	var id string
	if len(st.IdentityHint) > 0 {
		id = string(st.IdentityHint)
	} else if len(st.PeerCertificates) > 0 {
		if c, err := x509.ParseCertificate(st.PeerCertificates[0]); err == nil {
			id = c.Subject.String()
		}
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, id)
}

// errContext tells a handshake that ran out of time.
func timedOut(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded)
}

// quietLogger discards pion's logs: what matters is counted.
type quietLogger struct{}

func (quietLogger) NewLogger(string) logging.LeveledLogger { return quietLog{} }

type quietLog struct{}

func (quietLog) Trace(string)          {}
func (quietLog) Tracef(string, ...any) {}
func (quietLog) Debug(string)          {}
func (quietLog) Debugf(string, ...any) {}
func (quietLog) Info(string)           {}
func (quietLog) Infof(string, ...any)  {}
func (quietLog) Warn(string)           {}
func (quietLog) Warnf(string, ...any)  {}
func (quietLog) Error(string)          {}
func (quietLog) Errorf(string, ...any) {}
