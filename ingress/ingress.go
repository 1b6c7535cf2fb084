// Package ingress reads request datagrams from a listener socket, opens
// each one's exchange in the gateway's pending table, and publishes it
// twice: as a core NATS request on the listener's subject, with the
// exchange's reply subject, which direct worker groups (queue
// subscriptions) receive at once; and as a capture copy through JetStream,
// which the capture stream stores under the same subject and durable
// groups consume.
//
// The read loop never waits on NATS: it hands each datagram to a bounded
// queue drained by one publisher goroutine, and drops (and counts) what does
// not fit. Capture publishes are asynchronous and bounded in number; one
// that fails or is not acknowledged in time is counted as a gap in the
// capture, and does not close the exchange (a direct worker may answer).
package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// Defaults for the zero values of Server's fields.
const (
	DefaultDeadline    = 5 * time.Second
	DefaultMaxDatagram = 8192
	DefaultQueue       = 8192
	DefaultMaxInFlight = 16384
)

// Server publishes the datagrams that arrive on one listener socket. Set its
// fields, then call Serve once. Its methods are safe for concurrent use.
type Server struct {
	// Conn is the listener socket, bound with Listen so that a wildcard
	// bind learns each datagram's destination. Serve closes it on return.
	// It is nil on a ws listener, whose calls come through Submit.
	Conn *net.UDPConn
	// Protocol is the listener's protocol: schemas.ProtocolRaw (the
	// default), schemas.ProtocolCoAP or schemas.ProtocolRPC; or
	// schemas.ProtocolWS, with no Conn: the calls of a WebSocket server,
	// handed over with Submit.
	Protocol string
	// Port is a ws listener's port, which names it and its subjects; the
	// others take theirs from Conn.
	Port uint16
	// CoAP tunes the CoAP messaging layer of a coap listener.
	CoAP coap.Config
	// DTLS, if not nil, secures a raw or coap listener with DTLS (the
	// dtls and coaps listeners of the configuration): the datagrams read
	// from Conn are records of DTLS sessions (package dtls), the
	// datagrams they decrypt are the listener's, as a plain listener's
	// would be, and every answer goes back through its session. Requests
	// carry the client's identity (schemas.HeaderDTLSIdentity).
	DTLS *dtls.Config
	// NATS is the connection to publish on. Required.
	NATS *nats.Conn
	// Table is the gateway's pending exchanges, shared with egress. Required.
	Table *exchange.Table
	// ListenerMaxPending is the most exchanges this listener may hold open in
	// Table at once, so that it cannot take the slots of the node's other
	// listeners; beyond it datagrams are dropped and counted
	// (ListenerFull). 0 means no limit but the table's size.
	ListenerMaxPending int
	// Prefix is the subject prefix (schemas.DefaultPrefix if empty).
	Prefix string
	// Node names this gateway; replies come back on its reply subject.
	// Required.
	Node string
	// Deadline is how long a request waits for its reply (DefaultDeadline
	// if zero).
	Deadline time.Duration
	// MaxDatagram is the largest datagram accepted, in bytes
	// (DefaultMaxDatagram if zero); larger ones are dropped and counted.
	MaxDatagram int
	// Queue bounds the datagrams read and not yet handed to NATS
	// (DefaultQueue if zero).
	Queue int
	// MaxInFlight bounds the capture copies awaiting JetStream's
	// acknowledgement (DefaultMaxInFlight if zero).
	MaxInFlight int
	// Guard, if not nil, admits or drops each datagram (allow and deny
	// lists, rate limits) before it is decoded, and limits what is sent
	// back to unvalidated sources (see ingress/guard.go).
	Guard *guard.Guard
	// Log receives errors; nothing per datagram above Debug. Nil discards.
	Log *slog.Logger
	// NoReply captures and publishes every datagram without opening an
	// exchange: nothing is ever sent back, and the pending table is not
	// used, so an ingest-only port cannot fill it. Raw listeners only.
	// Request ids come from a table of the listener's own, so a reply to
	// one names no exchange and egress counts it unknown.
	NoReply bool
	// Captured, if not nil, is called each time JetStream acknowledges
	// the capture copy of a request that has an exchange, with the
	// exchange's sequence number in Table and the stream sequence the
	// copy was stored at (a copy published again may be stored, and
	// acknowledged, twice). It runs on the acknowledgements' goroutine
	// and must be quick. Never called on a NoReply listener.
	Captured func(seq, streamSeq uint64)
	// TracerProvider and TraceSample trace a sample of the listener's
	// requests: a request is traced with probability TraceSample (0 to 1),
	// which gives it a span from its read to its publication and sends
	// that span's context with it (the traceparent and tracestate headers,
	// schemas/README.md), so that workers and egress continue its trace.
	// A nil TracerProvider or a TraceSample of 0 traces nothing, at no
	// cost per datagram. See docs/tracing.md.
	TracerProvider trace.TracerProvider
	TraceSample    float64
	// Tap, if not nil, is called on the read loop with each datagram the
	// listener admits (after the size limit and the guard), before it is
	// published. See Tap.
	Tap Tap
	// Stop, if not nil, stops the listener gracefully when closed: it
	// stops reading the socket, publishes what it has read, and keeps the
	// socket and the CoAP messaging layer open, so that egress can still
	// answer the listener's exchanges, until ctx is cancelled. Drained
	// tells when the last datagram read has been published. Without Stop,
	// cancelling ctx closes the socket at once.
	Stop <-chan struct{}
	// Admission, if not nil, sheds requests at the door: those on the
	// subjects of an overloaded durable group are answered at once with
	// their protocol's overload status and captured, not published (see
	// shedAtDoor). Counted Shed.
	Admission Admission

	drainOnce sync.Once
	drained   chan struct{} // see Drained

	// retries holds capture copies JetStream did not acknowledge, for
	// the capture goroutine to publish again; never closed.
	retries chan *nats.Msg
	// fallen holds the capture copies, in flight or waiting to be tried
	// again, whose request went to its fallback subject; nfallen is its
	// size, read without fallenMu by recycle.
	fallenMu sync.Mutex
	fallen   map[*nats.Msg]struct{}
	nfallen  atomic.Int32

	// submitMu guards accepting and, once Serve has started, the closing
	// of queue on a ws listener: Submit never sends on a closed queue.
	submitMu      sync.RWMutex
	accepting     bool
	acceptingOnce sync.Once
	acceptingCh   chan struct{} // see Accepting

	stats counters
	msgs  sync.Pool // of *nats.Msg: request messages to reuse, see recycle

	// Set by Serve before any goroutine starts, read-only after.
	coapEdge  *coap.Edge                // coap listeners only
	coapShown atomic.Pointer[coap.Edge] // coapEdge, for CoAPStats from other goroutines
	rpcEdge   *rpc.Edge                 // rpc listeners only
	rpcShown  atomic.Pointer[rpc.Edge]  // rpcEdge, for RPCStats from other goroutines
	dtlsEdge  *dtls.Listener            // DTLS listeners only
	dtlsShown atomic.Pointer[dtls.Listener]
	port      uint16
	listener  string
	reply     string // the node's reply subject; a request's is reply.ID
	source    string
	subject   string // a raw listener's request subject; empty for other protocols
	capture   string // a raw listener's capture subject; empty for other protocols
	wildcard  bool
	queue     chan datagram
	localAddr netip.AddrPort
	ids       *exchange.Table                // ids of the listener's own: NoReply's, and requests shed at the door
	share     *exchange.Share                // the listener's exchanges open in Table
	shared    atomic.Pointer[exchange.Share] // share, for Stats from other goroutines
	idSeq     uint64                         // the last id's sequence number in ids; publisher only
	tracer    trace.Tracer                   // nil when nothing is traced
	spanName  string
	// eventStream publishes a ws listener's events' capture copies; set
	// by Serve before Submit takes calls.
	eventStream atomic.Pointer[jetstream.JetStream]
}

