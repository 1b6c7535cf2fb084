// Package tracing carries OpenTelemetry trace context across NATS, as the
// gateway, the worker SDK and the Lambda bridge share it: the W3C Trace
// Context of a traced request travels in its message's traceparent and
// tracestate headers (the names of the W3C headers, of OpenTelemetry's
// propagator and of the CloudEvents distributed-tracing extension's
// attributes), and the reply to it carries the context of the span that
// answered. It also names the attributes udpgate's spans share;
// docs/tracing.md lists every span.
//
// Its functions are safe for concurrent use; none allocates for a
// message that carries no trace context.
package tracing

import (
	"context"
	"math/rand/v2"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The headers of the trace context, lowercase as W3C Trace Context spells
// them (NATS headers are case-sensitive).
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// Attributes of udpgate's own, beside OpenTelemetry's semantic
// conventions (messaging.*, network.*, rpc.*, faas.*).
const (
	// Listener is the gateway listener, PORT/PROTOCOL ("9000/raw").
	Listener = attribute.Key("udpgate.listener")
	// Node is the gateway node that read the datagram.
	Node = attribute.Key("udpgate.node")
	// Outcome is what became of the request at the span's component, in
	// the words of its counters ("published", "replied", "sent", ...).
	Outcome = attribute.Key("udpgate.outcome")
	// Status is a reply's udpgate-status ("ok", "error").
	Status = attribute.Key("udpgate.status")
	// CoAPRequest is a CoAP request's line, udpgate-coap-request
	// ("GET /sensors/7").
	CoAPRequest = attribute.Key("udpgate.coap.request")
	// CoAPCode is a CoAP reply's response code, udpgate-coap-code.
	CoAPCode = attribute.Key("udpgate.coap.code")
	// Delivery is a worker group's delivery, direct or durable.
	Delivery = attribute.Key("udpgate.delivery")
	// Pattern is the worker Mux pattern that routed the request.
	Pattern = attribute.Key("udpgate.pattern")
	// Attempt counts a request's deliveries to a durable group, or a
	// Lambda invocation's tries, from 1.
	Attempt = attribute.Key("udpgate.attempt")
)

// MessagingNATS is the messaging.system of every span that publishes or
// processes a NATS message: OpenTelemetry's semantic conventions have no
// constant for NATS yet.
var MessagingNATS = attribute.String("messaging.system", "nats")

// Header is a nats.Header as an OpenTelemetry TextMapCarrier. Its keys are
// case-sensitive, as NATS headers are.
type Header nats.Header

// Get returns the first value of key, "" if none.
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set sets key to the single value v.
func (h Header) Set(key, v string) { h[key] = []string{v} }

// Keys returns the keys of h.
func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

var traceContext propagation.TraceContext

// Extract returns the span context that h carries, invalid if h has no
// well-formed traceparent header.
func Extract(h nats.Header) trace.SpanContext {
	if len(h[HeaderTraceParent]) == 0 {
		return trace.SpanContext{} // the common case: no allocation
	}
	return trace.SpanContextFromContext(traceContext.Extract(context.Background(), Header(h)))
}

// Carries reports whether h has a traceparent header, well-formed or not,
// without parsing it.
func Carries(h nats.Header) bool { return len(h[HeaderTraceParent]) > 0 }

// Inject sets the traceparent and tracestate headers of sc in h, which must
// not be nil; an invalid sc sets nothing.
func Inject(h nats.Header, sc trace.SpanContext) {
	if !sc.IsValid() {
		return
	}
	traceContext.Inject(trace.ContextWithSpanContext(context.Background(), sc), Header(h))
}

// Copy sets in dst the trace context headers of src, as they are.
func Copy(dst, src nats.Header) {
	for _, k := range [...]string{HeaderTraceParent, HeaderTraceState} {
		if v := src[k]; len(v) > 0 {
			dst[k] = []string{v[0]}
		}
	}
}

// Sample reports whether to trace a request, with probability ratio: never
// for 0 (or less), always for 1 (or more). It does not allocate.
func Sample(ratio float64) bool {
	return ratio >= 1 || ratio > 0 && rand.Float64() < ratio
}
