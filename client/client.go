// Package client sends requests to a udpgate gateway, or to any UDP service,
// and waits for their replies: plain datagrams (udp://, and dtls:// over
// DTLS with a pre-shared key), CoAP (coap://, and coaps://), and
// the udpgate RPC envelope over UDP (rpc://) or WebSocket (ws://, wss://,
// see WSConn). It is what `udpgate send` runs, and it
// prints nothing: every outcome is a value (a Result, a Rejection, Stats), so
// that other tools, a benchmark for one, can reuse it.
//
// A Conn talks to one target from one local port. Its socket is connected,
// so the kernel delivers to it only datagrams from the target's address and
// port, and reports an ICMP port unreachable as an error. Replies from
// anywhere else are not silently lost: where the platform has SO_REUSEPORT,
// a second, unconnected socket shares the local port and receives exactly
// the datagrams the connected socket refuses, and each one is reported as a
// Rejection (see Dial).
//
// udp:// and rpc:// requests are resent, unchanged and with the same request
// id, on an exponential backoff (Options.Wait, Factor and Timeout) until a
// valid reply arrives or the give-up time passes. CoAP requests are
// retransmitted and split into blocks by go-coap's client, as RFC 7252 and
// RFC 7959 describe. A ws:// call is sent once, on a TCP connection.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	coapclient "github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Defaults of the Options fields left zero.
const (
	DefaultWait    = 100 * time.Millisecond
	DefaultFactor  = 2.0
	DefaultTimeout = 2 * time.Second
)

// ErrNoReply is wrapped by the error of an exchange that got no valid reply
// before Options.Timeout.
var ErrNoReply = errors.New("no reply")

// ErrRefused is wrapped by the error of an exchange ended by an ICMP port
// unreachable: nothing listens on the target's port.
var ErrRefused = errors.New("nothing listens (ICMP port unreachable)")

// ErrTooBig is wrapped by the error of an exchange whose request was
// larger than the path MTU with Options.DontFragment (EMSGSIZE); PathMTU
// says the MTU.
var ErrTooBig = errors.New("request larger than the path MTU")

// ErrInvalid is wrapped by Dial's error when the URL or the options are
// wrong, rather than the network: the caller's mistake.
var ErrInvalid = errors.New("invalid URL or options")

// invalid marks err as ErrInvalid without changing its text.
type invalid struct{ error }

func (invalid) Is(target error) bool { return target == ErrInvalid }
func (e invalid) Unwrap() error      { return e.error }

// Options tune a Conn. The zero value sends a CoAP GET and resends after
// 100 ms, 200 ms, 400 ms and so on until 2 s have passed.
type Options struct {
	// Wait is how long the first copy of a request waits for its reply
	// before the request is sent again; 0 means DefaultWait. For CoAP it is
	// the ACK timeout (RFC 7252 ACK_TIMEOUT, randomised by go-coap).
	Wait time.Duration
	// Factor multiplies the wait after each copy; below 1 means
	// DefaultFactor.
	// CoAP always doubles it (RFC 7252), whatever Factor says.
	Factor float64
	// Timeout is the give-up time, counted from the first copy; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// DontFragment sends with fragmentation forbidden (IP_MTU_DISCOVER,
	// PMTUDISC_DO): a request larger than the path MTU is not sent, and
	// Do's error wraps ErrTooBig and says the path MTU. Not for ws://.
	DontFragment bool
	// Method is the CoAP method, case-insensitive: GET, POST, PUT, DELETE,
	// FETCH, PATCH or iPATCH; "" means GET. Other schemes ignore it.
	Method string
	// ContentFormat is the CoAP request's Content-Format; nil sends none.
	ContentFormat *uint16
	// Text sends a ws:// call as the base64 of its envelope in a text
	// message rather than as a binary message. Other schemes ignore it.
	Text bool
	// TLS configures a wss:// connection; nil verifies the listener's
	// certificate against the system's roots. Other schemes ignore it.
	TLS *tls.Config
	// PSKIdentity and PSK authenticate a coaps:// request's DTLS
	// handshake (a coaps listener's UDPGATE_DTLS_PSK_FILE holds them).
	// Other schemes ignore them.
	PSKIdentity string
	PSK         []byte
}