// A Tap sees a listener's datagrams as they are read: remote sent data
// to local at at; for a datagram sent to a multicast group or a
// broadcast address, local is the address that answers it instead
// (exchange.Exchange.Local), so that what is sent back from it leaves. It runs on the read loop, so it must not block (hand the
// datagram over without waiting, or drop it); data is the datagram's own
// copy on a raw listener, the payload on others, and must not be
// modified.
type Tap func(remote, local netip.AddrPort, at time.Time, data []byte)

// Stats are cumulative counts of one listener's datagrams.
type Stats struct {
	Received  uint64 // datagrams read (on a DTLS listener: records, handshakes included)
	Published uint64 // requests published to direct groups (core NATS; none on a NoReply listener)
	Captured  uint64 // capture copies acknowledged by JetStream
	// Republished counts CoAP requests published again because the
	// client retransmitted them while they were unanswered.
	Republished  uint64
	TooLarge     uint64 // dropped: larger than MaxDatagram
	QueueFull    uint64 // dropped: the publish queue was full
	TableFull    uint64 // dropped: the pending table had no room
	ListenerFull uint64 // dropped: the listener held ListenerMaxPending open exchanges
	// InFlight counts capture copies not published because MaxInFlight
	// were awaiting acknowledgement, or Queue were waiting to be
	// published: a gap in the capture. The request itself went to direct
	// groups, except on a NoReply listener, where the capture is all
	// there is.
	InFlight      uint64
	NATSDown      uint64 // dropped: not connected to NATS
	PublishFailed uint64 // dropped: the core publish of the request failed
	// Shed counts requests shed at the door (Admission): answered at once
	// with the overload status of their protocol (raw: nothing),
	// captured, not published.
	Shed uint64
	// CaptureFailed counts capture copies that JetStream refused or did
	// not acknowledge, and could not be published again before the
	// request's deadline: a gap in the capture, and durable groups do not
	// see the request. The exchange stays open.
	CaptureFailed uint64
	// Fallback counts requests published to their fallback subject
	// (schemas.FallbackSubject) because JetStream did not take their
	// capture copy at the first try: durable groups answer them over
	// core NATS meanwhile. At most once per request.
	Fallback uint64
	// CaptureRetried counts capture copies published again because
	// JetStream did not acknowledge the previous try in time or refused
	// it (a stream electing its leader): tries go on, every
	// captureAckWait, until the request's deadline.
	CaptureRetried uint64
	Expired        uint64 // exchanges still open past their deadline when their slot was reused: answered as unanswered here, not counted by egress
	ReadErrors     uint64 // socket read errors other than closing
	// KernelDrops is the latest count the kernel reported (SO_RXQ_OVFL)
	// of datagrams it dropped on this socket because its receive buffer
	// was full; the count arrives with the next datagram read.
	KernelDrops uint64
	// Pending is the number of the listener's exchanges open now (a
	// gauge, not a count), at most ListenerMaxPending when that is set.
	Pending int
	// PendingLimit is the most exchanges the listener may hold open
	// (ListenerMaxPending as resolved); 0 when only the table's size limits it.
	PendingLimit int
	// Multicast counts the datagrams sent to a multicast group the
	// listener joined, Broadcast those sent to a broadcast address: they
	// are answered from the listener's unicast address on the
	// interface, and their requests say where they were sent
	// (schemas.HeaderMulticast, schemas.HeaderBroadcast).
	Multicast, Broadcast uint64
	// TooBig counts replies the kernel refused as larger than the path
	// MTU (EMSGSIZE) on a socket that forbids fragmentation
	// (DontFragment, the df=on option).
	TooBig uint64
	// Events counts a ws listener's connection events published
	// ($connect, $disconnect); EventsCaptured their capture copies
	// acknowledged, EventCaptureFailed those refused, not acknowledged
	// or not published (a gap in the capture).
	Events, EventsCaptured, EventCaptureFailed uint64
}

