// Package bridge leases UDP listeners to processes that cannot bind host
// ports themselves (a container without host networking, a browser tool,
// a serverless job): the koi_udp API, path for path, over HTTP with
// Server-Sent Events, and the same operations as NATS requests.
//
// A lease (a binding) is an ordinary raw listener of the gateway on the
// port it took, so every datagram to it is published and captured like any
// other (PREFIX.in.PORT, the UDPGATE_IN stream); the binding's SSE readers
// see it too, through the listener's Tap. Sends go out through the
// binding's own socket, to the addresses that sent to it or to the
// configured prefixes, at most at the configured rate. A lease lives on the
// node that made it, and ends when it is deleted, when its lease runs out
// without a heartbeat (the reaper), or when the bridge stops.
//
// A Bridge is safe for concurrent use. docs/bridge.md is the API
// reference; docs/security.md says who may use it.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// Defaults for the zero values of Bridge's fields.
const (
	DefaultLease       = 300 * time.Second
	MaxLease           = 86400 * time.Second
	DefaultMaxBindings = 64
	DefaultReap        = time.Second
	DefaultKeepAlive   = 15 * time.Second
	// DefaultBuffer is how many datagrams wait for one SSE reader; more
	// are dropped (counted) until it catches up.
	DefaultBuffer = 256
	// DefaultMaxReaders is how many SSE streams one binding may have.
	DefaultMaxReaders = 8
	// MaxPayload is the largest datagram a send may carry (IPv4's UDP
	// limit).
	MaxPayload = 65507
	// maxPeers bounds the addresses a binding remembers as having sent
	// to it; beyond, one is forgotten for each new one.
	maxPeers = 1024
)

// Kinds of binding: the API that created it.
const (
	KindHTTP = "http"
	KindNATS = "nats"
)

var kinds = [...]string{KindHTTP, KindNATS}

// Bridge leases listeners of one gateway node. Set its fields, then call
// Serve once; Handler serves the HTTP API.
type Bridge struct {
	// Gateway serves the leased listeners. Required.
	Gateway *gateway.Gateway
	// NATS, if not nil, carries the NATS service
	// (PREFIX.bind.NODE.OPERATION).
	NATS *nats.Conn
	// Node names the node in statuses and in the NATS subjects; Prefix is
	// the subject prefix (schemas.DefaultPrefix if empty).
	Node, Prefix string
	// Config says which ports may be leased, by whom, how many, and where
	// and how fast a lease may send. Nothing may be leased while
	// Config.Ports is empty; the HTTP API is off while Config.Token is
	// empty.
	Config config.Bridge
	// Guard is each leased listener's guard (the node's defaults for
	// listeners); the zero Config admits everything.
	Guard guard.Config
	// RcvBuf, if positive, sets SO_RCVBUF of the leased sockets.
	RcvBuf int
	// Reap is how often leases are checked for expiry (DefaultReap if
	// zero); KeepAlive how often an idle SSE stream gets a comment
	// (DefaultKeepAlive); Buffer the datagrams one SSE reader may fall
	// behind (DefaultBuffer); MaxReaders the SSE streams per binding
	// (DefaultMaxReaders).
	Reap, KeepAlive    time.Duration
	Buffer, MaxReaders int
	Log                *slog.Logger // nil discards

	now func() time.Time // time.Now unless a test sets it

	mu       sync.Mutex          // guards bindings, reserved and serving
	bindings map[string]*binding // by id
	reserved int                 // binds under way, counted against MaxBindings
	serving  bool                // Serve runs
	initOnce sync.Once

	stats    [len(kinds)]kindStats
	refused  [len(kinds)][numReasons]atomic.Uint64
	reaped   atomic.Uint64
	readers  atomic.Int64 // SSE streams open
	sseDrops atomic.Uint64
}

// kindStats are the cumulative counts of the bindings of one kind.
type kindStats struct {
	created, inPackets, inBytes, outPackets, outBytes atomic.Uint64
}