func (o Options) wait() time.Duration {
	if o.Wait <= 0 {
		return DefaultWait
	}
	return o.Wait
}

func (o Options) factor() float64 {
	if o.Factor < 1 {
		return DefaultFactor
	}
	return o.Factor
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// Result is the outcome of one exchange.
type Result struct {
	// Body is the reply: the datagram (udp), the CoAP payload after
	// block-wise reassembly (coap), or the Reply's body (rpc). It belongs to
	// the caller.
	Body []byte
	// From is the address the accepted reply came from.
	From netip.AddrPort
	// Tries is how many copies of the request were sent (udp, rpc; 1 for
	// ws); 0 for CoAP, whose retransmissions go-coap makes and does not
	// count.
	Tries int
	// Latency is the time from the first copy to the accepted reply.
	Latency time.Duration
	// Rejected lists the datagrams (ws: messages) that arrived during the
	// exchange (or since the previous one ended) and were not accepted as
	// its reply.
	Rejected []Rejection

	// Code is the CoAP response code (class << 5 | detail, as go-coap's
	// codes.Code); 0 for udp and rpc.
	Code uint8
	// ContentFormat is the CoAP response's Content-Format, -1 if it has
	// none (and for udp and rpc).
	ContentFormat int

	// Status and Error are the RPC Reply's status and error message.
	Status rpcpb.Status
	Error  string
	// Response is the RPC reply body decoded as the method's response
	// message when the method is known (see LookupMethod), else nil.
	Response proto.Message
}

// Rejection is a datagram that reached the client's port but was not
// accepted as a reply.
type Rejection struct {
	// From is the datagram's source.
	From netip.AddrPort
	// Reason says why it was rejected, e.g. "not the address the request
	// was sent to" or "reply id 7 does not match request id 9".
	Reason string
}

// String returns "rejected reply from FROM: REASON".
func (r Rejection) String() string {
	return "rejected reply from " + r.From.String() + ": " + r.Reason
}

// reasonWrongAddress is the Reason of a datagram from another address.
const reasonWrongAddress = "not the address the request was sent to"

// Conn exchanges requests with one target from one local port. It runs one
// exchange at a time: Do must not be called concurrently; open one Conn per
// concurrent client instead.
type Conn struct {
	scheme string // "udp", "dtls", "coap", "coaps", "rpc", "ws" or "wss"
	target string // the URL, for error messages
	remote netip.AddrPort
	opts   Options

	conn  *net.UDPConn // connected to remote
	watch *net.UDPConn // unconnected, same local port; nil where unsupported
	wg    sync.WaitGroup

	// rw is what udp://, dtls:// and rpc:// exchanges write and read:
	// conn, or the DTLS session on it (dtls://).
	rw   net.Conn
	dtls net.Conn // dtls://: the session, closed before conn

	mu       sync.Mutex  // guards rejected
	rejected []Rejection // from the watch socket, not yet handed to a Result

	buf []byte // read buffer of udp and rpc exchanges, owned by Do

	// rpc and ws
	service, method string
	known           *Method // nil: params and body are raw bytes

	// ws: the connection, and the replies its reader hands to Do (closed
	// when the connection ends, wsErr set before)
	ws        *WSConn
	wsIn      chan []byte
	wsErr     error
	done      chan struct{} // closed by Close: the reader stops
	closeOnce sync.Once

	// coap
	coap     *coapclient.Conn
	path     string
	queries  []string
	coapCode uint8
}

// maxRejected bounds the rejections a Conn keeps between two exchanges, and
// those an exchange records itself: a flood must not grow memory.
const maxRejected = 64

// Dial resolves rawURL's host and opens a Conn to it. The URL is one of
//
//	udp://HOST:PORT
//	dtls://HOST:PORT                     (udp:// over DTLS with Options.PSK)
//	coap://HOST[:PORT]/PATH[?QUERY]      (port 5683 if absent)
//	coaps://HOST[:PORT]/PATH[?QUERY]     (over DTLS with Options.PSK; port 5684)
//	rpc://HOST:PORT/SERVICE/METHOD
//	ws://HOST:PORT[/PATH]/SERVICE/METHOD (or wss://; see ParseWS)
//
// For ws:// Dial opens the WebSocket connection, within Options.Timeout
// (see DialWS). For the others, it binds an unconnected "watch" socket to a free port with SO_REUSEPORT,
// then a second socket to the same port, connected to the target. For a
// datagram arriving on that port the kernel prefers the socket whose
// connected peer matches the datagram's source; a datagram from any other
// address matches only the watch socket. So the connected socket still
// filters in the kernel, and the watch socket sees precisely what it
// filtered out, which Do reports as rejected replies. (An unconnected socket
// checking each source itself would report them too, but would lose the
// ICMP errors that only connected sockets receive.) Where SO_REUSEPORT is
// not available there is no watch socket, and replies from other addresses
// are dropped unreported.
func Dial(ctx context.Context, rawURL string, opts Options) (*Conn, error) {
	c := &Conn{target: rawURL, opts: opts}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, invalid{fmt.Errorf("client: %w", err)}
	}
	c.scheme = u.Scheme
	port := u.Port()
	switch u.Scheme {
	case "udp", "dtls":
		if port == "" || (u.Path != "" && u.Path != "/") {
			return nil, invalid{fmt.Errorf("client: %q: want %s://HOST:PORT", rawURL, u.Scheme)}
		}
		if u.Scheme == "dtls" && (opts.PSKIdentity == "" || len(opts.PSK) == 0) {
			return nil, invalid{fmt.Errorf("client: %q: dtls:// needs a pre-shared key and its identity", rawURL)}
		}
	case "rpc":
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if port == "" || len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return nil, invalid{fmt.Errorf("client: %q: want rpc://HOST:PORT/SERVICE/METHOD", rawURL)}
		}
		c.service, c.method = parts[0], parts[1]
		if m, ok := LookupMethod(c.service, c.method); ok {
			c.known = &m
		}
	case "ws", "wss":
		return dialWS(ctx, c, rawURL)
	case "coap", "coaps":
		if port == "" {
			port = "5683"
			if u.Scheme == "coaps" {
				port = "5684"
			}
		}
		if u.Scheme == "coaps" && (opts.PSKIdentity == "" || len(opts.PSK) == 0) {
			return nil, invalid{fmt.Errorf("client: %q: coaps:// needs a pre-shared key and its identity", rawURL)}
		}
		if c.coapCode, err = coapMethod(opts.Method); err != nil {
			return nil, invalid{fmt.Errorf("client: %w", err)}
		}
		c.path = u.Path
		if c.path == "" {
			c.path = "/"
		}
		if u.RawQuery != "" {
			for q := range strings.SplitSeq(u.RawQuery, "&") {
				if q, err = url.QueryUnescape(q); err != nil {
					return nil, invalid{fmt.Errorf("client: %q: query: %w", rawURL, err)}
				}
				c.queries = append(c.queries, q)
			}
		}
	default:
		return nil, invalid{fmt.Errorf("client: %q: want udp://HOST:PORT, coap://HOST[:PORT]/PATH, coaps://HOST[:PORT]/PATH, rpc://HOST:PORT/SERVICE/METHOD or ws://HOST:PORT[/PATH]/SERVICE/METHOD", rawURL)}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, invalid{fmt.Errorf("client: %q: bad port %q", rawURL, port)}
	}
	if c.remote, err = resolve(ctx, u.Hostname(), uint16(p)); err != nil {
		return nil, fmt.Errorf("client: %q: %w", rawURL, err)
	}
	if err := c.bind(ctx); err != nil {
		return nil, fmt.Errorf("client: %s: %w", c.remote, err)
	}
	switch c.scheme {
	case "coap":
		c.coap = dialCoAP(c.conn, opts)
	case "coaps":
		if c.coap, err = dialCoAPS(ctx, c.conn, opts); err != nil {
			c.Close()
			return nil, fmt.Errorf("client: %s: %w", c.remote, err)
		}
	case "dtls":
		dc, err := handshakeDTLS(ctx, c.conn, opts)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("client: %s: %w", c.remote, err)
		}
		c.rw, c.dtls = dc, dc
		c.buf = make([]byte, 65536)
	default:
		c.rw = c.conn
		c.buf = make([]byte, 65536)
	}
	return c, nil
}

