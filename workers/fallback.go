package workers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// A Durable group's requests come from the capture stream, which cannot
// deliver while it elects a leader: a stream leader lost takes a cluster
// 4 to 9 seconds to replace, longer than most deadlines. The gateway
// publishes the requests whose capture copy JetStream did not take at the
// first try to their fallback subjects (schemas.FallbackSubject), and
// every instance of a Durable group subscribes there too, in the group's
// queue: the group answers those requests over core NATS, as a Direct
// group would. The stored copy, once the stream takes it, still reaches
// the group's consumer; the instance that answered the fallback copy
// skips it (Stats.Duplicates), another answers it again and the gateway
// drops the second reply.

// fallback is a Durable instance's share of its group's fallback copies.
type fallback struct {
	prefix  string // of the subjects
	subs    []*nats.Subscription
	msgs    chan *nats.Msg // never closed: nats.go sends to it
	stopped chan struct{}  // closed to stop taking msgs
	running chan struct{}  // one value per handler running, at most Concurrency
	done    chan struct{}  // closed when the dispatcher returns
	wg      sync.WaitGroup // the handlers

	mu   sync.Mutex
	seen map[string]time.Time // ids of the copies handled here, with their deadlines
	cap  int                  // len(seen) at which expired ids are dropped
}

// subscribeFallback subscribes to the fallback subjects of the group's
// subjects (those under Prefix; others have none) in the group's queue.
func (r *run) subscribeFallback(concurrency, backlog int) (*fallback, error) {
	prefix := r.Prefix
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	f := &fallback{
		prefix:  prefix,
		done:    make(chan struct{}),
		msgs:    make(chan *nats.Msg, backlog),
		stopped: make(chan struct{}),
		running: make(chan struct{}, concurrency),
		seen:    make(map[string]time.Time),
		cap:     1024,
	}
	for _, subject := range r.Subjects {
		fs, ok := schemas.FallbackFilter(prefix, subject)
		if !ok {
			continue
		}
		sub, err := r.nc.ChanQueueSubscribe(fs, r.Group, f.msgs)
		if err != nil {
			f.unsubscribe(r)
			return nil, fmt.Errorf("workers: %s: subscribe %s: %w", r.Group, fs, err)
		}
		f.subs = append(f.subs, sub)
	}
	return f, nil
}

// serve hands each fallback copy to a handler of its own, at most
// Concurrency at a time (the consumer's fetches do not count them: a
// stream without a leader delivers nothing); the copies wait their turn
// in a backlog of Backlog, and those that can no longer finish then are
// shed. The handlers run with ctx, which should outlive the
// instance's stop: like a Direct instance, a stopping one finishes what it
// took, within its deadline. serve returns at once; stop ends it.
func (f *fallback) serve(ctx context.Context, r *run) {
	go func() {
		defer close(f.done)
		for {
			select {
			case msg := <-f.msgs:
				f.take(ctx, r, msg)
			case <-f.stopped:
				// Unsubscribed: nothing more arrives.
				for {
					select {
					case msg := <-f.msgs:
						f.take(ctx, r, msg)
					default:
						return
					}
				}
			}
		}
	}()
}

// take handles msg, a fallback copy, once a fallback handler is free.
func (f *fallback) take(ctx context.Context, r *run, msg *nats.Msg) {
	r.stats.fallback.Add(1)
	subject, ok := schemas.InOfFallback(f.prefix, msg.Subject)
	if !ok {
		subject = msg.Subject
	}
	req, err := parseRequest(subject, "", msg.Header, msg.Data)
	if err != nil {
		r.log.Debug("workers: malformed request", "subject", req.Subject, "id", req.ID, "err", err)
	}
	// Waits for a handler: the requests wait in msgs meanwhile, and
	// direct sheds those that can no longer finish when their turn comes.
	f.running <- struct{}{}
	f.see(req.ID, req.Deadline)
	f.wg.Go(func() {
		defer func() { <-f.running }()
		ctx, span := r.startSpan(ctx, req)
		w := &response{}
		outcome, err := r.direct(ctx, req, w, span)
		endSpan(span, req, w, outcome, err)
		if outcome == outcomeRetried {
			f.unsee(req.ID) // the stored copy is the retry
		}
	})
}

// see records that the request id, due by deadline, was handled here.
func (f *fallback) see(id string, deadline time.Time) {
	if id == "" {
		return
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(time.Minute)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) >= f.cap {
		now := time.Now()
		for k, d := range f.seen {
			if now.After(d) {
				delete(f.seen, k)
			}
		}
		f.cap = max(1024, 2*len(f.seen))
	}
	f.seen[id] = deadline
}

func (f *fallback) unsee(id string) {
	f.mu.Lock()
	delete(f.seen, id)
	f.mu.Unlock()
}

// handled reports whether the request id was handled here from its
// fallback copy. f may be nil.
func (f *fallback) handled(id string) bool {
	if f == nil || id == "" {
		return false
	}
	f.mu.Lock()
	_, ok := f.seen[id]
	f.mu.Unlock()
	return ok
}

// stop unsubscribes, takes what has arrived, and waits for the handlers
// to finish.
func (f *fallback) stop(r *run) {
	f.unsubscribe(r)
	close(f.stopped)
	<-f.done
	f.wg.Wait()
}

func (f *fallback) unsubscribe(r *run) {
	for _, sub := range f.subs {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			r.log.Warn("workers: unsubscribe", "subject", sub.Subject, "err", err)
		}
	}
}
