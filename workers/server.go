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
	DefaultAckWait       = 2 * time.Second
	DefaultMaxDeliver    = 5
	DefaultMaxAckPending = 1024
)

// Server runs a Handler for one group of workers: it binds to the group's
// durable pull consumer and calls the Handler for each request, at most
// Concurrency at a time. The exported fields are read by Serve and must not
// change while it runs. Stats is safe for concurrent use; a Server must not
// be copied after first use.
type Server struct {
	// JetStream is the JetStream context the requests are read from. The
	// replies are published on its connection, JetStream.Conn(). Required.
	JetStream jetstream.JetStream
	// Stream is the request stream; empty means schemas.StreamIn.
	Stream string
	// Group names the durable pull consumer that every instance of the
	// group binds to, so that they share the work. Required.
	Group string
	// Subjects are the consumer's filter subjects, for example
	// schemas.InSubject(schemas.DefaultPrefix, 9000). Required; they must
	// equal the filter of the group's consumer if it already exists.
	Subjects []string
	// Handler answers the requests. Required.
	Handler Handler
	// Concurrency is the number of handlers running at once in this
	// instance; zero means DefaultConcurrency.
	Concurrency int
	// AckWait, MaxDeliver and MaxAckPending configure the consumer when
	// Serve creates it; an existing consumer is used as it is. Zero means
	// DefaultAckWait, DefaultMaxDeliver and DefaultMaxAckPending.
	AckWait       time.Duration
	MaxDeliver    int
	MaxAckPending int
	// Log receives the Server's logs; nil discards them. Nothing is logged
	// per request at Info level or above, except handler panics (Error).
	Log *slog.Logger
	// HandlerLatency, if not nil, is called after each handler call with
	// how long the handler ran. It must be quick and safe for concurrent
	// use.
	HandlerLatency func(d time.Duration)

	stats counters

	readyOnce sync.Once
	ready     chan struct{} // closed once the group's consumer is bound
}

// Ready returns a channel that is closed once Serve has bound the group's
// consumer: requests published from then on reach the group (a group's
// consumer delivers only requests that arrive after it is created).
func (s *Server) Ready() <-chan struct{} {
	s.readyOnce.Do(func() { s.ready = make(chan struct{}) })
	return s.ready
}

// Stats counts the outcomes of the requests a Server has taken, since it
// was created. The package documentation details each outcome.
type Stats struct {
	Handled uint64 // handler calls that returned or panicked
	Replied uint64 // replies written by a handler and published
	Failed  uint64 // handler errors and panics, and replies that could not be published
	Retried uint64 // requests nak'd for redelivery: ErrRetry, or Serve stopping
	Expired uint64 // requests acked unanswered because their deadline had passed
}

type counters struct {
	handled, replied, failed, retried, expired atomic.Uint64
}

// Stats returns a snapshot of the Server's counters. It is safe for
// concurrent use, also while Serve runs.
func (s *Server) Stats() Stats {
	return Stats{
		Handled: s.stats.handled.Load(),
		Replied: s.stats.replied.Load(),
		Failed:  s.stats.failed.Load(),
		Retried: s.stats.retried.Load(),
		Expired: s.stats.expired.Load(),
	}
}

// Serve binds to the group's consumer, creating it if it does not exist,
// and handles requests until ctx is cancelled. It then stops fetching,
// waits for the running handlers to end, naks the requests it fetched but
// had not started and those whose handler failed because of the
// cancellation, so that other instances take them, and returns nil. It returns an error if the
// configuration is incomplete, the stream does not exist, the consumer's
// filter differs from Subjects, or the consumer goes away.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.validate(); err != nil {
		return err
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
	// Pull requests expire after pullExpiry, with heartbeats every half of
	// it: a consumer leader that dies (a NATS node lost) is noticed after
	// two missed heartbeats, about 5 s, instead of nats.go's default 30 s.
	it, err := cons.Messages(jetstream.PullMaxMessages(concurrency), jetstream.PullExpiry(pullExpiry))
	if err != nil {
		return fmt.Errorf("workers: consume %s on stream %s: %w", s.Group, stream, err)
	}
	r := &run{
		Server:     s,
		log:        log,
		nc:         s.JetStream.Conn(),
		keepalive:  cfg.AckWait / 2,
		maxDeliver: cfg.MaxDeliver,
	}
	log.Info("workers: serving", "subjects", s.Subjects, "concurrency", concurrency)
	s.Ready()
	close(s.ready)

	work := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			// Each handler goroutine reuses one response and one
			// keepalive for the requests it handles, one at a time.
			w := &response{}
			k := newKeepalive(r.keepalive)
			for msg := range work {
				r.handle(ctx, msg, w, k)
			}
		})
	}
	err = r.fetch(ctx, it, work)
	close(work)
	wg.Wait()
	// The subscription is closed: JetStream redelivers what is handed
	// back to another instance, not to this one.
	for _, msg := range r.handBack {
		r.nak(msg)
	}
	if err != nil {
		return fmt.Errorf("workers: consume %s on stream %s: %w", s.Group, stream, err)
	}
	log.Info("workers: stopped")
	return nil
}