type counters struct {
	received, published, captured, republished, tooLarge, queueFull, tableFull atomic.Uint64
	inFlight, natsDown, publishFailed, captureFailed, expired, readErrors      atomic.Uint64
	captureRetried, fallback                                                   atomic.Uint64
	events, eventsCaptured, eventCaptureFailed                                 atomic.Uint64
	kernelDrops, listenerFull, shed                                            atomic.Uint64
	multicast, broadcast                                                       atomic.Uint64
	tooBig                                                                     atomic.Uint64 // counted by exchange.Exchange.Write
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Received: c.received.Load(), Published: c.published.Load(), Captured: c.captured.Load(),
		Republished: c.republished.Load(), CaptureFailed: c.captureFailed.Load(), CaptureRetried: c.captureRetried.Load(), Fallback: c.fallback.Load(), TooLarge: c.tooLarge.Load(),
		QueueFull: c.queueFull.Load(), TableFull: c.tableFull.Load(), ListenerFull: c.listenerFull.Load(),
		InFlight: c.inFlight.Load(), NATSDown: c.natsDown.Load(), PublishFailed: c.publishFailed.Load(), Shed: c.shed.Load(),
		Expired: c.expired.Load(), ReadErrors: c.readErrors.Load(), KernelDrops: c.kernelDrops.Load(),
		Events: c.events.Load(), EventsCaptured: c.eventsCaptured.Load(), EventCaptureFailed: c.eventCaptureFailed.Load(),
		Multicast: c.multicast.Load(), Broadcast: c.broadcast.Load(), TooBig: c.tooBig.Load(),
	}
	if sh := s.shared.Load(); sh != nil {
		st.Pending, st.PendingLimit = sh.Len(), sh.Max
	}
	return st
}

// datagram is one request between the read loop and the publisher. data is
// owned by the datagram.
type datagram struct {
	data    []byte
	remote  netip.AddrPort
	local   netip.AddrPort
	ifindex int
	at      time.Time
	coap    *coap.Request // the decoded request on a coap listener
	rpc     *rpc.Call     // the decoded call on an rpc listener
	session *dtls.Session // the session of a DTLS listener's datagram
	again   bool          // coap is a retransmitted request, already published: publish it again
	// from is the address to answer from when local is a multicast
	// group or a broadcast address (see groupSource); invalid otherwise.
	from netip.AddrPort
}

