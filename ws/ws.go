// Package ws serves a ws listener: RPC calls over WebSocket (RFC 6455,
// through github.com/coder/websocket), for clients that cannot send UDP,
// such as browsers. Each message a client sends is one call, published as
// an rpc listener's call is, and its Reply comes back on the same
// connection:
//
//   - a binary message is an rpcpb.Call envelope, answered by an
//     rpcpb.Reply as a binary message;
//   - a text message is the standard base64 of a Call (padded or not),
//     answered by the padded base64 of its Reply as a text message.
//
// A message larger than the limit closes the connection with 1009
// (message too big); one that is not a Call, or not base64, with 1007
// (invalid payload). Both are counted. A connection holds at most
// MaxInFlight calls awaiting their reply; a call beyond that is answered
// STATUS_RESOURCE_EXHAUSTED at once, unpublished.
//
// The server decodes calls (rpc.Edge.Decode) and hands them to its
// Publisher, the listener's ingress, without waiting; egress answers
// them through the call, which hands the encoded Reply to the
// connection's writer goroutine without waiting either: neither the read
// loop nor egress ever blocks on a client or on NATS.
package ws

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Defaults for the zero values of Server's fields.
const (
	DefaultPath           = "/"
	DefaultMaxMessage     = 8192
	DefaultMaxConnections = 10000
	DefaultMaxInFlight    = 64
	DefaultPing           = 30 * time.Second
	DefaultIdle           = 10 * time.Minute
	DefaultConnectWait    = 500 * time.Millisecond
	DefaultMaxPush        = 64
	// MaxPushBytes is the largest message a worker may push.
	MaxPushBytes = 64 << 10
)

// Publisher takes the calls and the connection events of the listener:
// an ingress.Server. Submit must not block; a call it cannot publish it
// answers itself (through the call's Fail). Event publishes an event,
// as a request whose first reply within wait it returns if wait > 0.
type Publisher interface {
	Submit(c *rpc.Call, remote, local netip.AddrPort, at time.Time)
	Event(ctx context.Context, route string, ev *schemas.WSEvent, wait time.Duration) (*nats.Msg, error)
}

// Server serves one ws listener. Set its fields, then call Serve once;
// Stats is safe for concurrent use.
type Server struct {
	// Listener is the TCP socket; Serve closes it.
	Listener net.Listener
	// Port names the listener (its subjects, its exchanges); Listener's
	// port if zero.
	Port uint16
	// Path is where the WebSocket is served (DefaultPath if empty);
	// anything else is 404.
	Path string
	// Origins lists the origins allowed besides the request's own host,
	// as patterns matched with path.Match, case-insensitively: against
	// the origin's host ("example.com", "*.example.com"), or against
	// "scheme://host" when the pattern has a scheme. An upgrade whose
	// Origin header is another site's is refused (403); one without an
	// Origin header (not a browser) is accepted. "*" allows every origin.
	Origins []string
	// MaxMessage is the largest Call accepted, in bytes
	// (DefaultMaxMessage if zero); a text message may be its base64.
	MaxMessage int
	// MaxConnections bounds the open connections
	// (DefaultMaxConnections if zero); an upgrade beyond is refused (503).
	MaxConnections int
	// MaxInFlight bounds the calls of one connection awaiting their
	// reply (DefaultMaxInFlight if zero).
	MaxInFlight int
	// Ping is how often a connection is pinged; a connection whose pong
	// does not come within Ping is closed (DefaultPing if zero; negative:
	// no pings).
	Ping time.Duration
	// Idle closes a connection that sent no message for this long
	// (DefaultIdle if zero; negative: never).
	Idle time.Duration
	// ConnectWait is how long a new connection waits for a reply to its
	// $connect event, which may refuse it, before its first message is
	// read (DefaultConnectWait if zero; negative: $connect is published
	// and not waited for). With no subscriber there is no wait.
	ConnectWait time.Duration
	// MaxPush bounds the messages pushed to one connection and not yet
	// written (DefaultMaxPush if zero): a push beyond closes the
	// connection, a client too slow to read them.
	MaxPush int
	// Certificates, if not nil, makes the listener wss: connections are
	// TLS, with the certificate it serves (loaded again when its files
	// change).
	Certificates *Certificates
	// Guard, if not nil, admits each upgrade and each message by its
	// source address: an upgrade from a denied source is refused (403),
	// one over the source's or the listener's rate too (429); a call
	// over the rate is answered STATUS_RESOURCE_EXHAUSTED, unpublished.
	// Its amplification limit does not apply (TCP).
	Guard *guard.Guard
	// ConnRate is the messages per second one connection may send, in
	// bursts of twice that (at least 1); a call beyond is answered
	// STATUS_RESOURCE_EXHAUSTED, unpublished. 0: no limit.
	ConnRate float64
	// NATS, if not nil, takes pushes and closes for the listener's
	// connections, on schemas.WSPushSubject under Prefix.
	NATS   *nats.Conn
	Prefix string
	// Publisher publishes the calls and events. Required.
	Publisher Publisher
	// Log receives errors; nothing per message above Debug. Nil discards.
	Log *slog.Logger

	o     options // the fields as resolved by Serve
	edge  rpc.Edge
	boot  string        // random, names this server in connection ids
	seq   atomic.Uint64 // the last connection's number
	open  atomic.Int64  // connections open now
	stats counters

	mu      sync.Mutex       // guards conns and closing
	conns   map[string]*conn // by id
	closing bool             // Serve is closing the connections: no more are served
	wg      sync.WaitGroup   // handlers with an upgraded connection
}

