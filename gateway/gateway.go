// Package gateway runs a udpgate gateway node: the ingress of each listener
// socket and the node's egress, sharing one table of pending exchanges, on
// one NATS connection. It owns the wiring only; ingress and egress never
// import each other.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/egress"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/ratelog"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/ws"
)

// Listener is one bound socket and the protocol it speaks.
type Listener struct {
	Conn     *net.UDPConn // bound with ingress.Listen; the gateway closes it
	Protocol string       // schemas.ProtocolRaw, schemas.ProtocolCoAP or schemas.ProtocolRPC
	// Guard, if not nil, is the listener's allow and deny lists, rate
	// limits and amplification limit; nil admits everything and limits
	// nothing.
	Guard *guard.Guard
	// NoReply captures and publishes without opening exchanges; nothing
	// is sent back (raw only; see ingress.Server.NoReply).
	NoReply bool
	// Tap, if not nil, is called with each datagram the listener admits,
	// on its read loop (see ingress.Server.Tap).
	Tap ingress.Tap
	// Push lets workers send unsolicited datagrams from a raw listener to
	// the sources that sent to it (see Gateway.Push): the listener
	// remembers its peers and subscribes to its push subject. Ignored on
	// other protocols.
	Push bool
	// Origin says where a listener added while serving comes from, for
	// Status: "file" (the listener file), "lease ID" (a leased listener),
	// or empty (the configuration at start).
	Origin string
	// DTLS, if not nil, secures a raw or coap listener with DTLS: a dtls
	// or coaps listener (see ingress.Server.DTLS). Push and NoReply do
	// not apply to it.
	DTLS *dtls.Config
}