// Serve reads datagrams until ctx is cancelled, then closes the socket,
// waits for its goroutines and returns nil. It returns an error if the
// server is misconfigured or the socket fails.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.init(); err != nil {
		s.closeConn()
		return err
	}
	js, err := jetstream.New(s.NATS,
		jetstream.WithPublishAsyncMaxPending(s.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(captureAckWait(s.Deadline)),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, msg *nats.Msg, ack *jetstream.PubAck) {
			s.stats.captured.Add(1)
			if s.Captured != nil && !s.NoReply && ack != nil {
				if seq, ok := s.Table.ParseID(msg.Header.Get(schemas.HeaderID)); ok {
					s.Captured(seq, ack.Sequence)
				}
			}
			s.recycle(msg)
		}),
		jetstream.WithPublishAsyncErrHandler(s.captureFailed),
	)
	if err != nil {
		s.closeConn()
		return fmt.Errorf("ingress: %s: jetstream: %w", s.listener, err)
	}

	if s.Conn == nil {
		events, err := s.newEventStream()
		if err != nil {
			return fmt.Errorf("ingress: %s: jetstream: %w", s.listener, err)
		}
		s.eventStream.Store(&events)
	}
	queue := s.queue
	// Capture copies of an answering listener are published by a
	// goroutine of their own, so that the publisher's work per request
	// (and its stalls behind a busy NATS connection) is halved; its
	// channel holds as many as the read queue.
	var captures chan capture
	if !s.NoReply {
		captures = make(chan capture, s.Queue)
	}
	var publishers sync.WaitGroup
	publishers.Go(func() {
		s.publish(js, queue, captures)
		if captures != nil {
			close(captures)
		}
	})
	if captures != nil {
		publishers.Go(func() { s.captureLoop(js, captures) })
	}
	var sweeper sync.WaitGroup
	done := make(chan struct{})
	if s.coapEdge != nil {
		sweeper.Go(func() { s.sweep(done) })
	}
	if s.Conn == nil {
		s.serveSubmitted(ctx, queue)
		publishers.Wait()
		close(s.drained)
		<-ctx.Done() // egress answers the exchanges through the calls
		return nil
	}
	// The socket is closed, not closing, once Serve has returned: of two
	// concurrent Closes, the second returns before the descriptor is
	// released, so Serve waits for this one if it started.
	closing := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closing)
		s.Conn.Close()
	})
	defer func() {
		if !stop() {
			<-closing
		}
	}()
	var stopping atomic.Bool
	if s.Stop != nil {
		go func() {
			select {
			case <-s.Stop:
				// A read deadline in the past ends the read that is
				// blocked, and every later one, without closing the
				// socket that replies are sent through.
				stopping.Store(true)
				s.Conn.SetReadDeadline(time.Unix(1, 0))
			case <-ctx.Done():
			}
		}()
	}

	err = s.read(queue)
	if errors.Is(err, os.ErrDeadlineExceeded) && stopping.Load() {
		err = nil
	}
	if s.dtlsEdge != nil {
		s.dtlsEdge.StopDelivering() // its sessions hand datagrams to queue
	}
	close(queue)
	publishers.Wait()
	s.Drained()
	close(s.drained)
	if err == nil {
		<-ctx.Done() // egress answers the exchanges through the socket and the edge
		if s.dtlsEdge != nil {
			s.dtlsEdge.Close() // while the socket still sends their close_notify
		}
		s.Conn.Close()
	}
	close(done)
	sweeper.Wait()
	if s.dtlsEdge != nil {
		s.dtlsEdge.Close()
	}
	if s.coapEdge != nil {
		s.coapEdge.Close()
	}
	if err == nil || errors.Is(err, net.ErrClosed) && ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("ingress: %s: read: %w", s.listener, err)
}

// Drained returns a channel that is closed once the listener has stopped
// reading (Stop closed, or the socket closed) and has published every
// datagram it read: its exchanges are open in the table from then on.
func (s *Server) Drained() <-chan struct{} {
	s.drainOnce.Do(func() { s.drained = make(chan struct{}) })
	return s.drained
}

// closeConn closes the socket, if there is one, and a DTLS listener's
// sessions.
func (s *Server) closeConn() {
	if s.Conn != nil {
		s.Conn.Close()
	}
	if s.dtlsEdge != nil {
		s.dtlsEdge.Close()
	}
}

// serveSubmitted takes the calls of a ws listener through Submit until
// Stop is closed or ctx ends, then closes queue: the publisher publishes
// what was submitted, and Submit answers what comes later as unavailable.
func (s *Server) serveSubmitted(ctx context.Context, queue chan datagram) {
	s.submitMu.Lock()
	s.accepting = true
	s.submitMu.Unlock()
	s.Accepting()
	close(s.acceptingCh)
	select {
	case <-s.Stop: // nil: never
	case <-ctx.Done():
	}
	s.submitMu.Lock()
	s.accepting = false
	close(queue)
	s.submitMu.Unlock()
}

// Accepting returns a channel that is closed once a ws listener's Submit
// takes calls: start the WebSocket server then, and no call is refused
// for arriving before the publisher.
func (s *Server) Accepting() <-chan struct{} {
	s.acceptingOnce.Do(func() { s.acceptingCh = make(chan struct{}) })
	return s.acceptingCh
}