func kindIndex(kind string) int {
	if kind == KindNATS {
		return 1
	}
	return 0
}

func (b *Bridge) init() {
	b.initOnce.Do(func() {
		b.bindings = map[string]*binding{}
		if b.now == nil {
			b.now = time.Now
		}
		if b.Log == nil {
			b.Log = slog.New(slog.DiscardHandler)
		}
		if b.Prefix == "" {
			b.Prefix = schemas.DefaultPrefix
		}
	})
}

func (b *Bridge) maxBindings() int {
	if b.Config.MaxBindings > 0 {
		return b.Config.MaxBindings
	}
	return DefaultMaxBindings
}

// Serve runs the reaper and the NATS service until ctx ends; then it
// closes every binding (their SSE streams end) and returns nil once their
// ports are free. With Config.Ports empty it leases nothing and only waits.
func (b *Bridge) Serve(ctx context.Context) error {
	b.init()
	if !b.Config.On() {
		<-ctx.Done()
		return nil
	}
	var svc *service
	if b.NATS != nil {
		var err error
		if svc, err = b.startService(); err != nil {
			return err
		}
	}
	b.mu.Lock()
	b.serving = true
	b.mu.Unlock()
	b.Log.Info("bridge: leasing listeners", "ports", fmt.Sprint(b.Config.Ports), "max_bindings", b.maxBindings(),
		"http", b.Config.Token != "", "nats", svc != nil)
	reap := b.Reap
	if reap <= 0 {
		reap = DefaultReap
	}
	t := time.NewTicker(reap)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			b.reap()
			continue
		case <-ctx.Done():
		}
		break
	}
	svc.stop()
	b.mu.Lock()
	b.serving = false
	var all []*binding
	for _, bd := range b.bindings {
		all = append(all, bd)
	}
	b.mu.Unlock()
	var free []<-chan struct{}
	for _, bd := range all {
		free = append(free, b.close(bd, "stopped"))
	}
	for _, c := range free {
		<-c
	}
	return nil
}

// reap closes the bindings whose lease ran out without a heartbeat.
func (b *Bridge) reap() {
	now := b.now()
	b.mu.Lock()
	var expired []*binding
	for _, bd := range b.bindings {
		if bd.expired(now) {
			expired = append(expired, bd)
		}
	}
	b.mu.Unlock()
	for _, bd := range expired {
		if b.close(bd, "expired") != nil {
			b.Log.Info("bridge: lease expired; closed", "id", bd.id, "listener", bd.name, "kind", bd.kind)
		}
	}
}

// lookup returns the live binding id, or a not_found Error.
func (b *Bridge) lookup(id string) (*binding, *Error) {
	b.init()
	b.mu.Lock()
	bd := b.bindings[id]
	b.mu.Unlock()
	if bd == nil {
		return nil, errorf(reasonNotFound, "no binding %q on node %s (expired, deleted, or held by another node)", id, b.Node)
	}
	return bd, nil
}

