package lambda

import (
	"context"
	"encoding/base64"
	"encoding/json"

	"github.com/aws/aws-sdk-go-v2/aws"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/internal/tracing"
)

// tracerName is the instrumentation scope of the Bridge's spans.
const tracerName = "github.com/udpgate/udpgate/workers/lambda"

// startInvoke starts the span of one Invoke call (try counts from 0) if
// ctx holds the span of a traced request (the worker SDK's): a child of
// it, with links to the other traced requests of a batch of n, made by
// the request span's own provider. It returns nil, and ctx as it is, for
// an untraced request.
func (b *Bridge) startInvoke(ctx context.Context, try, n int, links []trace.Link) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.SpanContext().IsValid() {
		return ctx, nil
	}
	attrs := []attribute.KeyValue{
		semconv.FaaSInvokedName(b.Function),
		semconv.FaaSInvokedProviderAWS,
		tracing.Attempt.Int(try + 1),
	}
	if n > 0 {
		attrs = append(attrs, semconv.MessagingBatchMessageCount(n))
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, "lambda "+b.Function,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithLinks(links...), trace.WithAttributes(attrs...))
}

// endInvoke ends span, if not nil, with the outcome of its Invoke call:
// err, or the function's error (X-Amz-Function-Error) if functionError
// is not empty.
func endInvoke(span trace.Span, functionError string, err error) {
	if span == nil {
		return
	}
	switch {
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, "invoke failed")
	case functionError != "":
		span.SetAttributes(attribute.String("faas.function_error", functionError))
		span.SetStatus(codes.Error, "function error")
	}
	span.End()
}

// clientContext is the ClientContext of an invocation in the span sc: the
// trace context, as the function's context object holds it (Node.js
// context.clientContext.custom, Python context.client_context.custom, Go
// lambdacontext.FromContext(ctx).ClientContext.Custom): {"custom":
// {"traceparent": ..., "tracestate": ...}}, base64. Nil for an invalid sc.
func clientContext(sc trace.SpanContext) *string {
	if !sc.IsValid() {
		return nil
	}
	custom := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), custom)
	p, err := json.Marshal(struct {
		Custom map[string]string `json:"custom"`
	}{custom})
	if err != nil {
		return nil // never: strings only
	}
	return aws.String(base64.StdEncoding.EncodeToString(p))
}
