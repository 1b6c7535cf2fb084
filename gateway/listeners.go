package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/udpgate/udpgate/egress"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/ws"
)

// live is one listener while the gateway serves it.
type live struct {
	Listener
	name     string // PORT/PROTOCOL
	port     uint16
	in       *ingress.Server
	ws       *ws.Server    // a ws listener's WebSocket server; its Conn is nil
	stop     chan struct{} // closed to stop reading (stopOnce)
	stopOnce sync.Once
	ctx      context.Context    // in.Serve's
	cancel   context.CancelFunc // ends ctx: in.Serve closes the socket
	done     chan struct{}      // closed once in.Serve has returned
	removing bool               // RemoveListener was called; guarded by Gateway.mu
	out      *out               // a push=on raw listener's pushing side; nil for others
	obs      *observeStore      // a coap listener's Observe registrations; nil for others, or in memory
	err      error              // what in.Serve returned; read after done
}

// stopReading stops the listener reading: a UDP listener's socket, or a
// ws listener's calls; a ws listener stops accepting connections too.
func (l *live) stopReading() {
	l.stopOnce.Do(func() {
		close(l.stop)
		if l.ws != nil {
			if a, ok := l.ws.Listener.(*acceptor); ok {
				a.stopAccepting()
			}
		}
	})
}

// acceptor is a ws listener's TCP socket as its WebSocket server sees it:
// stopAccepting closes the socket, so that the port no longer takes
// connections (another process holding the same socket takes them all),
// without ending the server, which goes on with its connections until it
// is stopped and closes the acceptor.
type acceptor struct {
	net.Listener
	stopped   chan struct{} // closed by stopAccepting
	closed    chan struct{} // closed by Close
	stopOnce  sync.Once
	closeOnce sync.Once
}

func newAcceptor(ln net.Listener) *acceptor {
	return &acceptor{Listener: ln, stopped: make(chan struct{}), closed: make(chan struct{})}
}

// Accept returns the next connection; once the acceptor has stopped
// accepting, it waits for Close and returns net.ErrClosed.
func (a *acceptor) Accept() (net.Conn, error) {
	c, err := a.Listener.Accept()
	if err != nil {
		select {
		case <-a.stopped:
			<-a.closed
			return nil, net.ErrClosed
		default:
		}
	}
	return c, err
}

// stopAccepting closes the socket, not the acceptor.
func (a *acceptor) stopAccepting() {
	a.stopOnce.Do(func() {
		close(a.stopped)
		a.Listener.Close()
	})
}

// Close closes the socket and ends Accept.
func (a *acceptor) Close() error {
	a.closeOnce.Do(func() { close(a.closed) })
	return a.Listener.Close()
}

// File returns a copy of the socket's descriptor (net.TCPListener.File),
// for a hand-over.
func (a *acceptor) File() (*os.File, error) {
	f, ok := a.Listener.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("gateway: a %T has no descriptor to hand over", a.Listener)
	}
	return f.File()
}

// address is where the listener is bound.
func (l *live) address() string {
	if l.ws != nil {
		return l.ws.Listener.Addr().String()
	}
	return l.Conn.LocalAddr().String()
}

// running is what listeners need of a serving gateway, set by Serve.
type running struct {
	ctx   context.Context // the parts' context: ends when a part fails or the drain is over
	table *exchange.Table
	eg    *egress.Server
	dis   *discards
	obs   *observeStore  // the Observe bucket; nil: registrations in memory only
	adm   *admission     // sheds at the door for overloaded durable groups
	wg    sync.WaitGroup // the listeners added while serving
}

// Errors of AddListener and RemoveListener.
var (
	ErrNotServing     = errors.New("gateway: not serving")
	ErrPortServed     = errors.New("gateway: the port is already served by this gateway")
	ErrNoSuchListener = errors.New("gateway: no such listener")
)

