package client

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// WSTarget is a ws:// or wss:// URL of `udpgate send`, split into the
// listener's WebSocket URL and the RPC method.
type WSTarget struct {
	// URL is the listener's WebSocket URL: ws://HOST:PORT/PATH, the path
	// "/" when the URL has nothing before SERVICE/METHOD.
	URL string
	// Service and Method are the Call's.
	Service, Method string
}

// ParseWS parses ws://HOST:PORT[/PATH]/SERVICE/METHOD (or wss://): the
// last two segments of the path are the service and the method, anything
// before them is the listener's path. Its error wraps ErrInvalid.
func ParseWS(rawURL string) (WSTarget, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return WSTarget{}, invalid{fmt.Errorf("client: %w", err)}
	}
	bad := invalid{fmt.Errorf("client: %q: want ws://HOST:PORT[/PATH]/SERVICE/METHOD", rawURL)}
	if (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return WSTarget{}, bad
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	n := len(parts)
	if n < 2 || parts[n-2] == "" || parts[n-1] == "" {
		return WSTarget{}, bad
	}
	if p := u.Port(); p != "" {
		if _, err := netip.ParseAddrPort("127.0.0.1:" + p); err != nil || p == "0" {
			return WSTarget{}, invalid{fmt.Errorf("client: %q: bad port %q", rawURL, p)}
		}
	}
	l := url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/" + strings.Join(parts[:n-2], "/"), RawQuery: u.RawQuery}
	return WSTarget{URL: l.String(), Service: parts[n-2], Method: parts[n-1]}, nil
}

// WSOptions tune a WSConn. The zero value sends binary messages.
type WSOptions struct {
	// Text sends each Call as the base64 of its envelope in a text
	// message; the listener answers in kind.
	Text bool
	// Header is added to the upgrade request (an Origin, for one).
	Header http.Header
	// LocalAddr, if valid, is the address the TCP connection is made
	// from (with a port the system chooses).
	LocalAddr netip.Addr
	// TLS configures a wss:// connection: nil verifies the server's
	// certificate against the system's roots. Not with HTTPClient.
	TLS *tls.Config
	// HTTPClient makes the upgrade request; its Timeout must be zero.
	// Nil: a client of the WSConn's own, which dials directly, with TLS.
	// With an HTTPClient, WSConn.Remote is not known.
	HTTPClient *http.Client
}

// WSConn is a WebSocket connection to a ws listener, whose messages are
// RPC envelopes: a Call out, a Reply back. It does not match replies to
// calls: several calls may be in flight, and the caller matches each
// Reply by its id. Send may be called from any goroutine; Receive from
// one goroutine at a time; Close from any, once or more.
type WSConn struct {
	c      *websocket.Conn
	url    string
	text   bool
	remote netip.AddrPort
	raw    net.Conn   // the TCP connection, if DialWS made it; Close drops it when the listener does not close
	wmu    sync.Mutex // guards wbuf
	wbuf   []byte     // a text message being written
	rbuf   []byte     // a text message being read; owned by Receive
	once   sync.Once
	err    error // Close's
}

// wsReadLimit bounds a reply message: the listener's replies are
// bounded by what its workers answer, well below it.
const wsReadLimit = 4 << 20

