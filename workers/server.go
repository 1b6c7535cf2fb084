package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of the Server fields.
const (
	DefaultConcurrency   = 16
	DefaultBacklog       = 4096
	DefaultAckWait       = 2 * time.Second
	DefaultMaxDeliver    = 5
	DefaultMaxAckPending = 1024
)

// Delivery is how a group receives its requests.
type Delivery int

const (
	// Direct, the default, makes the group a core NATS queue subscription
	// (queue name = group) on its subjects: each request reaches one
	// instance at once, with no acknowledgements. A request is delivered
	// at most once per publish: if an instance dies with it, the client's
	// retry (a CoAP retransmission, which the gateway publishes again; a
	// raw or RPC client's resend) is the redelivery.
	Direct Delivery = iota
	// Durable makes the group a JetStream pull consumer (durable name =
	// group) on the capture stream: at least once, a request whose
	// instance dies is redelivered to another, and requests wait in the
	// stream while every instance is busy. For ingest-only ports, slow
	// work, and backlogs that must wait.
	Durable
)

// String returns "direct" or "durable", as UDPGATE_DELIVERY spells them.
func (d Delivery) String() string {
	if d == Durable {
		return "durable"
	}
	return "direct"
}

// ParseDelivery parses "direct" or "durable".
func ParseDelivery(s string) (Delivery, error) {
	switch s {
	case "direct":
		return Direct, nil
	case "durable":
		return Durable, nil
	}
	return Direct, fmt.Errorf("workers: delivery %q is neither direct nor durable", s)
}

// Server runs a Handler for one group of workers: it receives the group's
// requests, directly (a queue subscription) or from its durable pull
// consumer, and calls the Handler for each request, at most Concurrency at
// a time. Overloaded, it sheds the requests that cannot finish before
// their deadline instead of calling the Handler, and answers them at once
// with the protocol's overload status, as the package documentation
// describes under Overload; its estimate of the Handler's time, which
// decides, lasts across Serve calls. The exported fields are read by
// Serve and must not change while it runs. Stats is safe for concurrent
// use; a Server must not be copied after first use.
type Server struct {
	// NATS is the connection requests are received and replies published
	// on. Required unless JetStream is set, whose connection is then used.
	NATS *nats.Conn
	// JetStream is the JetStream context a Durable group reads from; nil
	// means jetstream.New(NATS). A Direct group does not use JetStream.
	JetStream jetstream.JetStream
	// Delivery is how the group receives requests: Direct (the zero
	// value) or Durable. Every instance of a group must use the same.
	Delivery Delivery
	// Stream is the request stream of a Durable group; empty means
	// schemas.StreamIn.
	Stream string
	// Group names the group: the queue of a Direct group's subscriptions,
	// the durable consumer that every instance of a Durable group binds
	// to. Every instance of a group shares its work; every group sees
	// every request on its subjects. Required.
	Group string
	// Subjects are the request subjects the group serves, for example
	// schemas.InSubject(schemas.DefaultPrefix, 9000). Required; for a
	// Durable group they must equal the filter of the group's consumer if
	// it already exists.
	Subjects []string
	// Prefix is the subject prefix of Subjects (schemas.DefaultPrefix if
	// empty). A Durable group also subscribes, in its queue, to the
	// fallback subjects of those of its Subjects that are under it
	// (PREFIX.fallback.…, schemas.FallbackSubject): the gateway publishes
	// there the requests the capture stream could not take, and the group
	// answers them while the stream elects a leader.
	Prefix string
	// Handler answers the requests. Required.
	Handler Handler
	// Concurrency is the number of handlers running at once in this
	// instance. A Durable group fetches requests only for idle handlers.
	// Zero means DefaultConcurrency.
	Concurrency int
	// Backlog is how many requests a Direct instance holds waiting for a
	// handler (its backlog, which it serves newest first when it cannot
	// serve them all in time, and sheds from: see Overload in the package
	// documentation). A request that arrives when Backlog wait makes it
	// drop the oldest, answered like a shed request, counted Dropped; the
	// client's retry may reach another instance. A Durable instance
	// holds as many fallback copies (see Prefix). Zero means
	// DefaultBacklog.
	Backlog int
	// AckWait, MaxDeliver and MaxAckPending configure a Durable group's
	// consumer when Serve creates it; an existing consumer is used as it
	// is. Zero means DefaultAckWait, DefaultMaxDeliver and
	// DefaultMaxAckPending.
	AckWait       time.Duration
	MaxDeliver    int
	MaxAckPending int
	// Log receives the Server's logs; nil discards them. Nothing is logged
	// per request at Info level or above, except handler panics (Error).
	Log *slog.Logger
	// Version is the version the group announces (semantic versioning;
	// DefaultVersion if empty). Every instance of a group answers NATS's
	// service discovery (`nats micro ls`, $SRV.INFO) as a nats micro
	// service named after the group, one endpoint per subject, unless
	// Silent is set.
	Version string
	Silent  bool
	// HandlerLatency, if not nil, is called after each handler call with
	// how long the handler ran. It must be quick and safe for concurrent
	// use.
	HandlerLatency func(d time.Duration)
	// TracerProvider makes the spans of traced requests, those that carry
	// a trace context (the traceparent header the gateway sets on the
	// requests it traces); nil means OpenTelemetry's global provider
	// (otel.GetTracerProvider). See Tracing in the package documentation.
	TracerProvider trace.TracerProvider

	stats    counters
	est      estimate // how long the handler takes, to shed what cannot finish
	overload overload // the replies to shed requests

	readyOnce sync.Once
	ready     chan struct{} // closed once the group receives requests

	dropped func() uint64 // a Direct group's slow-consumer drops so far; set by Serve
	mu      sync.Mutex    // guards dropped
}

