package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/ws"
)

// DefaultPoll is how often a ListenersFile compares the file's content
// with what it read last.
const DefaultPoll = time.Second

// OriginFile is the gateway.Listener.Origin of the listener file's
// listeners.
const OriginFile = "file"

// ListenersFile keeps the listeners of a serving gateway in line with the
// listener file (UDPGATE_LISTENERS_FILE, config.ParseListenersFile), UDP
// and ws listeners alike (gateway.Gateway.AddWebSocket; a ws listener is
// made as at start, see webSockets): Load
// reads it and applies the difference with what it applied before, and
// Serve loads it again on SIGHUP and whenever its content changes. Only
// the difference is applied: a listener the file still lists as it was
// is not touched; one it no longer lists is removed
// (gateway.Gateway.RemoveListener: it stops reading, answers what is
// pending, then closes); a new one is bound and added; one whose address,
// protocol or options changed (push included: a listener takes pushes or
// not from the start) is removed, then bound again once its port is free
// (datagrams that arrive in between are lost). A reading is
// refused as a whole, and nothing changes, if the file is missing or bad
// or one of its new ports cannot be bound. Set the fields, call Load
// once, then Serve. Its methods are safe for concurrent use.
type ListenersFile struct {
	Path    string           // required
	Gateway *gateway.Gateway // required; serving
	// Config gives the listeners their guard's defaults
	// (Config.ListenerGuard), UDPGATE_RCVBUF, and ws listeners their
	// limits, connection rate and certificate (Config.WS).
	Config config.Config
	// Fixed are the listeners the gateway serves from its configuration
	// (UDPGATE_LISTENERS, run's built-in listeners): the file may not
	// name their ports.
	Fixed []config.Listener
	// Inherited, if not nil, holds sockets handed over by the process
	// this one replaces: the first Load takes the file's from it.
	Inherited *Inherited
	Log       *slog.Logger // nil discards
	// Trigger, if not nil, has Serve load the file each time it receives;
	// nil means on SIGHUP.
	Trigger <-chan struct{}
	// Poll is how often Serve compares the file's content with what it
	// read last, DefaultPoll if zero. A change is loaded once the content
	// has stayed the same for a quarter of Poll, so that a file being
	// written is not read half-way.
	Poll time.Duration

	mu      sync.Mutex              // guards what follows; held by Load throughout
	loaded  bool                    // Load ran once
	applied map[uint16]fileListener // the file's listeners served, by port
	// leaving are the file's listeners being removed, by port: closed
	// once the port is free.
	leaving map[uint16]<-chan struct{}
	seen    reading // what Load read last
	wss     *webSockets
	dtls    *dtlsListeners

	applies, unchanged, refused atomic.Uint64
	lastRefused                 atomic.Bool
	listeners                   atomic.Int64
}

// fileListener is a listener of the file that the gateway serves.
type fileListener struct {
	config.Listener
	name string // the gateway's: PORT/PROTOCOL
	conn *net.UDPConn
	ws   *ws.Server // a ws listener's, instead of conn
}

// socket is a listener bound and not served yet: a UDP listener, or a ws
// listener's server.
type socket struct {
	udp gateway.Listener
	ws  *ws.Server
}

func (s socket) close() {
	if s.ws != nil {
		s.ws.Listener.Close()
		return
	}
	s.udp.Conn.Close()
}

// reading is the content of the file, or why it could not be read.
type reading struct {
	data []byte
	err  string
}

func (r reading) same(o reading) bool { return r.err == o.err && bytes.Equal(r.data, o.data) }