// Submit hands c, a call that remote sent to local in a message of a
// WebSocket connection at at, to the publisher of a ws listener, without
// waiting: when the queue is full, or the listener is not serving
// (before Serve, after Stop), it answers c as unavailable
// (STATUS_UNAVAILABLE), counted QueueFull. c's Reply goes where c was
// decoded to write it (rpc.Edge.Decode). It is safe for concurrent use.
func (s *Server) Submit(c *rpc.Call, remote, local netip.AddrPort, at time.Time) {
	s.stats.received.Add(1)
	d := datagram{data: c.Params, remote: remote, local: local, at: at, rpc: c}
	s.submitMu.RLock()
	queued := false
	if s.accepting {
		select {
		case s.queue <- d:
			queued = true
		default:
		}
	}
	s.submitMu.RUnlock()
	if !queued {
		s.stats.queueFull.Add(1)
		c.Fail(exchange.Unavailable)
	}
}

func (s *Server) init() error {
	if s.Protocol == "" {
		s.Protocol = schemas.ProtocolRaw
	}
	if s.Conn == nil && (s.Protocol != schemas.ProtocolWS || s.Port == 0) || s.NATS == nil || s.Table == nil || s.Node == "" {
		return errors.New("ingress: Conn (Port on a ws listener), NATS, Table and Node are required")
	}
	switch s.Protocol {
	case schemas.ProtocolRaw, schemas.ProtocolCoAP, schemas.ProtocolRPC:
		if s.Conn == nil {
			return fmt.Errorf("ingress: a %s listener needs Conn", s.Protocol)
		}
	case schemas.ProtocolWS:
		if s.Conn != nil {
			return errors.New("ingress: a ws listener takes its calls through Submit, not from Conn")
		}
	default:
		return fmt.Errorf("ingress: protocol %q is not supported", s.Protocol)
	}
	if s.Prefix == "" {
		s.Prefix = schemas.DefaultPrefix
	}
	if s.Deadline <= 0 {
		s.Deadline = DefaultDeadline
	}
	if s.MaxDatagram <= 0 {
		s.MaxDatagram = DefaultMaxDatagram
	}
	if s.Queue <= 0 {
		s.Queue = DefaultQueue
	}
	if s.MaxInFlight <= 0 {
		s.MaxInFlight = DefaultMaxInFlight
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.Conn != nil {
		la := s.Conn.LocalAddr().(*net.UDPAddr).AddrPort()
		s.localAddr = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
		s.wildcard = la.Addr().IsUnspecified()
		s.port = la.Port()
	} else {
		s.port = s.Port
	}
	s.Drained() // made before any goroutine that closes it
	s.listener = schemas.Listener(s.port, s.Protocol)
	s.reply = schemas.ReplySubject(s.Prefix, s.Node)
	s.source = schemas.Source(s.Node, s.listener)
	if s.Protocol == schemas.ProtocolRaw {
		s.subject = schemas.InSubject(s.Prefix, s.port)
		s.capture = schemas.CaptureSubject(s.Prefix, s.subject)
	}
	if s.TracerProvider != nil && s.TraceSample > 0 {
		s.tracer = s.TracerProvider.Tracer(tracerName)
		s.spanName = "ingress " + s.listener
	}
	s.queue = make(chan datagram, s.Queue)
	s.retries = make(chan *nats.Msg, s.MaxInFlight)
	s.ids = exchange.NewTable(1)
	if s.NoReply {
		if s.Protocol != schemas.ProtocolRaw {
			return fmt.Errorf("ingress: %s: NoReply is for raw listeners", s.listener)
		}
	} else {
		s.share = &exchange.Share{Max: max(s.ListenerMaxPending, 0)}
		s.shared.Store(s.share)
	}
	if s.Protocol == schemas.ProtocolCoAP {
		s.coapEdge = &coap.Edge{
			Config: s.CoAP,
			Socket: exchange.Exchange{Conn: s.Conn, SetSource: s.wildcard, Port: s.port, TooBig: &s.stats.tooBig},
			Secure: s.DTLS != nil,
			Log:    s.Log,
			Guard:  s.Guard,
			// On the read loop: hand the retransmission to the publisher.
			Retransmitted: func(r *coap.Request) {
				select {
				case s.queue <- datagram{coap: r, again: true}:
				default:
					s.stats.queueFull.Add(1)
				}
			},
		}
		s.coapEdge.Start()
		s.coapShown.Store(s.coapEdge)
	}
	if s.DTLS != nil {
		if s.Protocol != schemas.ProtocolRaw && s.Protocol != schemas.ProtocolCoAP || s.NoReply {
			return fmt.Errorf("ingress: %s: DTLS is for raw and coap listeners that answer", s.listener)
		}
		s.dtlsEdge = &dtls.Listener{
			Conn: s.Conn, SetSource: s.wildcard, Port: s.port, Config: s.DTLS, Guard: s.Guard,
			Deliver: s.decrypted, Log: s.Log,
		}
		if err := s.dtlsEdge.Start(); err != nil {
			s.dtlsEdge = nil
			return fmt.Errorf("ingress: %s: %w", s.listener, err)
		}
		s.dtlsShown.Store(s.dtlsEdge)
	}
	if s.Protocol == schemas.ProtocolRPC {
		s.rpcEdge = &rpc.Edge{
			Socket: exchange.Exchange{Conn: s.Conn, SetSource: s.wildcard, Port: s.port, TooBig: &s.stats.tooBig},
			Log:    s.Log,
		}
		s.rpcShown.Store(s.rpcEdge)
	}
	return nil
}

// RPCStats returns the counters of an rpc listener's envelopes, zero for
// other listeners or before Serve.
func (s *Server) RPCStats() rpc.Stats {
	e := s.rpcShown.Load()
	if e == nil {
		return rpc.Stats{}
	}
	return e.Stats()
}

// DTLSStats returns the counts of a DTLS listener's sessions, and
// whether the listener is one (and serving).
func (s *Server) DTLSStats() (dtls.Stats, bool) {
	l := s.dtlsShown.Load()
	if l == nil {
		return dtls.Stats{}, false
	}
	return l.Stats(), true
}

// CoAPStats returns the counters of a coap listener's messaging layer,
// zero for other listeners or before Serve.
func (s *Server) CoAPStats() coap.Stats {
	e := s.coapShown.Load()
	if e == nil {
		return coap.Stats{}
	}
	return e.Stats()
}

// CoAPEdge returns a coap listener's messaging layer once Serve has
// started it, else nil: the gateway sends Observe notifications through
// it (coap.Edge.Notify).
func (s *Server) CoAPEdge() *coap.Edge { return s.coapShown.Load() }

// sweep expires the CoAP edge's caches until done is closed.
func (s *Server) sweep(done <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			s.coapEdge.Sweep(now)
		}
	}
}