// Stats are a ws listener's counters.
type Stats struct {
	Connections int    // open now (a gauge)
	Accepted    uint64 // upgrades accepted
	// Refused upgrades, by reason: another site's Origin, the
	// connection cap, or not a WebSocket upgrade (or the wrong path).
	RefusedOrigin, RefusedFull, RefusedUpgrade uint64
	MessagesIn                                 uint64 // data messages read
	MessagesOut                                uint64 // replies written
	TooLarge                                   uint64 // messages over the limit: the connection closed with 1009
	BadBase64                                  uint64 // text messages that are not base64: closed with 1007
	Malformed                                  uint64 // messages that are not a Call: closed with 1007
	// Busy counts calls answered STATUS_RESOURCE_EXHAUSTED because their
	// connection had MaxInFlight calls awaiting a reply.
	Busy      uint64
	IdleClose uint64 // connections closed after Idle without a message
	PingFail  uint64 // connections closed because a pong did not come
	// Dropped counts replies not written: their connection had closed.
	Dropped uint64
	// RefusedConnect counts connections a $connect reply refused.
	RefusedConnect uint64
	// RefusedSource and RefusedRate count upgrades the guard refused:
	// the source denied or not allowed (403), or over its rate (429).
	RefusedSource, RefusedRate uint64
	// RateLimited counts calls answered STATUS_RESOURCE_EXHAUSTED
	// because their source (the guard) or their connection (ConnRate)
	// was over its rate.
	RateLimited uint64
	// CertReloads and CertReloadFailed count a wss listener's
	// certificate loaded again after its files changed, and changes that
	// did not load (the previous certificate kept).
	CertReloads, CertReloadFailed uint64
	// Pushes counts messages workers pushed that were written;
	// PushRefused pushes and closes refused (unknown connection, too
	// large, not text); SlowClose connections closed because their
	// pushes were not read; WorkerClose connections a worker closed.
	Pushes, PushRefused, SlowClose, WorkerClose uint64
}

