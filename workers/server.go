package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
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
	// client's retry may reach another instance. Zero means
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
}

type counters struct {
	handled, replied, failed, retried, expired, shed, dropped atomic.Uint64
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

// serveDurable is Serve for a Durable group.
func (s *Server) serveDurable(ctx context.Context) error {
	if s.JetStream == nil {
		js, err := jetstream.New(s.NATS)
		if err != nil {
			return fmt.Errorf("workers: %s: jetstream: %w", s.Group, err)
		}
		s.JetStream = js
	}
	stream := s.Stream
	if stream == "" {
		stream = schemas.StreamIn
	}
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("stream", stream, "group", s.Group)
	concurrency := s.Concurrency
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}

	cons, err := s.consumer(ctx, stream)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	cfg := cons.CachedInfo().Config
	ann, unannounce, err := s.announce(s.JetStream.Conn(), log)
	if err != nil {
		return err
	}
	defer unannounce()
	r := &run{
		Server:     s,
		ann:        ann,
		log:        log,
		nc:         s.JetStream.Conn(),
		keepalive:  cfg.AckWait / 2,
		maxDeliver: cfg.MaxDeliver,
		slots:      newSlots(concurrency),
	}
	log.Info("workers: serving", "delivery", "durable", "subjects", s.Subjects, "concurrency", concurrency)
	s.Ready()
	close(s.ready)

	// Handlers run until the fetches have ended, not just until ctx is
	// cancelled: the requests a fetch brings after that are handled (see
	// fetch), and a request nak'd while a fetch of this instance is open
	// could be redelivered to it, costing a delivery attempt each time.
	hctx, stopHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandlers()
	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			// Each handler goroutine reuses one response and one
			// keepalive for the requests it handles, one at a time.
			w := &response{}
			k := newKeepalive(r.keepalive)
			for msg := range work {
				r.handle(hctx, msg, w, k)
				r.slots.release(1)
			}
		})
	}
	err = r.fetch(ctx, cons, work)
	// No fetch is outstanding: what the handlers give back now is
	// redelivered to another instance, not to this one.
	stopHandlers()
	close(work)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("workers: consume %s on stream %s: %w", s.Group, stream, err)
	}
	log.Info("workers: stopped")
	return nil
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

// consumer looks up the group's consumer and creates it if it is missing.
func (s *Server) consumer(ctx context.Context, stream string) (jetstream.Consumer, error) {
	st, err := s.JetStream.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("workers: stream %s not found: is the gateway running? it creates the stream: %w", stream, err)
	}
	if err != nil {
		return nil, fmt.Errorf("workers: look up stream %s: %w", stream, err)
	}
	cons, err := st.Consumer(ctx, s.Group)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = st.CreateConsumer(ctx, s.consumerConfig())
		if errors.Is(err, jetstream.ErrConsumerExists) {
			// Another instance created it first, with another
			// configuration: use theirs.
			cons, err = st.Consumer(ctx, s.Group)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("workers: consumer %s on stream %s: %w", s.Group, stream, err)
	}
	have := filterSubjects(cons.CachedInfo().Config)
	if !sameSubjects(have, s.Subjects) {
		return nil, fmt.Errorf("workers: consumer %s on stream %s filters subjects %q, not %q: "+
			"delete the consumer or choose another group", s.Group, stream, have, s.Subjects)
	}
	return cons, nil
}

func (s *Server) consumerConfig() jetstream.ConsumerConfig {
	cfg := jetstream.ConsumerConfig{
		Durable:        s.Group,
		FilterSubjects: s.Subjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		AckWait:        s.AckWait,
		MaxDeliver:     s.MaxDeliver,
		MaxAckPending:  s.MaxAckPending,
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = DefaultMaxDeliver
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = DefaultMaxAckPending
	}
	return cfg
}

// filterSubjects returns a consumer's filter, which the server may keep in
// FilterSubject or FilterSubjects.
func filterSubjects(cfg jetstream.ConsumerConfig) []string {
	if cfg.FilterSubject != "" {
		return append([]string{cfg.FilterSubject}, cfg.FilterSubjects...)
	}
	return cfg.FilterSubjects
}

// sameSubjects reports whether a and b hold the same subjects, in any order.
func sameSubjects(a, b []string) bool {
	return slices.Equal(slices.Compact(slices.Sorted(slices.Values(a))),
		slices.Compact(slices.Sorted(slices.Values(b))))
}

// pullExpiry is how long one fetch lasts on the server. A fetch held by a
// consumer leader that dies (a NATS node lost) ends then, and the next one
// goes to the new leader. A stopping instance waits for its fetches to end
// (see fetch), so it is also about how long a stop may take.
const pullExpiry = time.Second