// Gateway is one gateway node. Set its fields, then call Serve once.
type Gateway struct {
	NATS   *nats.Conn // required
	Node   string     // required; names the node's reply subject
	Prefix string     // schemas.DefaultPrefix if empty
	Stream ingress.StreamConfig
	// Replies is the stream that records workers' replies; its subject is
	// set from Prefix. An empty Name records none.
	Replies   ingress.StreamConfig
	Listeners []Listener
	// WebSockets are the ws listeners: RPC over WebSocket on TCP
	// sockets, beside the UDP listeners, sharing their table and egress.
	// Set each one's Listener and limits; the gateway sets Publisher,
	// Log if nil, and MaxMessage if zero (MaxDatagram), and closes the
	// Listener, which it wraps: a ws listener stops accepting
	// connections as soon as it stops reading (a graceful stop,
	// RemoveListener), and closes them once its calls are answered. A ws
	// port may not be a UDP listener's port: the port names the subjects.
	// AddWebSocket adds one while the gateway serves.
	WebSockets []*ws.Server

	Deadline    time.Duration // per request; ingress.DefaultDeadline if zero
	MaxDatagram int           // ingress.DefaultMaxDatagram if zero
	Queue       int           // per listener; ingress.DefaultQueue if zero
	MaxInFlight int           // per listener; ingress.DefaultMaxInFlight if zero
	MaxPending  int           // open exchanges per node; exchange.DefaultSize if zero
	CoAP        coap.Config   // the messaging layer of coap listeners
	Log         *slog.Logger  // nil discards
	// Latency, if not nil, is called for every reply sent, with the
	// listener port and the time from reading the request to sending the
	// reply; see egress.Server.Latency.
	Latency func(port uint16, d time.Duration)
	// ListenerMaxPending is the most exchanges one listener may hold
	// open, so that a port whose workers are slow or gone, or a flood on
	// one port, cannot take the table from the others. Zero means half
	// the table on a node with two or more answering listeners, and the
	// whole table on a node with one (nobody else needs it).
	ListenerMaxPending int
	// ServedInterval bounds the staleness of what the gateway knows of
	// the durable groups (DefaultServedInterval if zero): which subjects
	// the capture stream's consumers cover, read when a request no direct
	// group took arrives and the latest reading is older than this. A
	// request that no direct group took and no durable group serves is
	// settled at once: raw released (counted no_worker), CoAP and RPC
	// answered (4.04, 4.05, STATUS_UNIMPLEMENTED; counted unserved).
	ServedInterval time.Duration
	// DiscoveryInterval is how often the gateway asks the worker groups
	// what they serve (NATS service discovery, $SRV.STATS), for resource
	// discovery, 4.05 answers and Status (DefaultDiscoveryInterval if
	// zero). An instance that stops answering is forgotten after two
	// intervals.
	DiscoveryInterval time.Duration
	// Subscriptions, if not nil, lists the core NATS subscriptions to
	// request subjects at each discovery, so that groups that announce
	// nothing are listed too (their concrete CoAP paths in discovery, their
	// queue groups in Status): `udpgate run` reads its embedded server's
	// (EmbeddedSubscriptions), `udpgate gateway` asks the servers of its
	// cluster (ClusterSubscriptions). Nil lists none; such groups are
	// served all the same.
	Subscriptions SubscriptionLister
	// DrainTimeout bounds a graceful stop: when Serve's ctx is cancelled
	// the gateway stops reading its sockets, publishes what it has read,
	// and goes on answering its pending exchanges (workers' replies, and
	// the protocols' deadline answers) until none is left or DrainTimeout
	// has passed, then closes its sockets. Zero means Deadline plus a
	// second: every exchange is answered or expired by then. Negative
	// stops at once.
	DrainTimeout time.Duration
	// TracerProvider and TraceSample trace a sample of the requests: each
	// request is traced with probability TraceSample (0 to 1), in a span
	// of its listener's ingress whose context travels with the request;
	// the reply to a traced request is sent in a span of egress, a child
	// of the span that answered (docs/tracing.md). A nil TracerProvider or
	// a TraceSample of 0 traces nothing.
	TracerProvider trace.TracerProvider
	TraceSample    float64
	// Push configures the unsolicited datagrams of push=on listeners
	// (Listener.Push): the window, allow-list, rate and peer table.
	Push Push
	// Observe is the JetStream key-value bucket where coap listeners keep
	// their Observe registrations, so that a gateway restarted with the
	// same Node on the same addresses goes on notifying; an empty Name
	// keeps them in memory only.
	Observe ObserveBucket

	mu       sync.Mutex // guards lives, stopping, run, egress, durables, groups and discards, set by Serve
	lives    []*live    // the listeners served now, in the order they were added
	stopping bool       // the graceful stop has begun: no listener is added
	// ports indexes lives by port, for egress's goroutines: rebuilt
	// (under mu) whenever lives changes, read without a lock.
	ports    atomic.Pointer[portIndex]
	run      *running
	egress   *egress.Server
	durables *durables
	groups   *groups
	discards *discards
	observe  *observeStore // nil: Observe registrations in memory only
	ready    chan struct{}
	once     sync.Once
	// recreated counts streams found missing, and created again, after
	// a reconnection to NATS; rechecks the checks after one that were
	// retried because the previous failed.
	recreated, rechecks atomic.Uint64
	// drains counts graceful stops, and drainLeft the exchanges still
	// open when one ended.
	drains, drainLeft atomic.Uint64
	// added and removed count the listeners added and removed while
	// serving.
	added, removed atomic.Uint64
}