// newLive makes the listener l ready to serve, with the gateway's settings
// and the share share of the pending table.
func (g *Gateway) newLive(l Listener, r *running, share int) *live {
	if l.Protocol == "" {
		l.Protocol = schemas.ProtocolRaw
	}
	port := uint16(l.Conn.LocalAddr().(*net.UDPAddr).Port)
	lv := &live{
		Listener: l,
		name:     schemas.Listener(port, l.Protocol),
		port:     port,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	lv.in = &ingress.Server{
		Conn:               l.Conn,
		Protocol:           l.Protocol,
		NATS:               g.NATS,
		Table:              r.table,
		Prefix:             g.Prefix,
		Node:               g.Node,
		Deadline:           g.Deadline,
		MaxDatagram:        g.MaxDatagram,
		Queue:              g.Queue,
		MaxInFlight:        g.MaxInFlight,
		ListenerMaxPending: share,
		CoAP:               g.CoAP,
		DTLS:               l.DTLS,
		Log:                g.Log,
		Guard:              l.Guard,
		NoReply:            l.NoReply,
		Captured:           r.dis.captured,
		Admission:          r.adm,
		TracerProvider:     g.TracerProvider,
		TraceSample:        g.TraceSample,
		Tap:                l.Tap,
		Stop:               lv.stop,
	}
	if l.Protocol == schemas.ProtocolCoAP {
		lv.obs = r.obs
	}
	if l.Push && l.Protocol == schemas.ProtocolRaw && l.DTLS == nil {
		lv.out = newOut(l.Conn, l.Guard, g.Push, g.MaxDatagram, lv.stop)
		lv.in.Tap = lv.out.tap(l.Tap)
	}
	r.dis.addPort(port, lv.name)
	lv.ctx, lv.cancel = context.WithCancel(r.ctx)
	return lv
}

// newWebSocket makes the ws listener srv ready to serve, with the
// gateway's settings and the share share of the pending table: a
// WebSocket server whose calls an ingress server without a socket
// publishes.
func (g *Gateway) newWebSocket(srv *ws.Server, r *running, share int) *live {
	port := srv.Port
	if port == 0 {
		port = uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
		srv.Port = port
	}
	if _, ok := srv.Listener.(*acceptor); !ok {
		srv.Listener = newAcceptor(srv.Listener)
	}
	lv := &live{
		Listener: Listener{Protocol: schemas.ProtocolWS},
		name:     schemas.Listener(port, schemas.ProtocolWS),
		port:     port,
		ws:       srv,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	lv.in = &ingress.Server{
		Protocol:           schemas.ProtocolWS,
		Port:               port,
		NATS:               g.NATS,
		Table:              r.table,
		Prefix:             g.Prefix,
		Node:               g.Node,
		Deadline:           g.Deadline,
		Queue:              g.Queue,
		MaxInFlight:        g.MaxInFlight,
		ListenerMaxPending: share,
		Log:                g.Log,
		Captured:           r.dis.captured,
		Admission:          r.adm,
		TracerProvider:     g.TracerProvider,
		TraceSample:        g.TraceSample,
		Stop:               lv.stop,
	}
	srv.Publisher = lv.in
	srv.NATS, srv.Prefix = g.NATS, g.Prefix
	if srv.Log == nil {
		srv.Log = g.Log
	}
	if srv.MaxMessage <= 0 {
		srv.MaxMessage = g.MaxDatagram
	}
	r.dis.addPort(port, lv.name)
	lv.ctx, lv.cancel = context.WithCancel(r.ctx)
	return lv
}

// serve runs lv until its context, a child of the parts' context, ends;
// then its socket is closed. A ws listener's WebSocket server runs as
// long: its connections get the replies until then.
func (lv *live) serve() error {
	defer close(lv.done)
	if lv.ws == nil {
		defer lv.notifications()()
		defer lv.pushes()()
		lv.err = lv.in.Serve(lv.ctx)
		return lv.err
	}
	var wg sync.WaitGroup
	var wsErr error
	ctx, cancel := context.WithCancel(lv.ctx)
	wg.Go(func() {
		select {
		case <-lv.in.Accepting(): // connections wait in the socket's backlog until then
		case <-ctx.Done():
			lv.ws.Listener.Close()
			return
		}
		wsErr = lv.ws.Serve(ctx)
		cancel() // a failed WebSocket server stops the listener
	})
	lv.err = lv.in.Serve(ctx)
	cancel()
	wg.Wait()
	lv.err = errors.Join(lv.err, wsErr)
	return lv.err
}

// lookup returns the live listener on port, or nil. g.mu must be held.
func (g *Gateway) lookup(port uint16) *live {
	for _, lv := range g.lives {
		if lv.port == port {
			return lv
		}
	}
	return nil
}

// portIndex is what egress looks up by port, for every reply: an
// immutable snapshot of the live listeners.
type portIndex struct {
	names  map[uint16]string       // PORT/PROTOCOL
	guards map[uint16]*guard.Guard // of raw and rpc listeners that have one
}

// indexLocked rebuilds g.ports from g.lives. g.mu must be held.
func (g *Gateway) indexLocked() {
	ix := &portIndex{names: make(map[uint16]string, len(g.lives)), guards: map[uint16]*guard.Guard{}}
	for _, lv := range g.lives {
		ix.names[lv.port] = lv.name
		if lv.Guard != nil && lv.Protocol != schemas.ProtocolCoAP {
			ix.guards[lv.port] = lv.Guard
		}
	}
	g.ports.Store(ix)
}

// ListenerName returns the name (PORT/PROTOCOL) of the listener the
// gateway serves on port, one being removed included. It takes no lock
// and does not allocate: the reply path may call it.
func (g *Gateway) ListenerName(port uint16) (string, bool) { return g.listenerName(port) }

// listenerName names the listener on port for egress's spans.
func (g *Gateway) listenerName(port uint16) (string, bool) {
	if ix := g.ports.Load(); ix != nil {
		name, ok := ix.names[port]
		return name, ok
	}
	return "", false
}

// guardOf returns the guard of the raw or rpc listener on port, nil if it
// has none.
func (g *Gateway) guardOf(port uint16) *guard.Guard {
	if ix := g.ports.Load(); ix != nil {
		return ix.guards[port]
	}
	return nil
}

// AddListener serves l from now on, beside the gateway's other listeners,
// which it does not touch, and returns its name (PORT/PROTOCOL). The
// gateway takes l.Conn: it closes it when the listener is removed or the
// gateway stops, and also if AddListener fails. AddListener fails if the
// gateway is not serving (before Ready, or stopping) or already serves
// l's port (a removed listener's port is free once RemoveListener's
// channel is closed). A listener added while serving holds at most
// ListenerMaxPending exchanges, or half the table if that is zero.
func (g *Gateway) AddListener(l Listener) (string, error) {
	port := uint16(l.Conn.LocalAddr().(*net.UDPAddr).Port)
	lv, err := g.add(port, func() { l.Conn.Close() }, func(r *running, share int) *live { return g.newLive(l, r, share) })
	if err != nil {
		return "", err
	}
	g.Log.Info("gateway: listener added", "listener", lv.name, "address", l.Conn.LocalAddr().String())
	return lv.name, nil
}

// AddWebSocket serves the ws listener srv from now on, as AddListener
// serves a UDP listener, and returns its name (PORT/ws); origin is its
// Origin in Status (see Listener.Origin). Set srv as an element of
// WebSockets is set: the gateway sets its Publisher, its Log if nil and
// its MaxMessage if zero, and takes srv.Listener: it closes it when the
// listener is removed or the gateway stops, and also if AddWebSocket
// fails. RemoveListener removes it gracefully: it stops accepting
// connections at once, answers the calls pending, then closes the
// connections (1001, going away) and the socket.
func (g *Gateway) AddWebSocket(srv *ws.Server, origin string) (string, error) {
	port := srv.Port
	if port == 0 {
		port = uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
	}
	lv, err := g.add(port, func() { srv.Listener.Close() }, func(r *running, share int) *live {
		lv := g.newWebSocket(srv, r, share)
		lv.Origin = origin
		return lv
	})
	if err != nil {
		return "", err
	}
	g.Log.Info("gateway: listener added", "listener", lv.name, "address", lv.address())
	return lv.name, nil
}

// add serves the listener that newLive makes on port, unless the gateway
// is not serving or serves port already: then it calls closeSocket.
func (g *Gateway) add(port uint16, closeSocket func(), newLive func(r *running, share int) *live) (*live, error) {
	g.mu.Lock()
	r := g.run
	if r == nil || g.stopping || r.ctx.Err() != nil {
		g.mu.Unlock()
		closeSocket()
		return nil, ErrNotServing
	}
	if g.lookup(port) != nil {
		g.mu.Unlock()
		closeSocket()
		return nil, fmt.Errorf("%w: %d", ErrPortServed, port)
	}
	share := g.ListenerMaxPending
	if share <= 0 {
		share = r.table.Cap() / 2
	}
	lv := newLive(r, share)
	g.lives = append(g.lives, lv)
	g.indexLocked()
	g.added.Add(1)
	r.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer r.wg.Done()
		if err := lv.serve(); err != nil {
			g.Log.Error("gateway: listener failed; removed", "listener", lv.name, "err", err)
			if lv.ws != nil {
				lv.ws.Listener.Close()
			} else {
				lv.Conn.Close() // a failed read loop leaves it open
			}
			lv.cancel()
			g.forget(lv)
		}
	}()
	return lv, nil
}

// RemoveListener stops serving the listener name (PORT/PROTOCOL) without
// touching the others: it stops reading at once, answers the exchanges
// the listener has open as usual until they are answered or their
// deadline has passed (plus a second for the answers under way), then
// closes the socket. A ws listener stops accepting connections at once,
// and refuses the calls that come after (STATUS_UNAVAILABLE) on the
// connections open; once its calls are answered, it closes them (1001,
// going away), then the socket. The returned channel is closed once the socket is
// closed and the port free; the listener is no longer in Stats and Status
// from then on.
func (g *Gateway) RemoveListener(name string) (<-chan struct{}, error) {
	g.mu.Lock()
	r := g.run
	var lv *live
	for _, c := range g.lives {
		if c.name == name && !c.removing {
			lv = c
		}
	}
	if r == nil || lv == nil {
		g.mu.Unlock()
		if r == nil {
			return nil, ErrNotServing
		}
		return nil, fmt.Errorf("%w: %s", ErrNoSuchListener, name)
	}
	lv.removing = true
	g.removed.Add(1)
	g.mu.Unlock()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		g.retire(lv, r)
	}()
	return closed, nil
}