// retryEvery is how long a fetch that failed keeps its slots before they
// are fetched for again, so that a failing consumer is not pulled in a
// tight loop.
const retryEvery = 250 * time.Millisecond

// run is the state of one Serve call, shared by its goroutines.
type run struct {
	*Server
	log        *slog.Logger
	nc         *nats.Conn    // replies are published here
	keepalive  time.Duration // interval of InProgress acks; zero for none
	maxDeliver int           // the consumer's MaxDeliver; -1 for no limit
	slots      *slots        // the handler slots, which bound the fetches

	fetchLog limitedLog // fetch failures: every retryEvery while NATS is down
	ann      *announcer // answers NATS's service discovery; nil when silent
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

// fetch pulls requests from cons for the free handler slots and feeds them
// to work, until ctx is cancelled or the consumer goes away. Every fetch
// asks for at most the slots that are free when it starts, so each request
// that arrives has a handler waiting for it: the instance never holds a
// request that it cannot start at once, and that JetStream could redeliver
// because nothing sends it keepalives. fetch returns once every fetch it
// started has ended.
//
// This instance never ends a fetch itself: that unsubscribes the fetch's
// inbox while JetStream may be delivering to it, and a request delivered
// there would reach nobody and wait for the consumer's AckWait. A fetch
// lasts until JetStream has delivered the requests it asked for, or says
// on the fetch's inbox that it has ended (status 408 when it expires after
// pullExpiry, 409 when the consumer goes away or changes leader): it says
// so after every request it delivered to the fetch, so nothing can follow.
// Only a server that says nothing for a second past the expiry is given up
// on (by nats.go). Once ctx is cancelled no fetch starts, and the requests
// the outstanding ones still bring are handled as usual.
func (r *run) fetch(ctx context.Context, cons jetstream.Consumer, work chan<- jetstream.Msg) error {
	var batches sync.WaitGroup
	defer batches.Wait()
	fatal := make(chan error, 1) // the first reason to stop that a fetch found
	for {
		if ctx.Err() != nil {
			return nil
		}
		if n := r.slots.reserve(); n > 0 {
			// FetchMaxWait, not a context: a context that ends would end
			// the fetch here first, before the server's 408 arrives.
			batch, err := cons.Fetch(n, jetstream.FetchMaxWait(pullExpiry))
			if err != nil {
				if errors.Is(err, nats.ErrConnectionClosed) {
					return err
				}
				r.fetchLog.failed(r.log, "workers: fetch", err)
				batches.Go(func() { r.retry(ctx, n) })
				continue
			}
			batches.Go(func() {
				if err := r.forward(ctx, cons, batch, n, work); err != nil {
					select {
					case fatal <- err:
					default:
					}
				}
			})
			continue
		}
		select {
		case <-r.slots.freed:
		case err := <-fatal:
			// The consumer is gone: the server ends the other fetches
			// (409), which fetch waits for.
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// forward feeds work with the requests of one fetch of n, and frees the
// slots of those that did not arrive once the fetch ends. It returns an
// error if the fetch found that the consumer is gone.
func (r *run) forward(ctx context.Context, cons jetstream.Consumer, batch jetstream.MessageBatch, n int, work chan<- jetstream.Msg) error {
	start, wanted := time.Now(), n
	for msg := range batch.Messages() {
		n--
		r.slots.start()
		// A handler is free or about to be: the slot was. Stopping, the
		// handlers still take what arrives (see fetch).
		work <- msg
	}
	err := batch.Error()
	switch {
	case ctx.Err() != nil:
		return nil
	case err == nil && n == wanted && time.Since(start) < retryEvery:
		// Ended at once, with nothing: do not pull again at once.
		r.retry(ctx, n)
		return nil
	case err == nil:
		// The fetch expired, or the server did not answer for a second
		// past its expiry.
		r.fetchLog.ok(r.log, "workers: fetching again")
		r.slots.unreserve(n)
		return nil
	case errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrBadRequest):
		return err
	case errors.Is(err, nats.ErrNoResponders):
		// Nothing serves the consumer's pulls: it may be gone, or its
		// stream between leaders.
		// A server back without its store has lost the stream too.
		if _, ierr := cons.Info(ctx); errors.Is(ierr, jetstream.ErrConsumerNotFound) || errors.Is(ierr, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("%w: %w", err, ierr)
		}
	}
	r.fetchLog.failed(r.log, "workers: fetch", err)
	r.retry(ctx, n)
	return nil
}

// retry frees the n slots of a fetch that failed, after retryEvery or once
// ctx ends.
func (r *run) retry(ctx context.Context, n int) {
	t := time.NewTimer(retryEvery)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	r.slots.unreserve(n)
}

// slots counts the handler slots of one Serve call. A slot is free, or
// reserved by a fetch for a request that has not arrived, or busy with a
// request from its arrival until its handler is done. It is safe for
// concurrent use.
type slots struct {
	refill int           // the free slots that start a fetch while another is outstanding
	freed  chan struct{} // holds a value after free grows
	mu     sync.Mutex    // guards free and reserved
	free   int
	// reserved counts the requests that outstanding fetches may still
	// bring.
	reserved int
}

func newSlots(n int) *slots {
	return &slots{refill: (n + 1) / 2, freed: make(chan struct{}, 1), free: n}
}

// reserve reserves the free slots for a fetch and returns how many. It
// returns 0, reserving none, if no slot is free, or if a fetch is
// outstanding and fewer than half the slots are free: pulling one request
// at a time would cost a pull request each.
func (s *slots) reserve() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.free == 0 || s.reserved > 0 && s.free < s.refill {
		return 0
	}
	n := s.free
	s.free = 0
	s.reserved += n
	return n
}

// start makes a reserved slot busy: its request has arrived. When that was
// the last request outstanding fetches could bring, free slots that were
// too few to pull for while a fetch was outstanding may now be pulled for.
func (s *slots) start() {
	s.mu.Lock()
	s.reserved--
	s.signalIfReady()
	s.mu.Unlock()
}

// release frees n busy slots.
func (s *slots) release(n int) {
	s.mu.Lock()
	s.free += n
	s.signalIfReady()
	s.mu.Unlock()
}

// unreserve frees n reserved slots, whose requests will not arrive.
func (s *slots) unreserve(n int) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.reserved -= n
	s.free += n
	s.signalIfReady()
	s.mu.Unlock()
}

// signalIfReady wakes the fetch loop if reserve would now reserve slots,
// and only then: a wake-up that finds nothing to do costs a context
// switch per request. s.mu must be held.
func (s *slots) signalIfReady() {
	if s.free == 0 || s.reserved > 0 && s.free < s.refill {
		return
	}
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// handle runs the handler on one request and maps the outcome, as the
// package documentation describes.
func (r *run) handle(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive) {
	req, err := parseRequest(msg.Subject(), "", msg.Headers(), msg.Data())
	if err != nil {
		r.log.Debug("workers: malformed request", "subject", req.Subject, "id", req.ID, "err", err)
	}
	if md, err := msg.Metadata(); err == nil {
		req.Delivery = md.NumDelivered
		if req.Received.IsZero() {
			req.Received = md.Timestamp
		}
	}
	if expired(req.Deadline) {
		r.ack(msg)
		r.stats.expired.Add(1)
		return
	}
	if est := r.estimate(); cannotFinish(req.Deadline, time.Now(), est) {
		// Acked, never nak'd: it would come back, later still.
		r.shed(req.Reply, req.Header, est)
		r.ack(msg)
		r.stats.shed.Add(1)
		return
	}

	err = r.handled(ctx, msg, w, k, req)
	switch {
	case err == nil && !w.answered():
		r.ack(msg)
	case expired(req.Deadline):
		r.ack(msg)
		r.stats.expired.Add(1)
	case err != nil && ctx.Err() != nil:
		// Stopping, and no fetch of this instance is outstanding (see
		// serveDurable): another instance takes it at once.
		r.nak(msg)
	case errors.Is(err, ErrRetry) && (r.maxDeliver <= 0 || req.Delivery < uint64(r.maxDeliver)):
		r.nak(msg)
	case err != nil:
		// Includes ErrRetry on the last delivery: JetStream would not
		// redeliver it, so the gateway gets an error reply at once.
		r.log.Debug("workers: handler failed", "subject", req.Subject, "id", req.ID, "err", err)
		r.fail(msg, req)
	default:
		r.reply(msg, req, w)
	}
}

// handled runs the handler on req (see call) with w reset, and counts the
// call: Stats, the handler estimate, HandlerLatency and the group's
// announced figures.
func (r *run) handled(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive, req *Request) error {
	w.reset()
	start := time.Now()
	err := r.call(ctx, msg, w, k, req)
	end := time.Now()
	took := end.Sub(start)
	if req.Deadline.IsZero() || end.Before(req.Deadline) {
		r.est.record(took, monotonic())
	}
	if r.HandlerLatency != nil {
		r.HandlerLatency(took)
	}
	r.ann.record(req.Subject, took, err)
	r.stats.handled.Add(1)
	return err
}

// call runs the handler with the request's deadline and a keepalive,
// turning a panic into an error.
func (r *run) call(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive, req *Request) (err error) {
	if k != nil {
		k.start(msg)
		defer k.stop()
	}
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("workers: handler panic", "subject", req.Subject, "id", req.ID,
				"panic", v, "stack", string(debug.Stack()))
			err = fmt.Errorf("workers: handler panic: %v", v)
		}
	}()
	return r.Handler.Handle(ctx, w, req)
}