// Stats are a node's counters.
type Stats struct {
	Ingress map[string]ingress.Stats // by listener, PORT/PROTOCOL
	CoAP    map[string]coap.Stats    // coap listeners, by PORT/PROTOCOL
	RPC     map[string]rpc.Stats     // rpc and ws listeners, by PORT/PROTOCOL
	WS      map[string]ws.Stats      // ws listeners, by PORT/PROTOCOL
	DTLS    map[string]dtls.Stats    // dtls and coaps listeners, by PORT/PROTOCOL
	Guard   map[string]guard.Stats   // guarded listeners, by PORT/PROTOCOL
	Egress  egress.Stats
	// EgressByListener are the egress counters by listener, PORT/PROTOCOL
	// (Unknown is only in Egress: such replies name no listener).
	EgressByListener map[string]egress.Stats
	Pending          int // open exchanges
	Capacity         int // the pending table's size
	// StreamsRecreated counts streams found missing after a reconnection
	// to NATS (a server restarted without its store) and created again,
	// and StreamRechecks the checks retried because one failed (JetStream
	// not back yet).
	StreamsRecreated, StreamRechecks uint64
	// DurablesReadAt is when the gateway last read which subjects durable
	// groups serve (zero before the first reading), and Undecided how many
	// requests no direct group took wait for the next reading.
	DurablesReadAt time.Time
	Undecided      int
	// Drains counts graceful stops begun, and DrainLeft the exchanges
	// still open when one reached DrainTimeout.
	Drains, DrainLeft uint64
	// CaptureDiscarded counts, by listener (PORT/PROTOCOL), the requests
	// that reached their deadline unanswered after the capture stream's
	// limits had removed their capture copy, on subjects a durable group
	// covers: requests no worker could take any more. Each is counted in
	// its listener's Egress NoAnswer too; this says why (see discards.go
	// and docs/operations.md).
	CaptureDiscarded map[string]uint64
	// ListenersAdded and ListenersRemoved count the listeners added and
	// removed while the gateway served (AddListener, RemoveListener).
	ListenersAdded, ListenersRemoved uint64
	// Out counts the unsolicited datagrams of push=on listeners, by
	// listener (PORT/PROTOCOL).
	Out map[string]OutStats
	// Observe counts the node's writes to its Observe bucket.
	Observe ObserveStats
}

// Ready returns a channel closed once the gateway reads its sockets and
// receives replies.
func (g *Gateway) Ready() <-chan struct{} {
	g.once.Do(func() { g.ready = make(chan struct{}) })
	return g.ready
}

// Stats returns a snapshot of the node's counters; zero before Serve.
func (g *Gateway) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := Stats{
		Ingress: map[string]ingress.Stats{}, CoAP: map[string]coap.Stats{}, RPC: map[string]rpc.Stats{}, WS: map[string]ws.Stats{},
		DTLS:  map[string]dtls.Stats{},
		Guard: map[string]guard.Stats{}, EgressByListener: map[string]egress.Stats{}, CaptureDiscarded: map[string]uint64{},
		Out:              map[string]OutStats{},
		StreamsRecreated: g.recreated.Load(), StreamRechecks: g.rechecks.Load(),
		Drains: g.drains.Load(), DrainLeft: g.drainLeft.Load(),
	}
	var byPort map[uint16]egress.Stats
	if g.durables != nil {
		st.DurablesReadAt = g.durables.readAt()
	}
	if g.egress != nil {
		st.Undecided = g.egress.Undecided()
		st.Egress = g.egress.Stats()
		st.Pending = g.egress.Table.Len()
		st.Capacity = g.egress.Table.Cap()
		byPort = g.egress.PortStats()
	}
	for _, lv := range g.lives {
		name, in := lv.name, lv.in
		st.EgressByListener[name] = byPort[lv.port]
		st.Ingress[name] = in.Stats()
		if g.discards != nil && !lv.NoReply {
			st.CaptureDiscarded[name] = g.discards.count(lv.port)
		}
		if gd := lv.Guard; gd != nil {
			st.Guard[name] = gd.Stats()
		}
		if lv.out != nil {
			st.Out[name] = lv.out.stats()
		}
		if ds, ok := in.DTLSStats(); ok {
			st.DTLS[name] = ds
		}
		switch lv.Protocol {
		case schemas.ProtocolCoAP:
			st.CoAP[name] = in.CoAPStats()
		case schemas.ProtocolRPC:
			st.RPC[name] = in.RPCStats()
		case schemas.ProtocolWS:
			st.RPC[name] = lv.ws.RPCStats()
			st.WS[name] = lv.ws.Stats()
			if gd := lv.ws.Guard; gd != nil {
				st.Guard[name] = gd.Stats()
			}
		}
	}
	st.ListenersAdded, st.ListenersRemoved = g.added.Load(), g.removed.Load()
	st.Observe = g.observe.stats()
	return st
}

