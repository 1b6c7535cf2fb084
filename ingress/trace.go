package ingress

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// tracerName is the instrumentation scope of ingress's spans.
const tracerName = "github.com/udpgate/udpgate/ingress"

// Outcomes of a traced request at ingress (the udpgate.outcome attribute),
// named as its counters are.
const (
	outcomePublished     = "published"
	outcomeNATSDown      = "nats_down"
	outcomeTableFull     = "table_full"
	outcomeListenerFull  = "listener_full"
	outcomePublishFailed = "publish_failed"
	outcomeShed          = "shed"
)

// startSpan starts the span of a datagram chosen for tracing: a new
// trace, from the datagram's read on. Only the publisher calls it, for
// the sample of requests TraceSample asks for.
func (s *Server) startSpan(d *datagram) trace.Span {
	_, span := s.tracer.Start(context.Background(), s.spanName,
		trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(d.at),
		trace.WithAttributes(
			tracing.Listener.String(s.listener),
			tracing.Node.String(s.Node),
			semconv.NetworkTransportUDP,
			semconv.NetworkPeerAddress(d.remote.Addr().String()),
			semconv.NetworkPeerPort(int(d.remote.Port())),
			semconv.NetworkLocalAddress(d.local.Addr().String()),
			semconv.NetworkLocalPort(int(d.local.Port())),
			tracing.MessagingNATS,
			semconv.MessagingOperationTypeSend,
			semconv.MessagingMessageBodySize(len(d.data)),
		))
	return span
}

// traceMessage records on span the request message msg, built for it,
// whose subject is subject, and sends span's context with it. Call it
// before msg is published: from then on msg belongs to NATS.
func traceMessage(span trace.Span, msg *nats.Msg, subject string) {
	if span == nil {
		return
	}
	h := msg.Header
	attrs := []attribute.KeyValue{
		semconv.MessagingDestinationName(subject),
		semconv.MessagingMessageID(h.Get(schemas.HeaderID)),
	}
	if line := h.Get(schemas.HeaderCoAPRequest); line != "" {
		attrs = append(attrs, tracing.CoAPRequest.String(line))
	}
	if svc := h.Get(schemas.HeaderRPCService); svc != "" {
		attrs = append(attrs, semconv.RPCMethod(svc+"/"+h.Get(schemas.HeaderRPCMethod)))
	}
	span.SetAttributes(attrs...)
	tracing.Inject(h, span.SpanContext())
}

// endSpan ends span, if not nil, with the request's outcome and the error
// that caused it, if any.
func endSpan(span trace.Span, outcome string, err error) {
	if span == nil {
		return
	}
	span.SetAttributes(tracing.Outcome.String(outcome))
	if outcome != outcomePublished {
		span.SetStatus(codes.Error, outcome)
	}
	if err != nil {
		span.RecordError(err)
	}
	span.End()
}
