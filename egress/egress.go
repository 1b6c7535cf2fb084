// Package egress sends workers' replies back to clients. It subscribes to
// its node's reply subjects (PREFIX.reply.NODE.*), closes the exchange that
// the reply subject's last token names in the gateway's pending table, and
// writes the reply
// through the socket that received the request, from the address the
// request was sent to. The destination is the one recorded in the table,
// never anything from the worker's message, so a worker cannot aim traffic
// at arbitrary hosts. Unknown, late and second replies are dropped and
// counted, as are exchanges that expire unanswered.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// DefaultSweep is how often expired exchanges are swept when Server.Sweep is
// zero.
const DefaultSweep = 100 * time.Millisecond

// Server delivers the replies of one gateway node. Set its fields, then call
// Serve once. Its methods are safe for concurrent use.
type Server struct {
	// NATS is the connection to subscribe on. Required.
	NATS *nats.Conn
	// Subject is the node's reply subject, schemas.ReplySubject; the
	// reply to a request comes on Subject.ID. Required.
	Subject string
	// Table is the gateway's pending exchanges, shared with ingress.
	// Required.
	Table *exchange.Table
	// Sweep is how often exchanges past their deadline are expired
	// (DefaultSweep if zero).
	Sweep time.Duration
	// Log receives errors; nothing per reply above Debug. Nil discards.
	Log *slog.Logger
	// Latency, if not nil, is called for every reply sent, with the
	// listener port and the time since the request was read. It runs on
	// the reply path, so it must be quick and should not allocate.
	Latency func(port uint16, d time.Duration)
	// Allow, if not nil, is asked before a worker's reply is sent; when it
	// reports false the reply is dropped (the amplification limit: the
	// function counts it). It runs on the reply path and must be quick.
	Allow func(ex exchange.Exchange, status string, header nats.Header, body []byte) bool
	// Durable, if not nil, tells whether a durable group serves a request
	// that NATS found no direct group for (its no-responders answer):
	// served, and whether that is known yet (from a reading of the durable
	// groups made after the request was received; egress asks again at its
	// next sweeps until it is). A raw request nobody serves is released at
	// once and counted NoWorker: nothing would ever answer it, and its slot
	// in the table is free for others; a CoAP or RPC request nobody serves
	// is answered at once (see Unserved) and counted Unserved.
	Durable func(subject string, received time.Time) (served, known bool)
	// Unserved, if not nil, answers a CoAP or RPC request that no group
	// serves, in place of Replier.Fail(exchange.Unserved) (CoAP 4.04,
	// RPC STATUS_UNIMPLEMENTED): the gateway answers resource discovery and
	// 4.05 Method Not Allowed there. subject is the request's. It returns
	// whether the request is served after all (resource discovery,
	// counted Discovery) rather than refused (counted Unserved), and the
	// function that sends the answer, which egress calls once it has
	// counted it. The exchange is closed: a reply that comes after all is
	// counted Duplicate.
	Unserved func(ex exchange.Exchange, subject string) (served bool, answer func())

	// Expired, if not nil, is called for each exchange counted NoAnswer,
	// after it is counted and answered as unanswered, with its sequence
	// number in Table. It runs on the sweep or the reply path and must be
	// quick.
	Expired func(seq uint64, ex exchange.Exchange)

	// TracerProvider, if not nil, gives a span to every reply that
	// carries a sampled trace context (the traceparent header the worker
	// SDK sets on the reply to a traced request): a child of the span that
	// answered, from the reply's arrival to its send. Nil traces nothing.
	// See docs/tracing.md.
	TracerProvider trace.TracerProvider
	// Listener, if not nil, names the listener of a port, PORT/PROTOCOL,
	// in spans; a port it does not know (false) is named by its number. It
	// is called from egress's goroutines and must be safe for that.
	Listener func(port uint16) (string, bool)

	tracer trace.Tracer // from TracerProvider; nil when nothing is traced

	unknown atomic.Uint64 // replies with no exchange: no port to count them under
	busy    atomic.Int64  // replies and expiries being handled: taken from the table, maybe not yet sent

	undecidedMu sync.Mutex  // guards undecided
	undecided   []undecided // unserved by direct groups, waiting for Durable to know

	portsMu sync.Mutex                           // serializes adding to ports
	ports   atomic.Pointer[map[uint16]*counters] // copy on write; read without a lock

	readyOnce sync.Once
	ready     chan struct{} // closed once the reply subscription is in place

	wakeOnce sync.Once
	wake     chan struct{} // Wake: decide the undecided requests now
}

// Wake asks Serve to decide again, now rather than at its next sweep, the
// requests waiting for Durable to know whether a durable group serves
// them: call it when Durable has a new reading. It never blocks.
func (s *Server) Wake() {
	select {
	case s.wakeCh() <- struct{}{}:
	default:
	}
}