// retire stops lv reading, waits for its open exchanges, closes it and
// forgets it.
func (g *Gateway) retire(lv *live, r *running) {
	lv.stopReading()
	deadline := g.Deadline
	if deadline <= 0 {
		deadline = ingress.DefaultDeadline
	}
	limit := time.NewTimer(deadline + time.Second)
	defer limit.Stop()
	start := time.Now()
	select {
	case <-lv.in.Drained():
	case <-lv.done:
	case <-limit.C:
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
wait:
	for lv.in.Stats().Pending > 0 || r.eg.Busy() > 0 {
		select {
		case <-t.C:
		case <-lv.done:
			break wait
		case <-limit.C:
			g.Log.Warn("gateway: removing a listener: exchanges left unanswered", "listener", lv.name, "left", lv.in.Stats().Pending)
			break wait
		}
	}
	lv.cancel()
	<-lv.done
	g.forget(lv)
	g.Log.Info("gateway: listener removed", "listener", lv.name, "after", time.Since(start).Round(time.Millisecond))
}

// forget drops lv from the live listeners.
func (g *Gateway) forget(lv *live) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lives = slices.DeleteFunc(g.lives, func(c *live) bool { return c == lv })
	g.indexLocked()
}

// Live returns the UDP listeners the gateway serves now, those being
// removed included, in the order they were added (ws listeners are not
// among them: see WebSocketsLive).
func (g *Gateway) Live() []Listener {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Listener, 0, len(g.lives))
	for _, lv := range g.lives {
		if lv.ws == nil {
			out = append(out, lv.Listener)
		}
	}
	return out
}

// WebSocketsLive returns the ws listeners the gateway serves now, those
// being removed included, in the order they were added. Their Listener
// is the gateway's wrapping of the socket given: its File method returns
// a copy of a TCP socket's descriptor.
func (g *Gateway) WebSocketsLive() []*ws.Server {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*ws.Server
	for _, lv := range g.lives {
		if lv.ws != nil {
			out = append(out, lv.ws)
		}
	}
	return out
}