// read is the read loop: one reused buffer, one copy per accepted datagram,
// and a non-blocking hand-off to the publisher.
func (s *Server) read(queue chan<- datagram) error {
	buf := make([]byte, s.MaxDatagram+1)
	oob := make([]byte, oobSize)
	for {
		n, oobn, _, remote, err := s.Conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			s.stats.readErrors.Add(1)
			s.Log.Debug("ingress: read", "listener", s.listener, "err", err)
			continue
		}
		s.stats.received.Add(1)
		ctl := parseControl(oob[:oobn])
		if ctl.dropsSeen {
			s.stats.kernelDrops.Store(uint64(ctl.drops))
		}
		if n > s.MaxDatagram {
			s.stats.tooLarge.Add(1)
			continue
		}
		if !s.admit(buf[:n], remote, ctl) {
			continue // counted by the guard
		}
		d := datagram{
			remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()),
			local:  s.localAddr,
			at:     time.Now(),
		}
		if s.wildcard && ctl.dst.IsValid() {
			d.local = netip.AddrPortFrom(ctl.dst.Unmap(), s.port)
			d.ifindex = ctl.ifindex
			if from, ok := groupSource(ctl, s.port); ok {
				d.from = from
				if ctl.dst.IsMulticast() {
					s.stats.multicast.Add(1)
				} else {
					s.stats.broadcast.Add(1)
				}
			}
		}
		if s.dtlsEdge != nil {
			if d.from.IsValid() {
				// A DTLS session is with one peer, at an address of
				// the node's: nothing sent to a group or a broadcast
				// address starts one (counted Multicast, Broadcast).
				continue
			}
			// A record: its session decrypts it and calls decrypted.
			s.dtlsEdge.Receive(buf[:n], d.remote, d.local, d.ifindex, d.at)
			continue
		}
		s.accept(buf[:n], d, queue)
	}
}

// groupSource reports whether the datagram whose control messages are ctl
// was sent to a multicast group or a broadcast address, and then the
// address on port to answer it from: an IPv4 datagram's ipi_spec_dst,
// the interface's address, which differs from the destination only for
// those; for an IPv6 group, the unspecified address, which leaves the
// kernel to pick one of the interface's (exchange.Exchange.Local).
func groupSource(ctl control, port uint16) (netip.AddrPort, bool) {
	switch {
	case ctl.spec.IsValid() && ctl.spec != ctl.dst:
		return netip.AddrPortFrom(ctl.spec, port), true
	case ctl.dst.IsMulticast():
		return netip.AddrPortFrom(netip.IPv6Unspecified(), port), true
	}
	return netip.AddrPort{}, false
}

// source returns the address to answer d from: where it was sent, or,
// for a datagram sent to a group or a broadcast address, the unicast
// address of groupSource.
func (d *datagram) source() netip.AddrPort {
	if d.from.IsValid() {
		return d.from
	}
	return d.local
}

