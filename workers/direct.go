package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// serveDirect is Serve for a Direct group: one queue subscription per
// subject, all feeding one channel of Backlog requests, read by
// Concurrency handler goroutines while they are idle, and by a dispatcher
// that moves the requests that find every handler busy into the backlog,
// a queue of Backlog requests (see queue), and sheds from it what must be
// shed. A handler that ends takes from the backlog first.
func (s *Server) serveDirect(ctx context.Context) error {
	nc := s.NATS
	if nc == nil {
		nc = s.JetStream.Conn()
	}
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("group", s.Group)
	concurrency := s.Concurrency
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	backlog := s.Backlog
	if backlog <= 0 {
		backlog = DefaultBacklog
	}

	// A connection closed for good (its reconnects exhausted, or closed
	// by its owner) ends Serve: nothing would arrive any more.
	closed := nc.StatusChanged(nats.CLOSED)
	defer nc.RemoveStatusListener(closed)
	if nc.IsClosed() {
		return fmt.Errorf("workers: %s: %w", s.Group, nats.ErrConnectionClosed)
	}

	// NATS drops what does not fit in the channel, and counts it per
	// subscription: that is the slow-consumer count.
	requests := make(chan *nats.Msg, backlog)
	subs := make([]*nats.Subscription, 0, len(s.Subjects))
	unsubscribe := func() {
		for _, sub := range subs {
			// A drained subscription may be gone already (ErrBadSubscription).
			if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
				log.Warn("workers: unsubscribe", "subject", sub.Subject, "err", err)
			}
		}
	}
	for _, subject := range s.Subjects {
		sub, err := nc.ChanQueueSubscribe(subject, s.Group, requests)
		if err != nil {
			unsubscribe()
			return fmt.Errorf("workers: %s: subscribe %s: %w", s.Group, subject, err)
		}
		subs = append(subs, sub)
	}
	s.mu.Lock()
	s.dropped = func() uint64 {
		var n uint64
		for _, sub := range subs {
			if d, err := sub.Dropped(); err == nil {
				n += uint64(d)
			}
		}
		return n
	}
	s.mu.Unlock()
	// Once the server has the subscriptions, requests reach this instance.
	fctx, cancel := context.WithTimeout(ctx, confirmWait)
	err := nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		unsubscribe()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("workers: %s: subscribe: %w", s.Group, err)
	}
	ann, unannounce, err := s.announce(nc, log)
	if err != nil {
		unsubscribe()
		return err
	}
	defer unannounce()
	r := &run{Server: s, log: log, nc: nc, ann: ann}
	r.initTracing()
	log.Info("workers: serving", "delivery", "direct", "subjects", s.Subjects, "concurrency", concurrency)
	s.Ready()
	close(s.ready)

	// Handlers run with a context that outlives ctx by the requests'
	// deadlines: a stopping instance finishes what it holds.
	hctx := context.WithoutCancel(ctx)
	// requests is never closed: nats.go sends to it from its read loop,
	// and a subscription that Unsubscribe could not remove (its
	// connection draining) would make a send to a closed channel panic.
	// Closing stopped asks the dispatcher to move what it holds into the
	// backlog, and the handlers to finish what the backlog holds.
	stopped := make(chan struct{})
	q := newQueue(backlog, concurrency)
	var wg sync.WaitGroup
	wg.Go(func() { r.dispatch(requests, q, stopped) })
	for range concurrency {
		wg.Go(func() {
			w := &response{}
			for {
				if queued, ok := q.take(time.Now(), r.estimate()); ok {
					r.handleDirect(hctx, queued.msg, w)
					continue
				}
				// The backlog is empty: a request that arrives now is
				// started at once, by this goroutine if it is the first
				// to receive it, through the backlog if the dispatcher
				// is.
				select {
				case msg := <-requests:
					q.arrived()
					r.handleDirect(hctx, msg, w)
				case <-q.ready:
				case <-stopped:
					// The dispatcher moves what requests holds into the
					// backlog, then closes it.
					for {
						queued, ok := q.wait(time.Now, r.estimate)
						if !ok {
							return
						}
						r.handleDirect(hctx, queued.msg, w)
					}
				}
			}
		})
	}
	select {
	case <-ctx.Done():
	case <-closed:
		err = fmt.Errorf("workers: %s: %w", s.Group, nats.ErrConnectionClosed)
	}
	// A subscription's drop count is gone with it: keep the last.
	s.mu.Lock()
	dropped := s.dropped()
	s.dropped = func() uint64 { return dropped }
	s.mu.Unlock()
	if err == nil {
		// Drained, the subscriptions get no new request: the others of
		// the group take them. A request the server sent before it
		// processed the drain still arrives, and once a flush returns
		// every one has: unsubscribed at once, they would be lost.
		for _, sub := range subs {
			if err := sub.Drain(); err != nil {
				log.Warn("workers: drain", "subject", sub.Subject, "err", err)
			}
		}
		fctx, cancel := context.WithTimeout(context.Background(), confirmWait)
		if err := nc.FlushWithContext(fctx); err != nil {
			log.Warn("workers: drain", "err", err)
		}
		cancel()
	}
	// Once Unsubscribe returns nothing more arrives, and what the channel
	// holds is handled.
	unsubscribe()
	close(stopped)
	wg.Wait()
	if err != nil {
		return err
	}
	log.Info("workers: stopped")
	return nil
}