func (s *Server) wakeCh() chan struct{} {
	s.wakeOnce.Do(func() { s.wake = make(chan struct{}, 1) })
	return s.wake
}

// Ready returns a channel that is closed once Serve's subscription is
// registered with the server, so replies published from then on are
// received.
func (s *Server) Ready() <-chan struct{} {
	s.readyOnce.Do(func() { s.ready = make(chan struct{}) })
	return s.ready
}

// Stats are cumulative counts of a node's replies.
type Stats struct {
	Sent        uint64 // replies written to clients
	Late        uint64 // dropped: arrived after the deadline
	Duplicate   uint64 // dropped: the exchange was already answered
	Unknown     uint64 // dropped: no such exchange (malformed id, other process, or long gone)
	WorkerError uint64 // replies with status error: exchange closed, nothing sent on raw
	SendErrors  uint64 // the socket refused the write
	NoAnswer    uint64 // exchanges that reached their deadline unanswered
	// NoResponders counts requests that no direct group received: NATS
	// answered the core request with its no-responders status. The
	// exchange stays open for durable groups, which read the capture.
	NoResponders uint64
	// NoWorker counts raw requests that no group serves (no direct
	// group took them, no durable group's consumer covers them): released
	// at once, unanswered. See Server.Durable.
	NoWorker uint64
	// Unserved counts CoAP and RPC requests that no group serves, answered
	// at once by the gateway (see Server.Unserved).
	Unserved uint64
	// Discovery counts CoAP resource discovery requests that no group
	// serves, which the gateway answered for the port's groups.
	Discovery uint64
	// More counts replies with more to follow (schemas.HeaderMore) sent
	// on raw exchanges, which stay open; an exchange is counted Sent once,
	// at its last reply, or at its deadline or its amplification credit
	// once it sent one.
	More uint64
	// MoreRefused counts replies with more to follow on a CoAP, RPC or ws
	// exchange, which answers once: sent as its last reply.
	MoreRefused uint64
}

type counters struct {
	sent, late, duplicate, workerError, sendErrors, noAnswer, noResponders, noWorker, unserved, discovery atomic.Uint64
	more, moreRefused                                                                                     atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Sent: c.sent.Load(), Late: c.late.Load(), Duplicate: c.duplicate.Load(),
		WorkerError: c.workerError.Load(), SendErrors: c.sendErrors.Load(), NoAnswer: c.noAnswer.Load(),
		NoResponders: c.noResponders.Load(), NoWorker: c.noWorker.Load(), Unserved: c.unserved.Load(), Discovery: c.discovery.Load(),
		More: c.more.Load(), MoreRefused: c.moreRefused.Load(),
	}
}

// Stats returns a snapshot of the server's counters, all ports together.
func (s *Server) Stats() Stats {
	st := Stats{Unknown: s.unknown.Load()}
	for _, p := range s.PortStats() {
		st.Sent += p.Sent
		st.Late += p.Late
		st.Duplicate += p.Duplicate
		st.WorkerError += p.WorkerError
		st.SendErrors += p.SendErrors
		st.NoAnswer += p.NoAnswer
		st.NoResponders += p.NoResponders
		st.NoWorker += p.NoWorker
		st.Unserved += p.Unserved
		st.Discovery += p.Discovery
		st.More += p.More
		st.MoreRefused += p.MoreRefused
	}
	return st
}

// PortStats returns a snapshot of the server's counters by listener port.
// Unknown replies name no port and are counted only by Stats.
func (s *Server) PortStats() map[uint16]Stats {
	out := map[uint16]Stats{}
	if m := s.ports.Load(); m != nil {
		for port, c := range *m {
			out[port] = c.snapshot()
		}
	}
	return out
}

// port returns the counters of a listener port, adding them on first use.
func (s *Server) port(p uint16) *counters {
	if m := s.ports.Load(); m != nil {
		if c, ok := (*m)[p]; ok {
			return c
		}
	}
	s.portsMu.Lock()
	defer s.portsMu.Unlock()
	old := s.ports.Load()
	if old != nil {
		if c, ok := (*old)[p]; ok {
			return c
		}
	}
	m := make(map[uint16]*counters, 1)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	c := &counters{}
	m[p] = c
	s.ports.Store(&m)
	return c
}