// group returns the multicast group or broadcast address d was sent to,
// or the zero Addr.
func (d *datagram) group() netip.Addr {
	if d.from.IsValid() {
		return d.local.Addr()
	}
	return netip.Addr{}
}

// accept decodes datagram b, whose d has its addresses and time, and
// hands it to the publisher without waiting. It runs on the read loop,
// and on the sessions' goroutines of a DTLS listener.
func (s *Server) accept(b []byte, d datagram, queue chan<- datagram) {
	if s.coapEdge != nil {
		// The messaging layer answers what the gateway answers
		// itself; only complete requests go on.
		if d.from.IsValid() {
			d.coap = s.coapEdge.ReceiveGroup(b, d.remote, d.from, d.local.Addr(), d.ifindex, d.at)
		} else {
			d.coap = s.coapEdge.ReceiveSession(b, d.remote, d.local, d.ifindex, d.sessionWriter(), d.at)
		}
		if d.coap == nil {
			return
		}
		d.data = d.coap.Payload
	} else if s.rpcEdge != nil {
		// Only calls go on; anything else is dropped unanswered.
		if d.rpc = s.rpcEdge.Receive(b, d.remote, d.source(), d.ifindex); d.rpc == nil {
			return
		}
		d.data = d.rpc.Params
	} else {
		d.data = make([]byte, len(b))
		copy(d.data, b)
	}
	if s.Tap != nil {
		s.Tap(d.remote, d.source(), d.at, d.data)
	}
	select {
	case queue <- d:
		if d.coap != nil {
			d.coap.Started()
		}
	default:
		s.stats.queueFull.Add(1)
		s.unavailable(d)
	}
}

// decrypted takes datagram b that session sess of a DTLS listener
// decrypted (dtls.Deliver): the listener's datagram, from then on.
func (s *Server) decrypted(b []byte, remote, local netip.AddrPort, ifindex int, sess *dtls.Session) {
	// Received counted the record; the session counts what it decrypts.
	if len(b) > s.MaxDatagram {
		s.stats.tooLarge.Add(1)
		return
	}
	s.accept(b, datagram{remote: remote, local: local, ifindex: ifindex, at: time.Now(), session: sess}, s.queue)
}

// sessionWriter returns d's session as an exchange.Session, nil (not a
// nil pointer in an interface) for a plain datagram.
func (d datagram) sessionWriter() exchange.Session {
	if d.session == nil {
		return nil
	}
	return d.session
}

// publish opens the exchange of each queued datagram and publishes it to
// direct groups, then hands it to captures for its capture copy. An
// ingest-only listener (captures nil) publishes only the capture copy,
// itself: that is all it does, so it waits a little for a free in-flight
// slot, while the queue absorbs the socket.
func (s *Server) publish(js jetstream.JetStream, queue <-chan datagram, captures chan<- capture) {
	// Made once: an option is a closure, and a variadic argument to an
	// interface method a new slice.
	stall := []jetstream.PublishOpt{jetstream.WithStallWait(stallWait)}
	var retries <-chan *nats.Msg
	if captures == nil {
		retries = s.retries // an ingest-only listener's capture copies are this goroutine's
	}
	for {
		var d datagram
		select {
		case msg := <-retries:
			s.retryCapture(js, msg, stall)
			continue
		case next, ok := <-queue:
			if !ok {
				return
			}
			d = next
		}
		if d.again {
			s.republish(d.coap)
			continue
		}
		// A traced request's span; nil for the others, which cost
		// nothing more.
		var span trace.Span
		if s.tracer != nil && tracing.Sample(s.TraceSample) {
			span = s.startSpan(&d)
		}
		if !s.NATS.IsConnected() {
			s.stats.natsDown.Add(1)
			s.unavailable(d)
			endSpan(span, outcomeNATSDown, nil)
			continue
		}
		if a := s.Admission; a != nil && !s.NoReply && a.Shedding() {
			if retry, shed := a.Shed(s.shedSubject(&d)); shed {
				s.shedAtDoor(d, retry, captures)
				endSpan(span, outcomeShed, nil)
				continue
			}
		}
		deadline := d.at.Add(s.Deadline)
		if s.NoReply {
			s.idSeq++
			msg, _ := s.msgs.Get().(*nats.Msg)
			msg, capture := newMessage(msg, &Request{
				Prefix: s.Prefix, Port: s.port, Source: s.source, Reply: s.reply,
				Remote: d.remote, Local: d.local, Received: d.at, Deadline: deadline, Body: d.data,
			}, s.subject, s.capture, s.ids, s.idSeq)
			traceMessage(span, msg, s.subject)
			s.capturePublish(js, msg, capture, stall)
			endSpan(span, outcomePublished, nil)
			continue
		}
		seq, expired, err := s.Table.Open(exchange.Exchange{
			Conn:      s.Conn,
			Remote:    d.remote,
			Local:     d.source(),
			SetSource: s.wildcard,
			IfIndex:   d.ifindex,
			Port:      s.port,
			Deadline:  deadline,
			Received:  d.at,
			Size:      d.size(),
			Replier:   d.replier(),
			Session:   d.sessionWriter(),
			Share:     s.share,
			TooBig:    &s.stats.tooBig,
		}, d.at)
		if !expired.Deadline.IsZero() { // every exchange has a deadline, not every one a socket
			s.stats.expired.Add(1)
			if expired.Replier != nil {
				expired.Replier.Fail(exchange.NoAnswer)
			}
		}
		if err != nil {
			outcome := outcomeTableFull
			if err == exchange.ErrShareFull {
				s.stats.listenerFull.Add(1)
				outcome = outcomeListenerFull
			} else {
				s.stats.tableFull.Add(1)
			}
			s.unavailable(d)
			endSpan(span, outcome, nil)
			continue
		}
		if d.coap != nil {
			d.coap.Seq = seq
		}
		msg, _ := s.msgs.Get().(*nats.Msg)
		msg, subject := newMessage(msg, &Request{
			Prefix: s.Prefix, Port: s.port, Source: s.source, Reply: s.reply,
			Remote: d.remote, Local: d.local, Received: d.at, Deadline: deadline,
			Body: d.data, CoAP: d.coap, RPC: d.rpc, Identity: d.identity(), Group: d.group(),
		}, s.subject, s.capture, s.Table, seq)
		traceMessage(span, msg, msg.Subject)
		// The request, at once, to the direct groups: a core publish with
		// the exchange's reply subject, which a worker's msg.Respond uses.
		if err := s.NATS.PublishMsg(msg); err != nil {
			s.recycle(msg)
			if ex, ok := s.Table.Release(seq); ok && ex.Replier != nil {
				ex.Replier.Fail(exchange.Unavailable)
			}
			s.stats.publishFailed.Add(1)
			s.Log.Debug("ingress: publish", "listener", s.listener, "err", err)
			endSpan(span, outcomePublishFailed, err)
			continue
		}
		s.stats.published.Add(1)
		endSpan(span, outcomePublished, nil)
		select {
		case captures <- capture{msg, subject}:
		default:
			s.recycle(msg)
			s.stats.inFlight.Add(1) // a gap in the capture: its publisher is behind
		}
	}
}