// Ready returns a channel that is closed once Serve receives the group's
// requests: its subscriptions are registered with the server (Direct), or
// it has bound the group's consumer (Durable; a consumer delivers only
// requests that arrive after it is created). Requests published from then
// on reach the group.
func (s *Server) Ready() <-chan struct{} {
	s.readyOnce.Do(func() { s.ready = make(chan struct{}) })
	return s.ready
}

// Stats counts the outcomes of the requests a Server has taken, since it
// was created. The package documentation details each outcome.
//
// Every request a Server receives is counted once as Handled, Shed,
// Expired (its deadline passed before a handler could start it) or
// Dropped; each Handled request is then counted at most once more, as
// Replied, Failed, Retried or Expired (none if its handler answered
// nothing). Requests that NATS dropped before the instance received them
// are counted Dropped too.
type Stats struct {
	Handled uint64 // handler calls that returned or panicked
	Replied uint64 // replies written by a handler and published
	Failed  uint64 // handler errors and panics, and replies that could not be published
	Retried uint64 // requests given back: nak'd for redelivery (Durable), or left to the client's retry (Direct)
	Expired uint64 // requests left unanswered because their deadline had passed
	// Shed counts the requests refused, overloaded, without calling the
	// handler: they could not finish before their deadline, or waited too
	// long in a Direct instance's backlog (see Server). Each was answered
	// with the protocol's overload status (CoAP 5.03, RPC
	// RESOURCE_EXHAUSTED), or dropped if it has none (raw).
	Shed uint64
	// Dropped counts the requests a Direct instance dropped because
	// Backlog requests were waiting for a handler: the oldest waiting, to
	// make room for a new one (answered like a shed request), or, if the
	// instance fell behind in taking them from NATS, those NATS dropped (a
	// slow consumer), which it never saw.
	Dropped uint64
	// Fallback counts the requests a Durable instance received as
	// fallback copies (see Prefix), which are counted in the others as
	// well; Duplicates, the stored copies of those it had handled, which
	// it acked without handling them again, and counts nowhere else.
	Fallback   uint64
	Duplicates uint64
	// ShedAtDoor counts the capture copies a Durable instance received of
	// requests that a gateway shed at the door (schemas.HeaderShed) and
	// answered itself: acked without handling, counted nowhere else.
	// Overloads counts the times a Durable instance found its requests
	// waiting too long and told the gateways to shed at the door (see
	// Server).
	ShedAtDoor uint64
	Overloads  uint64
}

type counters struct {
	handled, replied, failed, retried, expired, shed, dropped atomic.Uint64
	fallback, duplicates, shedAtDoor, overloads               atomic.Uint64
}