// Bind leases a listener as spec says, for a caller of kind.
func (b *Bridge) Bind(ctx context.Context, kind string, spec BindRequest) (Info, *Error) {
	b.init()
	addr, lease, e := spec.check()
	if e != nil {
		return Info{}, e
	}
	if addr.Port() != 0 && !b.Config.Allows(addr.Port()) {
		return Info{}, errorf(reasonPortRange, "port %d is outside the ports leases may take (UDPGATE_BRIDGE_PORTS=%s)", addr.Port(), b.portsString())
	}
	b.mu.Lock()
	switch {
	case !b.serving:
		b.mu.Unlock()
		return Info{}, errorf(reasonNotServing, "the bridge is not serving (the gateway is starting or stopping)")
	case len(b.bindings)+b.reserved >= b.maxBindings():
		b.mu.Unlock()
		return Info{}, errorf(reasonBindingCap, "this node holds its most bindings, %d (UDPGATE_BRIDGE_MAX_BINDINGS); delete one or wait for one to expire", b.maxBindings())
	}
	b.reserved++
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.reserved--
		b.mu.Unlock()
	}()

	now := b.now().UTC()
	id, err := uuid.NewV7()
	if err != nil {
		return Info{}, errorf(reasonBindFailed, "no id: %v", err)
	}
	bd := &binding{
		id: id.String(), kind: kind, stats: &b.stats[kindIndex(kind)], created: now, lease: lease,
		done: make(chan struct{}), readers: map[*reader]struct{}{}, peers: map[netip.AddrPort]struct{}{},
		buffer: b.Buffer, maxReaders: b.MaxReaders, drops: &b.sseDrops,
	}
	bd.heartbeat.Store(now.UnixNano())
	if b.Config.SendRate > 0 {
		if bd.rate, err = guard.New(guard.Config{ListenerRate: b.Config.SendRate}); err != nil {
			return Info{}, errorf(reasonBindFailed, "send rate: %v", err)
		}
	}
	gd, err := guard.New(b.Guard)
	if err != nil {
		return Info{}, errorf(reasonBindFailed, "listener guard: %v", err)
	}
	if e := b.listen(ctx, bd, addr, gd); e != nil {
		return Info{}, e
	}
	b.mu.Lock()
	if !b.serving { // stopped while binding
		b.mu.Unlock()
		if c, err := b.Gateway.RemoveListener(bd.name); err == nil {
			<-c
		}
		return Info{}, errorf(reasonNotServing, "the bridge stopped")
	}
	b.bindings[bd.id] = bd
	b.mu.Unlock()
	bd.stats.created.Add(1)
	b.Log.Info("bridge: bound", "id", bd.id, "address", bd.local.String(), "lease", lease, "kind", kind)
	return b.info(bd, false), nil
}

// listen binds a socket for bd on addr (a port of the ranges if addr's
// is 0) and adds it to the gateway as a raw listener.
func (b *Bridge) listen(ctx context.Context, bd *binding, addr netip.AddrPort, gd *guard.Guard) *Error {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	try := func(port uint16) (error, bool) { // (error, the port is taken)
		a := netip.AddrPortFrom(addr.Addr(), port)
		c, err := ingress.Listen(ctx, network, a.String(), b.RcvBuf)
		if err != nil {
			return err, errors.Is(err, syscall.EADDRINUSE)
		}
		bd.conn = c
		bd.local = c.LocalAddr().(*net.UDPAddr).AddrPort()
		bd.local = netip.AddrPortFrom(bd.local.Addr().Unmap(), bd.local.Port())
		name, err := b.Gateway.AddListener(gateway.Listener{Conn: c, Protocol: schemas.ProtocolRaw, Guard: gd, Tap: bd.tap, Origin: "lease " + bd.id})
		if err != nil { // the gateway closed c
			return err, errors.Is(err, gateway.ErrPortServed)
		}
		bd.name = name
		return nil, false
	}
	failed := func(err error) *Error {
		if errors.Is(err, gateway.ErrNotServing) {
			return errorf(reasonNotServing, "the gateway is not serving (starting or stopping)")
		}
		return errorf(reasonBindFailed, "cannot bind %s: %v", addr, err)
	}
	if addr.Port() != 0 {
		err, taken := try(addr.Port())
		switch {
		case taken:
			return errorf(reasonPortInUse, "port %d is in use", addr.Port())
		case err != nil:
			return failed(err)
		}
		return nil
	}
	// Port 0: a free port of the ranges, from a random one on.
	total := 0
	for _, r := range b.Config.Ports {
		total += int(r.High) - int(r.Low) + 1
	}
	start := rand.IntN(total)
	for i := range total {
		err, taken := try(b.portAt((start + i) % total))
		switch {
		case err == nil:
			return nil
		case !taken:
			return failed(err)
		}
	}
	return errorf(reasonPortInUse, "no free port in UDPGATE_BRIDGE_PORTS=%s", b.portsString())
}

