package egress

import (
	"context"
	"strconv"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
)

// tracerName is the instrumentation scope of egress's spans.
const tracerName = "github.com/udpgate/udpgate/egress"

// What became of a reply message (the udpgate.outcome attribute of its
// span), named as its counters are.
const (
	outcomeSent          = "sent"
	outcomeMore          = "more" // a reply with more to follow, sent; the exchange stays open
	outcomeLate          = "late"
	outcomeDuplicate     = "duplicate"
	outcomeUnknown       = "unknown"
	outcomeWorkerError   = "worker_error" // raw: a reply with status error sends nothing
	outcomeAmplification = "amplification"
	outcomeSendError     = "send_error"
	outcomeNoResponders  = "no_responders" // NATS's answer that no direct group took the request
)

// deliverTraced is deliver for a reply that carries a trace context: the
// reply is handled in a span, a child of the span that sent the reply
// (the worker's, or the ingress span when the worker copied the
// request's context), if the context is sampled.
func (s *Server) deliverTraced(msg *nats.Msg) {
	sc := tracing.Extract(msg.Header)
	if !sc.IsSampled() {
		s.reply(msg, nil)
		return
	}
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
	_, span := s.tracer.Start(ctx, "egress", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			tracing.MessagingNATS,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingMessageBodySize(len(msg.Data)),
		))
	var ex exchange.Exchange
	outcome, err := s.reply(msg, &ex)
	attrs := []attribute.KeyValue{tracing.Outcome.String(outcome)}
	if id, ok := schemas.ReplyID(msg.Subject); ok {
		attrs = append(attrs, semconv.MessagingMessageID(id))
	}
	if ex.Conn != nil || ex.Port != 0 { // a ws listener's exchange has no socket
		var listener string
		ok := false
		if s.Listener != nil {
			listener, ok = s.Listener(ex.Port)
		}
		if !ok {
			listener = strconv.Itoa(int(ex.Port))
		}
		span.SetName("egress " + listener)
		transport := semconv.NetworkTransportUDP
		if ex.Conn == nil {
			transport = semconv.NetworkTransportTCP
		}
		attrs = append(attrs,
			tracing.Listener.String(listener),
			transport,
			semconv.NetworkPeerAddress(ex.Remote.Addr().String()),
			semconv.NetworkPeerPort(int(ex.Remote.Port())),
			semconv.NetworkLocalAddress(ex.Local.Addr().String()),
			semconv.NetworkLocalPort(int(ex.Local.Port())),
		)
	}
	if status := msg.Header.Get(schemas.HeaderStatus); status != "" {
		attrs = append(attrs, tracing.Status.String(status))
	}
	if code := msg.Header.Get(schemas.HeaderCoAPCode); code != "" {
		attrs = append(attrs, tracing.CoAPCode.String(code))
	}
	span.SetAttributes(attrs...)
	if outcome != outcomeSent {
		span.SetStatus(codes.Error, outcome)
	}
	if err != nil {
		span.RecordError(err)
	}
	span.End()
}