func (s *Server) validate() error {
	switch {
	case s.JetStream == nil:
		return errors.New("workers: Server.JetStream is nil")
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

// pullExpiry is how long one pull request lasts; see Serve.
const pullExpiry = 5 * time.Second

// wakeEvery bounds how long the fetch loop waits in Next; see fetch.
const wakeEvery = 250 * time.Millisecond

// run is the state of one Serve call, shared by its goroutines.
type run struct {
	*Server
	log        *slog.Logger
	nc         *nats.Conn    // replies are published here
	keepalive  time.Duration // interval of InProgress acks; zero for none
	maxDeliver int           // the consumer's MaxDeliver; -1 for no limit

	mu       sync.Mutex      // guards handBack
	handBack []jetstream.Msg // requests to nak when Serve stops
}

// giveBack keeps msg to be nak'd when Serve stops, after the iterator has
// closed: nak'd earlier, it could be redelivered to this instance's
// closing subscription, wasting a delivery attempt.
func (r *run) giveBack(msg jetstream.Msg) {
	r.mu.Lock()
	r.handBack = append(r.handBack, msg)
	r.mu.Unlock()
}

// fetch feeds work from it until ctx is cancelled or it closes. On
// cancellation it drains it and gives back the requests no handler has
// taken.
func (r *run) fetch(ctx context.Context, it jetstream.MessagesContext, work chan<- jetstream.Msg) error {
	var wake wakeup
	defer wake.stop()
	var last error // the last error Next reported before the iterator closed
	for {
		msg, err := it.Next(wake.opts(ctx)...)
		if ctx.Err() != nil {
			if err == nil {
				r.giveBack(msg)
			}
			break
		}
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			it.Stop()
			if last != nil {
				return last
			}
			return err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			continue // woken up: Next checks the pull requests again
		}
		if err != nil {
			r.log.Warn("workers: fetch", "err", err)
			last = err
			continue
		}
		select {
		case work <- msg:
		case <-ctx.Done():
			r.giveBack(msg)
		}
	}
	// Requests already fetched would wait for AckWait before another
	// instance gets them: hand them back. Next returns an error once the
	// subscription is closed.
	it.Drain()
	for {
		msg, err := it.Next()
		if err != nil {
			return nil
		}
		r.giveBack(msg)
	}
}

// wakeup makes Next wake up every wakeEvery even if nothing arrives: the
// iterator decides to send a new pull request only inside Next, and can
// miss the moment when a pull was still being sent as its last requested
// message was taken, leaving it with no pull outstanding until a missed
// heartbeat resets it. Waits share a wake-up period: its context ends
// wakeEvery after it starts, and the next period starts when a Next
// returns after that. Under load Next returns many times per period, so a
// period's context and option are made a few times a second, not once per
// request.
type wakeup struct {
	ctx    context.Context // the current period's; nil before the first
	cancel context.CancelFunc
	next   []jetstream.NextOpt // NextContext(ctx), as Next takes it
}

// opts returns the Next options of the current period, starting a new one
// if it is over.
func (w *wakeup) opts(parent context.Context) []jetstream.NextOpt {
	if w.ctx == nil || w.ctx.Err() != nil {
		w.stop()
		w.ctx, w.cancel = context.WithTimeout(parent, wakeEvery)
		w.next = []jetstream.NextOpt{jetstream.NextContext(w.ctx)}
	}
	return w.next
}

func (w *wakeup) stop() {
	if w.cancel != nil {
		w.cancel()
	}
}

// handle runs the handler on one request and maps the outcome, as the
// package documentation describes.
func (r *run) handle(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive) {
	req, err := parseRequest(msg.Subject(), msg.Headers(), msg.Data())
	if err != nil {
		r.log.Debug("workers: malformed request", "subject", req.Subject, "id", req.ID, "err", err)
	}
	if md, err := msg.Metadata(); err == nil {
		req.Delivery = md.NumDelivered
	}
	if expired(req.Deadline) {
		r.ack(msg)
		r.stats.expired.Add(1)
		return
	}

	w.reset()
	start := time.Now()
	err = r.call(ctx, msg, w, k, req)
	if r.HandlerLatency != nil {
		r.HandlerLatency(time.Since(start))
	}
	r.stats.handled.Add(1)
	switch {
	case err == nil && !w.answered():
		r.ack(msg)
	case expired(req.Deadline):
		r.ack(msg)
		r.stats.expired.Add(1)
	case err != nil && ctx.Err() != nil:
		r.giveBack(msg)
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
	subject := req.Header.Get(schemas.HeaderReply)
	if req.ID == "" || subject == "" {
		r.log.Debug("workers: reply dropped: request has no id or reply subject", "subject", req.Subject, "id", req.ID)
		r.term(msg)
		r.stats.failed.Add(1)
		return
	}
	h := w.Header()
	w.id[0] = req.ID
	h[schemas.HeaderID] = w.id[:1:1]
	if err := r.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h, Data: w.body}); err != nil {
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
	subject := req.Header.Get(schemas.HeaderReply)
	if req.ID != "" && subject != "" {
		h := nats.Header{schemas.HeaderID: {req.ID}, schemas.HeaderStatus: {schemas.StatusError}}
		if err := r.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
			r.log.Debug("workers: publish error reply", "subject", req.Subject, "id", req.ID, "err", err)
		}
	}
	r.term(msg)
	r.stats.failed.Add(1)
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