// portAt returns the i-th port of the ranges, counted across them.
func (b *Bridge) portAt(i int) uint16 {
	for _, r := range b.Config.Ports {
		n := int(r.High) - int(r.Low) + 1
		if i < n {
			return r.Low + uint16(i)
		}
		i -= n
	}
	return 0
}

func (b *Bridge) portsString() string {
	s := ""
	for i, r := range b.Config.Ports {
		if i > 0 {
			s += ","
		}
		s += r.String()
	}
	return s
}

// close ends bd: it leaves the table at once (later requests get 404), its
// SSE streams end with reason, and the gateway stops serving its port.
// The channel is closed once the port is free; nil if bd was closed
// already.
func (b *Bridge) close(bd *binding, reason string) <-chan struct{} {
	b.mu.Lock()
	if b.bindings[bd.id] != bd {
		b.mu.Unlock()
		return nil
	}
	delete(b.bindings, bd.id)
	if reason == "expired" {
		// Counted as it leaves the table: whoever sees it gone sees it
		// counted.
		b.reaped.Add(1)
	}
	b.mu.Unlock()
	bd.shut(reason)
	c, err := b.Gateway.RemoveListener(bd.name)
	if err != nil {
		// The gateway stopped (its sockets are closed) or the listener
		// failed and is gone already.
		done := make(chan struct{})
		close(done)
		return done
	}
	b.Log.Info("bridge: closed", "id", bd.id, "listener", bd.name, "reason", reason)
	return c
}

// Delete closes the binding id and waits until its port is free or ctx
// ends.
func (b *Bridge) Delete(ctx context.Context, id string) *Error {
	bd, e := b.lookup(id)
	if e != nil {
		return e
	}
	c := b.close(bd, "deleted")
	if c == nil {
		return errorf(reasonNotFound, "no binding %q on node %s (closed meanwhile)", id, b.Node)
	}
	select {
	case <-c:
	case <-ctx.Done():
	}
	return nil
}

// Heartbeat extends the lease of binding id by its length from now.
func (b *Bridge) Heartbeat(id string) (Info, *Error) {
	bd, e := b.lookup(id)
	if e != nil {
		return Info{}, e
	}
	bd.heartbeat.Store(b.now().UnixNano())
	return b.info(bd, false), nil
}

// Send sends payload from binding id to dest, if dest is allowed and the
// binding's send rate permits; it returns the bytes sent.
func (b *Bridge) Send(id string, dest netip.AddrPort, payload []byte) (int, *Error) {
	bd, e := b.lookup(id)
	if e != nil {
		return 0, e
	}
	dest = netip.AddrPortFrom(dest.Addr().Unmap(), dest.Port())
	if bd.local.Addr().Is4() != dest.Addr().Is4() {
		return 0, errorf(reasonBadRequest, "dest %s: binding %s is %s and sends to %s addresses only", dest, id, bd.local, family(bd.local.Addr()))
	}
	if !bd.sentFrom(dest) && !b.sendAllowed(dest.Addr()) {
		return 0, errorf(reasonSendDest, "dest %s has not sent to this binding and is not in UDPGATE_BRIDGE_SEND_ALLOW", dest)
	}
	if bd.rate != nil {
		if v, wait := bd.rate.Admit(dest.Addr(), b.now()); v != guard.Admitted {
			e := errorf(reasonSendRate, "binding %s sends at most %v datagrams a second (UDPGATE_BRIDGE_SEND_RATE); try again in %v", id, b.Config.SendRate, wait.Round(time.Millisecond))
			e.RetryAfter = wait
			return 0, e
		}
	}
	n, err := bd.conn.WriteToUDPAddrPort(payload, dest)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, errorf(reasonNotFound, "binding %s closed", id)
		}
		return 0, errorf(reasonSendFailed, "send to %s: %v", dest, err)
	}
	bd.sent.Add(1)
	bd.stats.outPackets.Add(1)
	bd.stats.outBytes.Add(uint64(n))
	return n, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// sendAllowed reports whether a is in Config.SendAllow.
