package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

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
	r.initTracing()
	backlog := s.Backlog
	if backlog <= 0 {
		backlog = DefaultBacklog
	}
	fb, err := r.subscribeFallback(concurrency, backlog)
	if err != nil {
		return err
	}
	r.fallback = fb
	r.pressure = newPressure()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		r.watch(watchCtx, r.pressure, concurrency)
	}()
	defer func() { stopWatch(); <-watched }()
	// Like a Direct instance's, fallback handlers finish what they took.
	fb.serve(context.WithoutCancel(ctx), r)
	defer fb.stop(r)
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
