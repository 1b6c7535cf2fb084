package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/ws"
)

// NewGateway binds the listeners (or takes them from inh, sockets handed
// over by another process) and returns the gateway that serves them.
func NewGateway(ctx context.Context, cfg config.Config, log *slog.Logger, nc *nats.Conn, listeners []config.Listener, inh *Inherited) (*gateway.Gateway, error) {
	stream := func(name string) ingress.StreamConfig {
		return ingress.StreamConfig{
			Name:     name,
			MaxAge:   cfg.StreamMaxAge,
			MaxBytes: cfg.StreamMaxBytes,
			Replicas: cfg.StreamReplicas,
			Memory:   cfg.StreamMemory,
			Async:    cfg.StreamAsync,
		}
	}
	g := &gateway.Gateway{
		NATS:        nc,
		Node:        cfg.Node,
		Prefix:      cfg.Prefix,
		Stream:      stream(cfg.Stream),
		Replies:     stream(cfg.RepliesStream),
		Deadline:    cfg.Deadline,
		MaxDatagram: cfg.MaxDatagram,
		Queue:       cfg.Queue,
		MaxInFlight: cfg.MaxInFlight,
		MaxPending:  cfg.MaxPending,
		CoAP: coap.Config{
			Piggyback: cfg.CoAPPiggyback,
			BlockSize: cfg.CoAPBlockSize,
			MaxBody:   cfg.CoAPMaxBody,
			Leisure:   cfg.CoAPLeisure,
			// CoAP Observe.
			ObserveCONEvery:     cfg.CoAPObserveCONEvery,
			MaxObservers:        cfg.CoAPMaxObservers,
			MaxObserversPerPeer: cfg.CoAPMaxObserversPeer,
		},
		ListenerMaxPending: cfg.ListenerMaxPending,
		DiscoveryInterval:  cfg.DiscoveryInterval,
		DrainTimeout:       cfg.DrainTimeout,
		Log:                log,
		Push:               gateway.Push{Window: cfg.Push.Window, Allow: cfg.Push.Allow, Rate: cfg.Push.Rate},
		Observe:            gateway.ObserveBucket{Name: cfg.ObserveBucket, Replicas: cfg.ObserveReplicas, TTL: cfg.ObserveTTL},
	}
	wss := &webSockets{cfg: cfg, log: log}
	secure := &dtlsListeners{cfg: cfg, log: log}
	for _, l := range listeners {
		if l.Protocol == schemas.ProtocolWS {
			gd, err := guard.New(cfg.ListenerGuard(l))
			if err != nil {
				CloseListeners(g)
				return nil, &ListenerError{Listener: l, Err: err}
			}
			ln := inh.tcp(l)
			if ln == nil {
				ln, err = listenTCP(ctx, l)
			}
			if err != nil {
				CloseListeners(g)
				return nil, &ListenerError{Listener: l, Err: err}
			}
			srv, err := wss.server(l, ln, gd)
			if err != nil {
				ln.Close()
				CloseListeners(g)
				return nil, &ListenerError{Listener: l, Err: err}
			}
			g.WebSockets = append(g.WebSockets, srv)
			continue
		}
		gd, err := guard.New(cfg.ListenerGuard(l))
		if err != nil {
			CloseListeners(g)
			return nil, &ListenerError{Listener: l, Err: err}
		}
		var dc *dtls.Config
		if l.DTLS {
			if dc, err = secure.listener(l); err != nil {
				CloseListeners(g)
				return nil, &ListenerError{Listener: l, Err: err}
			}
		}
		c := inh.udp(l)
		if c == nil {
			c, err = listenUDP(ctx, l, cfg.RcvBuf)
		}
		if err != nil {
			CloseListeners(g)
			return nil, &ListenerError{Listener: l, Err: err}
		}
		g.Listeners = append(g.Listeners, gateway.Listener{Conn: c, Protocol: l.Protocol, Guard: gd, NoReply: l.NoReply, Push: l.Push, DTLS: dc})
	}
	return g, nil
}

