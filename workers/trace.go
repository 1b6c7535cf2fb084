package workers

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// tracerName is the instrumentation scope of the SDK's spans.
const tracerName = "github.com/udpgate/udpgate/workers"

// What became of a traced request (the udpgate.outcome attribute of its
// span), named as Stats counts it; noReply is a handler that answered
// nothing.
const (
	outcomeReplied = "replied"
	outcomeNoReply = "no_reply"
	outcomeFailed  = "failed"
	outcomeRetried = "retried"
	outcomeExpired = "expired"
	outcomeShed    = "shed"
)

// errNoReplySubject is the error of a traced request's span whose reply
// was dropped for want of a reply subject.
var errNoReplySubject = errors.New("workers: reply dropped: the request has no reply subject")

// initTracing sets the run's tracer: the Server's TracerProvider, or the
// global one.
func (r *run) initTracing() {
	tp := r.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	r.tracer = tp.Tracer(tracerName)
	r.spanName = "worker " + r.Group
}

// startSpan starts the span of req if it carries a trace context: a child
// of the span that sent the request (the gateway's ingress span), in
// ctx, which the handler receives. An untraced request gets no span (nil)
// and ctx as it is, at no cost.
func (r *run) startSpan(ctx context.Context, req *Request) (context.Context, trace.Span) {
	sc := tracing.Extract(req.Header)
	if !sc.IsValid() {
		return ctx, nil
	}
	attrs := []attribute.KeyValue{
		tracing.MessagingNATS,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingDestinationName(req.Subject),
		semconv.MessagingConsumerGroupName(r.Group),
		semconv.MessagingMessageID(req.ID),
		semconv.MessagingMessageBodySize(len(req.Body)),
		tracing.Delivery.String(r.Delivery.String()),
	}
	if req.Listener != "" {
		attrs = append(attrs, tracing.Listener.String(req.Listener), tracing.Node.String(req.Node))
	}
	if req.Delivery > 0 {
		attrs = append(attrs, tracing.Attempt.Int64(int64(req.Delivery)))
	}
	if line := req.Header.Get(schemas.HeaderCoAPRequest); line != "" {
		attrs = append(attrs, tracing.CoAPRequest.String(line))
	}
	if req.RPC != nil {
		attrs = append(attrs, semconv.RPCMethod(req.RPC.Service+"/"+req.RPC.Method))
	}
	return r.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, sc), r.spanName,
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
}

// endSpan ends span, if not nil, with the request's outcome, the reply w
// (if replied) and the handler's error, if any.
func endSpan(span trace.Span, req *Request, w *response, outcome string, err error) {
	if span == nil {
		return
	}
	attrs := []attribute.KeyValue{tracing.Outcome.String(outcome)}
	if req.Pattern != "" {
		attrs = append(attrs, tracing.Pattern.String(req.Pattern))
	}
	if outcome == outcomeReplied {
		status := w.header.Get(schemas.HeaderStatus)
		if status == "" {
			status = schemas.StatusOK
		}
		attrs = append(attrs, tracing.Status.String(status), semconv.MessagingMessageBodySize(len(w.body)))
		if code := w.header.Get(schemas.HeaderCoAPCode); code != "" {
			attrs = append(attrs, tracing.CoAPCode.String(code))
		}
	}
	span.SetAttributes(attrs...)
	switch outcome {
	case outcomeReplied, outcomeNoReply:
	default:
		span.SetStatus(codes.Error, outcome)
	}
	if err != nil {
		span.RecordError(err)
	}
	span.End()
}

// traceReply returns the headers of a reply whose headers are h, with
// the trace context of span (the reply then continues the trace at
// egress), or, without a span, that of the request's headers req, if it
// carries one. h is returned as it is when neither does, and is not
// modified otherwise: it may be shared (errorReply, the overload replies).
func traceReply(h nats.Header, span trace.Span, req nats.Header) nats.Header {
	switch {
	case span != nil:
		out := cloneHeader(h, 2)
		tracing.Inject(out, span.SpanContext())
		return out
	case tracing.Carries(req):
		out := cloneHeader(h, 2)
		tracing.Copy(out, req)
		return out
	}
	return h
}

// cloneHeader returns a copy of h with room for extra more keys.
func cloneHeader(h nats.Header, extra int) nats.Header {
	out := make(nats.Header, len(h)+extra)
	for k, v := range h {
		out[k] = v
	}
	return out
}