type counters struct {
	accepted, refusedOrigin, refusedFull, refusedUpgrade    atomic.Uint64
	in, out, tooLarge, badBase64, busy, idle, ping, dropped atomic.Uint64
	refusedConnect, pushes, pushRefused, slow, workerClose  atomic.Uint64
	refusedSource, refusedRate, rateLimited                 atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Connections: int(s.open.Load()), Accepted: c.accepted.Load(),
		RefusedOrigin: c.refusedOrigin.Load(), RefusedFull: c.refusedFull.Load(), RefusedUpgrade: c.refusedUpgrade.Load(),
		MessagesIn: c.in.Load(), MessagesOut: c.out.Load(), TooLarge: c.tooLarge.Load(), BadBase64: c.badBase64.Load(),
		Malformed: s.edge.Stats().Malformed, Busy: c.busy.Load(), IdleClose: c.idle.Load(), PingFail: c.ping.Load(),
		Dropped: c.dropped.Load(), RefusedConnect: c.refusedConnect.Load(), Pushes: c.pushes.Load(),
		PushRefused: c.pushRefused.Load(), SlowClose: c.slow.Load(), WorkerClose: c.workerClose.Load(),
		RefusedSource: c.refusedSource.Load(), RefusedRate: c.refusedRate.Load(), RateLimited: c.rateLimited.Load(),
	}
	if s.Certificates != nil {
		st.CertReloads, st.CertReloadFailed = s.Certificates.Reloads()
	}
	return st
}

// RPCStats returns the counters of the listener's envelopes.
func (s *Server) RPCStats() rpc.Stats { return s.edge.Stats() }

// Serve accepts upgrades until ctx ends, then closes the listener, closes
// every connection (1001, going away) and returns nil once their handlers
// have returned.
func (s *Server) Serve(ctx context.Context) error {
	if s.Listener == nil || s.Publisher == nil {
		if s.Listener != nil {
			s.Listener.Close()
		}
		return errors.New("ws: Listener and Publisher are required")
	}
	s.init()
	if s.NATS != nil {
		sub, err := s.NATS.Subscribe(schemas.WSPushWildcard(s.o.prefix, s.boot), s.onPush)
		if err != nil {
			s.Listener.Close()
			return fmt.Errorf("ws: subscribe to pushes: %w", err)
		}
		defer sub.Unsubscribe() // after the connections have closed: a push finds none
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.o.log.Handler(), slog.LevelDebug),
		// A handler's context does not end with ctx: the connections are
		// closed with a close frame first.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	served := make(chan error, 1)
	ln := s.Listener
	if s.Certificates != nil {
		ln = tls.NewListener(ln, s.Certificates.TLSConfig())
	}
	go func() { served <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	srv.Close() // the listener, and connections not upgraded
	if err == nil {
		<-served
	}
	s.mu.Lock()
	s.closing = true
	for _, cn := range s.conns {
		cn.close(websocket.StatusGoingAway, "gateway stopping") // its handler waits for it
	}
	s.mu.Unlock()
	s.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("ws: %w", err)
	}
	return nil
}

// options are a Server's fields with their defaults, set by Serve.
type options struct {
	path                                    string
	maxMessage, maxConnections, maxInFlight int
	ping, idle, connectWait                 time.Duration
	maxPush                                 int
	log                                     *slog.Logger
	port                                    uint16
	prefix                                  string
}

func (s *Server) init() {
	s.o = options{
		path: cmp.Or(s.Path, DefaultPath), maxMessage: s.MaxMessage, maxConnections: s.MaxConnections,
		maxInFlight: s.MaxInFlight, ping: cmp.Or(s.Ping, DefaultPing), idle: cmp.Or(s.Idle, DefaultIdle),
		log: s.Log, port: s.Port, connectWait: cmp.Or(s.ConnectWait, DefaultConnectWait), maxPush: s.MaxPush,
		prefix: cmp.Or(s.Prefix, schemas.DefaultPrefix),
	}
	if s.o.maxPush <= 0 {
		s.o.maxPush = DefaultMaxPush
	}
	if s.o.maxMessage <= 0 {
		s.o.maxMessage = DefaultMaxMessage
	}
	if s.o.maxConnections <= 0 {
		s.o.maxConnections = DefaultMaxConnections
	}
	if s.o.maxInFlight <= 0 {
		s.o.maxInFlight = DefaultMaxInFlight
	}
	if s.o.log == nil {
		s.o.log = slog.New(slog.DiscardHandler)
	}
	if s.o.port == 0 {
		if a, ok := s.Listener.Addr().(*net.TCPAddr); ok {
			s.o.port = uint16(a.Port)
		}
	}
	s.edge.Socket = exchange.Exchange{Port: s.o.port}
	s.edge.Log = s.o.log
	var b [6]byte
	rand.Read(b[:])
	s.boot = hex.EncodeToString(b[:])
	s.conns = map[string]*conn{}
}