// listenUDP binds the socket of l, a UDP listener, with ingress.Listen,
// and sets it up as l's options say: the multicast groups it joins
// (group=), fragmentation forbidden (df=on). A socket handed over by
// another process is set up already.
func listenUDP(ctx context.Context, l config.Listener, rcvbuf int) (*net.UDPConn, error) {
	c, err := ingress.Listen(ctx, l.Network(), l.Addr.String(), rcvbuf)
	if err != nil {
		return nil, err
	}
	for _, g := range l.Groups() {
		if err := ingress.JoinGroup(c, g.Addr, g.Interface); err != nil {
			c.Close()
			return nil, err
		}
	}
	if l.DontFragment {
		if err := ingress.DontFragment(c); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// ListenerError is a listener that could not be set up: its socket not
// bound, or its guard's options refused.
type ListenerError struct {
	Listener config.Listener
	Err      error
}

func (e *ListenerError) Error() string {
	return "listener " + e.Listener.String() + ": " + e.Err.Error()
}
func (e *ListenerError) Unwrap() error { return e.Err }

// WebSocket returns the server of a ws listener on ln, serving path,
// with the limits of c; its guard and connection rate are the
// listener's (config.Config.ListenerGuard and ConnRate).
func WebSocket(c config.WS, ln net.Listener, path string) *ws.Server {
	off := func(d time.Duration) time.Duration {
		if d == 0 {
			return -1 // the server's "never"
		}
		return d
	}
	return &ws.Server{
		Listener:       ln,
		Path:           path,
		Origins:        c.Origins,
		MaxConnections: c.MaxConnections,
		MaxInFlight:    c.MaxInFlight,
		Ping:           off(c.Ping),
		Idle:           off(c.Idle),
		ConnectWait:    off(c.ConnectWait),
		MaxPush:        c.MaxPush,
	}
}

// webSockets makes the servers of ws listeners, as UDPGATE_LISTENERS's
// and the listener file's are made: with the limits of the UDPGATE_WS_
// variables (WebSocket), each listener's guard and connection rate, and
// for a wss listener the certificate of UDPGATE_WSS_CERT_FILE and
// UDPGATE_WSS_KEY_FILE, loaded once for all of them. It is not safe for
// concurrent use.
type webSockets struct {
	cfg   config.Config
	log   *slog.Logger
	certs *ws.Certificates // loaded by the first wss listener
}

// certificates returns the certificate of the wss listeners, loading it
// the first time.
func (w *webSockets) certificates() (*ws.Certificates, error) {
	if w.certs != nil {
		return w.certs, nil
	}
	if w.cfg.WS.CertFile == "" || w.cfg.WS.KeyFile == "" {
		return nil, errors.New("a wss listener needs a certificate: set UDPGATE_WSS_CERT_FILE and UDPGATE_WSS_KEY_FILE")
	}
	certs, err := ws.LoadCertificates(w.cfg.WS.CertFile, w.cfg.WS.KeyFile)
	if err != nil {
		return nil, err
	}
	certs.Log = w.log
	w.certs = certs
	return certs, nil
}

// server returns the server of the ws listener l on ln, with the guard
// gd (made from Config.ListenerGuard(l)). It fails only on a wss
// listener whose certificate does not load; the caller closes ln then.
func (w *webSockets) server(l config.Listener, ln net.Listener, gd *guard.Guard) (*ws.Server, error) {
	srv := WebSocket(w.cfg.WS, ln, l.Path)
	srv.Guard, srv.ConnRate = gd, w.cfg.ConnRate(l)
	if l.TLS {
		certs, err := w.certificates()
		if err != nil {
			return nil, err
		}
		srv.Certificates = certs
	}
	return srv, nil
}

// dtlsListeners makes the configuration of coaps and dtls listeners
// (UDPGATE_DTLS_*), once for all of them: the keys and the certificate
// are loaded by the first listener, and read again when their files
// change. It is not safe for concurrent use.
type dtlsListeners struct {
	cfg config.Config
	log *slog.Logger
	dc  *dtls.Config
}

// listener returns the DTLS configuration of the listener l: the
// listeners' (config), with the identities l serves.
func (d *dtlsListeners) listener(l config.Listener) (*dtls.Config, error) {
	dc, err := d.config()
	if err != nil {
		return nil, err
	}
	if ids := l.Identities(); ids != nil {
		c := *dc
		c.Identities = ids
		dc = &c
	}
	return dc, nil
}

// config returns the DTLS listeners' configuration, loading it the
// first time.
func (d *dtlsListeners) config() (*dtls.Config, error) {
	if d.dc != nil {
		return d.dc, nil
	}
	c := d.cfg.DTLS
	dc := &dtls.Config{MaxSessions: c.MaxSessions, Idle: c.Idle, HandshakeTimeout: c.HandshakeTimeout, HandshakeRate: c.HandshakeRate}
	if c.HandshakeRate == 0 {
		dc.HandshakeRate = -1 // UDPGATE_DTLS_HANDSHAKE_RATE=0: no limit
	}
	if c.PSKFile != "" {
		keys, err := dtls.LoadKeys(c.PSKFile)
		if err != nil {
			return nil, fmt.Errorf("UDPGATE_DTLS_PSK_FILE: %w", err)
		}
		keys.Log = d.log
		dc.Keys = keys
	}
	if c.CertFile != "" {
		certs, err := ws.LoadCertificates(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("UDPGATE_DTLS_CERT_FILE: %w", err)
		}
		certs.Log = d.log
		dc.Certificate = func() (*tls.Certificate, error) { return certs.GetCertificate(nil) }
	}
	if c.ClientCA != "" {
		pool, err := config.LoadCAs(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("UDPGATE_DTLS_CLIENT_CA: %w", err)
		}
		dc.ClientCAs = pool
	}
	if err := dc.Check(); err != nil {
		return nil, fmt.Errorf("%w: set UDPGATE_DTLS_PSK_FILE, or UDPGATE_DTLS_CERT_FILE and UDPGATE_DTLS_KEY_FILE", err)
	}
	d.dc = dc
	return dc, nil
}

// listenTCP binds the TCP socket of the ws listener l.
func listenTCP(ctx context.Context, l config.Listener) (net.Listener, error) {
	return (&net.ListenConfig{}).Listen(ctx, l.Network(), l.Addr.String())
}

// CloseListeners closes the sockets of a gateway that will not Serve.
func CloseListeners(g *gateway.Gateway) {
	for _, l := range g.Listeners {
		l.Conn.Close()
	}
	for _, w := range g.WebSockets {
		w.Listener.Close()
	}
}

// Running is a gateway serving in an errgroup with the HTTP endpoint of
// its metrics and health checks: the first part to fail stops the others.
type Running struct {
	Gateway    *gateway.Gateway
	JetStream  jetstream.JetStream
	Observe    *observe.Server
	MetricsURL string       // "" when UDPGATE_HTTP_LISTEN is empty
	HTTP       net.Listener // nil when UDPGATE_HTTP_LISTEN is empty

	// Tracing is the process's tracer provider (StartTracing), shut down
	// by Wait once every part has returned.
	Tracing *Tracing

	ctx    context.Context // the group's: done when any part fails or the caller's ends
	cancel context.CancelFunc
	grp    *errgroup.Group
	served chan struct{} // closed once the gateway has stopped (drained)
	log    *slog.Logger
}

// Context returns the context of the running parts: done when one of
// them failed, when Stop was called, or when the caller's ended.
func (r *Running) Context() context.Context { return r.ctx }

// Go runs f as one more part: its error stops the others.
func (r *Running) Go(f func() error) { r.grp.Go(f) }

// Stop stops the gateway gracefully (it drains) and the HTTP endpoint.
func (r *Running) Stop() { r.cancel() }

// Wait waits for every part to return and returns the first error; then
// it exports the spans not exported yet.
func (r *Running) Wait() error {
	err := r.grp.Wait()
	if terr := r.Tracing.Shutdown(); terr != nil {
		r.log.Warn("tracing: stopping", "err", terr)
	}
	return err
}

// Served returns a channel closed once the gateway has stopped, its
// pending exchanges answered or expired.
func (r *Running) Served() <-chan struct{} { return r.served }

// StartGateway binds listeners, starts the HTTP endpoint and serves a
// gateway on them, which lists subscriptions with subs, and returns once
// it is ready. It returns a nil Running if the gateway stopped first, with
// the error that stopped it (nil if ctx ended).
func StartGateway(ctx context.Context, cfg config.Config, log *slog.Logger, nc *nats.Conn, listeners []config.Listener, subs gateway.SubscriptionLister, inh *Inherited) (*Running, error) {
	g, err := NewGateway(ctx, cfg, log, nc, listeners, inh)
	if err != nil {
		return nil, err
	}
	g.Subscriptions = subs
	js, err := jetstream.New(nc)
	if err != nil {
		CloseListeners(g)
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	tr, err := startGatewayTracing(ctx, cfg, log, g)
	if err != nil {
		CloseListeners(g)
		return nil, err
	}
	r := &Running{JetStream: js, Gateway: g, Tracing: tr, served: make(chan struct{}), log: log}
	ctx, r.cancel = context.WithCancel(ctx)
	r.grp, r.ctx = errgroup.WithContext(ctx)
	r.Observe, r.MetricsURL, r.HTTP, err = StartHTTPOn(r.ctx, cfg, log, r.grp, inh.httpListener())
	if err == nil {
		err = ObserveGateway(r.Observe, g, nc, js, cfg)
	}
	if err != nil {
		CloseListeners(g)
		r.cancel()
		r.Wait()
		return nil, err
	}
	r.grp.Go(func() error {
		defer close(r.served)
		return g.Serve(r.ctx)
	})
	select {
	case <-g.Ready():
		return r, nil
	case <-r.ctx.Done():
		err := r.Wait()
		r.cancel()
		return nil, err
	}
}