// republish publishes r, a CoAP request that its client retransmitted, to
// the direct groups again, with its exchange's id, if that is still open.
// The capture has it already.
func (s *Server) republish(r *coap.Request) {
	if r.Seq == 0 || !s.NATS.IsConnected() {
		return
	}
	ex, ok := s.Table.Pending(r.Seq)
	if !ok {
		return
	}
	msg, _ := s.msgs.Get().(*nats.Msg)
	msg, _ = newMessage(msg, &Request{
		Prefix: s.Prefix, Port: s.port, Source: s.source, Reply: s.reply,
		Remote: ex.Remote, Local: ex.Local, Received: ex.Received, Deadline: ex.Deadline,
		Body: r.Payload, CoAP: r, Identity: sessionIdentity(ex.Session),
	}, "", "", s.Table, r.Seq)
	if err := s.NATS.PublishMsg(msg); err == nil {
		s.stats.republished.Add(1)
	}
	s.recycle(msg) // a core publish holds no reference once it returns
}

// recycle keeps msg, a request message whose publish is over, for a later
// one: its header map is the largest allocation of a request. nats.go
// holds a message only until it calls the ack or error handler for it, or
// PublishMsgAsync returns an error (its PubAckFuture, which the publisher
// drops, is the only other holder), so whoever calls recycle has the last
// reference.
func (s *Server) recycle(msg *nats.Msg) {
	if msg.Subject == "" {
		return // recycled already: a request message always has a subject
	}
	if s.nfallen.Load() > 0 {
		s.forget(msg)
	}
	clear(msg.Header)
	*msg = nats.Msg{Header: msg.Header}
	s.msgs.Put(msg)
}

// unavailable answers a request that will not be published, in its
// protocol (CoAP: 5.03); raw datagrams get nothing.
func (s *Server) unavailable(d datagram) {
	if r := d.replier(); r != nil {
		r.Fail(exchange.Unavailable)
	}
}

// identity returns the authenticated identity of d's DTLS client, or "".
func (d datagram) identity() string {
	if d.session == nil {
		return ""
	}
	return d.session.Identity()
}

// sessionIdentity returns the identity of a DTLS session, or "".
func sessionIdentity(s exchange.Session) string {
	if ds, ok := s.(*dtls.Session); ok {
		return ds.Identity()
	}
	return ""
}

// replier returns the protocol's replier of d, or nil for a raw datagram
// (a nil pointer must not become a non-nil interface).
func (d datagram) replier() exchange.Replier {
	switch {
	case d.coap != nil:
		return d.coap
	case d.rpc != nil:
		return d.rpc
	}
	return nil
}