// DialWS opens a WebSocket connection to the listener at wsURL
// (ws://HOST:PORT/PATH or wss://...: WSTarget.URL). The error says what
// failed: the URL, the TCP connection (refused, say), the TLS handshake,
// or the upgrade, with the HTTP status the server answered instead of
// 101 and the start of its body. When ctx ends first, the error wraps
// ctx's.
func DialWS(ctx context.Context, wsURL string, o WSOptions) (*WSConn, error) {
	c := &WSConn{url: wsURL, text: o.Text}
	hc := o.HTTPClient
	var (
		mu     sync.Mutex // guards remote and raw, set by the transport's dial
		remote netip.AddrPort
		raw    net.Conn
	)
	if hc == nil {
		d := &net.Dialer{}
		if o.LocalAddr.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: o.LocalAddr.AsSlice(), Zone: o.LocalAddr.Zone()}
		}
		tr := &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				nc, err := d.DialContext(ctx, network, addr)
				if a, ok := nc.(*net.TCPConn); ok && err == nil {
					ap := a.RemoteAddr().(*net.TCPAddr).AddrPort()
					mu.Lock()
					remote, raw = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nc
					mu.Unlock()
				}
				return nc, err
			},
			TLSClientConfig:     o.TLS,
			TLSHandshakeTimeout: 10 * time.Second,
		}
		defer tr.CloseIdleConnections() // a refused upgrade's connection
		hc = &http.Client{Transport: tr}
	}
	wc, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: o.Header})
	if err != nil {
		return nil, dialError(ctx, wsURL, resp, err)
	}
	mu.Lock()
	c.remote, c.raw = remote, raw
	mu.Unlock()
	wc.SetReadLimit(wsReadLimit)
	c.c = wc
	return c, nil
}

// dialError explains why the upgrade of wsURL failed.
func dialError(ctx context.Context, wsURL string, resp *http.Response, err error) error {
	if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		msg := fmt.Sprintf("client: %s: upgrade refused: HTTP %s", wsURL, resp.Status)
		if resp.Body != nil {
			// The library keeps the body's first 1024 bytes.
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			if s := strings.TrimSpace(strings.ToValidUTF8(string(b), "?")); s != "" {
				msg += " (" + strings.Join(strings.Fields(s), " ") + ")"
			}
		}
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			msg += ", retry after " + ra + " s"
		}
		return errors.New(msg)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("client: %s: no WebSocket connection: %w", wsURL, ctx.Err())
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return fmt.Errorf("client: %s: %w", wsURL, oe)
	}
	var ue *url.Error // the upgrade request's, a TLS handshake's for one
	if errors.As(err, &ue) {
		return fmt.Errorf("client: %s: %w", wsURL, ue.Err)
	}
	return fmt.Errorf("client: %s: %w", wsURL, err)
}

// Remote returns the listener's address, if DialWS made the connection
// itself (WSOptions.HTTPClient nil).
func (c *WSConn) Remote() netip.AddrPort { return c.remote }

// Send writes call, an encoded rpcpb.Call, as one message: binary, or
// its base64 in a text message with WSOptions.Text. Send does not keep
// call. If ctx ends during the write, the connection is closed.
func (c *WSConn) Send(ctx context.Context, call []byte) error {
	var err error
	if c.text {
		c.wmu.Lock()
		c.wbuf = base64.StdEncoding.AppendEncode(c.wbuf[:0], call)
		err = c.c.Write(ctx, websocket.MessageText, c.wbuf)
		c.wmu.Unlock()
	} else {
		err = c.c.Write(ctx, websocket.MessageBinary, call)
	}
	if err != nil {
		return fmt.Errorf("client: %s: write: %w", c.url, err)
	}
	return nil
}

// Receive reads the next message, a Reply (a text message is decoded
// from base64), and returns it appended to buf[:0]. If ctx ends first,
// the connection is closed. A connection closed by the listener is
// reported with its close status and reason.
func (c *WSConn) Receive(ctx context.Context, buf []byte) ([]byte, error) {
	typ, r, err := c.c.Reader(ctx)
	if err != nil {
		return buf[:0], c.readError(err)
	}
	dst := buf[:0]
	if typ == websocket.MessageText {
		dst = c.rbuf[:0]
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := r.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return buf[:0], c.readError(err)
		}
	}
	if typ != websocket.MessageText {
		return dst, nil
	}
	c.rbuf = dst
	out, err := base64.StdEncoding.AppendDecode(buf[:0], dst)
	if err != nil {
		return buf[:0], fmt.Errorf("client: %s: a text reply is not base64: %w", c.url, err)
	}
	return out, nil
}

func (c *WSConn) readError(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Errorf("client: %s: closed by the listener: %s %q: %w", c.url, ce.Code, ce.Reason, net.ErrClosed)
	}
	return fmt.Errorf("client: %s: read: %w", c.url, err)
}

