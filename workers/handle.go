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
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// handle runs the handler on one request and maps the outcome, as the
// package documentation describes.
func (r *run) handle(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive) {
	req, err := parseRequest(msg.Subject(), "", msg.Headers(), msg.Data())
	if err != nil {
		r.log.Debug("workers: malformed request", "subject", req.Subject, "id", req.ID, "err", err)
	}
	if r.fallback.handled(req.ID) {
		r.ack(msg)
		r.stats.duplicates.Add(1)
		return
	}
	if msg.Headers().Get(schemas.HeaderShed) != "" {
		// The gateway shed it at the door and answered it: an answer
		// from here would come too late.
		r.ack(msg)
		r.stats.shedAtDoor.Add(1)
		return
	}
	if md, err := msg.Metadata(); err == nil {
		req.Delivery = md.NumDelivered
		if req.Received.IsZero() {
			req.Received = md.Timestamp
		}
	}
	ctx, span := r.startSpan(ctx, req)
	outcome, err := r.durable(ctx, msg, w, k, req, span)
	endSpan(span, req, w, outcome, err)
}

// durable is handle for a parsed request, in its span if it is traced;
// it returns the request's outcome and the handler's error.
func (r *run) durable(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive, req *Request, span trace.Span) (string, error) {
	if expired(req.Deadline) {
		r.ack(msg)
		r.stats.expired.Add(1)
		return outcomeExpired, nil
	}
	est, now := r.estimate(), time.Now()
	if r.pressure != nil {
		r.pressure.took(req.Received, req.Deadline, now, est)
	}
	if cannotFinish(req.Deadline, now, est) {
		// Acked, never nak'd: it would come back, later still.
		r.shed(req.Reply, req.Header, est, span)
		r.ack(msg)
		r.stats.shed.Add(1)
		return outcomeShed, nil
	}

	if r.pressure != nil {
		r.pressure.busy.Add(1)
	}
	err := r.handled(ctx, msg, w, k, req, span)
	if r.pressure != nil {
		r.pressure.busy.Add(-1)
	}
	switch {
	case err == nil && !w.answered():
		r.ack(msg)
		return outcomeNoReply, nil
	case expired(req.Deadline):
		r.ack(msg)
		r.stats.expired.Add(1)
		return outcomeExpired, err
	case err != nil && ctx.Err() != nil:
		// Stopping, and no fetch of this instance is outstanding (see
		// serveDurable): another instance takes it at once.
		r.nak(msg)
		return outcomeRetried, err
	case errors.Is(err, ErrRetry) && (r.maxDeliver <= 0 || req.Delivery < uint64(r.maxDeliver)):
		r.nak(msg)
		return outcomeRetried, err
	case err != nil:
		// Includes ErrRetry on the last delivery: JetStream would not
		// redeliver it, so the gateway gets an error reply at once.
		r.log.Debug("workers: handler failed", "subject", req.Subject, "id", req.ID, "err", err)
		r.fail(msg, req, span)
		return outcomeFailed, err
	default:
		return r.reply(msg, req, w, span)
	}
}

// handled runs the handler on req (see call) with w reset, and counts the
// call: Stats, the handler estimate, HandlerLatency and the group's
// announced figures. While the handler runs, req.ReplyMore publishes
// replies with more to follow, with span's trace context.
func (r *run) handled(ctx context.Context, msg jetstream.Msg, w *response, k *keepalive, req *Request, span trace.Span) error {
	w.reset()
	w.more.begin(r.nc, req, span)
	start := time.Now()
	err := r.call(ctx, msg, w, k, req)
	end := time.Now()
	w.more.end()
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

// reply publishes the handler's reply, then acks the request, and
// returns its outcome.
func (r *run) reply(msg jetstream.Msg, req *Request, w *response, span trace.Span) (string, error) {
	if req.Reply == "" {
		r.log.Debug("workers: reply dropped: request has no reply subject", "subject", req.Subject, "id", req.ID)
		r.term(msg)
		r.stats.failed.Add(1)
		return outcomeFailed, errNoReplySubject
	}
	if span != nil {
		tracing.Inject(w.Header(), span.SpanContext())
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: w.header, Data: w.body}); err != nil {
		r.log.Debug("workers: publish reply", "subject", req.Subject, "id", req.ID, "err", err)
		r.fail(msg, req, span)
		return outcomeFailed, err
	}
	// A plain Ack, not DoubleAck, is enough: the reply and the ack travel on
	// the same connection (JetStream.Conn()), and NATS delivers a
	// connection's messages to the server in order, so an ack that reaches
	// the server implies that the reply did. If the connection fails in
	// between, neither arrives and the request is redelivered.
	r.ack(msg)
	r.stats.replied.Add(1)
	return outcomeReplied, nil
}

// fail publishes an error reply, if the request can be answered, and terms
// the request.
func (r *run) fail(msg jetstream.Msg, req *Request, span trace.Span) {
	publishError(r.nc, r.log, req, span)
	r.term(msg)
	r.stats.failed.Add(1)
}

// shed answers a request refused without calling the handler,
// overloaded: it publishes to reply the overload status of the request's
// protocol, given the request's headers h and the handler estimate est,
// unless the protocol has none (raw) or there is no reply subject. The
// reply carries span's trace context, or the request's if span is nil.
// The caller counts it Shed.
func (r *run) shed(reply string, h nats.Header, est time.Duration, span trace.Span) {
	oh := r.overload.header(h, est)
	if oh == nil || reply == "" {
		return
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: reply, Header: traceReply(oh, span, h)}); err != nil {
		r.log.Debug("workers: publish overload reply", "reply", reply, "err", err)
	}
}

// errorReply is the reply of a failed request: status error, no body.
var errorReply = nats.Header{schemas.HeaderStatus: {schemas.StatusError}}

// publishError publishes the error reply to req, if it can be answered,
// with span's trace context, or the request's if span is nil.
func publishError(nc *nats.Conn, log *slog.Logger, req *Request, span trace.Span) {
	if req.Reply == "" {
		return
	}
	if err := nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: traceReply(errorReply, span, req.Header)}); err != nil {
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