// resolve returns host:port as an address, preferring IPv4 for a name.
func resolve(ctx context.Context, host string, port uint16) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), port), nil
}

// bind opens the connected socket and, where it can, the watch socket
// sharing its port (see Dial), and forbids fragmentation on the connected
// one with Options.DontFragment.
func (c *Conn) bind(ctx context.Context) error {
	if err := c.bindSockets(ctx); err != nil {
		return err
	}
	if c.opts.DontFragment {
		if err := dontFragment(c.conn, c.remote.Addr().Is6()); err != nil {
			c.Close()
			return fmt.Errorf("don't fragment: %w", err)
		}
	}
	return nil
}

// bindSockets opens the sockets of bind.
func (c *Conn) bindSockets(ctx context.Context) error {
	network, unspec := "udp4", netip.IPv4Unspecified()
	if c.remote.Addr().Is6() {
		network, unspec = "udp6", netip.IPv6Unspecified()
	}
	if reusePort != nil {
		lc := net.ListenConfig{Control: reusePort}
		pc, err := lc.ListenPacket(ctx, network, netip.AddrPortFrom(unspec, 0).String())
		if err == nil {
			c.watch = pc.(*net.UDPConn)
			d := net.Dialer{Control: reusePort, LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(unspec, uint16(c.watch.LocalAddr().(*net.UDPAddr).Port)))}
			nc, err := d.DialContext(ctx, network, c.remote.String())
			if err == nil {
				c.conn = nc.(*net.UDPConn)
				c.wg.Add(1)
				go c.watchLoop()
				return nil
			}
			c.watch.Close()
			c.watch = nil
		}
	}
	conn, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(c.remote))
	if err != nil {
		return err
	}
	c.conn = conn
	return nil
}