// Stats returns a snapshot of the Server's counters. It is safe for
// concurrent use, also while Serve runs.
func (s *Server) Stats() Stats {
	st := Stats{
		Handled: s.stats.handled.Load(),
		Replied: s.stats.replied.Load(),
		Failed:  s.stats.failed.Load(),
		Retried: s.stats.retried.Load(),
		Expired: s.stats.expired.Load(),
		Shed:    s.stats.shed.Load(),
		Dropped: s.stats.dropped.Load(),

		Fallback:   s.stats.fallback.Load(),
		Duplicates: s.stats.duplicates.Load(),
		ShedAtDoor: s.stats.shedAtDoor.Load(),
		Overloads:  s.stats.overloads.Load(),
	}
	s.mu.Lock()
	if s.dropped != nil {
		st.Dropped += s.dropped()
	}
	s.mu.Unlock()
	return st
}

// Serve handles the group's requests until ctx is cancelled.
//
// A Direct group subscribes to Subjects in the queue Group. When ctx is
// cancelled it drains its subscriptions (the server stops routing to this
// instance, so the other instances take every new request, and what it
// had already routed here arrives), handles the requests it holds, waits
// for the running handlers and returns nil. It returns an error if its
// connection closes while it serves.
//
// A Durable group binds to the group's consumer, creating it if it does
// not exist, and fetches requests only for idle handlers. When ctx is
// cancelled it starts no more fetches, lets those outstanding run until
// JetStream ends them (about a second at most) and handles the requests
// they still bring; then it cancels the handlers still running, naks the
// requests of those that fail because of the cancellation, so that other
// instances take them at once, waits for the handlers and returns nil.
// No request it was delivered is left to wait for the consumer's AckWait.
//
// Serve returns an error if the configuration is incomplete, a
// subscription fails, or (Durable) the stream does not exist, the
// consumer's filter differs from Subjects, or the consumer goes away.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.validate(); err != nil {
		return err
	}
	if s.Delivery == Direct {
		return s.serveDirect(ctx)
	}
	return s.serveDurable(ctx)
}

func (s *Server) validate() error {
	switch {
	case s.JetStream == nil && s.NATS == nil:
		return errors.New("workers: Server.NATS and Server.JetStream are nil")
	case s.Delivery != Direct && s.Delivery != Durable:
		return fmt.Errorf("workers: Server.Delivery %d is neither Direct nor Durable", s.Delivery)
	case s.Group == "":
		return errors.New("workers: Server.Group is empty")
	case len(s.Subjects) == 0:
		return errors.New("workers: Server.Subjects is empty")
	case s.Handler == nil:
		return errors.New("workers: Server.Handler is nil")
	}
	return nil
}

// run is the state of one Serve call, shared by its goroutines.
type run struct {
	*Server
	log        *slog.Logger
	nc         *nats.Conn    // replies are published here
	keepalive  time.Duration // interval of InProgress acks; zero for none
	maxDeliver int           // the consumer's MaxDeliver; -1 for no limit
	slots      *slots        // the handler slots, which bound the fetches
	fallback   *fallback     // a Durable instance's fallback copies
	pressure   *pressure     // a Durable instance's waits, for shedding at the door

	fetchLog limitedLog // fetch failures: every retryEvery while NATS is down
	ann      *announcer // answers NATS's service discovery; nil when silent
	tracer   trace.Tracer
	spanName string // of a traced request's span: "worker GROUP"
}

// warnEvery is how often a failure that repeats is logged at most.
const warnEvery = 30 * time.Second

// limitedLog logs a failure that repeats at most once per warnEvery, with
// the count of the failures not logged, and its end once. Safe for
// concurrent use.
type limitedLog struct {
	mu      sync.Mutex // guards the rest
	last    time.Time  // when a failure was last logged
	missed  int        // failures since last, not logged
	failing bool       // the last outcome was a failure
}

// failed logs msg and err at Warn, unless it logged one less than
// warnEvery ago.
func (l *limitedLog) failed(log *slog.Logger, msg string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failing = true
	if now := time.Now(); l.last.IsZero() || now.Sub(l.last) >= warnEvery {
		log.Warn(msg, "err", err, "not_logged", l.missed)
		l.last, l.missed = now, 0
		return
	}
	l.missed++
}

// ok logs at Info, once, that failures logged before have ended.
func (l *limitedLog) ok(log *slog.Logger, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failing {
		log.Info(msg, "failures_not_logged", l.missed)
		l.failing, l.last, l.missed = false, time.Time{}, 0
	}
}