// Serve makes sure the capture stream exists, then serves every listener
// until ctx is cancelled, and returns nil once all sockets are closed. If
// any part fails, it stops the rest and returns the error.
func (g *Gateway) Serve(ctx context.Context) error {
	closeAll := func() {
		for _, l := range g.Listeners {
			l.Conn.Close()
		}
		for _, w := range g.WebSockets {
			w.Listener.Close()
		}
	}
	if g.NATS == nil || g.Node == "" {
		closeAll()
		return errors.New("gateway: NATS and Node are required")
	}
	if g.Log == nil {
		g.Log = slog.New(slog.DiscardHandler)
	}
	if g.Prefix == "" {
		g.Prefix = schemas.DefaultPrefix
	}
	if g.Stream.Name == "" {
		g.Stream.Name = schemas.StreamIn
	}
	if g.Stream.Subject == "" {
		g.Stream.Subject = schemas.CaptureWildcard(g.Prefix)
		g.Stream.Stores = schemas.InWildcard(g.Prefix)
	}
	js, err := jetstream.New(g.NATS)
	if err != nil {
		closeAll()
		return fmt.Errorf("gateway: jetstream: %w", err)
	}
	if g.Replies.Name != "" {
		g.Replies.Subject = schemas.ReplyWildcard(g.Prefix)
		if g.Replies.Description == "" {
			g.Replies.Description = "udpgate: every worker reply, joined to its request by udpgate-id"
		}
	}
	// Subscribe before the first check, so that a reconnection right
	// after it is not missed.
	reconnected := g.NATS.StatusChanged(nats.CONNECTED)
	defer g.NATS.RemoveStatusListener(reconnected)
	if err := g.ensureStreams(ctx, js, false); err != nil {
		closeAll()
		return err
	}

	table := exchange.NewTable(g.MaxPending)
	share := listenerShare(g.ListenerMaxPending, table.Cap(), g.Listeners, len(g.WebSockets))
	interval := g.ServedInterval
	if interval <= 0 {
		interval = DefaultServedInterval
	}
	durs := newDurables(js, g.Stream.Name, interval, g.Log)
	obs := openObserve(ctx, js, g.Observe, g.Node, g.Prefix, g.Log)
	eg := &egress.Server{
		NATS:    g.NATS,
		Subject: schemas.ReplySubject(g.Prefix, g.Node),
		Table:   table,
		Log:     g.Log,
		Latency: g.Latency,
		Allow:   amplification(g.guardOf, g.Log),
		Durable: durs.served,
	}
	if g.TracerProvider != nil {
		eg.TracerProvider = g.TracerProvider
		eg.Listener = g.listenerName
	}
	durs.onRead = eg.Wake
	dis := newDiscards(js, g.Stream.Name, g.Prefix, durs, table.Cap(), g.Listeners, g.Log)
	eg.Expired = dis.expired
	grs := newGroups(g.NATS, g.Prefix, g.DiscoveryInterval, g.Subscriptions, g.Log)
	eg.Unserved = unserved(g.Prefix, grs, durs)
	adm := newAdmission(g.Prefix, grs, g.Log)
	unsubscribe, err := adm.subscribe(g.NATS)
	if err != nil {
		closeAll()
		return fmt.Errorf("gateway: subscribe to the durable groups' overload messages: %w", err)
	}
	defer unsubscribe()
	defer adm.stop()
	// The first part to fail stops the others; Serve returns its error.
	// The caller's ctx only starts the graceful stop (drain): the parts
	// run until it has ended.
	stopping := ctx
	runCtx, stopAll := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAll()
	grp, ctx := errgroup.WithContext(runCtx)
	r := &running{ctx: ctx, table: table, eg: eg, dis: dis, adm: adm}
	r.obs = obs
	lives := make([]*live, len(g.Listeners))
	for i, l := range g.Listeners {
		lives[i] = g.newLive(l, r, share)
	}
	for _, w := range g.WebSockets {
		lives = append(lives, g.newWebSocket(w, r, share))
	}
	g.mu.Lock()
	g.lives, g.egress, g.durables, g.groups, g.discards = lives, eg, durs, grs, dis
	g.observe = obs
	g.indexLocked()
	g.mu.Unlock()
	grp.Go(func() error { return eg.Serve(ctx) })
	grp.Go(func() error { durs.run(ctx); return nil })
	grp.Go(func() error { grs.run(ctx); return nil })
	grp.Go(func() error { dis.run(ctx); return nil })
	if obs != nil {
		grp.Go(func() error { obs.run(ctx); return nil })
	}
	select {
	case <-eg.Ready():
	case <-ctx.Done():
		closeAll()
		return grp.Wait()
	case <-stopping.Done():
		stopAll()
		closeAll()
		return grp.Wait()
	}
	for _, lv := range lives {
		grp.Go(lv.serve)
	}
	grp.Go(func() error {
		select {
		case <-ctx.Done(): // a part failed
		case <-stopping.Done():
			g.mu.Lock()
			g.stopping = true
			lives := slices.Clone(g.lives)
			g.mu.Unlock()
			for _, lv := range lives {
				lv.stopReading()
			}
			g.drain(ctx, lives, table, eg)
			stopAll()
		}
		return nil
	})
	grp.Go(func() error {
		// A server that comes back without its store (memory storage, a
		// wiped disk) has lost the streams: make them again, or every
		// publish fails until the gateway restarts.
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-reconnected:
				g.ensureStreamsAgain(ctx, js, reconnected)
			}
		}
	})
	g.mu.Lock()
	g.run = r
	g.mu.Unlock()
	g.Ready()
	close(g.ready)
	err = grp.Wait()
	r.wg.Wait() // the listeners added meanwhile: their contexts have ended
	return err
}