// PathMTU returns the path MTU the kernel knows for the target (IP_MTU
// or IPV6_MTU): the interface's, or less once an ICMP "fragmentation
// needed" (IPv6: "packet too big") said so. Not for ws://.
func (c *Conn) PathMTU() (int, error) {
	if c.conn == nil {
		return 0, errors.New("client: no path MTU over WebSocket")
	}
	return pathMTU(c.conn, c.remote.Addr().Is6())
}

// watchLoop records every datagram the watch socket receives until Close.
func (c *Conn) watchLoop() {
	defer c.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := c.watch.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // an ICMP error for a datagram we never sent from here
		}
		c.reject(Rejection{From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), Reason: reasonWrongAddress})
	}
}

func (c *Conn) reject(r Rejection) {
	c.mu.Lock()
	if len(c.rejected) < maxRejected {
		c.rejected = append(c.rejected, r)
	}
	c.mu.Unlock()
}

// takeRejected moves the rejections recorded so far into res.
func (c *Conn) takeRejected(res *Result) {
	c.mu.Lock()
	res.Rejected = append(res.Rejected, c.rejected...)
	c.rejected = c.rejected[:0]
	c.mu.Unlock()
}

// Remote returns the target's address (for ws://, the address the TCP
// connection was made to).
func (c *Conn) Remote() netip.AddrPort { return c.remote }