// Serve subscribes to the reply subject and delivers replies until ctx is
// cancelled; then it unsubscribes and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	if s.NATS == nil || s.Table == nil || s.Subject == "" {
		return errors.New("egress: NATS, Table and Subject are required")
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.Sweep <= 0 {
		s.Sweep = DefaultSweep
	}
	if s.TracerProvider != nil {
		s.tracer = s.TracerProvider.Tracer(tracerName)
	}
	sub, err := s.NATS.Subscribe(s.Subject+".*", s.deliver)
	if err != nil {
		return fmt.Errorf("egress: subscribe %s: %w", s.Subject, err)
	}
	// Replies must never be dropped by the client library for being slow
	// to consume; the table bounds what can be pending anyway.
	if err := sub.SetPendingLimits(-1, 256<<20); err != nil {
		sub.Unsubscribe()
		return fmt.Errorf("egress: subscribe %s: %w", s.Subject, err)
	}
	if err := s.NATS.Flush(); err != nil {
		sub.Unsubscribe()
		return fmt.Errorf("egress: subscribe %s: %w", s.Subject, err)
	}
	s.Ready()
	close(s.ready)
	t := time.NewTicker(s.Sweep)
	defer t.Stop()
	wake := s.wakeCh()
	for {
		select {
		case <-ctx.Done():
			if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				s.Log.Warn("egress: unsubscribe", "subject", s.Subject, "err", err)
			}
			return nil
		case now := <-t.C:
			s.busy.Add(1)
			s.Table.Expire(now, s.expired)
			s.redecide()
			s.busy.Add(-1)
		case <-wake:
			s.busy.Add(1)
			s.redecide()
			s.busy.Add(-1)
		}
	}
}

// Busy returns how many replies and expiries egress is handling now:
// their exchanges closed in the table, their answers perhaps not yet
// written. A gateway that stops waits for none to be left before it
// closes its sockets.
func (s *Server) Busy() int { return int(s.busy.Load()) }

// deliver handles one reply message, in a span of its own if it carries
// a sampled trace context and egress traces.
func (s *Server) deliver(msg *nats.Msg) {
	s.busy.Add(1)
	defer s.busy.Add(-1)
	if s.tracer != nil && tracing.Carries(msg.Header) {
		s.deliverTraced(msg)
		return
	}
	s.reply(msg, nil)
}

// reply handles one reply message and returns what became of it (see
// the outcome constants); ex, if not nil, receives the exchange it
// closed, for the span.
func (s *Server) reply(msg *nats.Msg, ex *exchange.Exchange) (outcome string, err error) {
	id, _ := schemas.ReplyID(msg.Subject)
	seq, ok := s.Table.ParseID(id)
	if len(msg.Data) == 0 && msg.Header.Get(statusHeader) == noResponders {
		// Not a reply: the exchange stays open for durable groups.
		if ex, open := s.Table.Pending(seq); ok && open {
			s.port(ex.Port).noResponders.Add(1)
			if s.Durable != nil {
				s.decide(undecided{seq: seq, subject: msg.Header.Get(subjectHeader), received: ex.Received, raw: ex.Replier == nil})
			}
		}
		return outcomeNoResponders, nil
	}
	if !ok {
		s.unknown.Add(1)
		return outcomeUnknown, nil
	}
	status := msg.Header.Get(schemas.HeaderStatus)
	if status == "" {
		status = schemas.StatusOK
	}
	now := time.Now()
	var closed exchange.Exchange
	var closing exchange.Outcome
	more, kept := status == schemas.StatusOK && msg.Header.Get(schemas.HeaderMore) != "", false
	if more {
		closed, closing, kept = s.Table.More(seq, now)
	} else {
		closed, closing = s.Table.Close(seq, now)
	}
	if ex != nil {
		*ex = closed
	}
	switch closing {
	case exchange.Late:
		s.port(closed.Port).late.Add(1)
		return outcomeLate, nil
	case exchange.Expired:
		// The sweep has not reached it yet: answer it as the sweep would.
		s.port(closed.Port).late.Add(1)
		s.expired(seq, closed)
		return outcomeLate, nil
	case exchange.Duplicate:
		s.port(closed.Port).duplicate.Add(1)
		return outcomeDuplicate, nil
	case exchange.Unknown:
		s.unknown.Add(1)
		return outcomeUnknown, nil
	}
	c := s.port(closed.Port)
	if kept {
		return s.more(seq, now, c, closed, status, msg)
	}
	if more {
		c.moreRefused.Add(1) // a CoAP, RPC or ws exchange answers once: this is its reply
	}
	if closed.Replies > 0 {
		// Its earlier replies answered the exchange: it is counted
		// once, whatever becomes of its last reply.
		c.sent.Add(1)
	}
	if status != schemas.StatusOK {
		c.workerError.Add(1)
	}
	if s.Allow != nil && !s.Allow(closed, status, msg.Header, msg.Data) {
		return outcomeAmplification, nil
	}
	switch {
	case closed.Replier != nil:
		err = closed.Replier.Reply(status, msg.Header, msg.Data)
	case status != schemas.StatusOK:
		return outcomeWorkerError, nil // raw: an error has no wire form
	default:
		err = closed.Write(msg.Data)
	}
	if err != nil {
		c.sendErrors.Add(1)
		s.Log.Debug("egress: send", "err", fmt.Errorf("egress: %w", err))
		return outcomeSendError, err
	}
	if closed.Replies > 0 {
		return outcomeSent, nil // counted above, its latency at its first reply
	}
	c.sent.Add(1)
	if s.Latency != nil && !closed.Received.IsZero() {
		s.Latency(closed.Port, time.Since(closed.Received))
	}
	return outcomeSent, nil
}