// ServeHTTP upgrades a request for the Path to a WebSocket connection
// and serves it until it closes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != s.o.path {
		s.stats.refusedUpgrade.Add(1)
		http.NotFound(w, r)
		return
	}
	if !s.allowOrigin(r) {
		s.stats.refusedOrigin.Add(1)
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if s.Guard != nil {
		switch v, wait := s.Guard.Admit(remote.Addr(), time.Now()); v {
		case guard.Admitted:
		case guard.Denied, guard.NotAllowed:
			s.stats.refusedSource.Add(1)
			http.Error(w, "source not allowed", http.StatusForbidden)
			return
		default:
			s.stats.refusedRate.Add(1)
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
			http.Error(w, "too many requests from this source", http.StatusTooManyRequests)
			return
		}
	}
	if s.open.Add(1) > int64(s.o.maxConnections) {
		s.open.Add(-1)
		s.stats.refusedFull.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	defer s.open.Add(-1)
	// The origin is checked above, with the same rules as Accept's.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		s.stats.refusedUpgrade.Add(1) // Accept has answered
		s.o.log.Debug("ws: upgrade", "remote", r.RemoteAddr, "err", err)
		return
	}
	s.stats.accepted.Add(1)
	var local netip.AddrPort
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		local = a.AddrPort()
	}
	cn := &conn{
		s:      s,
		c:      c,
		id:     s.boot + "." + strconv.FormatUint(s.seq.Add(1), 16),
		remote: remote,
		local:  netip.AddrPortFrom(local.Addr().Unmap(), local.Port()),
		out:    make(chan reply, s.o.maxInFlight),
		slots:  make(chan struct{}, s.o.maxInFlight),
		pushes: make(chan reply, s.o.maxPush),
		opened: time.Now(),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close(websocket.StatusGoingAway, "gateway stopping")
		return
	}
	s.conns[cn.id] = cn
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	// A push finds the connection until it is closed, not later: it is
	// forgotten before $disconnect says it is gone.
	forget := func() {
		s.mu.Lock()
		delete(s.conns, cn.id)
		s.mu.Unlock()
	}
	if !cn.connect(r) {
		forget()
		return
	}
	err = cn.serve(r.Context())
	forget()
	cn.disconnect(err)
}

// allowOrigin reports whether r's Origin, if any, is r's own host or
// matches one of Origins.
func (s *Server) allowOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range s.Origins {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return true
		}
	}
	return false
}

// reply is a Reply on its way to the client.
type reply struct {
	b    []byte // the encoded Reply; owned by the reply
	text bool   // send its base64 as a text message; a push: send b as a text message
	push bool   // b is a worker's message, sent as it is
}

// conn is one WebSocket connection.
type conn struct {
	s      *Server
	c      *websocket.Conn
	id     string
	remote netip.AddrPort
	local  netip.AddrPort
	// out holds the replies for the writer. A call holds a slot from
	// before it is published until the writer takes its reply from out,
	// so out never holds more than MaxInFlight replies, and a send to it
	// never waits.
	out   chan reply
	slots chan struct{}
	// pushes holds the messages workers pushed, for the writer; one that
	// does not fit closes the connection.
	pushes chan reply
	bucket bucket       // ConnRate's, the read loop's alone
	last   atomic.Int64 // when the client last sent a message, Unix nanoseconds
	opened time.Time
	// closing is how the gateway closed the connection, if it did: the
	// first close wins, and the $disconnect event reports it.
	closing atomic.Pointer[closeFrame]
}