func (b *Bridge) sendAllowed(a netip.Addr) bool {
	for _, p := range b.Config.SendAllow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Info describes a binding: what bind answers, and each entry of the
// status.
type Info struct {
	ID            string    `json:"id"`
	LocalAddr     string    `json:"local_addr"`
	CreatedAt     time.Time `json:"created_at"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	LeaseSecs     int64     `json:"lease_secs"`
	// ExpiresAt is when the reaper closes the binding unless a heartbeat
	// comes first.
	ExpiresAt time.Time `json:"expires_at"`
	Node      string    `json:"node"` // the node that holds it
	Kind      string    `json:"kind"` // the API that created it: http or nats
	// Subject is where its datagrams are published (PREFIX.in.PORT): a
	// NATS client receives them there.
	Subject string `json:"subject"`
	// In the status only.
	Readers      int    `json:"readers,omitempty"` // SSE streams
	DatagramsIn  uint64 `json:"datagrams_in,omitempty"`
	DatagramsOut uint64 `json:"datagrams_out,omitempty"`
}

func (b *Bridge) info(bd *binding, counts bool) Info {
	hb := time.Unix(0, bd.heartbeat.Load()).UTC()
	in := Info{
		ID: bd.id, LocalAddr: bd.local.String(), CreatedAt: bd.created, LastHeartbeat: hb,
		LeaseSecs: int64(bd.lease / time.Second), ExpiresAt: hb.Add(bd.lease), Node: b.Node, Kind: bd.kind,
		Subject: schemas.InSubject(b.Prefix, bd.local.Port()),
	}
	if counts {
		in.Readers, in.DatagramsIn, in.DatagramsOut = bd.readerCount(), bd.received.Load(), bd.sent.Load()
	}
	return in
}

// Status is the bindings this node holds.
type Status struct {
	Node     string `json:"node"`
	Bindings []Info `json:"bindings"`
}

// Status returns the live bindings, oldest first.
func (b *Bridge) Status() Status {
	b.init()
	b.mu.Lock()
	all := make([]*binding, 0, len(b.bindings))
	for _, bd := range b.bindings {
		all = append(all, bd)
	}
	b.mu.Unlock()
	st := Status{Node: b.Node, Bindings: make([]Info, 0, len(all))}
	for _, bd := range all {
		st.Bindings = append(st.Bindings, b.info(bd, true))
	}
	sortInfos(st.Bindings)
	return st
}

// BindRequest is the body of a bind: the port (0: any of the ranges), the
// local address (0.0.0.0 if empty) and the lease in seconds (300 if
// absent, at most 86,400).
type BindRequest struct {
	Port      int    `json:"port"`
	Addr      string `json:"addr"`
	LeaseSecs int64  `json:"lease_secs"`
}

// check returns the address to bind and the lease.
func (r BindRequest) check() (netip.AddrPort, time.Duration, *Error) {
	if r.Port < 0 || r.Port > 65535 {
		return netip.AddrPort{}, 0, errorf(reasonBadRequest, "port %d is not 0 (any) to 65535", r.Port)
	}
	a := netip.IPv4Unspecified()
	if r.Addr != "" {
		var err error
		if a, err = netip.ParseAddr(r.Addr); err != nil || a.Zone() != "" {
			return netip.AddrPort{}, 0, errorf(reasonBadRequest, "addr %q is not an IP address (like 0.0.0.0, 127.0.0.1 or ::)", r.Addr)
		}
		a = a.Unmap()
	}
	if r.LeaseSecs <= 0 {
		return netip.AddrPort{}, 0, errorf(reasonBadRequest, "lease_secs %d: want 1 to %d", r.LeaseSecs, int64(MaxLease/time.Second))
	}
	lease := MaxLease
	if r.LeaseSecs < int64(MaxLease/time.Second) {
		lease = time.Duration(r.LeaseSecs) * time.Second
	}
	return netip.AddrPortFrom(a, uint16(r.Port)), lease, nil
}
