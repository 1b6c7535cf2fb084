package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// serveDirect is Serve for a Direct group: one queue subscription per
// subject, all feeding one channel of Backlog requests, read by
// Concurrency handler goroutines.
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
	log.Info("workers: serving", "delivery", "direct", "subjects", s.Subjects, "concurrency", concurrency)
	s.Ready()
	close(s.ready)

	// Handlers run with a context that outlives ctx by the requests'
	// deadlines: a stopping instance finishes what it holds.
	hctx := context.WithoutCancel(ctx)
	// requests is never closed: nats.go sends to it from its read loop,
	// and a subscription that Unsubscribe could not remove (its
	// connection draining) would make a send to a closed channel panic.
	// Closing stopped asks the handlers to finish what it holds.
	stopped := make(chan struct{})
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			w := &response{}
			for {
				select {
				case msg := <-requests:
					r.handleDirect(hctx, msg, w)
				case <-stopped:
					for {
						select {
						case msg := <-requests:
							r.handleDirect(hctx, msg, w)
						default:
							return
						}
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
	if expired(req.Deadline) {
		r.stats.expired.Add(1)
		return
	}
	if est := r.estimate(); cannotFinish(req.Deadline, time.Now(), est) {
		r.shed(req.Reply, req.Header, est)
		r.stats.shed.Add(1)
		return
	}
	err = r.handled(ctx, nil, w, nil, req)
	switch {
	case err == nil && !w.answered():
	case expired(req.Deadline):
		r.stats.expired.Add(1)
	case errors.Is(err, ErrRetry):
		// Nothing to nak: the client's retry is the redelivery.
		r.stats.retried.Add(1)
	case err != nil:
		r.log.Debug("workers: handler failed", "subject", req.Subject, "id", req.ID, "err", err)
		publishError(r.nc, r.log, req)
		r.stats.failed.Add(1)
	case req.Reply == "":
		r.log.Debug("workers: reply dropped: request has no reply subject", "subject", req.Subject, "id", req.ID)
		r.stats.failed.Add(1)
	default:
		if err := r.nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: w.header, Data: w.body}); err != nil {
			r.log.Debug("workers: publish reply", "subject", req.Subject, "id", req.ID, "err", err)
			r.stats.failed.Add(1)
			return
		}
		r.stats.replied.Add(1)
	}
}