// StartListenersFile reads cfg.ListenersFile, serves its listeners on r's
// gateway beside fixed (the listeners r was started with, which the file
// may not name), registers the metrics, and keeps the listeners in line
// with the file as one more part of r until r stops (see ListenersFile).
// inh, if not nil, holds sockets handed over by the process this one
// replaces: the file's listeners take theirs (call inh.CloseUnused
// after). It returns an error, and serves none of the file's listeners, if
// the file is missing or bad or one of its ports cannot be bound: the
// caller stops r. Call it once, after StartGateway (or Start) has
// returned, when cfg.ListenersFile is not empty.
func StartListenersFile(r *Running, cfg config.Config, log *slog.Logger, fixed []config.Listener, inh *Inherited) (*ListenersFile, error) {
	f := &ListenersFile{Path: cfg.ListenersFile, Gateway: r.Gateway, Config: cfg, Fixed: fixed, Inherited: inh, Log: log}
	if err := f.Load(r.Context()); err != nil {
		return nil, err
	}
	if err := observe.RegisterListenerFile(r.Observe.Registry, f.Stats); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	r.Go(func() error { return f.Serve(r.Context()) })
	return f, nil
}

// Stats returns the readings of the file so far, and how many of its
// listeners are served now.
func (f *ListenersFile) Stats() observe.ListenerFileStats {
	return observe.ListenerFileStats{
		Applied: f.applies.Load(), Unchanged: f.unchanged.Load(), Refused: f.refused.Load(),
		LastRefused: f.lastRefused.Load(), Listeners: int(f.listeners.Load()),
	}
}

// Listeners returns the file's listeners the gateway serves now, by
// port.
func (f *ListenersFile) Listeners() []config.Listener {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []config.Listener
	for _, p := range slices.Sorted(maps.Keys(f.applied)) {
		out = append(out, f.applied[p].Listener)
	}
	return out
}

func (f *ListenersFile) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

// Serve loads the file on each Trigger (SIGHUP if nil) and whenever its
// content changes, until ctx ends or the gateway stops serving; it
// returns nil then. A refused reading is logged and counted, and changes
// nothing: Serve goes on.
func (f *ListenersFile) Serve(ctx context.Context) error {
	var sigs chan os.Signal // nil, which never receives, with a Trigger
	if f.Trigger == nil {
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGHUP)
		defer signal.Stop(sigs)
	}
	poll := cmp.Or(f.Poll, DefaultPoll)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.Trigger:
			f.log().Info("listener file: reading it again", "file", f.Path)
		case <-sigs:
			f.log().Info("listener file: reading it again (SIGHUP)", "file", f.Path)
		case <-tick.C:
			if !f.changed(ctx, poll/4) {
				continue
			}
			f.log().Info("listener file: its content changed; reading it again", "file", f.Path)
		}
		if err := f.Load(ctx); errors.Is(err, gateway.ErrNotServing) {
			return nil
		}
	}
}

// changed reports whether the file's content differs from what Load read
// last, and has stayed the same for settle.
func (f *ListenersFile) changed(ctx context.Context, settle time.Duration) bool {
	now := f.read()
	f.mu.Lock()
	same := now.same(f.seen)
	f.mu.Unlock()
	if same {
		return false
	}
	t := time.NewTimer(settle)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	return f.read().same(now)
}

// read reads the file's content.
func (f *ListenersFile) read() reading {
	_, data, err := config.ReadListenersFile(f.Path, nil)
	if data == nil && err != nil {
		return reading{err: err.Error()}
	}
	return reading{data: data}
}