// drain waits, after the listeners were told to stop reading, until they
// have published what they read and no exchange is left open, or
// DrainTimeout has passed, or ctx ends; it logs the outcome.
func (g *Gateway) drain(ctx context.Context, lives []*live, table *exchange.Table, eg *egress.Server) {
	start := time.Now()
	timeout := g.DrainTimeout
	if timeout == 0 {
		timeout = g.Deadline
		if timeout <= 0 {
			timeout = ingress.DefaultDeadline
		}
		timeout += time.Second
	}
	if timeout < 0 {
		return
	}
	g.drains.Add(1)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	open := table.Len()
	g.Log.Info("gateway: stopping: no longer reading; answering the pending exchanges", "pending", open, "timeout", timeout)
	for _, lv := range lives {
		select {
		case <-lv.in.Drained():
		case <-lv.done: // failed, or removed meanwhile
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	// An exchange leaves the table before egress has written its answer:
	// wait for both.
	for table.Len() > 0 || eg.Busy() > 0 {
		select {
		case <-t.C:
		case <-deadline.C:
			left := table.Len()
			g.drainLeft.Add(uint64(left))
			g.Log.Warn("gateway: stopping: drain timeout; exchanges left unanswered", "left", left, "after", time.Since(start))
			return
		case <-ctx.Done():
			return
		}
	}
	g.Log.Info("gateway: stopping: every pending exchange answered", "after", time.Since(start).Round(time.Millisecond))
}

// Backoff of the stream check after a reconnection that failed.
const (
	recheckFirst = 500 * time.Millisecond
	recheckMax   = 30 * time.Second
)

// ensureStreamsAgain makes sure of the streams after a reconnection to
// NATS, retrying with backoff while it fails (JetStream may come back
// after the connection: a server restarting, a cluster electing its meta
// leader), until it succeeds, ctx ends, or another reconnection starts
// the checks afresh. A failure is logged once, and the recovery.
func (g *Gateway) ensureStreamsAgain(ctx context.Context, js jetstream.JetStream, reconnected <-chan nats.Status) {
	wait, failed := recheckFirst, false
	for {
		err := g.ensureStreams(ctx, js, true)
		if err == nil || ctx.Err() != nil {
			if failed && err == nil {
				g.Log.Info("gateway: the streams are in place again after reconnecting to NATS")
			}
			return
		}
		if !failed {
			g.Log.Error("gateway: after reconnecting to NATS; retrying with backoff", "err", err)
			failed = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-reconnected:
			t.Stop()
			wait, failed = recheckFirst, false
			continue
		case <-t.C:
		}
		g.rechecks.Add(1)
		wait = min(2*wait, recheckMax)
	}
}

// listenerShare returns how many exchanges each listener may hold open in
// a table of size slots: n if set, else half the table when two or more
// listeners answer (ls and websockets ws listeners), and no limit (0) when
// only one does.
func listenerShare(n, size int, ls []Listener, websockets int) int {
	if n > 0 {
		return n
	}
	answering := websockets
	for _, l := range ls {
		if !l.NoReply {
			answering++
		}
	}
	if answering < 2 {
		return 0
	}
	return size / 2
}

// ensureStreams makes sure the capture stream, and the replies stream if
// configured, exist. After a reconnection (again) only a stream that had
// to be created again is logged, at Warn.
func (g *Gateway) ensureStreams(ctx context.Context, js jetstream.JetStream, again bool) error {
	streams := []ingress.StreamConfig{g.Stream}
	if g.Replies.Name != "" {
		streams = append(streams, g.Replies)
	}
	for _, c := range streams {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		did, err := ingress.EnsureStream(sctx, js, c)
		cancel()
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		switch {
		case !again:
			g.Log.Info("gateway: "+did, "subject", c.Subject)
		case ingress.Created(did):
			g.Log.Warn("gateway: the stream was missing after reconnecting to NATS: "+did, "subject", c.Subject)
			g.recreated.Add(1)
		}
	}
	return nil
}

// amplification returns egress's check of raw and rpc replies against
// their listener's amplification limit; guardOf returns the guard of a
// raw or rpc listener's port, nil for others. CoAP listeners cut their
// replies themselves (coap.Edge.Guard).
func amplification(guardOf func(port uint16) *guard.Guard, log *slog.Logger) func(exchange.Exchange, string, nats.Header, []byte) bool {
	dropped := &ratelog.Logger{Log: log, Level: slog.LevelWarn,
		Msg: "gateway: replies dropped by the amplification limit (UDPGATE_AMPLIFICATION; UDPGATE_TRUST exempts sources)"}
	return func(ex exchange.Exchange, status string, header nats.Header, body []byte) bool {
		gd := guardOf(ex.Port)
		if gd == nil {
			return true
		}
		n := len(body)
		if c, ok := ex.Replier.(*rpc.Call); ok {
			n = c.ReplySize(status, header, body)
		} else if status != schemas.StatusOK {
			return true // raw: nothing is sent
		}
		// The replies of a raw exchange with more to follow share its
		// credit: what they sent counts, as IP packets.
		addr := ex.Remote.Addr()
		sent := ex.Sent + ex.Replies*guard.Wire(addr, 0)
		if gd.AllowReplies(addr, ex.Size, sent, n, time.Now()) {
			return true
		}
		dropped.Add("port", ex.Port, "remote", ex.Remote.Addr(), "request_bytes", ex.Size, "reply_bytes", n)
		return false
	}
}