// LocalAddr returns the local address of the connected socket; the zero
// AddrPort for ws://.
func (c *Conn) LocalAddr() netip.AddrPort {
	if c.ws != nil {
		return netip.AddrPort{}
	}
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close closes the sockets and waits for the watch socket's reader. It is
// idempotent.
func (c *Conn) Close() error {
	if c.ws != nil {
		return c.closeWS()
	}
	var err error
	if c.coap != nil {
		err = c.coap.Close()
		<-c.coap.Done()
	}
	if c.dtls != nil {
		c.dtls.Close() // a close_notify, on the socket still open
	}
	if cerr := c.conn.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	if c.watch != nil {
		c.watch.Close()
	}
	c.wg.Wait()
	return err
}

// Do sends payload and waits for the reply. For udp:// the payload is the
// datagram; for rpc:// and ws:// it is the call's params, as JSON when the method is
// known (LookupMethod) and as raw bytes otherwise; for coap:// it is the
// request's payload. The Result is filled in as far as the exchange got,
// also when Do returns an error; the error wraps ErrNoReply when no valid
// reply came before the give-up time.
func (c *Conn) Do(ctx context.Context, payload []byte) (Result, error) {
	var (
		res Result
		err error
	)
	switch c.scheme {
	case "udp", "dtls":
		res, err = c.exchange(ctx, payload, rawMatcher(payload))
	case "rpc":
		res, err = c.doRPC(ctx, payload)
	case "ws", "wss":
		res, err = c.doWS(ctx, payload)
	default:
		res, err = c.doCoAP(ctx, payload)
	}
	c.takeRejected(&res)
	return res, err
}

// matcher decides whether a datagram from the target is the reply; reason
// says why not.
type matcher func(reply []byte) (ok bool, reason string)

// exchange sends req on the backoff schedule until match accepts a reply.
func (c *Conn) exchange(ctx context.Context, req []byte, match matcher) (Result, error) {
	res := Result{ContentFormat: -1}
	start := time.Now()
	giveUp := start.Add(c.opts.timeout())
	wait := c.opts.wait()
	stop := context.AfterFunc(ctx, func() { c.rw.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	sendAt := start
	for {
		now := time.Now()
		if !now.Before(sendAt) && now.Before(giveUp) {
			if _, err := c.rw.Write(req); err != nil {
				return res, c.ioError(err)
			}
			res.Tries++
			sendAt = now.Add(wait)
			wait = min(time.Duration(float64(wait)*c.opts.factor()), c.opts.timeout())
		}
		deadline := giveUp
		if sendAt.Before(giveUp) {
			deadline = sendAt
		}
		c.rw.SetReadDeadline(deadline)
		if err := ctx.Err(); err != nil { // cancelled before the deadline was set
			return res, err
		}
		n, err := c.rw.Read(c.buf)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !time.Now().Before(giveUp) {
					return res, fmt.Errorf("client: %w from %s within %s (%d tries)", ErrNoReply, c.remote, c.opts.timeout(), res.Tries)
				}
				continue
			}
			return res, c.ioError(err)
		}
		if ok, reason := match(c.buf[:n]); !ok {
			if len(res.Rejected) < maxRejected {
				res.Rejected = append(res.Rejected, Rejection{From: c.remote, Reason: reason})
			}
			continue
		}
		res.Latency = time.Since(start)
		res.From = c.remote
		res.Body = append([]byte(nil), c.buf[:n]...)
		return res, nil
	}
}

func (c *Conn) ioError(err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("client: %s: %w", c.remote, ErrRefused)
	}
	if errors.Is(err, syscall.EMSGSIZE) {
		if mtu, merr := c.PathMTU(); merr == nil {
			return fmt.Errorf("client: %s: %w (path MTU %d)", c.remote, ErrTooBig, mtu)
		}
		return fmt.Errorf("client: %s: %w", c.remote, ErrTooBig)
	}
	return fmt.Errorf("client: %s: %w", c.remote, err)
}