// Load reads the file and applies the difference between its listeners
// and those applied before (none before the first Load). It returns the
// error that refused the reading, if it was: nothing changed then. A
// listener whose socket could not be bound again after a change is
// logged and not served; the next reading tries it again.
func (f *ListenersFile) Load(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	log := f.log().With("file", f.Path)
	want, data, err := config.ReadListenersFile(f.Path, f.Fixed)
	f.seen = reading{data: data}
	if data == nil && err != nil {
		f.seen = reading{err: err.Error()}
	}
	if err != nil {
		return f.refuse(log, err)
	}
	if f.applied == nil {
		f.applied, f.leaving = map[uint16]fileListener{}, map[uint16]<-chan struct{}{}
		f.wss = &webSockets{cfg: f.Config, log: f.log()}
		f.dtls = &dtlsListeners{cfg: f.Config, log: f.log()}
	}
	// A listener of the file that failed since (its socket broke) is no
	// longer served: it is added again.
	live := map[any]bool{}
	for _, l := range f.Gateway.Live() {
		live[l.Conn] = true
	}
	for _, srv := range f.Gateway.WebSocketsLive() {
		live[srv] = true
	}
	wanted := map[uint16]config.Listener{}
	var added, changed []config.Listener
	for _, l := range want {
		p := l.Addr.Port()
		wanted[p] = l
		switch old, ok := f.applied[p]; {
		case !ok || !live[old.socket()]:
			added = append(added, l)
		case old.Listener != l:
			changed = append(changed, l)
		}
	}
	var removed []fileListener
	for _, p := range slices.Sorted(maps.Keys(f.applied)) {
		if _, ok := wanted[p]; !ok {
			removed = append(removed, f.applied[p])
		}
	}
	if len(added)+len(changed)+len(removed) == 0 {
		f.unchanged.Add(1)
		f.lastRefused.Store(false)
		log.Debug("listener file: nothing to change", "listeners", len(f.applied))
		return nil
	}

	// Everything that can fail is done before anything changes: each
	// listener's guard, the certificate of wss listeners, and the
	// sockets of the new ports. A port that is still being removed, or
	// that a changed listener holds, is bound once it is free.
	guards := map[uint16]*guard.Guard{}
	bound := map[uint16]socket{}
	var problems []string
	for _, l := range slices.Concat(added, changed) {
		gd, err := guard.New(f.Config.ListenerGuard(l))
		if err == nil && l.TLS {
			_, err = f.wss.certificates()
		}
		if err == nil && l.DTLS {
			_, err = f.dtls.config()
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("listener %s: %v", l, err))
			continue
		}
		guards[l.Addr.Port()] = gd
	}
	for _, l := range added {
		p := l.Addr.Port()
		if ch, ok := f.leaving[p]; ok {
			select {
			case <-ch:
				delete(f.leaving, p) // free already
			default:
				continue
			}
		}
		if guards[p] == nil {
			continue
		}
		sk, err := f.listen(ctx, l, guards[p], !f.loaded)
		if err != nil {
			problems = append(problems, fmt.Sprintf("listener %s: %v", l, err))
			continue
		}
		bound[p] = sk
	}
	if len(problems) > 0 {
		for _, sk := range bound {
			sk.close()
		}
		return f.refuse(log, &config.Error{Problems: problems})
	}

	for _, old := range removed {
		f.remove(log, old)
	}
	for _, l := range changed {
		f.remove(log, f.applied[l.Addr.Port()])
	}
	var failed []string
	prebound := map[uint16]bool{}
	for _, l := range added {
		p := l.Addr.Port()
		sk, ok := bound[p]
		if !ok {
			continue // bound below, once free
		}
		prebound[p] = true
		delete(bound, p) // the gateway's now, even if it refuses it
		if err := f.add(log, l, sk); err != nil {
			if errors.Is(err, gateway.ErrNotServing) {
				for _, sk := range bound {
					sk.close()
				}
				return err
			}
			failed = append(failed, err.Error())
		}
	}
	// Changed listeners, and ports still being removed: bound once free.
	for _, l := range slices.Concat(added, changed) {
		p := l.Addr.Port()
		if prebound[p] {
			continue
		}
		if ch, ok := f.leaving[p]; ok {
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		sk, err := f.listen(ctx, l, guards[p], false)
		if err == nil {
			err = f.add(log, l, sk)
		}
		if err != nil {
			if errors.Is(err, gateway.ErrNotServing) {
				return err
			}
			failed = append(failed, fmt.Sprintf("listener %s: %v", l, err))
		}
	}
	f.loaded = true
	f.applies.Add(1)
	f.lastRefused.Store(false)
	f.listeners.Store(int64(len(f.applied)))
	log.Info("listener file applied", "added", names(added), "changed", names(changed), "removed", names(listenersOf(removed)),
		"listeners", len(f.applied))
	if len(failed) > 0 {
		log.Error("listener file: listeners not served; the next reading (SIGHUP) tries again", "problems", failed)
	}
	return nil
}