// confirmWait bounds a wait for the server to confirm subscriptions, or
// a drain.
const confirmWait = 10 * time.Second

// dispatch moves the requests that NATS delivers on requests into the
// backlog q, and sheds from it the requests that must be (see
// queue.stale): each time one arrives, and when the oldest one's time
// comes. Once stopped is closed, it moves what requests still holds and
// closes q.
func (r *run) dispatch(requests <-chan *nats.Msg, q *queue, stopped <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case msg := <-requests:
			r.enqueue(q, msg)
		case <-timer.C:
		case <-stopped:
			for {
				select {
				case msg := <-requests:
					r.enqueue(q, msg)
				default:
					q.close()
					return
				}
			}
		}
		now, est := time.Now(), r.estimate()
		for {
			queued, ok := q.stale(now, est)
			if !ok {
				break
			}
			r.shedQueued(queued, now, est)
		}
		if at := q.next(now, est); !at.IsZero() {
			// At least a millisecond: a time that stale disagrees with
			// (the wall clock moved) must not spin.
			timer.Reset(max(at.Sub(now), time.Millisecond))
		} else {
			timer.Stop()
		}
	}
}

// enqueue adds msg to the backlog q; if q was full, it drops the oldest
// request q held, answered like a shed request (see shedQueued), and
// counts it Dropped.
func (r *run) enqueue(q *queue, msg *nats.Msg) {
	now := time.Now()
	if oldest, full := q.push(msg, parseDeadline(msg.Header), now); full {
		if r.answerQueued(oldest, now, r.estimate()) {
			r.stats.dropped.Add(1)
		}
	}
}

// shedQueued sheds a request removed from the backlog at now, counted
// Shed, or counts it Expired, unanswered, if its deadline has passed.
func (r *run) shedQueued(queued queued, now time.Time, est time.Duration) {
	if r.answerQueued(queued, now, est) {
		r.stats.shed.Add(1)
	}
}

// answerQueued answers a request removed from the backlog at now with the
// overload status, as shed does, and returns true; if its deadline has
// passed, it counts it Expired and returns false.
func (r *run) answerQueued(queued queued, now time.Time, est time.Duration) bool {
	if !queued.deadline.IsZero() && !now.Before(queued.deadline) {
		r.stats.expired.Add(1)
		return false
	}
	reply := queued.msg.Reply
	if reply == "" {
		reply = queued.msg.Header.Get(schemas.HeaderReply)
	}
	r.shed(reply, queued.msg.Header, est, nil)
	return true
}

// estimate returns the Server's handler estimate now.
func (r *run) estimate() time.Duration {
	return r.est.get(monotonic())
}

// handleDirect runs the handler on one request of a Direct group and
// answers it with the NATS reply idiom: a publish to the message's reply
// subject.
func (r *run) handleDirect(ctx context.Context, msg *nats.Msg, w *response) {
	req, err := parseRequest(msg.Subject, msg.Reply, msg.Header, msg.Data)
	if err != nil {
		r.log.Debug("workers: malformed request", "subject", req.Subject, "id", req.ID, "err", err)
	}
	ctx, span := r.startSpan(ctx, req)
	outcome, err := r.direct(ctx, req, w, span)
	endSpan(span, req, w, outcome, err)
}

// direct is handleDirect for a parsed request, in its span if it is
// traced; it returns the request's outcome and the handler's error.
func (r *run) direct(ctx context.Context, req *Request, w *response, span trace.Span) (string, error) {
	if expired(req.Deadline) {
		r.stats.expired.Add(1)
		return outcomeExpired, nil
	}
	if est := r.estimate(); cannotFinish(req.Deadline, time.Now(), est) {
		r.shed(req.Reply, req.Header, est, span)
		r.stats.shed.Add(1)
		return outcomeShed, nil
	}
	err := r.handled(ctx, nil, w, nil, req, span)
	switch {
	case err == nil && !w.answered():
		return outcomeNoReply, nil
	case expired(req.Deadline):
		r.stats.expired.Add(1)
		return outcomeExpired, err
	case errors.Is(err, ErrRetry):
		// Nothing to nak: the client's retry is the redelivery.
		r.stats.retried.Add(1)
		return outcomeRetried, err
	case err != nil:
		r.log.Debug("workers: handler failed", "subject", req.Subject, "id", req.ID, "err", err)
		publishError(r.nc, r.log, req, span)
		r.stats.failed.Add(1)
		return outcomeFailed, err
	case req.Reply == "":
		r.log.Debug("workers: reply dropped: request has no reply subject", "subject", req.Subject, "id", req.ID)
		r.stats.failed.Add(1)
		return outcomeFailed, errNoReplySubject
	}
	if span != nil {
		tracing.Inject(w.Header(), span.SpanContext())
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: w.header, Data: w.body}); err != nil {
		r.log.Debug("workers: publish reply", "subject", req.Subject, "id", req.ID, "err", err)
		r.stats.failed.Add(1)
		return outcomeFailed, err
	}
	r.stats.replied.Add(1)
	return outcomeReplied, nil
}