// reply publishes the handler's reply, then acks the request.
func (r *run) reply(msg jetstream.Msg, req *Request, w *response) {
	if req.Reply == "" {
		r.log.Debug("workers: reply dropped: request has no reply subject", "subject", req.Subject, "id", req.ID)
		r.term(msg)
		r.stats.failed.Add(1)
		return
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: w.header, Data: w.body}); err != nil {
		r.log.Debug("workers: publish reply", "subject", req.Subject, "id", req.ID, "err", err)
		r.fail(msg, req)
		return
	}
	// A plain Ack, not DoubleAck, is enough: the reply and the ack travel on
	// the same connection (JetStream.Conn()), and NATS delivers a
	// connection's messages to the server in order, so an ack that reaches
	// the server implies that the reply did. If the connection fails in
	// between, neither arrives and the request is redelivered.
	r.ack(msg)
	r.stats.replied.Add(1)
}

// fail publishes an error reply, if the request can be answered, and terms
// the request.
func (r *run) fail(msg jetstream.Msg, req *Request) {
	publishError(r.nc, r.log, req)
	r.term(msg)
	r.stats.failed.Add(1)
}

// shed answers a request refused without calling the handler,
// overloaded: it publishes to reply the overload status of the request's
// protocol, given the request's headers h and the handler estimate est,
// unless the protocol has none (raw) or there is no reply subject. The
// caller counts it Shed.
func (r *run) shed(reply string, h nats.Header, est time.Duration) {
	oh := r.overload.header(h, est)
	if oh == nil || reply == "" {
		return
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: reply, Header: oh}); err != nil {
		r.log.Debug("workers: publish overload reply", "reply", reply, "err", err)
	}
}