// refuse counts and logs a refused reading and returns err.
func (f *ListenersFile) refuse(log *slog.Logger, err error) error {
	f.refused.Add(1)
	f.lastRefused.Store(true)
	problems := []string{err.Error()}
	var ce *config.Error
	if errors.As(err, &ce) {
		problems = ce.Problems
	}
	log.Error("listener file refused; the listeners stay as they were", "problems", problems)
	return err
}

// listen binds l's socket, or takes it from the sockets handed over if
// inherited.
func (f *ListenersFile) listen(ctx context.Context, l config.Listener, gd *guard.Guard, inherited bool) (socket, error) {
	if l.Protocol == schemas.ProtocolWS {
		var ln net.Listener
		if inherited {
			ln = f.Inherited.tcp(l)
		}
		if ln == nil {
			var err error
			if ln, err = listenTCP(ctx, l); err != nil {
				return socket{}, err
			}
		}
		srv, err := f.wss.server(l, ln, gd)
		if err != nil {
			ln.Close()
			return socket{}, err
		}
		return socket{ws: srv}, nil
	}
	var c *net.UDPConn
	if inherited {
		c = f.Inherited.UDP(l)
	}
	if c == nil {
		var err error
		if c, err = listenUDP(ctx, l, f.Config.RcvBuf); err != nil {
			return socket{}, err
		}
	}
	var dc *dtls.Config
	if l.DTLS {
		var err error
		if dc, err = f.dtls.listener(l); err != nil { // loaded already, by Load's checks
			c.Close()
			return socket{}, err
		}
	}
	return socket{udp: gateway.Listener{Conn: c, Protocol: l.Protocol, Guard: gd, NoReply: l.NoReply, Push: l.Push, Origin: OriginFile, DTLS: dc}}, nil
}

// add serves sk, the socket of the file's listener l.
func (f *ListenersFile) add(log *slog.Logger, l config.Listener, sk socket) error {
	var name string
	var err error
	if sk.ws != nil {
		name, err = f.Gateway.AddWebSocket(sk.ws, OriginFile)
	} else {
		name, err = f.Gateway.AddListener(sk.udp)
	}
	if err != nil {
		return err
	}
	p := l.Addr.Port()
	f.applied[p] = fileListener{Listener: l, name: name, conn: sk.udp.Conn, ws: sk.ws}
	delete(f.leaving, p)
	log.Info("listener file: listener added", "listener", l.String(), "name", name)
	return nil
}

// remove has the gateway remove old, which the file no longer lists as
// it is.
func (f *ListenersFile) remove(log *slog.Logger, old fileListener) {
	p := old.Addr.Port()
	delete(f.applied, p)
	ch, err := f.Gateway.RemoveListener(old.name)
	if errors.Is(err, gateway.ErrNoSuchListener) {
		return // it failed, and is gone already
	}
	if err != nil {
		log.Warn("listener file: removing a listener", "listener", old.String(), "err", err)
		return
	}
	f.leaving[p] = ch
	log.Info("listener file: listener removed: it answers what is pending, then closes", "listener", old.String(), "name", old.name)
}

// socket returns what the gateway serves fl on, as Live and
// WebSocketsLive return it.
func (fl fileListener) socket() any {
	if fl.ws != nil {
		return fl.ws
	}
	return fl.conn
}

func names(ls []config.Listener) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

func listenersOf(fs []fileListener) []config.Listener {
	out := make([]config.Listener, len(fs))
	for i, fl := range fs {
		out[i] = fl.Listener
	}
	return out
}