// serve runs the connection: the read loop here, the writer and the
// pinger beside it, until the connection closes; it returns the read
// loop's error.
func (cn *conn) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	cn.last.Store(time.Now().UnixNano())
	wg.Go(func() { cn.write(ctx) })
	if cn.s.o.ping > 0 || cn.s.o.idle > 0 {
		wg.Go(func() { cn.watch(ctx) })
	}
	err := cn.read(ctx)
	cn.s.o.log.Debug("ws: connection closed", "connection", cn.id, "err", err)
	cn.c.CloseNow()
	return err
}

// read is the read loop: one reused buffer, a non-blocking hand-off to
// the publisher per call.
func (cn *conn) read(ctx context.Context) error {
	s := cn.s
	textMax := base64.StdEncoding.EncodedLen(s.o.maxMessage)
	cn.c.SetReadLimit(int64(textMax))
	// Room for one byte more than the library reads past the limit: it
	// stops the message itself, and closes the connection with 1009.
	buf := make([]byte, textMax+2)
	call := make([]byte, s.o.maxMessage+1)
	for {
		typ, r, err := cn.c.Reader(ctx)
		if err != nil {
			return err
		}
		n, err := readMessage(r, buf)
		if errors.Is(err, websocket.ErrMessageTooBig) {
			s.stats.tooLarge.Add(1) // the library closes the connection with 1009
			cn.closing.CompareAndSwap(nil, &closeFrame{websocket.StatusMessageTooBig, "message too big"})
			return err
		}
		if err != nil {
			return err
		}
		at := time.Now()
		cn.last.Store(at.UnixNano())
		s.stats.in.Add(1)
		b := buf[:n]
		text := typ == websocket.MessageText
		if text {
			if b, err = decodeText(call, b); err != nil {
				s.stats.badBase64.Add(1)
				return cn.closeWait(websocket.StatusInvalidFramePayloadData, "not the base64 of an RPC Call")
			}
		}
		if len(b) > s.o.maxMessage {
			s.stats.tooLarge.Add(1)
			return cn.closeWait(websocket.StatusMessageTooBig, "larger than "+strconv.Itoa(s.o.maxMessage)+" bytes")
		}
		c := s.edge.Decode(b, cn.id, cn.remote, cn.local, func(b []byte) error { return cn.reply(b, text) })
		if c == nil {
			return cn.closeWait(websocket.StatusInvalidFramePayloadData, "not an RPC Call with a service and a method")
		}
		if why := cn.admit(at); why != "" {
			s.stats.rateLimited.Add(1)
			if err := cn.exhausted(ctx, c.ID, text, why); err != nil {
				return err
			}
			continue
		}
		select {
		case cn.slots <- struct{}{}:
		default:
			s.stats.busy.Add(1)
			if err := cn.exhausted(ctx, c.ID, text, "too many calls in flight on this connection"); err != nil {
				return err
			}
			continue
		}
		s.Publisher.Submit(c, cn.remote, cn.local, at)
	}
}

// admit applies the guard's source rate and the connection's rate to a
// message read at now; it returns why the message is refused, or "".
func (cn *conn) admit(now time.Time) string {
	s := cn.s
	if s.Guard != nil {
		if v, _ := s.Guard.Admit(cn.remote.Addr(), now); v != guard.Admitted {
			return "over the rate of this source (" + v.String() + ")"
		}
	}
	if s.ConnRate > 0 && !cn.bucket.take(now, s.ConnRate) {
		return "over the rate of this connection"
	}
	return ""
}

// exhausted answers the call id STATUS_RESOURCE_EXHAUSTED at once, from
// the read loop: a client that does not read its replies stalls its own
// reads only.
func (cn *conn) exhausted(ctx context.Context, id uint64, text bool, why string) error {
	rb, _ := proto.Marshal(&rpcpb.Reply{Id: id, Status: rpcpb.Status_STATUS_RESOURCE_EXHAUSTED, Error: why})
	return cn.send(ctx, reply{b: rb, text: text})
}