// more sends msg, a reply with more to follow, to the raw exchange seq,
// which stays open (ex as it was before the reply), and charges it to
// the exchange. A reply over the exchange's amplification credit (Allow
// sees what its earlier replies sent in ex.Sent and ex.Replies) is
// dropped and ends the exchange. Replies are handled one at a time, in
// the order NATS delivers them (one subscription), so the replies of an
// exchange are sent in the order its worker published them.
func (s *Server) more(seq uint64, now time.Time, c *counters, ex exchange.Exchange, status string, msg *nats.Msg) (string, error) {
	if s.Allow != nil && !s.Allow(ex, status, msg.Header, msg.Data) {
		switch closed, outcome := s.Table.Close(seq, now); outcome {
		case exchange.Answered:
			if closed.Replies > 0 {
				c.sent.Add(1)
			}
		case exchange.Expired: // its deadline passed meanwhile
			s.expired(seq, closed)
		}
		return outcomeAmplification, nil
	}
	if err := ex.Write(msg.Data); err != nil {
		c.sendErrors.Add(1)
		s.Log.Debug("egress: send", "err", fmt.Errorf("egress: %w", err))
		return outcomeSendError, err
	}
	s.Table.Charge(seq, len(msg.Data))
	c.more.Add(1)
	if ex.Replies == 0 && s.Latency != nil && !ex.Received.IsZero() {
		s.Latency(ex.Port, time.Since(ex.Received))
	}
	return outcomeMore, nil
}

// NATS's status header, the status of its answer to a request that no
// subscription received, and the header of that answer that names the
// request's subject. nats.go does not export them.
const (
	statusHeader  = "Status"
	noResponders  = "503"
	subjectHeader = "Nats-Subject"
)

// undecided is a request no direct group took, whose durable groups are
// not known yet.
type undecided struct {
	seq      uint64
	subject  string
	received time.Time
	raw      bool // no Replier: released unanswered
}

// maxUndecided bounds the requests waiting for a reading of the durable
// groups; beyond it they wait for their deadline, as before.
const maxUndecided = 4096

// decide settles u's exchange if no durable group serves it (a raw one
// released, another answered as unserved), or keeps it for the next
// sweep if that is not known yet.
func (s *Server) decide(u undecided) {
	served, known := s.Durable(u.subject, u.received)
	switch {
	case !known:
		s.undecidedMu.Lock()
		if len(s.undecided) < maxUndecided {
			s.undecided = append(s.undecided, u)
		}
		s.undecidedMu.Unlock()
	case served:
	case u.raw:
		if ex, ok := s.Table.Release(u.seq); ok {
			s.port(ex.Port).noWorker.Add(1)
		}
	default:
		ex, outcome := s.Table.Close(u.seq, time.Now())
		switch outcome {
		case exchange.Expired:
			s.expired(u.seq, ex) // as the sweep would have
			return
		case exchange.Answered:
		default:
			return // answered meanwhile
		}
		served, answer := false, func() { ex.Replier.Fail(exchange.Unserved) }
		if s.Unserved != nil {
			served, answer = s.Unserved(ex, u.subject)
		}
		c := s.port(ex.Port)
		if served {
			c.discovery.Add(1)
		} else {
			c.unserved.Add(1)
		}
		answer()
	}
}

// redecide decides again the requests whose durable groups were not known,
// those still open.
func (s *Server) redecide() {
	s.undecidedMu.Lock()
	us := s.undecided
	s.undecided = nil
	s.undecidedMu.Unlock()
	for _, u := range us {
		if _, open := s.Table.Pending(u.seq); open {
			s.decide(u)
		}
	}
}

// Undecided returns how many requests no direct group took wait for a
// reading of the durable groups.
func (s *Server) Undecided() int {
	s.undecidedMu.Lock()
	defer s.undecidedMu.Unlock()
	return len(s.undecided)
}

// expired answers an exchange that reached its deadline unanswered, in its
// protocol (CoAP: 5.04); raw exchanges get nothing. A raw exchange that
// sent replies with more to follow was answered: its deadline ends it,
// and it is counted Sent.
func (s *Server) expired(seq uint64, ex exchange.Exchange) {
	if ex.Replies > 0 {
		s.port(ex.Port).sent.Add(1)
		return
	}
	s.port(ex.Port).noAnswer.Add(1)
	if ex.Replier != nil {
		ex.Replier.Fail(exchange.NoAnswer)
	}
	if s.Expired != nil {
		s.Expired(seq, ex)
	}
}
