package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

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