// bucket is a token bucket of rate tokens a second, holding at most
// twice that (at least 1), full at first.
type bucket struct {
	tokens float64
	last   time.Time
}

// take takes a token at now, if there is one.
func (b *bucket) take(now time.Time, rate float64) bool {
	capacity := max(2*rate, 1)
	if b.last.IsZero() {
		b.tokens = capacity
	} else {
		b.tokens = min(capacity, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// readMessage reads the message r into buf, and returns its length;
// the connection's read limit stops a message longer than len(buf)-2.
func readMessage(r io.Reader, buf []byte) (int, error) {
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if n == len(buf) {
			return n, websocket.ErrMessageTooBig
		}
	}
}

// decodeText decodes b, standard base64 with or without padding, into
// dst, which has room for a Call one byte over the limit. It never writes
// beyond dst: a longer decoding is reported by its length.
func decodeText(dst, b []byte) ([]byte, error) {
	enc := base64.StdEncoding
	if len(b)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	if enc.DecodedLen(len(b)) > len(dst) {
		return dst, nil // over the limit: counted by the caller as too large
	}
	n, err := enc.Decode(dst, b)
	if err != nil {
		return nil, err
	}
	return dst[:n], nil
}

// reply hands the encoded Reply b to the writer; called once per call,
// by egress or the sweep, or by the publisher that could not publish it.
// It never waits: a call holds a slot, and out has one per slot.
func (cn *conn) reply(b []byte, text bool) error {
	select {
	case cn.out <- reply{b: b, text: text}:
		return nil
	default:
		cn.s.stats.dropped.Add(1)
		return errors.New("ws: connection " + cn.id + ": no room for a reply")
	}
}

// write writes the replies in out and the messages in pushes until ctx
// ends, freeing each reply's slot as it takes it.
func (cn *conn) write(ctx context.Context) {
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case r := <-cn.out:
			<-cn.slots // before the client can see the reply and send the next call
			err = cn.send(ctx, r)
		case p := <-cn.pushes:
			if err = cn.send(ctx, p); err == nil {
				cn.s.stats.pushes.Add(1)
			}
		}
		if err != nil {
			cn.s.o.log.Debug("ws: write", "connection", cn.id, "err", err)
			cn.c.CloseNow()
			return
		}
	}
}

// send writes one reply or push; a client that does not take it within the
// ping interval (or 30 s) is gone.
func (cn *conn) send(ctx context.Context, r reply) error {
	wait := cn.s.o.ping
	if wait <= 0 {
		wait = DefaultPing
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	typ, b := websocket.MessageBinary, r.b
	switch {
	case r.text && r.push:
		typ = websocket.MessageText
	case r.text:
		typ, b = websocket.MessageText, base64.StdEncoding.AppendEncode(nil, r.b)
	}
	if err := cn.c.Write(ctx, typ, b); err != nil {
		return err
	}
	if !r.push {
		cn.s.stats.out.Add(1)
	}
	return nil
}

// watch closes the connection once the client has sent nothing for Idle,
// and pings it every Ping, closing it when a pong does not come within
// Ping, until ctx ends. It looks every Ping (or Idle, without pings), so
// an idle connection is closed between Idle and Idle plus that.
func (cn *conn) watch(ctx context.Context) {
	s := cn.s
	every := s.o.ping
	if every <= 0 {
		every = s.o.idle
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if s.o.idle > 0 && now.Sub(time.Unix(0, cn.last.Load())) >= s.o.idle {
				s.stats.idle.Add(1)
				cn.closeWait(websocket.StatusPolicyViolation, "idle for "+s.o.idle.String())
				return
			}
		}
		if s.o.ping <= 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, s.o.ping)
		err := cn.c.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.stats.ping.Add(1)
				cn.closing.CompareAndSwap(nil, &closeFrame{websocket.StatusAbnormalClosure, "no pong within " + s.o.ping.String()})
				cn.c.CloseNow()
			}
			return
		}
	}
}