// wsCloseWait bounds Close's wait for the listener's close frame.
const wsCloseWait = time.Second

// Close closes the connection with a close frame (1000, normal closure)
// and waits for the listener's, a second at most: then it drops the
// connection (with WSOptions.HTTPClient, it waits for the library's
// bound, 5 s). It is idempotent.
func (c *WSConn) Close() error {
	c.once.Do(func() {
		done := make(chan error, 1)
		go func() { done <- c.c.Close(websocket.StatusNormalClosure, "") }()
		t := time.NewTimer(wsCloseWait)
		defer t.Stop()
		var err error
		select {
		case err = <-done:
		case <-t.C:
			if c.raw != nil {
				c.raw.Close() // Close returns once its reads fail
			}
			err = <-done
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			c.err = err
		}
	})
	return c.err
}

// dialWS opens c, a ws:// or wss:// Conn, and starts its reader.
func dialWS(ctx context.Context, c *Conn, rawURL string) (*Conn, error) {
	t, err := ParseWS(rawURL)
	if err != nil {
		return nil, err
	}
	c.service, c.method = t.Service, t.Method
	if m, ok := LookupMethod(c.service, c.method); ok {
		c.known = &m
	}
	timeout := c.opts.timeout()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, err := DialWS(dctx, t.URL, WSOptions{Text: c.opts.Text, TLS: c.opts.TLS})
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil {
			return nil, fmt.Errorf("client: %s: %w to the WebSocket upgrade within %s", t.URL, ErrNoReply, timeout)
		}
		return nil, err
	}
	c.ws, c.remote = ws, ws.Remote()
	c.wsIn, c.done = make(chan []byte, 16), make(chan struct{})
	c.wg.Add(1)
	go c.readWS()
	return c, nil
}

// readWS hands the connection's messages to Do until it closes.
func (c *Conn) readWS() {
	defer c.wg.Done()
	defer close(c.wsIn)
	for {
		b, err := c.ws.Receive(context.Background(), nil)
		if err != nil {
			c.wsErr = err // read by Do once wsIn is closed
			return
		}
		select {
		case c.wsIn <- b:
		case <-c.done:
			return
		}
	}
}

// doWS sends one Call on the connection and waits for the Reply with its
// id, until the give-up time; a reply that comes later is rejected by
// the next exchange.
func (c *Conn) doWS(ctx context.Context, payload []byte) (Result, error) {
	res := Result{ContentFormat: -1}
	id, call, err := c.call(payload)
	if err != nil {
		return res, err
	}
	start := time.Now()
	timer := time.NewTimer(c.opts.timeout())
	defer timer.Stop()
	if err := c.ws.Send(ctx, call); err != nil {
		return res, err
	}
	res.Tries = 1
	var reply rpcpb.Reply
	for {
		select {
		case b, ok := <-c.wsIn:
			if !ok {
				return res, c.wsErr
			}
			if proto.Unmarshal(b, &reply) != nil {
				c.rejectWS(&res, "not an RPC reply")
				continue
			}
			if reply.Id != id {
				c.rejectWS(&res, fmt.Sprintf("reply id %d does not match request id %d", reply.Id, id))
				continue
			}
			res.Latency, res.From = time.Since(start), c.remote
			return res, c.setReply(&res, &reply)
		case <-timer.C:
			return res, fmt.Errorf("client: %w from %s within %s", ErrNoReply, c.target, c.opts.timeout())
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
}

func (c *Conn) rejectWS(res *Result, reason string) {
	if len(res.Rejected) < maxRejected {
		res.Rejected = append(res.Rejected, Rejection{From: c.remote, Reason: reason})
	}
}

// closeWS closes a ws:// Conn and waits for its reader.
func (c *Conn) closeWS() error {
	c.closeOnce.Do(func() { close(c.done) })
	err := c.ws.Close()
	c.wg.Wait()
	return err
}