// errorReply is the reply of a failed request: status error, no body.
var errorReply = nats.Header{schemas.HeaderStatus: {schemas.StatusError}}

// publishError publishes the error reply to req, if it can be answered.
func publishError(nc *nats.Conn, log *slog.Logger, req *Request) {
	if req.Reply == "" {
		return
	}
	if err := nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: errorReply}); err != nil {
		log.Debug("workers: publish error reply", "subject", req.Subject, "id", req.ID, "err", err)
	}
}

func (r *run) ack(msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		r.log.Debug("workers: ack", "subject", msg.Subject(), "err", err)
	}
}

func (r *run) nak(msg jetstream.Msg) {
	if err := msg.Nak(); err != nil {
		r.log.Debug("workers: nak", "subject", msg.Subject(), "err", err)
	}
	r.stats.retried.Add(1)
}

func (r *run) term(msg jetstream.Msg) {
	if err := msg.Term(); err != nil {
		r.log.Debug("workers: term", "subject", msg.Subject(), "err", err)
	}
}

// expired reports whether deadline is set and has passed.
func expired(deadline time.Time) bool {
	return !deadline.IsZero() && !time.Now().Before(deadline)
}

// keepalive tells JetStream that a request is in progress every interval
// while its handler runs, so that it is not redelivered. A handler
// goroutine reuses one for every request it handles: a fast handler costs
// a timer reset and stop, and no goroutine.
type keepalive struct {
	interval time.Duration
	timer    *time.Timer
	mu       sync.Mutex     // guards msg and stopped, and serializes fire with stop
	msg      jetstream.Msg  // the request in progress
	stopped  bool           // stop was called after the last start
	tick     sync.WaitGroup // a tick that fired during stop, which stop waits for
}

// newKeepalive returns a stopped keepalive, or nil if interval is not
// positive.
func newKeepalive(interval time.Duration) *keepalive {
	if interval <= 0 {
		return nil
	}
	k := &keepalive{interval: interval, stopped: true}
	k.timer = time.AfterFunc(time.Hour, k.fire)
	k.timer.Stop()
	return k
}

// start starts sending keepalives for msg. k must be stopped.
func (k *keepalive) start(msg jetstream.Msg) {
	k.mu.Lock()
	k.msg, k.stopped = msg, false
	k.timer.Reset(k.interval)
	k.mu.Unlock()
}

func (k *keepalive) fire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		k.tick.Done()
		return
	}
	_ = k.msg.InProgress() // a lost one only risks a redelivery
	k.timer.Reset(k.interval)
}

// stop stops the keepalive and waits for a tick that is under way, so
// that no InProgress follows it.
func (k *keepalive) stop() {
	k.mu.Lock()
	k.stopped = true
	k.msg = nil
	// While mu is held, fire has either re-armed the timer (Stop returns
	// true) or fired and waits for mu, to find stopped set.
	pending := !k.timer.Stop()
	if pending {
		k.tick.Add(1)
	}
	k.mu.Unlock()
	k.tick.Wait()
}
